"""The files the link to ZooKeeper uses — password_file, keyfile,
keyfile_password_file, ca, certfile — as the users of a real host meet them:
the listener refuses any that someone else could change (the file, or a
directory above it), and the commands that need no secret (status,
--check-config, drain, undrain, handoff) work for users who cannot read them.
Real ZooKeeper (plain and TLS), real supervisord, other users via setpriv."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from support.credentials import Credentials, private_file, tls_zookeeper
from support.sections import section
from support.users import SERVICE_USER, as_user, listener_as_service_user, python_for_others
from support.watches import node_exists

from zkwatcher_supervisor.config import ConfigError, load_config
from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e

def public_directory(prefix: str) -> Path:
    """A root-owned directory every user may read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def shared_dir():
    path = public_directory("zkw-link-files-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def creds():
    """Our CA and client certificate, in files anyone may read but the key (root's, 0600)."""
    path = public_directory("zkw-link-creds-")
    yield Credentials(path / "creds")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, creds):
    server = tls_zookeeper(tmp_path_factory.mktemp("tls"),
                           creds.ca.issue_cert("localhost", "127.0.0.1"), creds.ca_pem)
    yield server
    server.stop()


class Configs:
    """Config files, each new one numbered, with [zkwatcher] and [auth] as given."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def write(self, auth: str = "", tls: str = "", hosts: str = "127.0.0.1:2181",
              path: str = "/svc", mode: int = 0o600) -> Path:
        self.count += 1
        config = self.directory / f"zkwatcher{self.count}.cfg"
        config.write_text(f"[zkwatcher]\nhosts = {hosts}\n{tls}\n"
                          + (f"[auth]\nuser = deploy\n{auth}\n" if auth else "")
                          + section("", "svc", 1, cmd="true", refresh=2, timeout=None, path=path))
        config.chmod(mode)
        return config


def tls_lines(ca, certfile, keyfile, extra: str = "") -> str:
    return f"use_ssl = true\nca = {ca}\ncertfile = {certfile}\nkeyfile = {keyfile}\n{extra}"


def refused(path: Path) -> str:
    """What load_config says about ``path``, which it must refuse."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return str(caught.value)


def directory(path: Path, mode: int, owner: int = 0) -> Path:
    path.mkdir()
    os.chown(path, owner, owner)
    path.chmod(mode)
    return path


def test_a_secret_that_others_could_put_another_file_in_place_of_is_refused(tmp_path, creds):
    """password_file, keyfile and keyfile_password_file: refused when a directory
    above them — along the path as given, or where a symlink leads — can be
    changed by anyone but root and the listener's user (a sticky one excepted)."""
    configs = Configs(tmp_path)
    open_dir = directory(tmp_path / "open", 0o777)
    group_dir = directory(tmp_path / "group", 0o770)
    nobodys_dir = directory(tmp_path / "nobodys", 0o755, owner=65534)
    sticky_dir = directory(tmp_path / "sticky", 0o1777)
    in_open = private_file(open_dir / "pw", "s3cret\n")
    in_group = private_file(group_dir / "pw", "s3cret\n")
    in_nobodys = private_file(nobodys_dir / "pw", "s3cret\n")
    # The attack: a symlink planted in the open directory, to a file root keeps
    # private elsewhere; its text would become the password we send.
    root_private = private_file(tmp_path / "root-private", "not a password\n")
    planted = open_dir / "planted"
    planted.symlink_to(root_private)
    # A safe-looking path through a symlink to a directory of root's, but one
    # inside the open directory: whoever may write there may replace it.
    inner = directory(open_dir / "inner", 0o755)
    private_file(inner / "pw", "s3cret\n")
    (tmp_path / "via").symlink_to(inner)
    key_in_open = open_dir / "client.key"
    shutil.copy(creds.encrypted_keyfile, key_in_open)
    key_in_open.chmod(0o600)

    def others(where: Path, mode: str, who: str = "others", flag: str = "o-w") -> str:
        return (f"others could put another file in its place: {where} is writable by {who} "
                f"(mode {mode}); chmod {flag} {where}")

    cases = [
        (configs.write(f"password_file = {in_open}"),
         f"line 6: [auth] password_file: {others(open_dir, '0777')}"),
        (configs.write(f"password_file = {planted}"),
         f"line 6: [auth] password_file: {others(open_dir, '0777')}"),
        (configs.write(f"password_file = {tmp_path / 'via' / 'pw'}"),
         f"line 6: [auth] password_file: {others(open_dir, '0777')}"),
        (configs.write(f"password_file = {in_group}"),
         f"line 6: [auth] password_file: {others(group_dir, '0770', 'group', 'g-w')}"),
        (configs.write(f"password_file = {in_nobodys}"),
         f"line 6: [auth] password_file: others could put another file in its place: "
         f"{nobodys_dir} is owned by uid 65534 (nobody), not root"),
        (configs.write(tls=tls_lines(creds.ca_pem, creds.certfile, key_in_open,
                                     "keyfile_password = key pass\n")),
         f"line 6: [zkwatcher] keyfile: {others(open_dir, '0777')}"),
        (configs.write(tls=tls_lines(creds.ca_pem, creds.certfile, creds.encrypted_keyfile,
                                     f"keyfile_password_file = {in_open}\n")),
         f"line 7: [zkwatcher] keyfile_password_file: {others(open_dir, '0777')}"),
    ]
    for config, message in cases:
        assert refused(config) == f"{config}: {message}"

    # A root-owned sticky directory (as /tmp) is fine: nobody else can replace our file.
    in_sticky = private_file(sticky_dir / "pw", "from sticky\n")
    loaded = load_config(str(configs.write(f"password_file = {in_sticky}")))
    assert loaded.zookeeper.auth.password == "from sticky"

    # The listener refuses to start: exit 2, one line naming file, section and key.
    config, message = cases[1]
    started = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "-c", str(config)],
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert (started.returncode, started.stderr) == (
        2, f"zkwatcher-supervisor: {config}: {message}\n")


def test_a_listener_that_is_not_root_may_keep_its_secret_in_its_own_directory(shared_dir):
    """Not root, the listener trusts its own directories as well as root's."""
    user = pwd.getpwnam(SERVICE_USER)
    mine = directory(shared_dir / "mine", 0o700, owner=user.pw_uid)
    nobodys = directory(shared_dir / "nobodys", 0o755, owner=65534)
    for where in (mine, nobodys):
        secret = private_file(where / "pw", "s3cret\n")
        os.chown(secret, user.pw_uid, user.pw_gid)
    configs = Configs(shared_dir)
    accepted = configs.write(f"password_file = {mine / 'pw'}", mode=0o644)
    refused_config = configs.write(f"password_file = {nobodys / 'pw'}", mode=0o644)
    python, extra = python_for_others()
    script = ("import sys; from zkwatcher_supervisor.config import load_config, ConfigError\n"
              "for path in sys.argv[1:]:\n"
              "    try: print(load_config(path).zookeeper.auth.password)\n"
              "    except ConfigError as exc: print(exc)\n")
    result = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         python, "-c", script, str(accepted), str(refused_config)],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", **extra})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "s3cret",
        f"{refused_config}: line 6: [auth] password_file: others could put another file in "
        f"its place: {nobodys} is owned by uid 65534 (nobody), not root or uid "
        f"{user.pw_uid} ({SERVICE_USER})",
    ]


def test_a_ca_or_certfile_that_others_could_change_is_refused(tmp_path, creds):
    """They may be world-readable (they are public), but whoever could write them
    would choose the servers we take for the ensemble, or who we are."""
    configs = Configs(tmp_path)
    open_dir = directory(tmp_path / "open", 0o777)

    def copy(source: Path, name: str, mode: int, owner: int = 0, into: Path = tmp_path) -> Path:
        target = into / name
        shutil.copy(source, target)
        os.chown(target, owner, owner)
        target.chmod(mode)
        return target

    world_writable_ca = copy(creds.ca_pem, "ca-0666.pem", 0o666)
    group_writable_ca = copy(creds.ca_pem, "ca-0664.pem", 0o664)
    nobodys_ca = copy(creds.ca_pem, "ca-nobody.pem", 0o644, owner=65534)
    ca_in_open = copy(creds.ca_pem, "ca.pem", 0o644, into=open_dir)
    world_writable_cert = copy(creds.certfile, "client-0666.pem", 0o666)
    trusts = "others could change it, and with it the servers we take for the ensemble"
    cases = [
        (configs.write(tls=tls_lines(world_writable_ca, creds.certfile, creds.keyfile)),
         f"line 4: [zkwatcher] ca: {trusts}: {world_writable_ca} is writable by others (mode "
         f"0666); chmod o-w {world_writable_ca}"),
        (configs.write(tls=tls_lines(group_writable_ca, creds.certfile, creds.keyfile)),
         f"line 4: [zkwatcher] ca: {trusts}: {group_writable_ca} is writable by group (mode "
         f"0664); chmod g-w {group_writable_ca}"),
        (configs.write(tls=tls_lines(nobodys_ca, creds.certfile, creds.keyfile)),
         f"line 4: [zkwatcher] ca: {trusts}: {nobodys_ca} is owned by uid 65534 (nobody), "
         "not root"),
        (configs.write(tls=tls_lines(ca_in_open, creds.certfile, creds.keyfile)),
         f"line 4: [zkwatcher] ca: {trusts}: {open_dir} is writable by others (mode 0777); "
         f"chmod o-w {open_dir}"),
        (configs.write(tls=tls_lines(creds.ca_pem, world_writable_cert, creds.keyfile)),
         f"line 5: [zkwatcher] certfile: others could change it, and with it who we are to "
         f"ZooKeeper: {world_writable_cert} is writable by others (mode 0666); chmod o-w "
         f"{world_writable_cert}"),
    ]
    for config, message in cases:
        assert refused(config) == f"{config}: {message}"

    # World-readable, root's, in root's directories: loads.
    readable_ca = copy(creds.ca_pem, "ca-0644.pem", 0o644)
    readable_cert = copy(creds.certfile, "client-0644.pem", 0o644)
    assert load_config(str(configs.write(tls=tls_lines(readable_ca, readable_cert,
                                                       creds.keyfile)))).zookeeper.tls

    config, message = cases[0]
    started = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "-c", str(config)],
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert (started.returncode, started.stderr) == (
        2, f"zkwatcher-supervisor: {config}: {message}\n")


def listener_config(directory: Path, hosts: str, base_path: str, settings: str = "",
                    auth: str = "") -> Path:
    """A config every user may read (it holds no secret) that only root may change."""
    config = directory / "zkwatcher.cfg"
    config.write_text(f"[zkwatcher]\nhosts = {hosts}\nsession_timeout = 10\n{settings}\n"
                      + (f"[auth]\nuser = deploy\n{auth}\n" if auth else "")
                      + section(base_path, "svc", 1, cmd="true", refresh=2, timeout=None))
    config.chmod(0o644)
    return config


def test_status_and_check_config_as_nobody_with_a_root_only_password_file(
        zookeeper, zk, driver, shared_dir, base_path):
    """A monitoring agent as nobody: the config is readable, the password in
    password_file is root's alone; status and --check-config need no secret."""
    password = private_file(shared_dir / "secret", "only-root-reads-this\n")
    config = listener_config(shared_dir, zookeeper.hosts, base_path,
                             auth=f"password_file = {password}")
    driver(config)
    node = f"{base_path}/svc/host1:1"
    wait_until(lambda: node_exists(zk, node), 20, what="registered")

    status = wait_until(lambda: (r := as_user("nobody", "status", "-c", str(config)))
                        .returncode == 0 and "registered, healthy" in r.stdout and r, 10,
                        interval=0.3, what="status ok as nobody")
    lines = status.stdout.splitlines()
    assert lines[0].startswith("listener: pid ") and "ZooKeeper connected" in lines[0], lines
    assert lines[1].startswith(f"ok   [svc] {node} registered, healthy"), lines
    assert status.stderr == ""

    checked = as_user("nobody", "--check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert f"zookeeper {zookeeper.hosts} session_timeout=10s auth=deploy\n" in checked.stdout
    assert (f"not read here (run reads and checks them, as its user): password_file "
            f"{password}\n") in checked.stdout
    for result in (status, checked):
        assert "only-root-reads-this" not in result.stdout + result.stderr


def test_status_as_nobody_when_the_tls_key_is_root_only(
        tls_server, creds, driver, shared_dir, base_path):
    """The key file nobody may not read: ZooKeeper is not asked, and status says
    so and shows what the listener last saw; root's status asks ZooKeeper."""
    config = listener_config(
        shared_dir, f"localhost:{tls_server.secure_port}", base_path,
        settings=f"use_ssl = true\nca = {creds.ca_pem}\ncertfile = {creds.certfile}\n"
                 f"keyfile = {creds.keyfile}\n")
    driver(config)
    reader = KazooClient(hosts=tls_server.hosts, timeout=5)
    reader.start(timeout=30)
    node = f"{base_path}/svc/host1:1"
    try:
        wait_until(lambda: node_exists(reader, node), 20, what="registered over TLS")
        status = wait_until(lambda: (r := as_user("nobody", "status", "-c", str(config)))
                            .returncode == 0 and "registered, healthy" in r.stdout and r, 10,
                            interval=0.3, what="status ok as nobody")
        lines = status.stdout.splitlines()
        assert lines[0] == (f"ZooKeeper not checked: cannot read {creds.keyfile}: Permission "
                            "denied; registered as the listener last saw it"), lines
        assert lines[1].startswith("listener: pid ") and "ZooKeeper connected" in lines[1]
        assert lines[2].startswith(f"ok   [svc] {node} registered, healthy"), lines

        # drain --stop must see the node gone before it stops anything: as nobody it
        # cannot, so it drains nothing (before asking supervisord anything).
        stop = as_user("nobody", "drain", "svc", "--stop", "-c", str(config))
        assert (stop.returncode, stop.stderr) == (
            1, "zkwatcher-supervisor drain: --stop: cannot read ZooKeeper to confirm the "
               f"deletion as this user (cannot read {creds.keyfile}: Permission denied); "
               "nothing drained\n")
        assert node_exists(reader, node)

        as_root = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status",
                                  "-c", str(config)], capture_output=True, text=True,
                                 timeout=60)
        assert as_root.returncode == 0, as_root.stdout + as_root.stderr
        assert "not checked" not in as_root.stdout
        assert f"ok   [svc] {node} registered, healthy" in as_root.stdout
    finally:
        reader.stop()
        reader.close()


def test_root_runs_every_command_for_a_listener_whose_secret_is_another_users(
        zookeeper, supervisord, zk, base_path, shared_dir):
    """The listener runs as SERVICE_USER (supervisord's user=) with a password
    file that user alone may read; root's status, --check-config, drain,
    undrain and handoff do not read it, so do not refuse it as not root's."""
    user = pwd.getpwnam(SERVICE_USER)
    home = Path(user.pw_dir)
    state = home / ".local" / "state" / "zkwatcher-supervisor"
    password = private_file(shared_dir / "secret", "the-service-users-secret\n")
    os.chown(password, user.pw_uid, user.pw_gid)
    config = listener_config(shared_dir, zookeeper.hosts, base_path,
                             auth=f"password_file = {password}")
    server = supervisord(listener_as_service_user(config, shared_dir / "zkwatcher.log"))
    node = f"{base_path}/svc/host1:1"
    try:
        wait_until(lambda: node_exists(zk, node), 20, what="registered")
        env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *args, "-c",
                                   str(config)], capture_output=True, text=True, timeout=60,
                                  env=env)

        status = wait_until(lambda: (r := cli("status")).returncode == 0
                            and "registered, healthy" in r.stdout and r, 10, interval=0.3,
                            what="root's status")
        assert f"ok   [svc] {node} registered, healthy" in status.stdout
        checked = cli("--check-config")
        assert checked.returncode == 0, checked.stderr
        drained = cli("drain", "svc", "--for", "1h")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        wait_until(lambda: not node_exists(zk, node), 5, what="drained")
        undrained = cli("undrain", "svc")
        assert undrained.returncode == 0, undrained.stdout + undrained.stderr
        wait_until(lambda: node_exists(zk, node), 5, what="undrained")
        owner = zk.exists(node).ephemeralOwner
        handed = cli("handoff")
        assert handed.returncode == 0, handed.stdout + handed.stderr
        assert zk.exists(node).ephemeralOwner == owner
        for result in (status, checked, drained, undrained, handed):
            assert "the-service-users-secret" not in result.stdout + result.stderr
    finally:
        server.stop()
        for leftover in state.glob("*"):  # only the tests run listeners as this user
            leftover.unlink()
