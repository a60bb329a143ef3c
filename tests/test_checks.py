"""The check runner on its own event loop with real processes and sockets, and
checks run by a real listener under supervisord against a real ZooKeeper."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from support.driver import Ticker, state_event
from support.sections import listener_section, section, web_program
from support.supervisor_rpc import program_processes
from support.watches import NodeWatch, node_exists

from zkwatcher_supervisor.checks import CheckRunner, close_inherited_fds_on_exec, command_argv
from zkwatcher_supervisor.health import CheckRun
from zkwatcher_supervisor.listener import HANDLED_SIGNALS
from zkwatcher_supervisor.loop import EventLoop
from zkwatcher_supervisor.privilege import check_user, find_program
from zkwatcher_supervisor.status import process_alive
from zkwatcher_supervisor.testing import free_port, wait_until


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

    def run(self, command: str, timeout: float = 5.0, expect_status=None, section="s",
            user=None, env=None):
        count = len(self.results)
        self.checks.submit([CheckRun(section, command, timeout, 1, expect_status, user, env)])
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
    from zkwatcher_supervisor.testing import free_port

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


def _reserve_on_ipv6_loopback(port: int):
    """A socket bound to ``[::1]:port`` that never listens: connects there are refused."""
    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::1", port))
    return sock


@pytest.fixture
def ipv6_first_name(monkeypatch):
    """A host name that resolves to ``::1`` first, then ``127.0.0.1``, as ``localhost``
    does where /etc/hosts lists ``::1 localhost`` first.  No name on this machine
    does, so the resolver answers for this one name from two real lookups;
    the sockets and connects are real."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "ipv6-first.test":
            return (real_getaddrinfo("::1", port, *args, **kwargs)
                    + real_getaddrinfo("127.0.0.1", port, *args, **kwargs))
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "ipv6-first.test"


def _connects_wait_in_the_selector(monkeypatch):
    """Make the immediate second connect say "not yet", as off loopback, so each
    refusal arrives through the selector instead of at once."""
    import errno
    class SlowToConnect(socket.socket):
        def connect_ex(self, address):
            if getattr(self, "asked", False):
                return errno.EALREADY
            self.asked = True
            return super().connect_ex(address)

    monkeypatch.setattr(socket, "socket", SlowToConnect)


@pytest.mark.parametrize("refusal", ["at once", "through the selector"])
def test_probe_by_name_tries_the_next_address_when_one_is_refused(
        harness, http_server, ipv6_first_name, monkeypatch, refusal):
    """The service listens on 127.0.0.1 only; its name gives ``::1`` first, where
    the port is closed: tcp:// and http:// probes pass on the second address,
    again when the answer comes from the cache."""
    if refusal == "through the selector":
        _connects_wait_in_the_selector(monkeypatch)
    closed = _reserve_on_ipv6_loopback(http_server)
    try:
        for _ in range(2):
            tcp = harness.run(f"tcp://{ipv6_first_name}:{http_server}", 2.0, section="tcp")
            assert tcp.passed, tcp
            http = harness.run(f"http://{ipv6_first_name}:{http_server}/ok", 2.0,
                               section="http")
            assert http.passed, http
        assert harness.checks.busy_sections() == set()
    finally:
        closed.close()


@pytest.mark.parametrize("refusal", ["at once", "through the selector"])
def test_probe_refused_at_every_address_names_each(harness, ipv6_first_name, monkeypatch,
                                                   refusal):
    if refusal == "through the selector":
        _connects_wait_in_the_selector(monkeypatch)
    port = free_port()
    closed = _reserve_on_ipv6_loopback(port)
    try:
        outcome = harness.run(f"tcp://{ipv6_first_name}:{port}", 2.0)
    finally:
        closed.close()
    assert not outcome.passed and not outcome.timed_out
    assert outcome.describe() == (f"failed: connect: [::1]:{port}: Connection refused; "
                                  f"127.0.0.1:{port}: Connection refused")


def test_probe_walking_addresses_keeps_to_its_one_timeout(harness, ipv6_first_name):
    """``::1`` refuses and 127.0.0.1 never completes the handshake (a full accept
    queue): the probe fails at its ``timeout``, saying what refused it."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=2)
    closed = _reserve_on_ipv6_loopback(port)
    try:
        started = time.monotonic()
        outcome = harness.run(f"tcp://{ipv6_first_name}:{port}", 1.0)
        elapsed = time.monotonic() - started
    finally:
        closed.close()
        queued.close()
        full.close()
    assert outcome.timed_out and not outcome.passed
    assert outcome.describe() == ("timed out after 1.0s: no answer "
                                  f"(after [::1]:{port}: Connection refused)")
    assert 0.9 <= elapsed < 2.5, elapsed


def test_checks_start_with_default_signal_actions_and_nothing_blocked(runner, tmp_path):
    """Python ignores SIGPIPE and SIGXFSZ, the listener ignores the signals it
    handles while it shuts down, and a signal may be blocked in the thread that
    spawns: a check sees none of it."""
    status = tmp_path / "status"
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in HANDLED_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # as in the listener
        assert runner(f"grep ^Sig /proc/self/status > {status}").passed
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
    ignored = int(fields["SigIgn"], 16)
    leaked = [signal.Signals(signum).name
              for signum in (signal.SIGPIPE, signal.SIGXFSZ, *HANDLED_SIGNALS)
              if ignored & (1 << (signum - 1))]
    assert leaked == []
    assert int(fields["SigBlk"], 16) == 0


@pytest.mark.e2e
def test_a_pipeline_in_a_check_ends_by_sigpipe_under_a_real_listener(
        write_config, supervisord, zk, base_path, tmp_path):
    """``yes | head -1`` in a check run by the listener under supervisord: ``yes``
    dies of SIGPIPE (status 141), as in a shell, instead of failing on EPIPE;
    the check passes and the node registers."""
    signals = tmp_path / "signals"
    check = tmp_path / "pipeline-check"
    check.write_text("#!/bin/bash\n"
                     f"grep ^Sig /proc/self/status > {signals}\n"
                     "yes | head -n 1 > /dev/null\n"
                     "yes_status=${PIPESTATUS[0]}\n"
                     'echo "yes exited $yes_status"\n'
                     'test "$yes_status" = 141\n')
    check.chmod(0o755)
    config = write_config(f"""
        [pipeline]
        cmd = {check}
        refresh = 5
        service_port = 9000
        service_hostname = host1
        zookeeper_path = {base_path}/pipeline
        """)
    supervisord(listener_section(config))
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: node_exists(zk, f"{base_path}/pipeline/host1:9000")
               or "[pipeline] check failed" in log.read_text(), 15, what="first check")
    assert "[pipeline] check failed" not in log.read_text(), log.read_text()
    assert node_exists(zk, f"{base_path}/pipeline/host1:9000")
    fields = dict(line.split(":", 1) for line in signals.read_text().splitlines())
    assert int(fields["SigIgn"], 16) & (1 << 12) == 0  # SIGPIPE is 13
    assert int(fields["SigIgn"], 16) & (1 << 24) == 0  # SIGXFSZ is 25
    assert int(fields["SigBlk"], 16) == 0


@pytest.mark.e2e
def test_probe_by_host_name_under_a_real_listener(write_config, supervisord, zk, base_path):
    """A service listening on 127.0.0.1 only, probed as ``tcp://localhost:PORT``: the
    node is there while it listens and goes when it stops, and the log names the
    addresses ``localhost`` gave and why each failed."""
    service = socket.create_server(("127.0.0.1", 0))
    port = service.getsockname()[1]
    config = write_config(f"""
        [web]
        cmd = tcp://localhost:{port}
        refresh = 5
        timeout = 2
        service_port = {port}
        service_hostname = host1
        zookeeper_path = {base_path}/web
        """)
    supervisord(listener_section(config))
    node = f"{base_path}/web/host1:{port}"
    try:
        wait_until(lambda: node_exists(zk, node), 15, what="registration")
    finally:
        service.close()
    wait_until(lambda: not node_exists(zk, node), 15, what="deregistration")
    tried = []
    for family, _, _, _, sockaddr in socket.getaddrinfo("localhost", port,
                                                         type=socket.SOCK_STREAM):
        where = f"[{sockaddr[0]}]" if family == socket.AF_INET6 else sockaddr[0]
        tried.append(f"{where}:{port}: Connection refused")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: f"[web] check failed: failed: connect: {'; '.join(tried)}"
               in log.read_text(), 5, what="probe failure logged")
NOBODY = check_user(pwd.getpwnam("nobody"))


def proc_status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_a_check_with_a_user_runs_as_it_in_a_session_of_its_own(runner, member_user):
    assert os.geteuid() == 0, "switching to another user needs root"
    ours = os.getgroups()
    os.setgroups([0, grp.getgrnam("adm").gr_gid])  # groups of ours the check must not keep
    try:
        outcome = runner("echo $$ $(id -u) $(id -g) $(id -G) $(pwd); cat /proc/$$/stat; "
                         "exit 3", user=member_user, env={"PATH": os.environ["PATH"]})
    finally:
        os.setgroups(ours)
    assert not outcome.passed and outcome.returncode == 3
    first, stat = outcome.output.splitlines()[:2]
    pid, uid, gid, *groups, cwd = first.split()
    assert (int(uid), int(gid), cwd) == (member_user.uid, member_user.gid, member_user.home)
    # Its primary group and the one it is a member of, as initgroups gives them.
    assert len(member_user.groups) == 2
    assert sorted(map(int, groups)) == sorted(member_user.groups)
    fields = stat.rsplit(")", 1)[1].split()
    assert fields[2] == fields[3] == pid  # leads its own process group and session


def test_a_check_with_a_user_keeps_the_others_guarantees(harness, reachable_dir):
    runner = harness.run
    marker = reachable_dir / "child"
    os.chmod(reachable_dir, 0o777)
    started = time.monotonic()
    outcome = runner(f"sleep 60 & echo $! > {marker}; sleep 60", timeout=0.5, user=NOBODY)
    assert outcome.timed_out and time.monotonic() - started < 2
    child = int(marker.read_text())
    deadline = time.monotonic() + 2
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{child}")  # its whole group was killed
    harness.run_until(lambda: not harness.checks.busy_sections(), 5)  # and reaped
    probe = reachable_dir / "fds"
    assert runner(f'test -z "$(cat)" && ls /proc/self/fd > {probe}', user=NOBODY).passed
    assert len(probe.read_text().split()) == 4  # 0, 1, 2 and ls's own
    outcome = runner("/nonexistent/check", user=NOBODY)
    assert not outcome.passed and "No such file or directory" in outcome.describe()


def test_checks_start_with_default_signals_and_none_blocked(runner):
    # Python ignores SIGPIPE; a check must not inherit that, nor a blocked mask.
    pipe, xfsz = 1 << (signal.SIGPIPE - 1), 1 << (signal.SIGXFSZ - 1)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        outcome = runner("cat /proc/self/status", user=NOBODY)  # no shell between
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    status = proc_status(outcome.output)
    assert int(status["SigIgn"], 16) & (pipe | xfsz) == 0
    assert int(status["SigBlk"], 16) == 0
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, ())


def test_a_check_with_a_user_started_while_the_listener_shuts_down_gets_default_signals(
        runner):
    """At shutdown the listener ignores the signals it handles; a check forked to
    switch users then must not inherit that (exec keeps what is ignored)."""
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in HANDLED_SIGNALS}
    try:
        outcome = runner("cat /proc/self/status", user=NOBODY)  # no shell between
        still = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    ignored = int(proc_status(outcome.output)["SigIgn"], 16)
    assert [signal.Signals(signum).name for signum in HANDLED_SIGNALS
            if ignored & (1 << (signum - 1))] == []
    assert set(still.values()) == {signal.SIG_IGN}  # ours are ignored again


def test_many_checks_with_a_user_at_once_are_each_reaped_once(harness):
    runs = [CheckRun(f"s{i}", f"(sleep 0.0{i % 5}; echo x) & exit {i % 2}", 5.0, 1,
                     user=NOBODY) for i in range(100)]
    harness.checks.submit(runs)
    harness.run_until(lambda: len(harness.results) >= 100 and not harness.checks.running(),
                      60)
    outcomes = {run.section: outcome for run, outcome in harness.results}
    assert len(outcomes) == 100
    assert all(outcomes[f"s{i}"].passed == (i % 2 == 0) for i in range(100))
    assert harness.run("true").passed and harness.run("true", user=NOBODY).passed


def test_checks_never_see_supervisords_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPERVISOR_PASSWORD", "s3cret")
    monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///tmp/s.sock")
    harness = Harness()  # takes the environment it starts with
    try:
        outcome = harness.run("env; exit 1")
        assert "KEPT" not in outcome.output
        assert "SUPERVISOR_" not in outcome.output and "s3cret" not in outcome.output
        assert "PATH=" in outcome.output
        # A section's own PATH is where its command is looked up.
        (tmp_path / "bin").mkdir()
        script = tmp_path / "bin" / "zkw-only-here"
        script.write_text("#!/bin/sh\necho \"$MARK\"\nexit 4\n")
        script.chmod(0o755)
        env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "MARK": "from the section"}
        outcome = harness.run("zkw-only-here", env=env)
        assert (outcome.returncode, outcome.output) == (4, "from the section\n")
        # ... and only there: a program on the listener's PATH alone is not found.
        (tmp_path / "empty").mkdir()
        assert shutil.which("true")
        env = {"PATH": str(tmp_path / "empty")}
        outcome = harness.run("true", env=env)
        assert (outcome.passed, outcome.returncode) == (False, None)
        assert outcome.describe() == (f"failed: true: not found on the section's PATH "
                                      f"({tmp_path / 'empty'})")
        # As a program that exists nowhere fails.
        nowhere = f"{tmp_path / 'empty'}:/usr/bin"
        assert harness.run("zkw-nowhere", env={"PATH": nowhere}).describe() == (
            f"failed: zkw-nowhere: not found on the section's PATH ({nowhere})")
    finally:
        harness.checks.stop()
        harness.loop.close()


def test_a_program_is_found_on_a_path_as_shutil_which_finds_it(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
    (first / "plain").write_text("not executable")
    (first / "adir").mkdir()
    (first / "adir").chmod(0o755)
    for directory in (first, second):
        for name in ("plain", "both"):
            program = directory / name
            program.write_text("#!/bin/sh\n")
            if not (directory == first and name == "plain"):
                program.chmod(0o755)
    (second / "adir").write_text("#!/bin/sh\n")
    (second / "adir").chmod(0o755)
    path = os.pathsep.join(["", str(first), str(first), str(tmp_path / "missing"), str(second)])
    for name in ("plain", "both", "adir", "nowhere", "true", str(second / "both"),
                 str(first / "plain"), str(first / "adir")):
        for search in (path, "", str(second), None):
            assert find_program(name, search) == shutil.which(name, path=search), (name, search)
    assert find_program("plain", path) == str(second / "plain")
    assert find_program("adir", path) == str(second / "adir")


# What a listener with plain sections, logging to stderr, has no use for: each
# costs a small host memory for as long as the listener runs.
NOT_NEEDED = ("typing", "subprocess", "logging.handlers", "pickle", "shutil", "tempfile",
              "getpass", "xmlrpc.client", "http.client", "email", "supervisor.childutils",
              "supervisor.datatypes")


def imported(log: Path) -> list[str]:
    """The modules ``python -X importtime`` reported importing, in order."""
    return [line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines()
            if line.startswith("import time:") and "|" in line]


@pytest.mark.e2e
def test_a_listener_imports_only_what_its_sections_need(
        write_config, supervisord, zk, base_path, member_user, tmp_path):
    plain = write_config(section(base_path, "cmd", 9001, cmd="true")
                         + section(base_path, "tcp", 9002, cmd="tcp://127.0.0.1:9")
                         , name="plain.cfg")
    with_user = write_config(section(base_path, "asuser", 9003, cmd="true", user=member_user.name),
                             name="user.cfg")
    listeners = "".join(textwrap.dedent(f"""
        [eventlistener:{name}]
        command = {sys.executable} -X importtime -m zkwatcher_supervisor -c {config}
        events = PROCESS_STATE,TICK_5
        buffer_size = 1024
        startsecs = 0
        stderr_logfile = {tmp_path}/{name}.log
        """) for name, config in (("plain", plain), ("withuser", with_user)))
    server = supervisord(listeners)
    wait_until(lambda: node_exists(zk, f"{base_path}/cmd/host1:9001")
               and node_exists(zk, f"{base_path}/asuser/host1:9003"), 20, what="registered")
    wait_until(lambda: "[tcp] check failed" in (tmp_path / "plain.log").read_text(), 10,
               what="the tcp check's verdict")
    server.stop()
    plain_modules = imported(tmp_path / "plain.log")
    assert "zkwatcher_supervisor.registry" in plain_modules  # -X importtime took effect
    # What the interpreter and kazoo import are not ours to save (on Python
    # 3.9 an editable install's finder brings typing, and pure-sasl, which
    # kazoo imports, brings subprocess through platform).
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "import kazoo.client"],
                          capture_output=True, text=True, timeout=60).stderr
    interpreters = {line.rsplit("|", 1)[1].strip() for line in bare.splitlines()
                    if line.startswith("import time:") and "|" in line}
    assert [name for name in NOT_NEEDED
            if name in plain_modules and name not in interpreters] == []
    # A check with a user is forked by subprocess: imported before the loop
    # runs, never on it at the first check.
    log = (tmp_path / "withuser.log").read_text().splitlines()
    where = {line.rsplit("|", 1)[1].strip(): number for number, line in enumerate(log)
             if line.startswith("import time:")}
    started = next(number for number, line in enumerate(log) if "watching 1 section(s)" in line)
    assert where["subprocess"] < started


@pytest.mark.e2e
def test_cmd_section_registers_within_refresh_plus_a_tick(
        write_config, supervisord, zk, base_path, tmp_path):
    flag = tmp_path / "up"
    config = write_config(section(base_path, "flag", 9000, cmd=f"test -f {flag}", refresh=5,
                                  timeout=None))
    server = supervisord(listener_section(config))
    wait_until(lambda: server.info("zkwatcher")["statename"] == "RUNNING", 10, what="listener")
    node = f"{base_path}/flag/host1:9000"
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[flag] check failed" in log.read_text(), 5, what="first check failed")
    assert not node_exists(zk, node)

    timings = []
    for _ in range(2):
        flag.touch()
        started = time.monotonic()
        wait_until(lambda: node_exists(zk, node), 11, interval=0.01, what="registration")
        appeared = time.monotonic() - started
        flag.unlink()
        started = time.monotonic()
        wait_until(lambda: not node_exists(zk, node), 11, interval=0.01, what="deregistration")
        timings.append((appeared, time.monotonic() - started))
    print(f"appear/disappear seconds: {timings}")
    assert "overflow" not in server.log_text()
    assert server.info("zkwatcher")["statename"] == "RUNNING"


FREEZER = Path("/sys/fs/cgroup/freezer")


@pytest.mark.e2e
def test_checks_keep_running_under_300_sections_whose_shell_exits_before_its_child(
        write_config, driver, zk, base_path, tmp_path):
    """300 sections whose check is ``sh -c '(sleep 0.0N; echo x) & exit 0'`` — a shell
    that exits before its background child writes, as init-script style checks do —
    run beside one section ``test -f FLAG``.  After 5 s of that load, removing FLAG
    must still deregister the flag section (and the listener must still be alive): the
    check runner must survive a check's exit and its output arriving together."""
    flag = tmp_path / "flag"
    flag.touch()
    body = section(base_path, "flag", 1, cmd=f"test -f {flag}", timeout=5)
    for i in range(300):
        body += section(base_path, f"bg{i}", 1000 + i, timeout=5,
                        cmd=f"sh -c '(sleep 0.0{i % 10}; echo x) & exit 0'")
    drv = driver(write_config(body))
    node = f"{base_path}/flag/host1:1"
    with Ticker(drv, interval=1.0) as ticker:
        wait_until(lambda: node_exists(zk, node), 20, interval=0.1, what="flag registered")
        time.sleep(5)
        assert node_exists(zk, node), "flag section deregistered while FLAG exists"
        flag.unlink()
        removed = time.monotonic()
        try:
            wait_until(lambda: not node_exists(zk, node), 6, interval=0.05,
                       what="flag deregistered after FLAG was removed")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{drv.stderr()[-3000:]}") from None
        print(f"FLAG removed -> node gone: {time.monotonic() - removed:.2f}s")
        assert ticker.error is None, ticker.error
    assert drv.process.poll() is None, "the listener exited under load"


@pytest.fixture
def freezer_cgroup():
    """A cgroup v1 freezer group, FROZEN: a process that moves itself in stops at once,
    in uninterruptible sleep (state D), and not even SIGKILL ends it until it is thawed."""
    if not os.access(FREEZER, os.W_OK):
        # Never skipped: a skip would hide the missing dependency.
        pytest.fail(f"needs the cgroup v1 freezer ({FREEZER}) writable, i.e. root")
    group = FREEZER / f"zkw-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    (group / "freezer.state").write_text("FROZEN\n")
    try:
        yield group
    finally:
        (group / "freezer.state").write_text("THAWED\n")
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        try:
            wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), 10)
        finally:
            group.rmdir()


def thaw(group: Path) -> None:
    (group / "freezer.state").write_text("THAWED\n")


@pytest.mark.e2e
def test_check_stuck_in_uninterruptible_sleep_fails_at_its_deadline(
        write_config, driver, zk, base_path, tmp_path, freezer_cgroup):
    """A check that hangs in uninterruptible sleep (hung NFS or FUSE; here the cgroup
    freezer) cannot be killed at its 2 s timeout, nor reaped.  Its section must still
    count as failed at the deadline (node gone within timeout + 1 s of the run's start),
    no second run of it may start while the stuck one is unreaped, and once the process
    is released everything recovers (the next passing run registers the node again)."""
    runs, freeze = tmp_path / "runs", tmp_path / "freeze"
    script = tmp_path / "check.sh"
    script.write_text(textwrap.dedent(f"""\
        date +%s.%N >> {runs}
        if [ -f {freeze} ]; then echo $$ > {freezer_cgroup}/cgroup.procs; fi
        exit 0
        """))
    drv = driver(write_config(section(base_path, "svc", 1, cmd=f"sh {script}", timeout=2)))
    node = f"{base_path}/svc/host1:1"

    def run_count() -> int:
        return len(runs.read_text().split()) if runs.exists() else 0

    with Ticker(drv) as ticker:
        wait_until(lambda: node_exists(zk, node), 10, what="registration")
        watch = NodeWatch(zk, node)
        before = run_count()
        freeze.touch()
        wait_until(lambda: (freezer_cgroup / "cgroup.procs").read_text().strip(), 5,
                   what="a check run frozen")
        stuck_runs = run_count()
        assert stuck_runs > before
        # When the stuck run started, on the monotonic clock.
        started = time.monotonic() - (time.time() - float(runs.read_text().split()[-1]))
        deleted = watch.wait_for("DELETED", started, started + 3.5 - time.monotonic())
        assert deleted is not None, "the section stayed registered past the stuck run's deadline"
        print(f"stuck run start -> node gone: {deleted - started:.2f}s")
        assert deleted - started < 2 + 1.0
        time.sleep(3)  # several refresh periods with ticks
        assert run_count() == stuck_runs, "another run started while the stuck one was unreaped"
        assert not node_exists(zk, node)

        freeze.unlink()
        thaw(freezer_cgroup)
        wait_until(lambda: node_exists(zk, node), 5, what="recovery after the check was released")
        assert run_count() > stuck_runs
        assert ticker.error is None, ticker.error
    assert drv.process.poll() is None


@pytest.mark.e2e
def test_runs_of_a_section_never_overlap_across_a_program_restart(
        write_config, driver, zk, base_path, tmp_path):
    """A check that takes 2 s is running when its program restarts (leaves RUNNING and
    comes back).  The check must run again for the new process — but not before the
    first run has ended.  The check holds an exclusive ``flock`` while it runs and
    records any run that finds the lock taken."""
    runs, lock = tmp_path / "runs", tmp_path / "lock"
    script = tmp_path / "check.sh"
    script.write_text(textwrap.dedent(f"""\
        flock -n -E 99 {lock} sh -c 'echo start >> {runs}; sleep 2'
        rc=$?
        if [ $rc -eq 99 ]; then echo overlap >> {runs}; fi
        exit $rc
        """))
    cfg = write_config(section(base_path, "svc", 1, program="web", cmd=f"sh {script}",
                               refresh=30, timeout=5))
    drv = driver(cfg)
    node = f"{base_path}/svc/host1:1"

    def lines() -> list[str]:
        return runs.read_text().split() if runs.exists() else []

    with program_processes() as start_program:
        first = start_program()
        state_event(drv, "web", "STARTING", "STOPPED")
        state_event(drv, "web", "RUNNING", "STARTING", first)
        wait_until(lambda: lines() == ["start"], 5, what="first run started")
        for state, before in [("STOPPING", "RUNNING"), ("STOPPED", "STOPPING"),
                              ("STARTING", "STOPPED")]:
            state_event(drv, "web", state, before)
        state_event(drv, "web", "RUNNING", "STARTING", start_program())
        with Ticker(drv):
            wait_until(lambda: node_exists(zk, node) or "overlap" in lines(), 10,
                       what="registered after the run for the new process")
        assert "overlap" not in lines(), f"a run started while another ran: {lines()}"
        assert lines().count("start") >= 2


@pytest.mark.e2e
def test_a_failing_checks_last_2_kib_of_output_appear_in_the_log(
        write_config, driver, base_path, tmp_path):
    """stdout and stderr both reach the log, the end of them, up to 2 KiB."""
    script = tmp_path / "check.sh"
    script.write_text(textwrap.dedent("""\
        head -c 3000 /dev/zero | tr '\\0' x
        echo
        echo "first reason" >&2
        echo "second reason"
        exit 1
        """))
    drv = driver(write_config(section(base_path, "s", 1, cmd=f"sh {script}")))
    wait_until(lambda: "[s] check failed" in drv.stderr(), 5, what="check failed")
    (line,) = [ln for ln in drv.stderr().splitlines() if "[s] check failed" in ln]
    assert "exit status 1" in line
    # Everything after the 3000 x's fits in 2 KiB, so all of it is shown ...
    assert "first reason" in drv.stderr() and "second reason" in drv.stderr()
    # ... and of the x's only what fits: the beginning of the output is not.
    xs = max((len(run) for run in re.findall(r"x+", drv.stderr())), default=0)
    assert 2048 - 100 < xs < 2048, xs


@pytest.mark.e2e
def test_a_check_that_exits_takes_what_it_left_running_with_it(
        write_config, driver, zk, base_path, tmp_path):
    child = tmp_path / "child.pid"
    drv = driver(write_config(section(
        base_path, "s", 1, cmd=f"sleep 300 & echo $! > {child}; exit 0", refresh=30)))
    wait_until(lambda: node_exists(zk, f"{base_path}/s/host1:1"), 10, what="registered")
    pid = int(child.read_text())
    started = time.monotonic()
    # Killed (a zombie until whoever inherited it reaps it counts as gone).
    wait_until(lambda: not process_alive(pid), 1, interval=0.01, what="the check's child killed")
    print(f"child gone after {time.monotonic() - started:.2f}s")
    assert drv.process.poll() is None


@pytest.mark.e2e
def test_tcp_and_http_checks_follow_a_real_server(write_config, supervisord, zk, base_path):
    port = free_port()
    config = write_config(f"""
        [tcp]
        cmd = tcp://127.0.0.1:{port}
        refresh = 5
        timeout = 1
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/tcp

        [http]
        cmd = http://127.0.0.1:{port}/missing
        expect_status = 404
        refresh = 5
        timeout = 1
        service_port = 2
        service_hostname = host1
        zookeeper_path = {base_path}/http
        """)
    server = supervisord(web_program(port) + listener_section(config))
    nodes = [f"{base_path}/tcp/host1:1", f"{base_path}/http/host1:2"]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 15, what="registration")
    server.ctl("stop", "web")
    wait_until(lambda: not any(node_exists(zk, n) for n in nodes), 12, what="deregistration")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[tcp] check failed: failed: connect: Connection refused"
               in log.read_text(), 5, what="probe failure logged")
    server.ctl("start", "web")
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 12, what="re-registration")
