"""Reloads (SIGHUP, supervisorctl signal HUP): the new config takes over section by
section, health kept where nothing that decides it changed, and a config the listener
could not run is rejected with the running one kept.  Real supervisord or the
byte-exact protocol driver, real ZooKeeper."""

from __future__ import annotations

import grp
import json
import os
import signal
import subprocess
import textwrap
import time

import pytest
from kazoo.security import ACL, Id, Permissions
from support.driver import Ticker, state_event
from support.sections import listener_section, section
from support.supervisor_rpc import FakeSupervisorRPC, program_processes
from support.text import count_lines, line_of, log_lines
from support.users import throwaway_user
from support.watches import NodeWatch, node_exists

from zkwatcher_supervisor.testing import (
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_a_reload_keeps_a_checks_health_when_only_its_users_groups_or_home_changed(
        write_config, supervisord, zk, base_path, reachable_dir):
    out = reachable_dir
    out.chmod(0o777)
    with throwaway_user(extra_groups=1) as (user, (new_group,)):
        config = write_config(section(base_path, "web", 1, extra=f"""
            cmd = (id -G; pwd; echo $HOME) > {out}/report.tmp; mv {out}/report.tmp {out}/report
            user = {user.name}
            refresh = 1
            """))
        server = supervisord(listener_section(config))
        node = f"{base_path}/web/host1:1"
        wait_until(lambda: node_exists(zk, node), 15, what="registered")
        wait_until(lambda: (out / "report").exists(), 5, what="the check's report")
        registered = zk.exists(node)
        assert (out / "report").read_text().splitlines()[1:] == [user.home, user.home]

        # The administrator adds the user to a group and gives it a new home;
        # the config is the same, and a reload must not take the node down.
        home = out / "new-home"
        home.mkdir()
        os.chown(home, user.uid, user.gid)
        subprocess.run(["usermod", "--append", "--groups", new_group, "--home", str(home),
                        user.name], check=True)
        log = config.parent / "zkwatcher.log"
        assert server.ctl("signal", "HUP", "zkwatcher").returncode == 0
        wait_until(lambda: log_lines(log, "reloaded"), 5, what="reloaded")
        added = grp.getgrnam(new_group).gr_gid

        def report() -> list[str]:
            return (out / "report").read_text().splitlines()

        # The next runs have the new group and home ...
        wait_until(lambda: str(added) in report()[0].split(), 10, what="a run with the group")
        assert report()[1:] == [str(home), str(home)]
        # ... and the node is the one registered before: never deleted meanwhile.
        assert zk.exists(node).czxid == registered.czxid


def test_a_reload_the_listener_could_not_run_is_rejected_and_the_running_config_kept(
        write_config, supervisord, zk, base_path):
    body = section(base_path, "web", 1, extra="""
        cmd = true
        user = nobody
        refresh = 1
        """)
    config = write_config(body)
    server = supervisord(listener_section(config))
    node = f"{base_path}/web/host1:1"
    wait_until(lambda: node_exists(zk, node), 15, what="registered")
    before = zk.exists(node)
    log = config.parent / "zkwatcher.log"

    write_config(body.replace("user = nobody", "user = no-such-user-zkw")
                 .replace(f"{base_path}/web", f"{base_path}/moved"))
    assert server.ctl("signal", "HUP", "zkwatcher").returncode == 0
    wait_until(lambda: log_lines(log, "reload rejected"), 5, what="reload rejected")
    (line,) = log_lines(log, "reload rejected")
    number = line_of(config, "user = no-such-user-zkw")
    assert line.endswith(f"ERROR reload rejected, keeping the running config: {config}: line "
                         f"{number}: [web] user: no such user 'no-such-user-zkw'")

    write_config(body.replace(f"{base_path}/web", f"{base_path}/moved"))
    config.chmod(0o666)  # a file others can change, however good its contents
    assert server.ctl("signal", "HUP", "zkwatcher").returncode == 0
    wait_until(lambda: len(log_lines(log, "reload rejected")) == 2, 5, what="reload rejected")
    assert "refused as root: others could change it" in log_lines(log, "reload rejected")[1]

    after = zk.exists(node)
    assert (after.czxid, after.mzxid) == (before.czxid, before.mzxid)
    assert not node_exists(zk, f"{base_path}/moved/host1:1")
    config.chmod(0o644)
    assert server.ctl("signal", "HUP", "zkwatcher").returncode == 0
    wait_until(lambda: node_exists(zk, f"{base_path}/moved/host1:1")
               and not node_exists(zk, node), 5, what="the good reload applied")


def test_sighup_reload(zk, write_config, driver, base_path, tmp_path):
    runs = tmp_path / "keep-runs"
    keep = section(base_path, "keep", 1, cmd=f"echo >> {runs}", zookeeper_data="v=1")
    change = section(base_path, "change", 2, cmd="true", zookeeper_data="v=1")
    remove = section(base_path, "remove", 3, cmd="true")
    config = write_config(keep + change + remove)
    drv = driver(config)
    nodes = {name: f"{base_path}/{name}/host1:{port}"
             for name, port in [("keep", 1), ("change", 2), ("remove", 3), ("added", 4)]}
    wait_until(lambda: all(node_exists(zk, nodes[n]) for n in ("keep", "change", "remove")),
               10, what="registration")
    before = {name: zk.get(path) for name, path in nodes.items() if name != "added"}

    write_config(keep + section(base_path, "change", 2, cmd="true", zookeeper_data="v=2")
                 + section(base_path, "added", 4, cmd="true"))
    drv.process.send_signal(signal.SIGHUP)
    wait_until(lambda: node_exists(zk, nodes["added"]) and not node_exists(zk, nodes["remove"]),
               5, what="reload applied")
    wait_until(lambda: json.loads(zk.get(nodes["change"])[0])["v"] == "2", 5, what="update")

    data, stat = zk.get(nodes["keep"])
    assert (data, stat.czxid, stat.mzxid) == (before["keep"][0], before["keep"][1].czxid,
                                              before["keep"][1].mzxid)
    data, stat = zk.get(nodes["change"])
    assert stat.czxid == before["change"][1].czxid  # updated in place, not recreated
    assert stat.version == 1
    old_payload = json.loads(before["change"][0])
    assert json.loads(data) == {**old_payload, "v": "2"}  # same pid and created

    # A broken config is rejected; everything stays as it was.
    settled = {name: zk.exists(nodes[name]) for name in ("keep", "change", "added")}
    config.write_text(config.read_text().replace("service_port = 4", "service_port = x"))
    drv.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload rejected" in drv.stderr(), 5, what="rejection logged")
    wait_until(lambda: "[added] service_port: expected an integer, got 'x'" in drv.stderr(), 5,
               what="the reason logged")
    seen = count_lines(runs)
    wait_until(lambda: count_lines(runs) >= seen + 2, 5, what="two more check runs")
    for name in ("keep", "change", "added"):
        assert zk.exists(nodes[name]).mzxid == settled[name].mzxid, name
    assert drv.process.poll() is None


def test_reload_moves_a_changed_path_and_keeps_zookeeper_settings_until_a_restart(
        write_config, supervisord, zookeeper, zk, base_path, tmp_path):
    """``supervisorctl signal HUP``: a section whose path changed moves its node;
    a changed ``[zkwatcher] session_timeout`` and a new ``[auth]`` are not applied
    (same session, same negotiated timeout, no ACL) and the log says they need a
    restart."""
    old_path, new_path = f"{base_path}/old", f"{base_path}/new"
    body = section(base_path, "web", 1, program="web", path=old_path) \
        + section(base_path, "other", 2, cmd="true")
    config = write_config(body, session_timeout=10)
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config))
    wait_until(lambda: node_exists(zk, f"{old_path}/host1:1")
               and node_exists(zk, f"{base_path}/other/host1:2"), 15, what="registered")
    other = zk.exists(f"{base_path}/other/host1:2")
    assert zookeeper.session_timeouts()[other.ephemeralOwner] == 10000
    pid = server.info("zkwatcher")["pid"]

    write_config(body.replace(old_path, new_path)
                 + "[auth]\nuser = deploy\npassword = s3cret\n", session_timeout=20,
                 settings=f"status_file = {tmp_path}/moved.json\n")
    result = server.ctl("signal", "HUP", "zkwatcher")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: node_exists(zk, f"{new_path}/host1:1")
               and not node_exists(zk, f"{old_path}/host1:1"), 5, what="node moved")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[zkwatcher]/[auth] changes need a restart" in log.read_text(), 5,
               what="restart needed logged")
    assert "a [zkwatcher] status_file change needs a restart" in log.read_text()
    assert not (tmp_path / "moved.json").exists()
    moved = zk.exists(f"{new_path}/host1:1")
    assert moved.ephemeralOwner == other.ephemeralOwner
    assert json.loads(zk.get(f"{new_path}/host1:1")[0])["pid"] == pid
    assert zookeeper.session_timeouts()[other.ephemeralOwner] == 10000
    # Still without [auth]: the moved node is as open as the session that made it.
    assert zk.get_acls(f"{new_path}/host1:1")[0] == [ACL(Permissions.ALL, Id("world", "anyone"))]
    after = zk.exists(f"{base_path}/other/host1:2")
    assert (after.czxid, after.mzxid) == (other.czxid, other.mzxid)  # untouched
    assert server.info("zkwatcher")["pid"] == pid


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
