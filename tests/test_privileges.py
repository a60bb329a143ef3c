"""Least privilege for checks, under a real supervisord and ZooKeeper: who a check
runs as, what environment it sees, and which configs a root listener refuses."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kazoo.security import make_digest_acl_credential
from support.driver import ProtocolDriver
from support.sections import listener_section, section
from support.text import line_of, log_lines
from support.users import code_for_others
from support.watches import node_exists

from zkwatcher_supervisor import procfs
from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e

CREDENTIALS = 'SUPERVISOR_USERNAME="admin",SUPERVISOR_PASSWORD="s3cret"'


def environment_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_check_runs_as_its_user_and_never_sees_supervisords_credentials(
        write_config, supervisord, zookeeper, zk, base_path, reachable_dir):
    out = reachable_dir
    out.chmod(0o777)  # nobody writes what it saw here
    (out / "bin").mkdir()
    (out / "bin").chmod(0o777)
    script = out / "bin" / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    config = write_config(
        section(base_path, "asuser", 1, extra=f"""
            cmd = id -u > {out}/uid; id -G > {out}/groups; env > {out}/env; pwd > {out}/pwd
            user = nobody
            environment = CHECK_FLAVOUR="mint, fresh"
            """)
        + section(base_path, "asroot", 2, extra=f"cmd = env > {out}/root-env")
        + section(base_path, "script", 3, extra=f"cmd = {script}")
        + section(base_path, "probe", 4, extra=f"cmd = tcp://127.0.0.1:{zookeeper.port}")
        + section(base_path, "bound", 5, extra="program = web"))
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config, extra=f"environment = {CREDENTIALS}\n"))
    wait_until(lambda: all(node_exists(zk, f"{base_path}/{name}/host1:{port}") for name, port in
                           (("asuser", 1), ("asroot", 2), ("script", 3), ("probe", 4),
                            ("bound", 5))), 15, what="every section registered")
    wait_until(lambda: all((out / name).exists() and (out / name).read_text()
                           for name in ("uid", "groups", "env", "pwd", "root-env")),
               5, what="the checks' reports")

    nobody = pwd.getpwnam("nobody")
    assert (out / "uid").read_text() == "65534\n"
    assert sorted(map(int, (out / "groups").read_text().split())) == sorted(
        set(os.getgrouplist("nobody", nobody.pw_gid)))
    assert (out / "pwd").read_text() == "/\n"  # its home, /nonexistent, cannot be entered
    seen = environment_of((out / "env").read_text())
    assert [key for key in seen if key.startswith("SUPERVISOR_")] == []
    assert (seen["HOME"], seen["USER"], seen["LOGNAME"]) == ("/nonexistent", "nobody", "nobody")
    assert seen["CHECK_FLAVOUR"] == "mint, fresh"
    # A check left to run as root loses them too ...
    as_root = (out / "root-env").read_text()
    assert "SUPERVISOR_" not in as_root and "s3cret" not in as_root
    # ... which the listener itself was given, and used for its XML-RPC snapshot.
    pid = server.info("zkwatcher")["pid"]
    own = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SUPERVISOR_PASSWORD=s3cret" in own and any(
        item.startswith(b"SUPERVISOR_SERVER_URL=") for item in own)

    log = config.parent / "zkwatcher.log"
    wait_until(lambda: log_lines(log, "run as root too"), 5, what="the root warning")
    (warning,) = log_lines(log, "run as root too")
    assert ("WARNING running as root, so the checks of [asroot], [script] run as root too; "
            "give them a user") in warning
    (writable,) = log_lines(log, "others can change it")
    assert writable.endswith(f"WARNING [script]: the check runs {script} as root, and others "
                             f"can change it: {out} is writable by others (mode 0777); "
                             f"chmod o-w {out}")  # the first such directory on the way


def test_a_checks_user_gets_its_supplementary_groups_and_its_home(
        write_config, supervisord, zk, base_path, reachable_dir, member_user):
    out = reachable_dir
    out.chmod(0o777)
    report = "id -u; id -g; id -G; pwd; echo $HOME"
    config = write_config(
        section(base_path, "member", 1, extra=f"""
            cmd = ({report}) > {out}/member
            user = {member_user.name}
            """)
        + section(base_path, "regrouped", 2, extra=f"""
            cmd = ({report}) > {out}/regrouped
            user = {member_user.name}
            group = nogroup
            """))
    supervisord(listener_section(config))
    wait_until(lambda: all(node_exists(zk, f"{base_path}/{name}/host1:{port}")
                           for name, port in (("member", 1), ("regrouped", 2))), 15,
               what="registered")
    for name, gid in (("member", member_user.gid), ("regrouped", 65534)):
        uid, primary, groups, cwd, home = (out / name).read_text().splitlines()
        assert (int(uid), int(primary), cwd, home) == (member_user.uid, gid, member_user.home,
                                                       member_user.home)
        # initgroups(user, gid): the primary (or given) gid and every group it is in.
        assert sorted(map(int, groups.split())) == sorted(
            set(os.getgrouplist(member_user.name, gid)))
        assert len(groups.split()) == 2


def test_defaults_user_is_auths_and_checks_run_as_the_listener_as_with_zk_watcher(
        write_config, supervisord, zk, base_path, reachable_dir):
    out = reachable_dir
    out.chmod(0o777)
    config = write_config("[DEFAULT]\nuser = nobody\n\n[auth]\npassword = p4ss\n"
                          + section(base_path, "web", 1, extra=f"cmd = id -u > {out}/uid"))
    config.chmod(0o600)
    supervisord(listener_section(config))
    node = f"{base_path}/web/host1:1"
    wait_until(lambda: node_exists(zk, node), 15, what="registered")
    assert (out / "uid").read_text() == "0\n"  # the listener's user, not nobody
    zk.add_auth("digest", "nobody:p4ss")  # ZooKeeper shows the hash only to its owner
    acl, _ = zk.get_acls(node)
    assert (31, "digest", make_digest_acl_credential("nobody", "p4ss")) in [
        (entry.perms, entry.id.scheme, entry.id.id) for entry in acl]
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: log_lines(log, "[DEFAULT] user"), 5, what="the warning")
    (line,) = log_lines(log, "[DEFAULT] user")
    number = line_of(config, "user = nobody")
    assert line.endswith(f"WARNING {config}: line {number}: [DEFAULT] user: not taken for check "
                         "commands (it is [auth] user, as for zk_watcher); to set the checks' "
                         "user, write it in [zkwatcher] or a section")


AS_NOBODY = {"user": "nobody", "group": pwd.getpwnam("nobody").pw_gid, "extra_groups": []}


def python_for_nobody(home: Path) -> tuple[str, dict[str, str]]:
    """An interpreter user nobody can run, with our packages importable, and its
    environment: the virtualenv's own interpreter may sit in root's 0700 home."""
    python, pythonpath = code_for_others()
    return python, {**os.environ, "HOME": str(home), "PYTHONPATH": pythonpath}


def run_listener(config, *args, python=sys.executable, env=None, **identity):
    return subprocess.run([python, "-m", "zkwatcher_supervisor", "-c", str(config), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, env=env, cwd="/", **identity)


def test_a_user_that_does_not_exist_is_exit_2_naming_section_and_key(write_config, base_path):
    config = write_config(section(base_path, "web", 1, extra="""
        cmd = true
        user = no-such-user-zkw
        """))
    for args in ((), ("--check-config",)):
        result = run_listener(config, *args)
        assert result.returncode == 2
        line = line_of(config, "user = no-such-user-zkw")
        assert result.stderr == (f"zkwatcher-supervisor: {config}: line {line}: [web] user: "
                                 "no such user 'no-such-user-zkw'\n")


@pytest.mark.parametrize("layout", ["world-writable file", "group-writable directory",
                                    "link through a world-writable directory"])
def test_as_root_a_config_others_can_change_is_refused(tmp_path, write_config, base_path, layout):
    assert os.geteuid() == 0
    directory = tmp_path / "etc"
    directory.mkdir()
    config = write_config(section(base_path, "web", 1, extra="cmd = true"), name="etc/config.cfg")
    if layout == "world-writable file":
        config.chmod(0o666)
        culprit = f"{config} is writable by others (mode 0666); chmod o-w {config}"
    elif layout == "group-writable directory":
        directory.chmod(0o775)
        culprit = f"{directory} is writable by group (mode 0775); chmod g-w {directory}"
    else:
        # etc/config.cfg -> shared/link -> real/config.cfg: the path as given and
        # the file it ends at are root's alone, but whoever writes shared/ can
        # repoint the link in the middle.
        (tmp_path / "real").mkdir()
        real = config.rename(tmp_path / "real" / "config.cfg")
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        (shared / "link").symlink_to("../real/config.cfg")
        config.symlink_to("../shared/link")
        assert run_listener(real, "--check-config").returncode == 0  # the file itself is fine
        culprit = f"{shared} is writable by others (mode 0777); chmod o-w {shared}"
    result = run_listener(config)
    assert result.returncode == 2
    assert result.stderr == (f"zkwatcher-supervisor: {config}: refused as root: others could "
                             f"change it, and with it the commands we run: {culprit}\n")


class NobodyListener(ProtocolDriver):
    """The listener as user nobody, driven over its protocol pipes."""

    def __init__(self, config, home, python, env) -> None:
        self.stderr_path = home / "listener.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [python, "-m", "zkwatcher_supervisor", "-c", str(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
                cwd="/", **AS_NOBODY)
        self.stdout = b""
        self.transcript: list[bytes] = []
        self.serial = 0


def test_a_listener_that_is_not_root_runs_checks_only_as_itself(
        zookeeper, zk, base_path, reachable_dir):
    home = reachable_dir / "home"
    home.mkdir()
    os.chown(home, 65534, -1)
    config = reachable_dir / "config.cfg"
    header = f"[zkwatcher]\nhosts = {zookeeper.hosts}\nsession_timeout = 4\n"
    as_root = header + section(base_path, "web", 1, extra="cmd = true\nuser = root\nrefresh = 1")
    config.write_text(as_root)
    config.chmod(0o644)
    python, env = python_for_nobody(home)
    # check-config (and status) do not switch: they work as anyone.
    checked = run_listener(config, "--check-config", python=python, env=env, **AS_NOBODY)
    assert checked.returncode == 0, checked.stderr
    result = run_listener(config, python=python, env=env, **AS_NOBODY)
    assert result.returncode == 2
    assert result.stderr == (f"zkwatcher-supervisor: {config}: [web] user: the listener runs "
                             "as uid 65534, not root, and cannot switch to user 'root'\n")

    config.write_text(as_root.replace("user = root", "user = nobody"))
    listener = NobodyListener(config, home, python, env)
    try:
        try:
            listener.wait_ready()
        except EOFError:
            raise AssertionError(listener.stderr()) from None
        node = f"{base_path}/web/host1:1"
        wait_until(lambda: node_exists(zk, node), 15, what="registered as nobody")
        config.write_text(as_root.replace(f"{base_path}/web", f"{base_path}/moved"))
        os.kill(listener.process.pid, signal.SIGHUP)
        wait_until(lambda: "reload rejected" in listener.stderr(), 5, what="reload rejected")
        assert ("reload rejected, keeping the running config: "
                f"{config}: [web] user: the listener runs as uid 65534, not root, and cannot "
                "switch to user 'root'") in listener.stderr()
        assert node_exists(zk, node) and not node_exists(zk, f"{base_path}/moved/host1:1")
    finally:
        listener.stop()


def test_a_check_of_the_listeners_own_user_cannot_read_its_environment_or_memory(
        zookeeper, supervisord, zk, base_path, reachable_dir):
    """supervisord's ``user = nobody`` for the listener; its check has no user, so it
    runs as nobody too, and tries what any process of that user could."""
    out = reachable_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    home = reachable_dir / "home"
    home.mkdir()
    os.chown(home, 65534, -1)
    python, env = python_for_nobody(home)
    script = reachable_dir / "peek.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        out={out}
        id -u > $out/uid
        tr '\\0' ' ' < /proc/$PPID/cmdline > $out/cmdline
        if cat /proc/$PPID/environ > $out/environ 2> $out/environ.err; then
            echo read; else echo refused; fi > $out/environ.result
        if (exec 3< /proc/$PPID/mem) 2> $out/mem.err; then
            echo opened; else echo refused; fi > $out/mem.result
        echo $PPID > $out/ppid.tmp && mv $out/ppid.tmp $out/ppid
        """))
    script.chmod(0o755)
    config = reachable_dir / "config.cfg"
    config.write_text(f"[zkwatcher]\nhosts = {zookeeper.hosts}\nsession_timeout = 4\n"
                      + section(base_path, "peek", 1, extra=f"cmd = sh {script}"))
    config.chmod(0o644)
    server = supervisord(textwrap.dedent(f"""
        [eventlistener:zkwatcher]
        command = {python} -m zkwatcher_supervisor -c {config}
        user = nobody
        directory = /
        events = PROCESS_STATE,TICK_5
        startsecs = 0
        stderr_logfile = {reachable_dir}/zkwatcher.log
        environment = PYTHONPATH="{env["PYTHONPATH"]}",{CREDENTIALS}
        """))
    wait_until(lambda: node_exists(zk, f"{base_path}/peek/host1:1"), 20, what="registered")
    wait_until(lambda: (out / "ppid").exists(), 5, what="the check's report")
    listener = server.info("zkwatcher")["pid"]
    # The check's parent is the listener itself (checks are spawned directly),
    # and both run as nobody.
    assert int((out / "ppid").read_text()) == listener
    assert "zkwatcher_supervisor" in (out / "cmdline").read_text()
    assert (out / "uid").read_text() == "65534\n"
    assert procfs.process_uid(listener) == 65534
    # The password is in the listener's environment (root can see it) ...
    own = Path(f"/proc/{listener}/environ").read_bytes().split(b"\0")
    assert b"SUPERVISOR_PASSWORD=s3cret" in own
    # ... and a process of its own user can read neither that nor its memory.
    assert (out / "environ.result").read_text() == "refused\n"
    assert "Permission denied" in (out / "environ.err").read_text()
    assert (out / "environ").read_bytes() == b""
    assert (out / "mem.result").read_text() == "refused\n"
    assert "Permission denied" in (out / "mem.err").read_text()
    assert "can read its environment" not in (reachable_dir / "zkwatcher.log").read_text()


def test_the_commands_other_than_run_stay_dumpable(write_config, base_path):
    """Only the listener hides itself: status and --check-config are debugged as usual."""
    config = write_config(section(base_path, "web", 1, extra="cmd = true"))
    for args in (["--check-config"], ["status"]):
        probe = ("import ctypes, sys\n"
                 "from zkwatcher_supervisor import cli\n"
                 f"cli.main({[*args, '-c', str(config)]!r})\n"
                 "libc = ctypes.CDLL(None)\n"
                 "print('dumpable', libc.prctl(3, 0, 0, 0, 0), file=sys.stderr)\n")  # GET
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                timeout=60)
        assert result.stderr.splitlines()[-1] == "dumpable 1", (args, result.stderr)
