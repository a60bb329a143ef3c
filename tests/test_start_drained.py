"""start_drained / run --drained: a section never let into rotation starts drained,
and an undrain is remembered in the drain file across restarts, reboots and reloads.

The keeper's bookkeeping is tested on its own (a real event loop and drain file,
no ZooKeeper); what an operator sees through a real supervisord and ZooKeeper
after that."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support.sections import listener_section, programs, section
from support.watches import node_exists

from zkwatcher_supervisor import drain, session_file, statedir
from zkwatcher_supervisor.config import ServiceSettings
from zkwatcher_supervisor.drains import DrainKeeper, newcomers, renamed
from zkwatcher_supervisor.loop import EventLoop
from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.untrusted import DropLog

CONFIG = "/etc/zk/start-drained-test.cfg"  # only names the listener; never read


def service(name: str, port: int, start_drained: bool = False,
            hostname: str = "h") -> ServiceSettings:
    return ServiceSettings(name=name, zookeeper_path="/services", service_port=port,
                           service_hostname=hostname, cmd="true",
                           start_drained=start_drained)


class Keeper:
    """A DrainKeeper on a loop of its own, saving to ``path``."""

    def __init__(self, path, services: list[ServiceSettings],
                 start_all_drained: bool = False, earlier_version_ran: bool = False) -> None:
        self.loop = EventLoop()
        self.names = sorted(s.name for s in services)
        self.changed: list[str] = []
        self.keeper = DrainKeeper(self.loop, str(path), CONFIG,
                                  {s.name: s for s in services}, DropLog(),
                                  self.changed.append, lambda: None,
                                  start_all_drained=start_all_drained,
                                  earlier_version_ran=earlier_version_ran)
        self.settle()

    def settle(self) -> None:
        """Run the loop until the drain file is written."""
        deadline = time.monotonic() + 10
        while self.keeper.hand_over_problem() is not None:
            assert time.monotonic() < deadline, self.keeper.hand_over_problem()
            self.loop.run_once(0.05)

    def drained(self) -> dict[str, tuple[str, str]]:
        """Each drained section's (reason, by)."""
        return {name: (entry.reason, entry.by) for name in self.names
                if (entry := self.keeper.entry(name)) is not None}

    def request(self, action: str, *names: str) -> None:
        message = drain.request(CONFIG, action, list(names), by="alice")
        self.keeper.handle_event(f"type:{drain.EVENT_TYPE}\n{json.dumps(message)}")
        self.settle()

    def reload(self, services: list[ServiceSettings]) -> None:
        self.names = sorted(s.name for s in services)
        self.keeper.reloaded({s.name: s for s in services})
        self.settle()


@pytest.fixture
def path(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    return directory / "drained.json"


def private_json(path, value) -> None:
    path.write_text(json.dumps(value))
    os.chmod(path, 0o644)


WEB, API = service("web", 80, start_drained=True), service("api", 81)


def test_a_new_section_starts_drained_and_its_undrain_is_remembered(path):
    first = Keeper(path, [WEB, API])
    assert first.drained() == {"web": ("start_drained", "config")}
    saved = drain.load(str(path))
    assert set(saved.drains) == {"web"}
    assert saved.sections == {"web": "/services/h:80", "api": "/services/h:81"}
    assert Keeper(path, [WEB, API]).drained() == {"web": ("start_drained", "config")}

    Keeper(path, [WEB, API]).request("undrain", "web")
    assert Keeper(path, [WEB, API]).drained() == {}
    # Drained by hand and undrained again: still a section that was in rotation.
    again = Keeper(path, [WEB, API])
    again.request("drain", "web")
    assert Keeper(path, [WEB, API]).drained() == {"web": ("", "alice")}
    Keeper(path, [WEB, API]).request("undrain", "web")
    assert Keeper(path, [WEB, API], start_all_drained=True).drained() == {}


def test_run_drained_drains_every_section_new_to_the_listener(path):
    first = Keeper(path, [WEB, API], start_all_drained=True)
    assert first.drained() == {"web": ("start_drained", "config"),
                               "api": ("start_drained", "--drained")}
    first.request("undrain", "api")
    later = Keeper(path, [WEB, API, service("new", 82)], start_all_drained=True)
    assert later.drained() == {"web": ("start_drained", "config"),
                               "new": ("start_drained", "--drained")}


def test_a_timed_drain_that_ends_lets_the_section_in_for_good(path):
    first = Keeper(path, [WEB])
    message = drain.request(CONFIG, "drain", ["web"], duration=0.2, by="alice")
    first.keeper.handle_event(f"type:{drain.EVENT_TYPE}\n{json.dumps(message)}")
    first.settle()
    deadline = time.monotonic() + 5
    while first.drained():
        assert time.monotonic() < deadline
        first.loop.run_once(0.05)
    first.settle()
    assert Keeper(path, [WEB]).drained() == {}


def test_a_reload_drains_new_sections_only(path):
    running = Keeper(path, [WEB, API])
    running.request("undrain", "web")
    added = service("added", 82, start_drained=True)
    running.reload([WEB, service("api", 81, start_drained=True), added, service("plain", 83)])
    # api was running: start_drained added to it later changes nothing.
    assert running.drained() == {"added": ("start_drained", "config")}
    # Renamed (same node) or moved (same name): the same section, drained or not.
    running.reload([service("www", 80, start_drained=True), service("api", 91),
                    service("added2", 82, start_drained=True), service("plain", 83)])
    assert running.drained() == {"added2": ("start_drained", "config")}
    assert "added" in running.changed  # its old name was brought in line too
    assert Keeper(path, [service("www", 80, True), service("api", 91, True),
                         service("added2", 82, True), service("plain", 83, True)]
                  ).drained() == {"added2": ("start_drained", "config")}
    # Removed, then added back: new again.
    running.reload([service("www", 80)])
    running.reload([service("www", 80), service("plain", 83, start_drained=True)])
    assert running.drained() == {"plain": ("start_drained", "config")}


def test_renamed_and_new_sections():
    before = {"web": "/services/h:80", "api": "/services/h:81", "old": "/services/h:82"}
    after = {s.name: s for s in [service("web", 90), service("www", 81), service("new", 83),
                                 service("other", 84)]}
    assert renamed(before, after) == {"api": "www"}  # old's node /services/h:82 went away
    assert newcomers(before, after) == ["new", "other"]
    assert newcomers({}, after) == list(after)


def test_a_restart_with_a_renamed_section_keeps_its_drain(path):
    Keeper(path, [WEB, API]).request("drain", "api")
    renamed_api = service("api2", 81, start_drained=True)
    assert Keeper(path, [WEB, renamed_api]).drained() == {
        "web": ("start_drained", "config"), "api2": ("", "alice")}


def test_an_earlier_versions_file_counts_every_section_it_ran_as_in_rotation(path):
    """Its file holds the drains only: a section not drained in it was in rotation
    (that version had no start_drained), so start_drained does not take it out."""
    private_json(path, {"web": {"reason": "deploy", "by": "bob", "since": time.time(),
                                "until": None}})
    keeper = Keeper(path, [WEB, service("api", 81, start_drained=True)],
                    start_all_drained=True)
    assert keeper.drained() == {"web": ("deploy", "bob")}
    assert drain.load(str(path)).sections == {"web": "/services/h:80", "api": "/services/h:81"}


def test_no_file_from_a_listener_that_earlier_version_ran_means_every_section_was_in(path):
    """An earlier version writes a drain file only for a drain: taking over its
    session without finding one, every section it ran stays in rotation; with
    no session to take over either, this is a fresh host."""
    assert Keeper(path, [WEB], start_all_drained=True, earlier_version_ran=True).drained() == {}
    assert drain.load(str(path)).sections == {"web": "/services/h:80"}
    path.unlink()
    assert Keeper(path, [WEB], earlier_version_ran=False).drained() == {
        "web": ("start_drained", "config")}


def test_an_earlier_version_reads_this_versions_file_as_its_drains(path):
    """What an earlier version checks of each entry (it knows no other shape): a
    mapping with a numeric since; the sections entry is under a name no section
    can have, so it drops that entry as a removed section's and keeps the drains."""
    keeper = Keeper(path, [WEB, API])
    keeper.request("drain", "api")
    saved = json.loads(path.read_text())
    assert set(saved) == {"", "web", "api"}
    for entry in saved.values():
        assert isinstance(entry, dict) and isinstance(entry["since"], (int, float))
        assert entry["until"] is None and isinstance(entry["reason"], str)
        assert isinstance(entry["by"], str)


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", json.dumps({"": {"since": 0, "sections": ["web"]}}).encode(),
    json.dumps({"": {"since": 0, "sections": {"web": 80}}}).encode(),
    json.dumps({"": {"since": 0, "sections": {"w" * 2000: "/services/h:80"}}}).encode(),
    json.dumps({"": {"since": 0, "sections": {"web": "/services/h:80"}},
                "api": {"since": "yesterday"}}).encode()],
    ids=["not JSON", "not a mapping", "sections a list", "a node not text",
         "a name too long", "a bad drain beside"])
def test_a_file_we_cannot_use_is_nothing_saved(path, caplog, content):
    """Refused as a whole, with a warning: every start_drained section starts
    drained (a file that cannot be believed lets nothing into rotation)."""
    path.write_bytes(content)
    os.chmod(path, 0o644)
    assert drain.load(str(path)) == drain.nothing_saved(refused=True)
    assert "drain state" in caplog.text and "ignoring it" in caplog.text
    assert Keeper(path, [WEB, API]).drained() == {"web": ("start_drained", "config")}


def test_a_file_others_may_write_is_not_believed(path):
    Keeper(path, [WEB, API]).request("undrain", "web")
    os.chmod(path, 0o666)
    assert drain.load(str(path)) == drain.nothing_saved(refused=True)


def test_a_refused_file_is_left_in_place_until_a_drain_changes(path, caplog):
    """A file refused for its mode keeps its drains on disk: once the mode is
    fixed, the next start has them back; only an operator's change replaces it."""
    keeper = Keeper(path, [WEB, API])
    keeper.request("undrain", "web")
    keeper.request("drain", "api")
    saved = path.read_bytes()
    os.chmod(path, 0o664)
    restarted = Keeper(path, [WEB, API])
    assert restarted.drained() == {"web": ("start_drained", "config")}  # nothing believed
    assert "left in place" in caplog.text
    assert path.read_bytes() == saved
    os.chmod(path, 0o644)
    assert Keeper(path, [WEB, API]).drained() == {"api": ("", "alice")}
    os.chmod(path, 0o664)
    replaced = Keeper(path, [WEB, API])
    replaced.request("undrain", "web")
    assert path.read_bytes() != saved
    assert drain.load(str(path)).drains == {}


def test_a_drain_file_too_big_to_read_back_is_not_written(path):
    sections = {f"s{i:06}": "/" + "p" * 4000 for i in range(300)}
    with pytest.raises(OSError, match="do not fit the 1 MiB"):
        drain.save(str(path), {}, sections)
    assert not path.exists()


def test_the_file_round_trips(path):
    drains = {"web": drain.Drain("x\ny", "bob", 1.5, 7.0), "api": drain.Drain("", "?", 2.0)}
    sections = {"web": "/services/h:80", "api": "/a/member_#h:81", "db": "/d/h:0080"}
    drain.save(str(path), drains, sections)
    assert drain.load(str(path)) == drain.SavedDrains(
        {"web": drain.Drain("x\\ny", "bob", 1.5, 7.0), "api": drain.Drain("", "?", 2.0)},
        sections)


# -- through a real supervisord and ZooKeeper ---------------------------------


def cli(server, config, *args, timeout=60):
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *args, "-c",
                           str(config)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def status_json(server, config) -> dict:
    result = cli(server, config, "status", "--json")
    return json.loads(result.stdout) if result.stdout.startswith("{") else {}


def reported(server, config, name: str) -> dict | None:
    """The section as ``status --json`` reports it, once the listener is up."""
    document = status_json(server, config)
    if not (document.get("listener") or {}).get("running"):
        return None
    return document["sections"].get(name)


def wait_drained(server, config, name: str, reason: str | None,
                 healthy: bool = False) -> dict:
    """Wait until status reports ``name`` drained for ``reason`` (None: not drained)
    and fine (registered exactly when it should be)."""
    def shown():
        entry = reported(server, config, name)
        if entry is None or not entry["ok"] or (healthy and not entry["healthy"]):
            return None
        drained = entry["drained"]
        matches = drained is None if reason is None else (drained or {}).get("reason") == reason
        return entry if matches else None
    return wait_until(shown, 20, interval=0.2, what=f"[{name}] drained: {reason}")


def new_listener(server, old_pid):
    return wait_until(lambda: (info := server.info("zkwatcher"))["statename"] == "RUNNING"
                      and info["pid"] not in (0, old_pid) and info["pid"], 15,
                      what="a new listener running")


@pytest.mark.e2e
def test_a_fresh_host_joins_on_undrain_and_stays_in(write_config, supervisord, zk,
                                                    base_path):
    config = write_config(section(base_path, "web", 1, program="web", start_drained="true")
                          + section(base_path, "api", 2, cmd="true"), session_timeout=10)
    server = supervisord(programs("web") + listener_section(config))
    web, api = f"{base_path}/web/host1:1", f"{base_path}/api/host1:2"
    wait_until(lambda: node_exists(zk, api), 20, what="api registered")
    entry = wait_drained(server, config, "web", "start_drained", healthy=True)
    assert entry["registered"] is False
    assert entry["drained"]["by"] == "config"
    assert not node_exists(zk, web)
    status = cli(server, config, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(line for line in status.stdout.splitlines() if "[web]" in line)
    assert line.startswith("ok ") and "not registered, healthy, DRAINED" in line, line
    assert "drained by config" in line and "(start_drained)" in line, line

    result = cli(server, config, "undrain", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "undrained [web]"
    wait_until(lambda: node_exists(zk, web), 5, what="web registered on undrain")
    wait_drained(server, config, "web", None)

    # supervisorctl restart: the node goes with the old listener, back with the new.
    pid = server.info("zkwatcher")["pid"]
    assert server.ctl("restart", "zkwatcher").returncode == 0
    pid = new_listener(server, pid)
    wait_until(lambda: node_exists(zk, web), 20, what="web registered after restart")
    assert wait_drained(server, config, "web", None)["registered"]

    # A crash: the successor reattaches and keeps the very node.
    czxid = zk.exists(web).czxid
    os.kill(pid, signal.SIGKILL)
    new_listener(server, pid)
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: log.read_text().count("reattached to session") >= 1, 20,
               what="reattached")
    time.sleep(1.5)  # past the settling of the restart
    assert zk.exists(web).czxid == czxid
    assert wait_drained(server, config, "web", None)["registered"]

    # A hand-over: the successor starts from the drain file too.
    result = cli(server, config, "handoff")
    assert result.returncode == 0, result.stdout + result.stderr
    assert zk.exists(web).czxid == czxid
    assert wait_drained(server, config, "web", None)["registered"]

    # A reboot: /run is empty again, /var/lib keeps the drain file.
    server.stop()
    wait_until(lambda: not node_exists(zk, web), 15, what="web gone with supervisord")
    for kind in ("session", "status"):
        statedir.remove(statedir.state_path(str(config), kind))
    assert os.path.exists(drain.state_path(str(config)))
    assert drain.state_path(str(config)).startswith("/var/lib/zkwatcher-supervisor/")
    server.start()
    wait_until(lambda: node_exists(zk, web) and node_exists(zk, api), 20,
               what="both registered after the reboot")
    assert wait_drained(server, config, "web", None)["registered"]


def crash_and_restart_with_start_drained(write_config, driver, zk, base_path,
                                         earlier_version: bool):
    """A listener registers [web] and is killed; its drain file is gone (an earlier
    version wrote none, or this version's could not be saved), and the next one
    starts with ``start_drained = true`` on [web].  Returns (the node, its czxid
    before, the second listener)."""
    config = write_config(section(base_path, "web", 1, cmd="true"), session_timeout=10)
    first = driver(config)
    web = f"{base_path}/web/host1:1"
    wait_until(lambda: node_exists(zk, web), 10, what="web registered")
    path = session_file.default_path(str(config))
    wait_until(lambda: session_file.load(path) and session_file.load(path).nodes, 5,
               what="session file written")
    wait_until(lambda: os.path.exists(drain.state_path(str(config))), 5, what="drain file")
    czxid = zk.exists(web).czxid
    first.process.kill()
    first.process.wait()
    os.unlink(drain.state_path(str(config)))
    if earlier_version:  # its session file has no drain_sections
        with open(path) as file:
            saved = json.load(file)
        del saved["drain_sections"]
        with open(path, "w") as file:
            json.dump(saved, file)
    config.write_text(config.read_text().replace("[web]\n", "[web]\nstart_drained = true\n"))
    second = driver(config)
    wait_until(lambda: "reattached to session" in second.stderr(), 10, what="reattached")
    return web, czxid, second


@pytest.mark.e2e
def test_start_drained_added_on_upgrading_an_earlier_version_keeps_sections_in(
        write_config, driver, zk, base_path):
    """An earlier version writes a drain file only for a drain: taking over its
    session (a hand-over, or a crash as here) without one, its sections were in
    rotation and stay in, even though the upgrade adds start_drained."""
    web, czxid, second = crash_and_restart_with_start_drained(
        write_config, driver, zk, base_path, earlier_version=True)
    time.sleep(3)  # past the settling of the restart
    assert zk.exists(web).czxid == czxid
    assert "start_drained" not in second.stderr()


@pytest.mark.e2e
def test_a_lost_drain_file_of_this_version_is_no_undrain(write_config, driver, zk, base_path):
    """This version names its sections in the drain file: a session of its own
    without that file (it could not be saved, or was removed) says nothing about
    rotation, so a start_drained section is drained."""
    web, _, second = crash_and_restart_with_start_drained(
        write_config, driver, zk, base_path, earlier_version=False)
    wait_until(lambda: "[web] new section, start_drained" in second.stderr(), 5,
               what="drained at start")
    wait_until(lambda: not node_exists(zk, web), 10, what="web's node gone")


@pytest.mark.e2e
@pytest.mark.parametrize("arguments", ["-c {config} --drained", "run --drained -c {config}"],
                         ids=["-c FILE --drained", "run --drained"])
def test_run_drained_starts_every_section_drained_until_undrain(
        write_config, supervisord, zk, base_path, arguments):
    config = write_config(section(base_path, "web", 1, program="web")
                          + section(base_path, "api", 2, cmd="true"), session_timeout=10)
    listener = listener_section(config)
    plain = f"-m zkwatcher_supervisor -c {config}\n"
    assert plain in listener
    listener = listener.replace(plain, "-m zkwatcher_supervisor "
                                + arguments.format(config=config) + "\n")
    server = supervisord(programs("web") + listener)
    nodes = [f"{base_path}/web/host1:1", f"{base_path}/api/host1:2"]
    for name in ("web", "api"):
        entry = wait_drained(server, config, name, "start_drained", healthy=True)
        assert entry["drained"]["by"] == "--drained", entry
    time.sleep(1)
    assert not any(node_exists(zk, node) for node in nodes)
    result = cli(server, config, "undrain", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: all(node_exists(zk, node) for node in nodes), 5, what="both in")
    pid = server.info("zkwatcher")["pid"]
    assert server.ctl("restart", "zkwatcher").returncode == 0
    new_listener(server, pid)
    wait_until(lambda: all(node_exists(zk, node) for node in nodes), 20,
               what="both registered after the restart")
    for name in ("web", "api"):
        assert wait_drained(server, config, name, None)["registered"]


@pytest.mark.e2e
def test_a_section_added_on_reload_with_start_drained_starts_drained(
        write_config, supervisord, zk, base_path):
    body = section(base_path, "web", 1, program="web")
    config = write_config(body, session_timeout=10)
    server = supervisord(programs("web") + listener_section(config))
    web = f"{base_path}/web/host1:1"
    wait_until(lambda: node_exists(zk, web), 20, what="web registered")
    czxid = zk.exists(web).czxid
    # start_drained added to the running web too: it is not new, it stays in.
    config.write_text(config.read_text().replace("[web]\n", "[web]\nstart_drained = true\n")
                      + section(base_path, "added", 2, cmd="true", start_drained="true")
                      + section(base_path, "plain", 3, cmd="true"))
    assert server.ctl("signal", "HUP", "zkwatcher").returncode == 0
    wait_until(lambda: node_exists(zk, f"{base_path}/plain/host1:3"), 10, what="plain in")
    wait_drained(server, config, "added", "start_drained", healthy=True)
    assert not node_exists(zk, f"{base_path}/added/host1:2")
    assert zk.exists(web).czxid == czxid
    assert reported(server, config, "web")["drained"] is None
    result = cli(server, config, "undrain", "added")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: node_exists(zk, f"{base_path}/added/host1:2"), 5, what="added in")
