"""Drain: sections out of discovery without stopping them, through supervisord's
own REMOTE_COMMUNICATION channel.  Real supervisord, real ZooKeeper."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support.sections import listener_section, section
from support.sections import programs as sleeping_programs
from support.watches import node_exists

from zkwatcher_supervisor.testing import FaultProxy, term_recorder, wait_until

pytestmark = pytest.mark.e2e


def programs(tmp_path):
    return sleeping_programs("web") + term_recorder("api", tmp_path)


def config_body(base_path, flag):
    return (section(base_path, "web", 1, program="web")
            + section(base_path, "flag", 2, cmd=f"test -f {flag}", timeout=None)
            + section(base_path, "api", 3, program="api", drain_seconds=2))


def cli(server, config, *args, timeout=60):
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *args, "-c",
                           str(config)], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture
def host(write_config, supervisord, zk, base_path, tmp_path):
    """A supervisord with web, api and the listener; every section registered."""
    flag = tmp_path / "flag"
    flag.touch()
    config = write_config(config_body(base_path, flag), session_timeout=10)
    server = supervisord(programs(tmp_path) + listener_section(config))
    nodes = {name: f"{base_path}/{name}/host1:{port}"
             for name, port in (("web", 1), ("flag", 2), ("api", 3))}
    wait_until(lambda: all(node_exists(zk, n) for n in nodes.values()), 20, what="registered")
    return server, config, nodes, flag


def test_drain_keeps_the_program_running_and_undrain_brings_it_back(host, zk, tmp_path):
    server, config, nodes, _flag = host
    gone = threading.Event()
    zk.exists(nodes["web"], watch=lambda event: gone.set())
    started = time.monotonic()
    result = cli(server, config, "drain", "web", "--reason", "deploy 42")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "drained [web]"
    assert gone.wait(2)
    print(f"drain command -> node deleted: {time.monotonic() - started:.2f}s "
          "(most of it the command's own start)")
    assert server.info("web")["statename"] == "RUNNING"
    # Stays drained whatever the program does.
    server.ctl("restart", "web")
    time.sleep(1.5)
    assert not node_exists(zk, nodes["web"])
    status = wait_until(lambda: (r := cli(server, config, "status")).returncode == 0 and r, 5,
                        interval=0.2, what="status ok")
    line = next(line for line in status.stdout.splitlines() if "[web]" in line)
    assert "not registered, healthy, DRAINED" in line and "(deploy 42)" in line

    result = cli(server, config, "undrain", "web")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: node_exists(zk, nodes["web"]), 2, interval=0.01, what="back")


def test_program_all_and_unknown_selections(host, zk):
    server, config, nodes, flag = host
    result = cli(server, config, "drain", "--program", "api")
    assert result.returncode == 0 and result.stdout.strip() == "drained [api]", result.stderr
    wait_until(lambda: not node_exists(zk, nodes["api"]), 2, what="api drained")
    assert node_exists(zk, nodes["web"])
    assert cli(server, config, "drain", "--all").returncode == 0
    wait_until(lambda: not any(node_exists(zk, n) for n in nodes.values()), 2, what="all")
    flag.unlink()
    flag.touch()  # a check flip changes nothing while drained
    time.sleep(2)
    assert not node_exists(zk, nodes["flag"])
    assert cli(server, config, "undrain", "--all").returncode == 0
    wait_until(lambda: all(node_exists(zk, n) for n in nodes.values()), 3, what="all back")

    for args, message in ((["drain", "nosuch"], "has no section [nosuch]"),
                          (["drain", "--program", "nosuch"], "bound to program 'nosuch'"),
                          (["drain"], "name the sections"),
                          (["drain", "web", "--for", "1000000000000d"], "longer than 3650d"),
                          (["drain", "web", "--for", "soon"], "not a duration")):
        result = cli(server, config, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_drain_for_a_while_ends_by_itself(host, zk):
    server, config, nodes, _flag = host
    assert cli(server, config, "drain", "flag", "--for", "2s").returncode == 0
    wait_until(lambda: not node_exists(zk, nodes["flag"]), 2, what="drained")
    drained = time.monotonic()
    wait_until(lambda: node_exists(zk, nodes["flag"]), 5, interval=0.02, what="expired")
    assert 1.5 < time.monotonic() - drained < 3.5


def test_drain_survives_a_listener_crash_and_a_supervisord_restart(host, zk):
    server, config, nodes, _flag = host
    assert cli(server, config, "drain", "web", "--reason", "investigating").returncode == 0
    wait_until(lambda: not node_exists(zk, nodes["web"]), 2, what="drained")
    old = server.info("zkwatcher")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: server.info("zkwatcher")["pid"] not in (0, old), 10, what="restart")
    time.sleep(2)
    assert not node_exists(zk, nodes["web"]) and node_exists(zk, nodes["api"])
    server.stop()
    server.start()
    wait_until(lambda: node_exists(zk, nodes["api"]), 20, what="supervisord back")
    time.sleep(1.5)
    assert not node_exists(zk, nodes["web"])
    assert cli(server, config, "undrain", "web").returncode == 0
    wait_until(lambda: node_exists(zk, nodes["web"]), 2, what="undrained")


def test_drain_stop_deregisters_waits_then_stops(host, zk, tmp_path):
    server, config, nodes, _flag = host
    deleted = []
    zk.exists(nodes["api"], watch=lambda event: deleted.append(time.time()))
    result = cli(server, config, "drain", "api", "--stop")  # drain_seconds = 2
    assert result.returncode == 0, result.stderr
    assert "stopped api:api" in result.stdout
    term = float((tmp_path / "api.term").read_text())
    print(f"node deleted -> program's SIGTERM: {term - deleted[0]:.2f}s (wait 2 s)")
    assert term - deleted[0] >= 2.0
    assert server.info("api")["statename"] == "STOPPED"


def test_drain_stop_of_a_program_stopped_already_is_done(host, zk):
    """The goal (the program stopped) holds already: exit 0, saying so."""
    server, config, nodes, _flag = host
    assert server.ctl("stop", "api").returncode == 0
    wait_until(lambda: not node_exists(zk, nodes["api"]), 5, what="api's node gone")
    result = cli(server, config, "drain", "api", "--stop", "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "stopped api:api (stopped already)"
    assert cli(server, config, "undrain", "api").returncode == 0


SLOW_TO_STOP = textwrap.dedent("""
    [program:slow]
    command = sh -c 'trap "sleep 5; exit 0" TERM; while :; do sleep 0.1; done'
    startsecs = 0
    stopwaitsecs = 20
    """)


def slow_host(write_config, supervisord, zk, base_path):
    """[slow] bound to a program whose SIGTERM handler takes 5 s, stopping already."""
    config = write_config(section(base_path, "slow", 1, program="slow"))
    server = supervisord(SLOW_TO_STOP + listener_section(config))
    wait_until(lambda: node_exists(zk, f"{base_path}/slow/host1:1"), 20, what="registered")
    server.rpc().supervisor.stopProcess("slow", False)
    began = time.monotonic()
    wait_until(lambda: server.info("slow")["statename"] == "STOPPING", 5, what="stopping")
    return server, config, began


def test_drain_stop_waits_for_a_stop_already_under_way(write_config, supervisord, zk,
                                                      base_path):
    """Someone else's stop is still in progress: supervisord says NOT_RUNNING, yet
    drain --stop exits 0 only once the program is STOPPED."""
    server, config, began = slow_host(write_config, supervisord, zk, base_path)
    result = cli(server, config, "drain", "slow", "--stop", "--wait", "0", timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "stopped slow:slow (stopped already)"
    assert server.info("slow")["statename"] == "STOPPED"
    assert time.monotonic() - began >= 5  # returned after the handler, not before


def test_drain_stop_stops_what_a_restart_under_way_starts_again(write_config, supervisord,
                                                               zk, base_path):
    """A ``supervisorctl restart`` was under way: once stopped, it starts the program
    again.  drain --stop must end with it stopped, not with it running."""
    server, config, _ = slow_host(write_config, supervisord, zk, base_path)
    restarted = []

    def restart():  # the rest of someone's restart
        rpc = server.rpc()
        wait_until(lambda: rpc.supervisor.getProcessInfo("slow")["statename"] == "STOPPED",
                   20, interval=0.02)
        restarted.append(rpc.supervisor.startProcess("slow", False))

    other = threading.Thread(target=restart)
    other.start()
    result = cli(server, config, "drain", "slow", "--stop", "--wait", "0", timeout=90)
    other.join()
    assert restarted == [True]
    assert result.returncode == 0, result.stderr
    time.sleep(2)  # nothing starts it once more
    assert server.info("slow")["statename"] == "STOPPED"


def test_drain_stop_of_a_group_names_each_process(write_config, supervisord, zk, base_path):
    config = write_config(section(base_path, "pool", 1, program="pool:*"))
    server = supervisord(textwrap.dedent("""
        [program:pool]
        command = sleep 100000
        numprocs = 2
        process_name = %(program_name)s_%(process_num)d
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config))
    wait_until(lambda: node_exists(zk, f"{base_path}/pool/host1:1"), 20, what="registered")
    result = cli(server, config, "drain", "pool", "--stop", "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "stopped pool:pool_0, pool:pool_1"
    assert {info["statename"] for info in server.rpc().supervisor.getAllProcessInfo()
            if info["group"] == "pool"} == {"STOPPED"}
    again = cli(server, config, "drain", "pool", "--stop", "--wait", "0")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "stopped pool:* (stopped already)"


def test_drain_stop_with_zookeeper_unreachable_stops_nothing(
        zookeeper, write_config, supervisord, zk, base_path, tmp_path):
    proxy = FaultProxy(zookeeper.port)
    try:
        flag = tmp_path / "flag"
        config = write_config(config_body(base_path, flag), hosts=proxy.hosts,
                              session_timeout=10)
        server = supervisord(programs(tmp_path) + listener_section(config))
        node = f"{base_path}/api/host1:3"
        wait_until(lambda: node_exists(zk, node), 20, what="registered")
        proxy.cut()
        result = cli(server, config, "drain", "api", "--stop", "--wait", "0")
        assert result.returncode == 1
        assert "nothing was stopped" in result.stderr
        assert server.info("api")["statename"] == "RUNNING"
        assert not (tmp_path / "api.term").exists()
    finally:
        proxy.close()


def test_a_listener_not_subscribed_is_named_as_the_likely_cause(
        write_config, supervisord, zk, base_path, tmp_path):
    config = write_config(config_body(base_path, tmp_path / "flag"))
    server = supervisord(programs(tmp_path) + listener_section(config,
                                                               events="PROCESS_STATE,TICK_5"))
    wait_until(lambda: node_exists(zk, f"{base_path}/web/host1:1"), 20, what="registered")
    wait_until(lambda: cli(server, config, "status").stdout.startswith("listener: pid"), 5)
    result = cli(server, config, "drain", "web")
    assert result.returncode == 1
    assert "REMOTE_COMMUNICATION" in result.stderr
    assert node_exists(zk, f"{base_path}/web/host1:1")


def test_only_the_listener_of_the_named_config_drains(
        write_config, supervisord, zk, base_path, tmp_path):
    one = write_config(config_body(f"{base_path}/one", tmp_path / "flag"), name="one.cfg")
    two = write_config(config_body(f"{base_path}/two", tmp_path / "flag"), name="two.cfg")
    sections = programs(tmp_path) + listener_section(one) + listener_section(two).replace(
        "[eventlistener:zkwatcher]", "[eventlistener:zkwatcher2]").replace(
        "zkwatcher.log", "zkwatcher2.log")
    server = supervisord(sections)
    nodes = [f"{base_path}/{which}/web/host1:1" for which in ("one", "two")]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="registered")
    assert cli(server, two, "drain", "web").returncode == 0
    wait_until(lambda: not node_exists(zk, nodes[1]), 2, what="two drained")
    time.sleep(0.5)
    assert node_exists(zk, nodes[0])


def test_malformed_requests_are_ignored_not_fatal(host, zk):
    """Anyone who may talk to supervisord can send REMOTE_COMMUNICATION."""
    import json

    server, config, nodes, _flag = host
    pid = server.info("zkwatcher")["pid"]
    real = os.path.abspath(config)
    for data in ["not json", "[1, 2]", json.dumps({"config": real}),
                 json.dumps({"config": real, "id": "x", "action": "drain", "sections": "web"}),
                 json.dumps({"config": real, "id": "y", "action": "drain",
                             "sections": ["web"], "until": "soon"}),
                 json.dumps({"config": real, "id": "z", "action": "drain",
                             "sections": ["web", 7, None], "until": float("nan")})]:
        server.rpc().supervisor.sendRemoteCommEvent("zkwatcher-supervisor", data)
    time.sleep(1)
    assert server.info("zkwatcher")["pid"] == pid
    assert all(node_exists(zk, node) for node in nodes.values())
    assert cli(server, config, "drain", "web").returncode == 0  # still listening


def test_hostile_payloads_neither_end_the_listener_nor_touch_a_node(host, zk):
    """The two payloads that used to end the listener (and make supervisord hand
    them to its successor: a crash loop), through a real supervisord."""
    import json

    server, config, nodes, _flag = host
    pid = server.info("zkwatcher")["pid"]
    czxids = {node: zk.exists(node).czxid for node in nodes.values()}
    mine = os.path.abspath(config)
    rpc = server.rpc().supervisor
    rpc.sendRemoteCommEvent("zkwatcher-supervisor", "[" * 100000)
    for field in ("until", "duration"):
        rpc.sendRemoteCommEvent("zkwatcher-supervisor", json.dumps(
            {"config": mine, "id": f"huge{field}", "action": "drain", "sections": ["web"],
             field: int("1" + "0" * 400)}))
    time.sleep(1)
    assert server.info("zkwatcher")["pid"] == pid
    assert server.info("zkwatcher")["statename"] == "RUNNING"
    assert {node: zk.exists(node).czxid for node in nodes.values()} == czxids
    log = (config.parent / "zkwatcher.log").read_text()
    assert "ignoring a drain request: 100000 bytes, more than 65536" in log
    assert cli(server, config, "drain", "web").returncode == 0  # still listening


def test_sections_the_running_listener_does_not_know_are_named(host, zk):
    """Edited but not reloaded: the new section is refused by name, the rest applied."""
    server, config, nodes, _flag = host
    with open(config, "a") as out:
        out.write("\n[added]\ncmd = true\nservice_port = 9\nservice_hostname = host1\n"
                  f"zookeeper_path = {os.path.dirname(os.path.dirname(nodes['web']))}/added\n")
    result = cli(server, config, "drain", "web", "added")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.strip() == "drained [web]"
    assert "[added] not drained: not a section of the running config" in result.stderr
    assert "reload first" in result.stderr
    wait_until(lambda: not node_exists(zk, nodes["web"]), 2, what="web drained")


def test_a_reason_cannot_forge_status_lines(host):
    server, config, _nodes, _flag = host
    forged = "deploy\nok   [api] /x registered, healthy"
    assert cli(server, config, "drain", "web", "--reason", forged).returncode == 0
    status = wait_until(lambda: "DRAINED" in (r := cli(server, config, "status")).stdout and r,
                        5, interval=0.2, what="status shows the drain")
    assert len(status.stdout.splitlines()) == 4  # the listener line and three sections
    assert "(deploy\\nok   [api]" in status.stdout


def test_drain_stop_waits_for_any_node_of_the_endpoint_whoever_holds_it(
        write_config, supervisord, zk, base_path, tmp_path):
    """A node of another session (a zk_watcher not yet retired) still sends
    traffic to the endpoint: --stop stops nothing and says which node."""
    node = f"{base_path}/api/host1:3"
    zk.create(node, b"{}", ephemeral=True, makepath=True)  # held by the test's session
    flag = tmp_path / "flag"
    flag.touch()
    config = write_config(config_body(base_path, flag), session_timeout=10)
    server = supervisord(programs(tmp_path) + listener_section(config))
    wait_until(lambda: node_exists(zk, f"{base_path}/web/host1:1"), 20, what="registered")
    started = time.monotonic()
    result = cli(server, config, "drain", "api", "--stop", "--wait", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"still lists {node}" in result.stderr and "nothing was stopped" in result.stderr
    print(f"drain --stop gave up after {time.monotonic() - started:.1f}s")
    assert server.info("api")["statename"] == "RUNNING"
    zk.delete(node)
    result = cli(server, config, "drain", "api", "--stop", "--wait", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.info("api")["statename"] == "STOPPED"


def test_a_drain_dropped_with_its_section_on_reload_stays_dropped(host, zk):
    """Removing a drained section and reloading ends its drain for good: added
    back later, after a restart, the section is not drained again."""
    server, config, nodes, _flag = host
    assert cli(server, config, "drain", "flag").returncode == 0
    wait_until(lambda: not node_exists(zk, nodes["flag"]), 2, what="drained")
    text = config.read_text()
    start = text.index("[flag]")
    end = text.index("[api]")
    config.write_text(text[:start] + text[end:])
    assert server.ctl("signal", "HUP", "zkwatcher").returncode == 0
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "reloaded" in log.read_text(), 5, what="reloaded")
    time.sleep(0.5)  # the drain file written off the loop
    config.write_text(text)
    old = server.info("zkwatcher")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: server.info("zkwatcher")["pid"] not in (0, old), 10, what="restart")
    wait_until(lambda: node_exists(zk, nodes["flag"]), 10, what="flag registered again")


def test_utf_8_in_events_keeps_the_protocol_in_step(host, zk):
    """supervisord counts an event's len in characters: text beyond ASCII — ours or
    another tool's REMOTE_COMMUNICATION — must not shift where the next event starts."""
    server, config, nodes, _flag = host
    pid = server.info("zkwatcher")["pid"]
    server.rpc().supervisor.sendRemoteCommEvent("some-other-tool", "café éééééééé\nx")
    result = cli(server, config, "drain", "web", "--reason", "déploiement ☃ 42")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: not node_exists(zk, nodes["web"]), 2, what="drained")
    assert server.info("zkwatcher")["statename"] == "RUNNING"
    assert server.info("zkwatcher")["pid"] == pid
    status = wait_until(lambda: "DRAINED" in (r := cli(server, config, "status")).stdout and r,
                        5, interval=0.2, what="status shows the drain")
    assert "(déploiement ☃ 42)" in status.stdout


def test_a_target_covers_its_own_processes_only():
    from zkwatcher_supervisor.drain import _covers

    assert _covers("pool:*", "pool:pool_0") and _covers("web:web", "web:web")
    assert not _covers("pool:*", "poolx:a") and not _covers("pool:a", "pool:ab")
