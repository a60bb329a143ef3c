"""The command line itself: commands, their options in any order, their help, and how
supervisord is found.  No server is needed; tests/test_cli_servers.py runs the
commands against real ones."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkwatcher_supervisor import supervisord
from zkwatcher_supervisor.cli import COMMANDS, build_parser, main
from zkwatcher_supervisor.status import published_ensemble, read_status_file

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
CONNECTION_FLAGS = ("--serverurl", "--username", "--password-file", "--password",
                    "--supervisord-conf")


def parsed(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_zk_watchers_command_line_is_the_listener():
    """``command = zkwatcher-supervisor -c FILE`` and zk_watcher's -s/-v/-l run the listener."""
    args = parsed("-c", "/etc/zk/x.cfg", "-s", "zk1:2181,zk2:2181/chroot", "-v", "-l")
    assert args["command"] is None  # run, the default
    assert (args["config"], args["server"], args["verbose"], args["syslog"]) == (
        "/etc/zk/x.cfg", "zk1:2181,zk2:2181/chroot", True, True)
    assert parsed()["config"] == "/etc/zk/config.cfg"
    assert parsed("run", "-v", "-c", "a.cfg") == {**parsed("-v", "-c", "a.cfg"), "command": "run"}


@pytest.mark.parametrize("argv", [
    ["drain", "-c", "F", "web", "api", "--for", "2s"],
    ["drain", "web", "-c", "F", "api", "--for", "2s"],
    ["drain", "web", "api", "--for", "2s", "-c", "F"],
    ["drain", "--for", "2s", "web", "-c", "F", "api"],
    ["-c", "F", "drain", "web", "--for", "2s", "api"],
])
def test_options_and_sections_in_any_order(argv):
    args = parsed(*argv)
    assert (args["command"], args["config"], args["sections"], args["duration"]) == (
        "drain", "F", ["web", "api"], "2s")


def test_an_option_given_before_the_command_is_kept():
    """An option on the main parser and a command's parser both: the command's
    default must not overwrite the value given before the command."""
    assert parsed("-c", "before.cfg", "status")["config"] == "before.cfg"
    assert parsed("-s", "zk:1", "status")["server"] == "zk:1"
    assert parsed("-c", "before.cfg", "status", "-c", "after.cfg")["config"] == "after.cfg"


def test_check_config_is_a_command_and_the_flag_stays(tmp_path, capsys):
    config = tmp_path / "x.cfg"
    config.write_text("[web]\ncmd = true\nservice_port = 80\nservice_hostname = h\n"
                      "zookeeper_path = /s\n")
    outputs = []
    for argv in (["check-config", "-c", str(config)], ["--check-config", "-c", str(config)],
                 ["-c", str(config), "check-config"]):
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    assert "[web] /s/h:80 " in outputs[0]
    def stable(output: str) -> str:  # the payload names our pid and the time it was made
        output = output.replace(str(os.getpid()), "PID")
        return re.sub(r'"created":"[^"]*"', '"created":"T"', output)

    assert '"created":"' in outputs[0]
    assert stable(outputs[0]) == stable(outputs[1]) == stable(outputs[2])
    with pytest.raises(SystemExit) as exited:
        main(["--check-config", "status", "-c", str(config)])
    assert exited.value.code == 2
    assert "--check-config is the check-config command" in capsys.readouterr().err


def test_each_command_s_help_shows_its_own_options_and_an_example(capsys):
    helps = {command: help_of(capsys, command) for command in COMMANDS}
    own = {"run": ["--verbose", "--syslog", "--server", "--check-config"],
           "check-config": ["--server"], "status": ["--json", "--server"],
           "drain": ["--stop", "--wait", "--for", "--reason", "--program", "--all", "--server",
                     *CONNECTION_FLAGS],
           "undrain": ["--program", "--all", *CONNECTION_FLAGS],
           "handoff": ["--server", *CONNECTION_FLAGS]}
    every = {option for options in own.values() for option in options}
    for command, text in helps.items():
        assert text.startswith(f"usage: zkwatcher-supervisor {command} "), text
        assert f"zkwatcher-supervisor {command} -c /etc/zk/config.cfg" in text \
            or "command = zkwatcher-supervisor -c /etc/zk/config.cfg" in text
        assert "exit status (every command):" in text and "2  bad usage" in text
        for option in every:
            shown = re.search(re.escape(option) + r"(?![\w-])", text) is not None
            assert shown == (option in own[command]), (command, option)
    top = help_of(capsys)
    assert all(f"    {command} " in top for command in COMMANDS)
    assert "exit status (every command):" in top and "--stop" not in top


def test_usage_errors_exit_2_with_the_reason(tmp_path):
    config = tmp_path / "x.cfg"
    config.write_text("[web]\ncmd = true\nservice_port = 80\nservice_hostname = h\n"
                      "zookeeper_path = /s\n")
    for argv, message in ((["drain", "web", "--wait", "5"], "--wait goes with --stop"),
                          (["undrain", "web", "--stop"], "unrecognized arguments: --stop"),
                          (["status", "--for", "2s"], "unrecognized arguments: --for"),
                          (["drain", "web", "-p", "x", "--password-file", "y"],
                           "not allowed with argument"),
                          (["nosuch"], "invalid choice: 'nosuch'")):
        result = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *argv, "-c",
                                 str(config)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (argv, result.stderr)
        assert message in result.stderr, (argv, result.stderr)


UNITS = st.lists(st.sampled_from([("-c", "F"), ("--for", "2s"), ("--stop",), ("--wait", "3"),
                                  ("--reason", "r"), ("--serverurl", "unix:///s.sock"),
                                  ("-u", "admin"), ("-C", "sd.conf")]),
                 unique=True, max_size=8)


@FUZZ
@given(units=UNITS, sections=st.lists(st.sampled_from(["web", "api", "db"]), unique=True,
                                      min_size=1, max_size=3), data=st.data())
def test_fuzz_any_order_means_the_same(units, sections, data):
    """Whatever the order of a drain's options and sections, it means the same."""
    pieces = [list(unit) for unit in units] + [[name] for name in sections]
    shuffled = data.draw(st.permutations(pieces))
    reference = parsed("drain", *(word for piece in pieces for word in piece))
    assert reference["sections"] == sections
    mixed = parsed("drain", *(word for piece in shuffled for word in piece))
    assert mixed["sections"] == [piece[0] for piece in shuffled if piece[0] in sections]
    assert {**mixed, "sections": sections} == reference


WORDS = st.sampled_from([*COMMANDS, "-c", "-s", "-C", "-u", "-p", "-v", "-l", "--json",
                         "--stop", "--wait", "--for", "--all", "--program", "--check-config",
                         "--serverurl", "--password-file", "web", "F", "2s", "nan", "-1", "--"])


@FUZZ
@given(argv=st.lists(WORDS | st.text(max_size=6), max_size=10))
def test_fuzz_the_parser_accepts_or_exits_2(argv):
    """The command line is outside input: argparse refuses what it cannot use with
    exit status 2; what it accepts is a known command with every field a handler reads."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)  # 0: a --help or --version the text happened to spell
        return
    assert args.command in (None, *COMMANDS)
    for field in ("config", "server", "sections", "program", "all", "duration", "stop",
                  "wait", "json", "check_config", *(flag[2:].replace("-", "_")
                                                   for flag in CONNECTION_FLAGS)):
        assert hasattr(args, field), field


hosts_texts = st.one_of(
    st.sampled_from(["127.0.0.1:2181", "zk1:2181,zk2:2181/chroot/x", "h:1/", "", ":1", "h:x",
                     "a:1\nlistener: pid 1, ZooKeeper connected", "h:1/../etc", "h" * 20000]),
    st.text(max_size=30), st.integers(), st.none(), st.lists(st.text(max_size=5)))


@FUZZ
@given(hosts=hosts_texts, tls=st.none() | st.booleans() | st.integers() | st.text(max_size=3))
def test_fuzz_the_ensemble_read_back_from_a_status_file(tmp_path, hosts, tls):
    """``status`` connects wherever the status file says the listener is connected:
    it takes only a host list a listener could have used, and TLS as true or false."""
    from zkwatcher_supervisor.config import check_hosts

    path = tmp_path / "status.json"
    zookeeper = {"connected": True, "hosts": hosts}
    if tls is not None:
        zookeeper["tls"] = tls
    path.write_text(json.dumps({"pid": os.getpid(), "updated": 1.0, "zookeeper": zookeeper}))
    state = read_status_file(str(path))
    if state is None:
        return
    ensemble = published_ensemble(state)
    if ensemble is None:
        assert not hosts
        return
    assert ensemble[0] == hosts and isinstance(ensemble[1], bool)
    check_hosts(ensemble[0])
    assert ensemble[0].isprintable() and len(ensemble[0]) <= 10000


# How supervisord is found: the files are read by supervisor's own ClientOptions.

def write(path, text: str):
    path.write_text(text)
    return str(path)


def test_a_supervisorctl_section_is_read_as_supervisorctl_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ZKW_TEST_PASSWORD", "from-env")
    conf = write(tmp_path / "s.conf", "[supervisorctl]\nserverurl = unix://%(here)s/s.sock ; "
                 "comment\nusername = admin\npassword = %(ENV_ZKW_TEST_PASSWORD)s\n"
                 "[ctlplugin:other]\nsupervisor.ctl_factory = not_installed:factory\n")
    found = supervisord.read_supervisorctl_section(conf)
    assert (found.server_url, found.username, found.password) == (
        f"unix://{tmp_path}/s.sock", "admin", "from-env")
    assert found.source == f"[supervisorctl] of {conf}"


def test_a_file_without_a_supervisorctl_section_means_supervisorctls_defaults(tmp_path):
    conf = write(tmp_path / "s.conf", "[unix_http_server]\nfile = /tmp/x.sock\n")
    found = supervisord.read_supervisorctl_section(conf)
    assert (found.server_url, found.username, found.password) == (
        "http://localhost:9001", None, None)
    assert "has no [supervisorctl]" in found.source


@pytest.mark.parametrize("text, message", [
    (None, "cannot read it: No such file or directory"),
    ("not an ini file\n", "File contains no section headers"),
    ("[supervisorctl]\nserverurl = ftp://x\n", "serverurl: Unknown protocol for serverurl ftp://x"),
    ("[supervisorctl]\npassword = %(ENV_NO_SUCH_VARIABLE_HERE)s\n", "ENV_NO_SUCH_VARIABLE_HERE"),
    (b"\xff\xfe[supervisorctl]\n", "codec can't decode"),
])
def test_a_supervisord_config_that_cannot_be_used_exits_2_naming_it(tmp_path, text, message):
    conf = tmp_path / "s.conf"
    if isinstance(text, bytes):
        conf.write_bytes(text)
    elif text is not None:
        conf.write_text(text)
    config = write(tmp_path / "x.cfg", "[web]\ncmd = true\nservice_port = 80\n"
                   "service_hostname = h\nzookeeper_path = /s\n")
    result = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "drain", "web",
                             "-C", str(conf), "-c", config], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"zkwatcher-supervisor drain: supervisord config {conf}: " in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "Available names" not in result.stderr  # not the list of every variable's name
    assert len(result.stderr.splitlines()) == 1


def test_where_supervisord_is_comes_from_the_first_place_that_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # supervisorctl's search path starts here
    given = write(tmp_path / "given.conf",
                  "[supervisorctl]\nserverurl = unix:///given.sock\nusername = g\n"
                  "password = gp\n")
    write(tmp_path / "supervisord.conf",
          "[supervisorctl]\nserverurl = unix:///searched.sock\nusername = s\n")
    secret = write(tmp_path / "secret", "from-file\n")
    env = {"SUPERVISOR_SERVER_URL": "unix:///env.sock", "SUPERVISOR_USERNAME": "e",
           "SUPERVISOR_PASSWORD": "ep"}

    def found(environ=env, **flags):
        connection = supervisord.resolve(environ=environ, **flags)
        return connection.server_url, connection.username, connection.password

    assert found(serverurl="http://127.0.0.1:9", username="f", password_file=secret,
                 supervisord_conf=given) == ("http://127.0.0.1:9", "f", "from-file")
    assert found(supervisord_conf=given) == ("unix:///given.sock", "g", "gp")
    assert found(supervisord_conf=given, password="typed") == ("unix:///given.sock", "g",
                                                               "typed")
    assert found() == ("unix:///env.sock", "e", "ep")
    assert found(environ={}) == ("unix:///searched.sock", "s", None)
    assert supervisord.resolve(environ={}).source == "[supervisorctl] of supervisord.conf"
    os.unlink("supervisord.conf")
    elsewhere = supervisord.found_on_search_path()  # /etc/supervisor/..., if installed
    assert found(environ={})[0] == (supervisord.read_supervisorctl_section(elsewhere).server_url
                                    if elsewhere else "http://localhost:9001")
    with pytest.raises(supervisord.SupervisordConfError, match="--password-file: cannot read"):
        supervisord.resolve(password_file=str(tmp_path / "missing"), environ={})
    with pytest.raises(supervisord.SupervisordConfError, match=r"\$SUPERVISOR_SERVER_URL"):
        supervisord.resolve(environ={"SUPERVISOR_SERVER_URL": "nonsense"})


def test_supervisorctls_search_path_is_its_own():
    from supervisor.options import ClientOptions

    assert supervisord.search_path() == ClientOptions().searchpaths
    assert "supervisord.conf" in supervisord.search_path()
    assert "/etc/supervisor/supervisord.conf" in supervisord.search_path()


def test_the_ensemble_asked_is_s_else_the_listeners_else_the_configs(tmp_path):
    from zkwatcher_supervisor.config import load_config
    from zkwatcher_supervisor.status import reading_settings

    path = tmp_path / "x.cfg"
    path.write_text("[zkwatcher]\nhosts = config:1\n[web]\ncmd = true\nservice_port = 80\n"
                    "service_hostname = h\nzookeeper_path = /s\n")
    plain = {"zookeeper": {"hosts": "listener:1/chroot", "tls": False}}
    assert reading_settings(load_config(str(path)), plain).hosts == "listener:1/chroot"
    assert reading_settings(load_config(str(path)), None).hosts == "config:1"
    assert reading_settings(load_config(str(path)), {"zookeeper": {}}).hosts == "config:1"
    overridden = load_config(str(path), hosts_override="given:1")
    assert reading_settings(overridden, plain, hosts_override="given:1").hosts == "given:1"
    with pytest.raises(ValueError, match="the listener speaks TLS to listener:1/chroot, and "
                       f"{path} has no TLS settings"):
        reading_settings(load_config(str(path)),
                         {"zookeeper": {"hosts": "listener:1/chroot", "tls": True}})


def test_a_command_says_why_zookeeper_is_unreachable_in_its_own_words(tmp_path):
    """kazoo's reconnect lines stay out of a command's answer unless -v asks for them."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again: nothing listens there
    config = write(tmp_path / "x.cfg", f"[zkwatcher]\nhosts = 127.0.0.1:{port}\n"
                   "[web]\ncmd = true\nservice_port = 80\nservice_hostname = h\n"
                   "zookeeper_path = /s\n")
    quiet, verbose = (subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *flags,
                                      "status", "-c", config], capture_output=True, text=True,
                                     timeout=60) for flags in ((), ("-v",)))
    assert quiet.returncode == verbose.returncode == 1
    assert f"ZooKeeper 127.0.0.1:{port}: unreachable" in quiet.stdout
    assert quiet.stderr == ""
    assert "kazoo" in verbose.stderr


def test_status_without_a_config_still_checks_s(tmp_path):
    result = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status",
                             "-c", str(tmp_path / "none.cfg"), "-s", "a:b:c"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("zkwatcher-supervisor status: --server: expected "
                             "host:port[,host:port...][/chroot], got 'a:b:c'\n")


def test_status_json_into_a_reader_that_leaves_early(tmp_path):
    """`status --json | head -c 1`: no traceback from the closed pipe."""
    config = write(tmp_path / "x.cfg", "[zkwatcher]\nhosts = 127.0.0.1:1\n[web]\ncmd = true\n"
                   "service_port = 80\nservice_hostname = h\nzookeeper_path = /s\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write
    with os.fdopen(write_end, "wb") as stdout:
        result = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status",
                                 "-c", config, "--json"], stdout=stdout,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_the_plugins_drain_takes_options_and_sections_in_any_order():
    from zkwatcher_supervisor.ctlplugin import drain_parser

    args = drain_parser("drain").parse_args(["web", "--reason", "x", "other", "--for", "1m"])
    assert (args.sections, args.reason, args.duration) == (["web", "other"], "x", "1m")


@pytest.mark.parametrize("url, local", [
    ("unix:///var/run/supervisor.sock", True),
    ("http://localhost:9001", True),
    ("http://box.localhost:9001", True),
    ("http://127.0.0.1:9001", True),
    ("http://127.8.9.10:9001", True),
    ("http://[::1]:9001", True),
    ("http://LOCALHOST:9001", True),
    ("http://10.0.0.5:9001", False),
    ("http://supervisor.example.com:9001", False),
    ("http://localhost.example.com:9001", False),
    ("http://[::2]:9001", False),
])
def test_the_plugin_works_with_a_local_supervisord_only(url, local):
    from zkwatcher_supervisor.ctlplugin import remote_server

    assert (remote_server(url) is None) is local


def test_the_plugins_relative_config_is_taken_from_supervisorctls_file(tmp_path):
    from types import SimpleNamespace

    from zkwatcher_supervisor.ctlplugin import make_plugin

    controller = SimpleNamespace(options=SimpleNamespace(configfile=str(tmp_path / "ctl.conf")))
    assert make_plugin(controller, config="zk/config.cfg").config_path == str(
        tmp_path / "zk" / "config.cfg")
    assert make_plugin(controller, config="/etc/zk/x.cfg").config_path == "/etc/zk/x.cfg"
