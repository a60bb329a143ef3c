"""The check runner on its own: real processes, no ZooKeeper needed."""

from __future__ import annotations

import os
import queue
import time

import pytest

from zkwatcher_supervisor.checks import CheckRunner, command_argv
from zkwatcher_supervisor.health import CheckRun


@pytest.fixture
def runner():
    results: queue.Queue = queue.Queue()
    checks = CheckRunner(lambda run, outcome: results.put((run, outcome)))
    checks.start()

    def run(command: str, timeout: float = 5.0):
        checks.submit([CheckRun("s", command, timeout, 1)])
        return results.get(timeout=timeout + 5)[1]

    yield run
    checks.stop()


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


def test_http_check_wants_2xx_or_the_expected_status(http_server):
    results: queue.Queue = queue.Queue()
    checks = CheckRunner(lambda run, outcome: results.put(outcome))
    checks.start()
    base = f"http://127.0.0.1:{http_server}"
    try:
        for path, expect, passed in [("/ok", None, True), ("/teapot", None, False),
                                     ("/teapot", 418, True), ("/missing", None, False)]:
            checks.submit([CheckRun("s", base + path, 2.0, 1, expect)])
            outcome = results.get(timeout=5)
            assert outcome.passed is passed, (path, expect, outcome)
        started = time.monotonic()
        checks.submit([CheckRun("s", base + "/slow", 0.5, 1)])
        outcome = results.get(timeout=5)
        assert outcome.timed_out and not outcome.passed
        assert time.monotonic() - started < 1.5
    finally:
        checks.stop()
