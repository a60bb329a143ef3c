"""Differential test: Nextdoor's zk_watcher 0.4.0 and our listener read the same files.

Every config file of the corpus is given, unchanged, to zk_watcher (installed from
PyPI into its own virtualenv) and to our listener, each against one real ZooKeeper
under its own chroot.  Then both trees must hold the same node names, the same JSON
payloads apart from ``pid`` and ``created``, and the same ACLs.  Where we differ on
purpose, the case names the row of README's "Migrating from zk_watcher" table and
spells out what each tool registered.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl_credential
from support.driver import ProtocolDriver

from zkwatcher_supervisor.testing import LocalZooKeeper, wait_until

pytestmark = pytest.mark.e2e

ZK_WATCHER = "zk-watcher==0.4.0"
# Ignored by git (.venv-*/); kept between runs so the suite installs it once.
PEER_VENV = Path(__file__).resolve().parent.parent / ".venv-zk_watcher-0.4.0"
FQDN = socket.getfqdn()
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

# Rows of README's "Migrating from zk_watcher" table, by name.
KV_STRIPPED = "keys and values of k=v data are stripped"
EMPTY_HOSTNAME = "empty service_hostname means the FQDN"
CHECK_TIMEOUT = "a check is killed after timeout (10 s), not 90 s"
LOG_CHANGES = "only changes of a check's result are logged"
BARE_PERCENT = "a bare % stays literal"
SHELL_SYNTAX = "a cmd with shell syntax runs under /bin/sh"
UNSTORABLE_DATA = "zookeeper_data zk_watcher could not store is an error"
WRITABLE_CONFIG = "as root, a config others can change is refused"
NO_SUPERVISOR_ENV = "checks no longer see SUPERVISOR_* variables"

EXIT_2 = "exits 2 before touching ZooKeeper"


@dataclass
class Case:
    name: str
    config: str
    # For a deliberate difference: the README row, and what each tool registered
    # ({node path: payload without pid/created}) — or EXIT_2 for ours.
    differs: str | None = None
    zk_watcher: dict | None = None
    ours: dict | str | None = None
    # zk_watcher log text that shows why it registered what it did.
    zk_watcher_log: str | None = None
    # With ours = EXIT_2: what our one line of stderr says.
    ours_error: str | None = None
    auth: tuple[str, str] | None = None
    mode: int = 0o600  # of the config file
    # Added to both tools' environment, as supervisord adds SUPERVISOR_* to its children's.
    env: dict[str, str] = field(default_factory=dict)
    # Text our log must hold (why we registered what we did).
    ours_log: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def svc(name: str, port: int | str = 22, path: str = "/services/ssh", extra: str = "",
        cmd: str = "true", data: str | None = "") -> str:
    """A section in zk_watcher's README form (every key it requires)."""
    lines = [f"[{name}]", f"cmd: {cmd}", "refresh: 60", f"service_port: {port}",
             f"zookeeper_path: {path}"]
    if data is not None:
        lines.append(f"zookeeper_data: {data}")
    return "\n".join(lines) + "\n" + extra + "\n"


README_EXAMPLE = (
    "[ssh]\ncmd: true\nrefresh: 60\nservice_port: 22\nzookeeper_path: /services/ssh\n"
    "zookeeper_data: \n\n"
    "[apache]\ncmd: true\nrefresh: 60\nservice_port: 22\nzookeeper_path: /services/web\n"
    "zookeeper_data: \n"
)
AUTH = "[auth]\nuser: username\npassword: 123456\n"

CORPUS = [
    # zk_watcher's README and docs, as written there (checks that pass here).
    Case("readme", README_EXAMPLE),
    Case("readme-auth", README_EXAMPLE + "\n" + AUTH, auth=("username", "123456")),
    Case("docs-json", svc("ssh", extra="service_hostname: 123.123.123.123\n",
                          data='{ "foo": "bar", "bah": "humbug" }')),
    Case("docs-kv", svc("apache", 80, "/services/web", data="foo=bar, bah=humbug"),
         differs=KV_STRIPPED,
         zk_watcher={f"/services/web/{FQDN}:80": {"foo": "bar", " bah": "humbug"}},
         ours={f"/services/web/{FQDN}:80": {"foo": "bar", "bah": "humbug"}}),
    Case("kv-single", svc("s", data="foo=bar")),
    Case("kv-compact", svc("s", data="a=1,b=two,c=")),
    Case("kv-spaced", svc("s", data="weight = 10"), differs=KV_STRIPPED,
         zk_watcher={f"/services/ssh/{FQDN}:22": {"weight ": " 10"}},
         ours={f"/services/ssh/{FQDN}:22": {"weight": "10"}}),
    # Every zookeeper_data spelling zk_watcher accepted or tolerated.
    Case("data-empty", svc("s", data="")),
    Case("data-missing", svc("s", data=None)),
    Case("data-word", svc("s", data="foo")),
    Case("data-json-string", svc("s", data='"str"')),
    Case("data-python-dict", svc("s", data="{'a': 1}")),
    Case("data-falsy", "".join(svc(f"s{i}", 22 + i, data=value)
                               for i, value in enumerate(["null", "0", "[]", "false", "{}"]))),
    Case("data-pairs-array", svc("s", data='[["a", 1], ["b", "x"]]')),
    Case("data-json-nested", svc("s", data='{"weight": 10, "tags": ["a", "b"], '
                                           '"meta": {"x": null, "ok": true}}')),
    Case("data-user-pid", svc("s", data='{"pid": "custom", "created": "yesterday"}')),
    Case("data-kv-two-equals", svc("s", data="url=http://x/?a=b,n=1")),
    Case("data-kv-trailing-comma", svc("s", data="a=1,")),
    Case("data-kv-empty-key", svc("s", data="=v")),
    Case("data-broken-json", svc("s", data='{"a": 1')),
    Case("data-multiline-json", svc("s", data='{"a": 1,\n    "b": [1,\n      2]}')),
    Case("data-inline-semicolon", svc("s", data="a=1 ; not a comment")),
    Case("data-unstorable", svc("bad", data="5") + svc("good", 23, data="ok=1"),
         differs=UNSTORABLE_DATA,
         zk_watcher={f"/services/ssh/{FQDN}:23": {"ok": "1"}}, ours=EXIT_2,
         ours_error="[bad] zookeeper_data: expected a JSON object or k=v pairs, got '5'",
         zk_watcher_log="TypeError"),
    # configparser: [DEFAULT], interpolation, layout.
    Case("default-section", "[DEFAULT]\ncmd: true\nrefresh: 60\nservice_hostname: web1\n"
                            'zookeeper_data: {"dc": "east"}\n\n'
                            "[ssh]\nservice_port: 22\nzookeeper_path: /services/ssh\n\n"
                            "[web]\nservice_port: 80\nzookeeper_path: /services/web\n"
                            "zookeeper_data: role=front\n"),
    Case("interpolation", "[DEFAULT]\nenv: prod\nbase: /services/%(env)s\n\n"
                          "[web]\ncmd: true\nrefresh: 60\nport: 8080\nservice_port: %(port)s\n"
                          "zookeeper_path: %(base)s/web\n"
                          'zookeeper_data: {"env": "%(env)s", "load": "100%%"}\n'),
    Case("auth-percent", svc("s", data="a=b") + "[auth]\nuser: deploy\npassword: 50%%off\n",
         auth=("deploy", "50%off")),
    Case("whitespace", "  [odd]  \n\tcmd\t=\ttrue\t\nrefresh   :   60\nservice_port:22\n"
                       "zookeeper_path    =/services/odd   \n\n\n   \nzookeeper_data:   x=1   \n"),
    Case("crlf", svc("s", data="a=1").replace("\n", "\r\n")),
    Case("comments", "# zk_watcher config\n; another comment style\n[s]\n  # indented comment\n"
                     "cmd: true\nrefresh: 60\n; between keys\nservice_port: 22\n"
                     "zookeeper_path: /services/ssh\nzookeeper_data: a=1\n"),
    Case("case-and-names", "[My Service]\nCMD: true\nRefresh: 60\nSERVICE_PORT: 8000\n"
                           "Zookeeper_Path: /services/My Service\n"),
    Case("multi-section", "".join(svc(f"svc{i}", 9000 + i, f"/services/multi/{i % 2}",
                                      data=f"n={i}") for i in range(5))),
    Case("same-parent", svc("a", 80, "/services/web") + svc("b", 81, "/services/web")),
    Case("deep-path-auth", svc("s", path="/org/team/env/ssh", data="a=1") + AUTH,
         auth=("username", "123456")),
    # [auth] user through [DEFAULT]: zk_watcher's [auth] gets it; it names no
    # user of this host, and is not who runs the checks.
    Case("default-user-for-auth", "[DEFAULT]\nuser: deploy\n\n" + svc("s")
         + "[auth]\npassword: 123456\n", auth=("deploy", "123456")),
    # ... nor when such a user exists: the check still runs as the listener's
    # user (root here), as zk_watcher's did; as nobody it would fail.
    Case("default-user-exists", "[DEFAULT]\nuser: nobody\n\n"
         + svc("s", cmd="test -w /etc/passwd") + "[auth]\npassword: 123456\n",
         auth=("nobody", "123456")),
    Case("hostname", svc("s", extra="service_hostname: db-1.example.com\n")),
    Case("port-leading-zeros", svc("s", port="0080")),
    Case("refresh-zero", svc("s").replace("refresh: 60", "refresh: 0")),
    # Deliberate differences.
    Case("empty-hostname", svc("s", extra="service_hostname:\n"), differs=EMPTY_HOSTNAME,
         zk_watcher={"/services/ssh/:22": {}}, ours={f"/services/ssh/{FQDN}:22": {}}),
    Case("percent-in-data", svc("s", data='{"fmt": "100%"}'), differs=BARE_PERCENT,
         zk_watcher={f"/services/ssh/{FQDN}:22": {}},
         ours={f"/services/ssh/{FQDN}:22": {"fmt": "100%"}}),
    Case("percent-in-cmd", svc("s", cmd="test 100% = 100%"), differs=BARE_PERCENT,
         zk_watcher={}, ours={f"/services/ssh/{FQDN}:22": {}},
         zk_watcher_log="InterpolationSyntaxError"),
    Case("shell-cmd", svc("s", cmd="test 1 = 2 || true"), differs=SHELL_SYNTAX,
         zk_watcher={}, ours={f"/services/ssh/{FQDN}:22": {}}),
    Case("slow-check", svc("s", cmd="sleep 12"), differs=CHECK_TIMEOUT,
         zk_watcher={f"/services/ssh/{FQDN}:22": {}}, ours={}),
    Case("failing-check", svc("s", cmd="false").replace("refresh: 60", "refresh: 1"),
         differs=LOG_CHANGES, zk_watcher={}, ours={}),
    Case("supervisor-env-in-check", svc("s", cmd="printenv SUPERVISOR_SERVER_URL"),
         env={"SUPERVISOR_SERVER_URL": "unix:///nonexistent/supervisor.sock"},
         differs=NO_SUPERVISOR_ENV, zk_watcher={f"/services/ssh/{FQDN}:22": {}}, ours={},
         ours_log="[s] check failed: exit status 1"),
    Case("world-writable", svc("s"), mode=0o666, differs=WRITABLE_CONFIG,
         zk_watcher={f"/services/ssh/{FQDN}:22": {}}, ours=EXIT_2,
         ours_error="refused as root: others could change it, and with it the commands we "
                    "run: "),
]

# zk_watcher needs 12 s for slow-check; the failing check must have run a few times.
OBSERVE_AT_LEAST = 15.0
DEADLINE = 75.0


def peer_executable() -> Path:
    """zk_watcher's entry point in its own virtualenv, installed from PyPI on first use."""
    binary = PEER_VENV / "bin" / "zk_watcher"
    done = PEER_VENV / ".installed"
    lock_path = PEER_VENV.with_name(PEER_VENV.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        if not done.exists():
            shutil.rmtree(PEER_VENV, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
            subprocess.run([str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                            ZK_WATCHER], check=True)
            done.touch()
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ZooKeeper for the whole corpus; ~80 clients, so no per-address limit."""
    zookeeper = LocalZooKeeper(tmp_path_factory.mktemp("compat-zk"))
    zookeeper.extra_config.append("maxClientCnxns=0")
    zookeeper.start()
    yield zookeeper
    zookeeper.stop()


class Listener(ProtocolDriver):
    """Our listener on the unchanged file, with the ZooKeeper given as zk_watcher gets it: -s."""

    def __init__(self, config: Path, hosts: str, env: dict[str, str] | None = None) -> None:
        self.stderr_path = config.with_suffix(".ours.log")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zkwatcher_supervisor", "-c", str(config), "-s", hosts],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                env={**os.environ, **(env or {})})
        self.stdout = b""
        self.transcript: list[bytes] = []
        self.serial = 0


def read_tree(zk: KazooClient, root: str, pid: int) -> tuple[dict, dict]:
    """Ephemeral nodes under ``root`` -> payload (``pid``/``created`` masked), and every
    node -> its ACLs."""
    nodes, acls = {}, {}

    def walk(path: str) -> None:
        try:
            data, stat = zk.get(path)
            acl, _ = zk.get_acls(path)
            children = zk.get_children(path)
        except NoNodeError:
            return
        relative = path[len(root):] or "/"
        acls[relative] = sorted((a.perms, a.id.scheme, a.id.id) for a in acl)
        if stat.ephemeralOwner:
            payload = json.loads(data)
            # pid and created are the writer's own; everything else must match.
            if payload.get("pid") == pid:
                payload["pid"] = "<pid>"
            if TIMESTAMP.fullmatch(str(payload.get("created", ""))):
                payload["created"] = "<created>"
            nodes[relative] = list(payload.items())
        for child in children:
            walk(f"{path.rstrip('/')}/{child}")

    walk(root)
    return nodes, acls


def user_data(nodes: dict) -> dict:
    """{node: payload} without the writer's pid and created."""
    return {path: {k: v for k, v in items if v not in ("<pid>", "<created>")}
            for path, items in nodes.items()}


@dataclass
class Outcome:
    """What one tool did with one case's file."""

    nodes: dict  # node path -> payload items, pid/created masked
    acls: dict  # every node under the chroot -> sorted ACL entries
    log: str
    exit_code: int | None  # None: still running


@pytest.fixture(scope="module")
def outcomes(server, tmp_path_factory) -> dict[str, tuple[Outcome, Outcome]]:
    """Run zk_watcher and our listener on every file of the corpus at once; per case,
    (zk_watcher's outcome, ours) once every case has settled (or after DEADLINE)."""
    assert len(CORPUS) >= 30
    work = tmp_path_factory.mktemp("compat")
    peer = peer_executable()
    admin = KazooClient(hosts=server.hosts, timeout=10)
    admin.start(timeout=30)
    for user, password in {case.auth for case in CORPUS if case.auth}:
        # ZooKeeper shows a digest ACL's hash only to a client with ADMIN on the node.
        admin.add_auth("digest", f"{user}:{password}")
    theirs: dict[str, subprocess.Popen] = {}
    ours: dict[str, Listener] = {}
    try:
        for case in CORPUS:
            for tool in ("zkw", "ours"):
                admin.create(f"/{tool}-{case.id}", acl=OPEN_ACL_UNSAFE)
            config = work / f"{case.name}.cfg"
            config.write_bytes(case.config.encode())
            config.chmod(case.mode)
            with open(work / f"{case.name}.zkw.log", "wb") as log:
                theirs[case.name] = subprocess.Popen(
                    [str(peer), "-c", str(config), "-s", f"{server.hosts}/zkw-{case.id}"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, **case.env})
            ours[case.name] = Listener(config, f"{server.hosts}/ours-{case.id}", case.env)
        started = time.monotonic()
        for case in CORPUS:
            if case.ours != EXIT_2:
                try:
                    ours[case.name].wait_ready(30)
                except (EOFError, TimeoutError):
                    pass  # the case's tests show its exit status and log

        def collect() -> dict[str, tuple[Outcome, Outcome]]:
            result = {}
            for case in CORPUS:
                pair = []
                for tool, process, log in (
                        ("zkw", theirs[case.name], work / f"{case.name}.zkw.log"),
                        ("ours", ours[case.name].process, ours[case.name].stderr_path)):
                    nodes, acls = read_tree(admin, f"/{tool}-{case.id}", process.pid)
                    pair.append(Outcome(nodes, acls, log.read_text(errors="replace"),
                                        process.poll()))
                result[case.name] = (pair[0], pair[1])
            return result

        while True:
            result = collect()
            elapsed = time.monotonic() - started
            if elapsed > DEADLINE or (elapsed >= OBSERVE_AT_LEAST and all(
                    settled(case, *result[case.name]) for case in CORPUS)):
                return result
            for case in CORPUS:  # supervisord's TICK_5, a little faster
                listener = ours[case.name]
                if listener.process.poll() is None and listener.transcript:
                    try:
                        listener.tick()
                    except (EOFError, TimeoutError, BrokenPipeError):
                        pass  # died meanwhile: its exit status and log tell
            time.sleep(1.0)
    finally:
        for process in theirs.values():
            process.kill()
        for listener in ours.values():
            listener.stop()
        for process in theirs.values():
            process.wait()
        admin.stop()
        admin.close()


def settled(case: Case, theirs: Outcome, ours: Outcome) -> bool:
    if case.differs is None:
        return bool(theirs.nodes) and theirs.nodes == ours.nodes
    ours_ok = ours.exit_code == 2 if case.ours == EXIT_2 else user_data(ours.nodes) == case.ours
    logged = not case.zk_watcher_log or case.zk_watcher_log in theirs.log
    logged = logged and (not case.ours_log or case.ours_log in ours.log)
    if case.differs == LOG_CHANGES:
        logged = theirs.log.count("returned a failed exit code") >= 3
    return user_data(theirs.nodes) == case.zk_watcher and ours_ok and logged


SAME = [case for case in CORPUS if case.differs is None]
DIFFERENT = [case for case in CORPUS if case.differs is not None]


@pytest.mark.parametrize("case", SAME, ids=[case.name for case in SAME])
def test_same_node_names_and_payloads_as_zk_watcher(outcomes, case):
    theirs, ours = outcomes[case.name]
    assert theirs.nodes, f"zk_watcher registered nothing:\n{theirs.log}"
    assert ours.exit_code is None, ours.log
    # Same names, same payload in the same key order; only pid and created differ.
    assert ours.nodes == theirs.nodes, ours.log


@pytest.mark.parametrize("case", SAME, ids=[case.name for case in SAME])
def test_same_acls_on_every_node_of_the_tree(outcomes, case):
    theirs, ours = outcomes[case.name]
    # Node, the parent holding it, and every parent above: same ACLs, created alike.
    assert ours.acls == theirs.acls
    if case.auth:
        node = next(iter(theirs.nodes))
        # The digest of the same credentials, so [auth] was read as zk_watcher read it.
        assert (31, "digest", make_digest_acl_credential(*case.auth)) in ours.acls[node]
        assert (1, "world", "anyone") in ours.acls[node]


def test_parents_above_the_immediate_one_are_left_open_like_zk_watcher(outcomes):
    case = next(case for case in CORPUS if case.name == "deep-path-auth")
    theirs, ours = outcomes[case.name]
    assert theirs.acls["/org"] == [(31, "world", "anyone")]
    assert ours.acls == theirs.acls


@pytest.mark.parametrize("case", DIFFERENT, ids=[case.name for case in DIFFERENT])
def test_deliberate_difference(outcomes, case):
    """One row of README's "Migrating from zk_watcher" table, seen on both tools."""
    theirs, ours = outcomes[case.name]
    assert user_data(theirs.nodes) == case.zk_watcher, theirs.log
    if case.zk_watcher_log:
        assert case.zk_watcher_log in theirs.log
    if case.ours == EXIT_2:
        assert ours.exit_code == 2, ours.log
        (line,) = ours.log.splitlines()
        assert case.ours_error in line
        assert not ours.nodes
    else:
        assert user_data(ours.nodes) == case.ours, ours.log
    if case.ours_log:
        assert case.ours_log in ours.log, ours.log
        assert ours.exit_code is None, ours.log
    if case.differs == LOG_CHANGES:
        # zk_watcher logged every failing run; we log the change to failing once.
        assert theirs.log.count("returned a failed exit code") >= 3, theirs.log
        assert ours.log.count("check failed") == 1, ours.log


def test_every_difference_is_in_the_readme_table():
    readme = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
    section = readme.split("Migrating from zk_watcher", 1)[1]
    for row in {case.differs for case in DIFFERENT}:
        assert row in section, row


def test_never_fights_a_live_zk_watcher_for_the_same_node(server, tmp_path):
    """During a migration zk_watcher still runs on the host: for 60 s both watch
    the same service, and the node zk_watcher made is never replaced (same czxid,
    no deletion seen); once zk_watcher stops, ours is there within 1 s."""
    config = tmp_path / "config.cfg"
    config.write_text(textwrap.dedent("""
        [ssh]
        cmd: true
        refresh: 1
        service_port: 22
        service_hostname: host1
        zookeeper_path: /services/ssh
        """))
    root = f"/tug-{uuid.uuid4().hex[:8]}"
    zk = KazooClient(hosts=server.hosts, timeout=10)
    zk.start(timeout=30)
    zk.create(root)
    node = f"{root}/services/ssh/host1:22"
    with open(tmp_path / "zkw.log", "wb") as log:
        peer = subprocess.Popen([str(peer_executable()), "-c", str(config), "-s",
                                 f"{server.hosts}{root}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    ours = None
    try:
        wait_until(lambda: zk.exists(node), 30, what="zk_watcher registered")
        theirs = zk.exists(node)
        deleted = []
        zk.exists(node, watch=lambda event: deleted.append(event))
        ours = Listener(config, f"{server.hosts}{root}")
        ours.wait_ready(30)
        czxids = set()
        ends = time.monotonic() + 60
        while time.monotonic() < ends:
            stat = zk.exists(node)
            czxids.add(stat.czxid if stat else None)
            time.sleep(0.1)
        print(f"60 s side by side: czxids seen {czxids}")
        assert czxids == {theirs.czxid} and not deleted
        wait_until(lambda: "held by another session" in ours.stderr(), 5, what="waiting logged")

        peer.terminate()
        peer.wait(30)
        gone = wait_until(lambda: zk.exists(node) is None or
                          zk.exists(node).ephemeralOwner != theirs.ephemeralOwner,
                          30, interval=0.002, what="zk_watcher's node gone") and time.monotonic()
        wait_until(lambda: (stat := zk.exists(node)) and
                   stat.ephemeralOwner != theirs.ephemeralOwner, 1, interval=0.005,
                   what="ours registered")
        print(f"zk_watcher's node gone -> ours: {(time.monotonic() - gone) * 1000:.0f} ms")
        assert json.loads(zk.get(node)[0])["pid"] == ours.process.pid
    finally:
        if peer.poll() is None:
            peer.kill()
        if ours is not None:
            ours.stop()
        zk.stop()
        zk.close()
