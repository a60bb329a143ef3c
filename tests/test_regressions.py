"""Registrations stay right when things happen at the same time.

Each test drives the real listener process — under a real supervisord, or through
the byte-exact protocol driver — against a real ZooKeeper, and judges it only by
what an operator sees: the znodes (through a separate kazoo client and its
watches), the requests on the wire, exit status and timings, and the processes
it leaves behind.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.security import ACL, Id, Permissions, make_digest_acl
from support.driver import ProtocolDriver, Ticker, state_event, terminate
from support.proxies import ZooKeeperLink
from support.sections import listener_section, section
from support.supervisor_rpc import FakeSupervisorRPC, program_processes
from support.watches import NodeWatch, node_exists

from zkwatcher_supervisor.testing import FaultProxy, wait_until

pytestmark = pytest.mark.e2e

FREEZER = Path("/sys/fs/cgroup/freezer")


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


# -- reloads ---------------------------------------------------------------------------------


def test_reload_renaming_a_program_section_keeps_its_node(
        write_config, supervisord, zk, base_path):
    """A program-only section renamed (``[web]`` -> ``[www]`` -> ``[web]`` -> ``[www]``)
    with the same ``zookeeper_path``, each applied with ``supervisorctl signal HUP
    zkwatcher`` under a real supervisord: the program stays RUNNING, so its node must
    stay registered throughout — a consumer's watch must never see it deleted."""
    path = f"{base_path}/web"
    node = f"{path}/host1:8080"

    def config(name: str, version: int) -> str:
        # A section with a path of its own per version shows when a reload has been applied.
        return (section(base_path, name, 8080, program="web", path=path)
                + section(base_path, f"v{version}", 9000 + version, program="web"))

    cfg = write_config(config("web", 0))
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(cfg))
    wait_until(lambda: node_exists(zk, node), 15, what="web registered")
    watch = NodeWatch(zk, node)
    for version, name in enumerate(["www", "web", "www"], start=1):
        write_config(config(name, version))
        result = server.ctl("signal", "HUP", "zkwatcher")
        assert result.returncode == 0, result.stdout + result.stderr
        marker = f"{base_path}/v{version}/host1:{9000 + version}"
        wait_until(lambda m=marker: node_exists(zk, m), 5, what=f"reload {version} applied")
        time.sleep(0.5)
        assert node_exists(zk, node), f"node gone after renaming the section to [{name}]"
    assert watch.deletions() == [], f"the node was deleted during a reload: {watch.events}"
    assert server.info("web")["statename"] == "RUNNING"


def test_reload_snapshot_never_overrides_a_newer_process_event(
        write_config, driver, zk, base_path):
    """A reload reads process states from supervisord over XML-RPC; an event that arrives
    after that request went out is newer than its answer.  Here supervisord (a small
    XML-RPC stand-in, so the answer can be held back 2 s: the ordering of the listener's
    own inputs is what is tested, not supervisord) reports ``web`` STARTING, the listener
    is sent SIGHUP (the new config adds a second section bound to ``web``), and while the
    snapshot is outstanding PROCESS_STATE_RUNNING arrives.  The stale STARTING answer
    must not take ``web`` down: both sections end registered and stay so."""
    rpc = FakeSupervisorRPC()
    try:
        with program_processes() as start_program:
            pid = start_program()
            rpc.set_process("web", "web", "STARTING", pid)
            cfg = write_config(section(base_path, "web", 1, program="web"))
            drv = driver(cfg, env={"SUPERVISOR_SERVER_URL": rpc.url})
            node, node2 = f"{base_path}/web/host1:1", f"{base_path}/web2/host1:2"
            wait_until(lambda: [c for c in rpc.calls_of("supervisor.getAllProcessInfo")
                                if c["answered"]], 5, what="start-up snapshot answered")
            time.sleep(0.3)

            rpc.delay = 2.0
            asked = len(rpc.calls_of("supervisor.getAllProcessInfo"))
            write_config(section(base_path, "web", 1, program="web")
                         + section(base_path, "web2", 2, program="web"))
            drv.process.send_signal(signal.SIGHUP)
            try:
                wait_until(lambda: len(rpc.calls_of("supervisor.getAllProcessInfo")) > asked,
                           2, what="snapshot requested on reload")
                snapshot = rpc.calls_of("supervisor.getAllProcessInfo")[-1]
            except TimeoutError:
                snapshot = None  # none taken on reload: nothing stale can arrive
            rpc.set_process("web", "web", "RUNNING", pid)  # what it would say from now on
            state_event(drv, "web", "RUNNING", "STARTING", pid)
            wait_until(lambda: node_exists(zk, node), 5, what="web registered on RUNNING")
            watch = NodeWatch(zk, node)
            if snapshot is not None:
                wait_until(lambda: snapshot["answered"], 5, what="stale snapshot answered")
            time.sleep(1.0)
            drv.tick()
            assert watch.deletions() == [], "the stale snapshot took the running program down"
            assert node_exists(zk, node)
            wait_until(lambda: node_exists(zk, node2), 3, what="the added section registered")
            assert drv.process.poll() is None
    finally:
        rpc.close()


def test_two_quick_reloads_end_with_the_config_read_last(
        write_config, driver, zk, base_path, tmp_path):
    """An operator (or config management) writes config A and sends SIGHUP, then at
    once writes config B and sends SIGHUP again — 40 times over, each file replaced
    atomically.  After each pair the running config must be B: B's section is
    registered and A's is not.  Both files carry 200 program sections with no process
    behind them (a large config, so reading one takes a while)."""
    fillers = "".join(section(base_path, f"idle{i}", 5000 + i, program=f"idle{i}")
                      for i in range(200))
    cfg = write_config(fillers)
    text = cfg.read_text()  # the [zkwatcher] header plus the fillers
    drv = driver(cfg)

    def replace(body: str) -> None:
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(text + body)
        os.rename(tmp, cfg)

    with Ticker(drv) as ticker:
        for i in range(40):
            node_a, node_b = f"{base_path}/a{i}/host1:1", f"{base_path}/b{i}/host1:2"
            replace(section(base_path, f"a{i}", 1, cmd="true"))
            drv.process.send_signal(signal.SIGHUP)
            replace(section(base_path, f"b{i}", 2, cmd="true"))
            drv.process.send_signal(signal.SIGHUP)
            try:
                wait_until(lambda a=node_a, b=node_b: node_exists(zk, b)
                           and not node_exists(zk, a), 5, what=f"config B of round {i}")
                time.sleep(0.3)
                assert node_exists(zk, node_b) and not node_exists(zk, node_a), \
                    f"round {i}: config A applied after B"
            except TimeoutError as exc:
                raise AssertionError(f"round {i}: {exc}; A registered: "
                                     f"{node_exists(zk, node_a)}") from None
        assert ticker.error is None, ticker.error
    assert drv.process.poll() is None


# -- refusals and shutdown -------------------------------------------------------------------


def test_permanent_refusal_backs_off_and_registers_once_allowed(
        write_config, driver, zk, zookeeper, base_path):
    """The parent ``zookeeper_path`` belongs to another identity and lets the world only
    read: every create is refused with NoAuth.  The listener must not hammer ZooKeeper:
    from 4 s to 12 s after its first attempt it may send at most 8 requests (pings
    aside) — a backoff doubling from 0.5 s makes one attempt in that window, a fixed
    0.5 s retry 16.  Once the ACL is fixed the node must go in within 32 s (a 30 s
    backoff cap)."""
    other = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "other:pw")])
    other.start(timeout=30)
    parent = f"{base_path}/svc"
    other.create(parent, makepath=True, acl=[
        make_digest_acl("other", "pw", all=True),
        ACL(Permissions.READ, Id("world", "anyone")),
    ])
    link = ZooKeeperLink(zookeeper.port)
    try:
        drv = driver(write_config(section(base_path, "svc", 1, cmd="true"), hosts=link.hosts))
        node = f"{parent}/host1:1"
        with Ticker(drv, interval=1.0) as ticker:
            first = wait_until(lambda: next((t for t, op in link.requests if op in (1, 15)),
                                            None), 10, what="first create")
            time.sleep(max(0.0, first + 12 - time.monotonic()))
            sent = link.work_requests(first + 4, first + 12)
            threads = len(os.listdir(f"/proc/{drv.process.pid}/task"))
            print(f"requests from 4 s to 12 s after the first refusal: {sent}; "
                  f"listener threads: {threads}")
            assert not node_exists(zk, f"{parent}/host1:1")
            assert sent <= 8, f"{sent} requests in 8 s while every create is refused"

            other.set_acls(parent, [ACL(Permissions.ALL, Id("world", "anyone"))])
            fixed = time.monotonic()
            wait_until(lambda: node_exists(zk, node), 32, interval=0.1,
                       what="registration once the ACL allows it")
            print(f"ACL fixed -> registered: {time.monotonic() - fixed:.1f}s")
            assert ticker.error is None, ticker.error
    finally:
        link.close()
        other.stop()
        other.close()


@pytest.mark.parametrize("fault", ["refused", "blackholed"])
def test_sigterm_while_zookeeper_is_unreachable_exits_0_within_1s(
        fault, write_config, driver, zk, zookeeper, base_path):
    """Registered, then ZooKeeper becomes unreachable — ``refused``: connections are
    dropped and new ones refused; ``blackholed``: the connection stays open but nothing
    gets through, as in a network partition.  SIGTERM must still end the listener with
    status 0 within 1 s."""
    proxy = FaultProxy(zookeeper.port) if fault == "refused" else ZooKeeperLink(zookeeper.port)
    try:
        drv = driver(write_config(section(base_path, "svc", 1, cmd="true"), hosts=proxy.hosts))
        node = f"{base_path}/svc/host1:1"
        with Ticker(drv):
            wait_until(lambda: node_exists(zk, node), 10, what="registration")
            if fault == "refused":
                proxy.cut()
            else:
                proxy.stall()
            time.sleep(1.0)  # checks go on; the listener may or may not have noticed yet
        status, elapsed = terminate(drv)
        print(f"SIGTERM -> exit with ZooKeeper {fault}: {elapsed:.2f}s")
        assert status == 0, drv.stderr()[-2000:]
        assert elapsed < 1.0, elapsed
    finally:
        proxy.close()


def test_sigterm_with_a_registration_in_flight_over_a_slow_link_removes_every_node(
        write_config, driver, zk, zookeeper, base_path, tmp_path):
    """ZooKeeper is slow to answer (0.3 s each way).  Section [a] is registered; section
    [b] has just turned healthy and its create is on the wire when SIGTERM arrives.
    1.5 s later neither node may exist — deleted, or removed by closing the session,
    not left for the 4 s session timeout — and the listener must have exited 0 within
    1 s."""
    link = ZooKeeperLink(zookeeper.port, delay=0.3)
    flag = tmp_path / "b-up"
    try:
        drv = driver(write_config(section(base_path, "a", 1, cmd="true")
                                  + section(base_path, "b", 2, cmd=f"test -f {flag}"),
                                  hosts=link.hosts, session_timeout=4))
        node_a, node_b = f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"
        zk.ensure_path(f"{base_path}/b")  # so b's create is a single request
        watch_a, watch_b = NodeWatch(zk, node_a), NodeWatch(zk, node_b)
        with Ticker(drv):
            assert watch_a.wait_for("CREATED", 0, 15), "a never registered"
            time.sleep(1.0)
            touched = time.monotonic()
            flag.touch()
            # The moment the listener sends b's create: it reaches the server in 0.3 s.
            wait_until(lambda: [t for t, op in link.requests if op in (1, 15) and t > touched],
                       10, interval=0.001, what="b's create sent")
            started = time.monotonic()
            drv.process.terminate()
        status = drv.process.wait(10)
        exited = time.monotonic() - started
        time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        left = [n for n in (node_a, node_b) if node_exists(zk, n)]
        gone = [w.wait_for("DELETED", started, 6) for w in (watch_a, watch_b)]
        took = [round(g - started, 2) if g else None for g in gone]
        print(f"SIGTERM -> exit {exited:.2f}s, nodes a, b deleted after {took} s")
        assert status == 0, drv.stderr()[-2000:]
        assert left == [], f"{left} still registered 1.5 s after SIGTERM (deleted after {took} s)"
        assert exited < 1.0, exited
    finally:
        link.close()


def test_sigterm_during_the_startup_process_snapshot_exits_promptly_and_cleanly(
        write_config, base_path):
    """supervisord's XML-RPC accepts the connection but never answers (a wedged
    supervisord).  SIGTERM while the listener waits for that start-up snapshot must end
    it within 1 s, with status 0 and no traceback in its log."""
    silent = socket.create_server(("127.0.0.1", 0))
    cfg = write_config(section(base_path, "web", 1, program="web"))
    drv = ProtocolDriver(cfg, env={
        "SUPERVISOR_SERVER_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"})
    try:
        silent.settimeout(10)
        conn, _ = silent.accept()  # the listener is now waiting for its answer
        time.sleep(0.3)
        status, elapsed = terminate(drv)
        print(f"SIGTERM during the start-up snapshot -> exit {elapsed:.2f}s, status {status}")
        stderr = drv.stderr()
        assert "Traceback" not in stderr, stderr
        assert status == 0, stderr
        assert elapsed < 1.0, elapsed
        conn.close()
    finally:
        drv.stop()
        silent.close()


# -- checks that do not end ------------------------------------------------------------------


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
