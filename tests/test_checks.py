"""The check runner on its own event loop: real processes, no ZooKeeper needed."""

from __future__ import annotations

import os
import time

import pytest

from zkwatcher_supervisor.checks import CheckRunner, close_inherited_fds_on_exec, command_argv
from zkwatcher_supervisor.health import CheckRun
from zkwatcher_supervisor.loop import EventLoop


class Harness:
    """A loop with a runner; collects outcomes (None = a killed run was reaped)."""

    def __init__(self) -> None:
        close_inherited_fds_on_exec()  # as the listener does at start
        self.loop = EventLoop()
        self.results: list = []
        self.checks = CheckRunner(self.loop, lambda run, outcome: self.results.append(
            (run, outcome)))

    def run_until(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            self.loop.run_once(timeout=0.05)

    def run(self, command: str, timeout: float = 5.0, expect_status=None, section="s"):
        count = len(self.results)
        self.checks.submit([CheckRun(section, command, timeout, 1, expect_status)])
        self.run_until(lambda: len(self.results) > count, timeout + 5)
        return self.results[count][1]


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.checks.stop()
    h.loop.close()


@pytest.fixture
def runner(harness):
    return harness.run


def test_plain_words_run_directly_and_shell_syntax_goes_to_sh():
    assert command_argv("/etc/init.d/sshd status") == ["/etc/init.d/sshd", "status"]
    assert command_argv("curl  -fsS http://h:80/health") == ["curl", "-fsS", "http://h:80/health"]
    for command in ["a | b", "a && b", "a; b", "a > f", "echo $HOME", "test -f '/x y'",
                    "ls *.txt", "FOO=1 cmd", "cmd # note", "echo `date`"]:
        assert command_argv(command) == ["/bin/sh", "-c", command], command


def test_exit_status_decides(runner):
    assert runner("true").passed
    failed = runner("false")
    assert not failed.passed and failed.returncode == 1
    assert failed.describe() == "exit status 1"


def test_shell_command_and_output_tail(runner):
    outcome = runner("echo first; echo last words >&2; exit 3")
    assert not outcome.passed and outcome.returncode == 3
    assert outcome.describe() == "exit status 3: last words"


def test_missing_program_is_a_failure_not_a_crash(runner):
    outcome = runner("/nonexistent/check --flag")
    assert not outcome.passed and outcome.returncode is None
    assert "No such file or directory" in outcome.describe()


def test_timeout_kills_the_whole_group(runner, tmp_path):
    marker = tmp_path / "child"
    started = time.monotonic()
    outcome = runner(f"sleep 60 & echo $! > {marker}; sleep 60", timeout=0.5)
    assert not outcome.passed and outcome.timed_out
    assert 0.5 <= time.monotonic() - started < 2
    assert outcome.describe().startswith("timed out after 0.5s")
    child = int(marker.read_text())
    deadline = time.monotonic() + 2
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{child}")


def test_stdin_is_empty_and_nothing_inherits_our_fds(runner, tmp_path):
    probe = tmp_path / "fds"
    assert runner(f"test -z \"$(cat)\" && ls /proc/self/fd > {probe}").passed
    # 0, 1, 2 and the fd ls opened to list the directory; none of ours.
    assert len(probe.read_text().split()) == 4


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 answering /ok 200, /teapot 418, /slow never."""
    import http.server
    import socketserver
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow":
                time.sleep(3)
            self.send_response({"/ok": 200, "/teapot": 418}.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_tcp_check_connects_without_a_fork(runner, http_server):
    from zkwatcher_supervisor.sandbox import free_port

    assert runner(f"tcp://127.0.0.1:{http_server}").passed
    closed = runner(f"tcp://127.0.0.1:{free_port()}")
    assert not closed.passed
    assert closed.describe() == "failed: connect: Connection refused"


def test_tcp_check_whose_handshake_never_completes_fails_at_its_timeout(harness,
                                                                       http_server):
    """A port whose accept queue is full drops our SYN: the probe waits in the
    selector (not at once, as loopback usually answers) and fails at its own
    ``timeout``, while a probe of a healthy port passes meanwhile."""
    import socket

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)  # room for one connection, which we take up and never accept
    queued = socket.create_connection(full.getsockname(), timeout=2)
    try:
        started = time.monotonic()
        harness.checks.submit([CheckRun("full", f"tcp://127.0.0.1:{full.getsockname()[1]}",
                                        1.0, 1),
                               CheckRun("ok", f"tcp://127.0.0.1:{http_server}", 1.0, 1)])
        harness.run_until(lambda: len(harness.results) == 2, 5)
        outcomes = {run.section: outcome for run, outcome in harness.results}
        assert harness.results[0][0].section == "ok" and outcomes["ok"].passed
        assert outcomes["full"].timed_out and not outcomes["full"].passed
        assert outcomes["full"].describe() == "timed out after 1.0s: no answer"
        assert 0.9 <= time.monotonic() - started < 2.5
        assert harness.checks.busy_sections() == set()
    finally:
        queued.close()
        full.close()


def test_http_check_wants_2xx_or_the_expected_status(harness, http_server):
    base = f"http://127.0.0.1:{http_server}"
    for path, expect, passed in [("/ok", None, True), ("/teapot", None, False),
                                 ("/teapot", 418, True), ("/missing", None, False)]:
        outcome = harness.run(base + path, 2.0, expect)
        assert outcome.passed is passed, (path, expect, outcome)
    started = time.monotonic()
    outcome = harness.run(base + "/slow", 0.5)
    assert outcome.timed_out and not outcome.passed
    assert time.monotonic() - started < 1.5


def test_http_check_whose_connect_has_to_wait_asks_once_it_is_up(harness, http_server,
                                                                 monkeypatch):
    """Off loopback a connect is not done at once: the probe waits for it in the
    selector, then sends its request; a reply that never comes fails at the
    timeout.  (Loopback answers at once, so the wait is made to happen.)"""
    import errno
    import socket

    class SlowToConnect(socket.socket):
        def connect_ex(self, address):
            if getattr(self, "asked", False):
                return errno.EALREADY  # the second, immediate ask: not yet
            self.asked = True
            return super().connect_ex(address)

    monkeypatch.setattr(socket, "socket", SlowToConnect)
    base = f"http://127.0.0.1:{http_server}"
    assert harness.run(base + "/ok", 2.0).passed
    assert not harness.run(base + "/teapot", 2.0).passed
    started = time.monotonic()
    outcome = harness.run(base + "/slow", 0.5)
    assert outcome.timed_out and not outcome.passed
    assert time.monotonic() - started < 1.5
    assert harness.checks.busy_sections() == set()


def test_probe_by_host_name_resolves_off_the_loop(harness, http_server):
    assert harness.run(f"tcp://localhost:{http_server}").passed


def test_shell_that_exits_before_its_background_child_writes(harness, tmp_path):
    """The check's exit and its pipe's end arrive in one select batch, in either
    order, hundreds of times: every run reports exactly once and the runner
    keeps going."""
    runs = [CheckRun(f"s{i}", f"(sleep 0.0{i % 5}; echo x) & exit 0", 5.0, 1)
            for i in range(200)]
    harness.checks.submit(runs)
    harness.run_until(lambda: len(harness.results) >= 200 and not harness.checks.running(),
                      30)
    outcomes = [outcome for _, outcome in harness.results if outcome is not None]
    assert len(outcomes) == 200 and all(o.passed for o in outcomes)
    assert harness.run("true").passed


def test_cancelled_run_reports_nothing_and_frees_the_section_once_reaped(harness, tmp_path):
    harness.checks.submit([CheckRun("s", "sleep 30", 60.0, 1)])
    harness.run_until(lambda: harness.checks.running(), 5)
    assert harness.checks.busy_sections() == {"s"}
    harness.checks.cancel("s")
    harness.run_until(lambda: harness.results, 5)
    assert harness.results == [(harness.results[0][0], None)]  # freed, no outcome
    assert harness.checks.busy_sections() == set()


def test_a_hanging_name_lookup_fails_its_check_at_the_timeout_and_holds_up_nothing(
        harness, http_server, monkeypatch):
    """A resolver that does not answer (a dead DNS server) for one host name: that
    check fails at its own ``timeout``; another section's probe and command run
    and report meanwhile."""
    import socket
    import threading

    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()

    def getaddrinfo(host, *args, **kwargs):
        if host == "hung.example":
            release.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        started = time.monotonic()
        harness.checks.submit([CheckRun("hung", "tcp://hung.example:80", 1.0, 1),
                               CheckRun("probe", f"tcp://localhost:{http_server}", 1.0, 1),
                               CheckRun("cmd", "true", 1.0, 1)])
        harness.run_until(lambda: {run.section for run, _ in harness.results}
                          >= {"probe", "cmd"}, 5)
        others_done = time.monotonic() - started
        assert all(outcome.passed for _, outcome in harness.results)
        assert others_done < 0.5, others_done  # not behind the lookup
        harness.run_until(lambda: len(harness.results) == 3, 5)
        hung = next(outcome for run, outcome in harness.results if run.section == "hung")
        assert not hung.passed and hung.timed_out
        assert time.monotonic() - started < 1.0 + 0.5  # its timeout, not the resolver's
    finally:
        release.set()
