"""Config parsing: zk_watcher's files load unchanged; every mistake is located."""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zkwatcher_supervisor.config import (
    ConfigError,
    ProgramSpec,
    load_config,
    parse_zookeeper_data,
)
from zkwatcher_supervisor.payload import node_payload

ZK_WATCHER_README_EXAMPLE = """\
[ssh]
cmd: /etc/init.d/sshd status
refresh: 60
service_port: 22
zookeeper_path: /services/ssh
zookeeper_data:{trailing_space}

[apache]
cmd: /etc/init.d/apache status
refresh: 60
service_port: 22
zookeeper_path: /services/web
zookeeper_data:{trailing_space}

[auth]
user: username
password: 123456
""".format(trailing_space=" ")  # zk_watcher's README has "zookeeper_data: " with a space

# zk_watcher's own docs show both zookeeper_data spellings.
ZK_WATCHER_DOCS_EXAMPLE = """\
[ssh]
cmd: /etc/init.d/sshd status
refresh: 60
service_port: 22
service_hostname: 123.123.123.123
zookeeper_path: /services/ssh
zookeeper_data: { "foo": "bar", "bah": "humbug" }

[apache]
cmd: /etc/init.d/apache status
refresh: 60
service_port: 80
zookeeper_path: /services/web
zookeeper_data: foo=bar, bah=humbug
"""


def write(tmp_path, text):
    path = tmp_path / "config.cfg"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_zk_watcher_readme_example_loads(tmp_path):
    config = load_config(write(tmp_path, ZK_WATCHER_README_EXAMPLE))
    assert [s.name for s in config.services] == ["ssh", "apache"]
    ssh, apache = config.services
    assert ssh.cmd == "/etc/init.d/sshd status"
    assert ssh.refresh == 60
    assert ssh.zookeeper_data == {}
    assert apache.zookeeper_path == "/services/web"
    assert config.zookeeper.auth.user == "username"
    assert config.zookeeper.auth.password == "123456"
    assert config.zookeeper.hosts == "localhost:2181"


def test_zk_watcher_docs_example_loads_with_both_data_spellings(tmp_path):
    ssh, apache = load_config(write(tmp_path, ZK_WATCHER_DOCS_EXAMPLE)).services
    assert ssh.zookeeper_data == {"foo": "bar", "bah": "humbug"}
    assert apache.zookeeper_data == {"foo": "bar", "bah": "humbug"}  # keys stripped
    assert ssh.node_path == "/services/ssh/123.123.123.123:22"


def test_defaults_and_global_section(tmp_path):
    config = load_config(write(tmp_path, """
        [zkwatcher]
        hosts = zk1:2181,zk2:2181/chroot
        session_timeout = 7.5

        [web]
        program = web
        service_port = 8080
        zookeeper_path = /services/web/
        """), hosts_override=None)
    (web,) = config.services
    assert config.zookeeper.hosts == "zk1:2181,zk2:2181/chroot"
    assert config.zookeeper.session_timeout == 7.5
    assert web.program == ProgramSpec("web", "web")
    assert web.cmd is None
    assert (web.refresh, web.timeout, web.rise, web.fall) == (30, 10.0, 1, 1)
    assert web.service_hostname  # socket.getfqdn()
    assert web.node_path == f"/services/web/{web.service_hostname}:8080"


def test_server_flag_overrides_hosts(tmp_path):
    path = write(tmp_path, "[zkwatcher]\nhosts = a:1\n[s]\ncmd = true\n"
                           "service_port = 1\nzookeeper_path = /s\n")
    assert load_config(path, hosts_override="127.0.0.1:2222").zookeeper.hosts == "127.0.0.1:2222"


def test_percent_signs_in_commands_are_literal(tmp_path):
    path = write(tmp_path, "[s]\ncmd = test $(date +%s) -gt 0\nservice_port = 1\n"
                           "zookeeper_path = /s\n")
    assert load_config(path).services[0].cmd == "test $(date +%s) -gt 0"


def test_unknown_keys_are_warnings_not_errors(tmp_path):
    path = write(tmp_path, "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n"
                           "colour = blue\n")
    config = load_config(path)
    assert config.warnings == (f"{path}: [s] colour: unknown key, ignored",)


BAD_CONFIGS = [
    ("[s]\ncmd = true\nzookeeper_path = /s\n", "[s] service_port: required key is missing"),
    ("[s]\ncmd = true\nservice_port = http\nzookeeper_path = /s\n",
     "[s] service_port: expected an integer, got 'http'"),
    ("[s]\ncmd = true\nservice_port = 70000\nzookeeper_path = /s\n",
     "[s] service_port: must be between 1 and 65535, got 70000"),
    ("[s]\ncmd = true\nrefresh = 2.5\nservice_port = 1\nzookeeper_path = /s\n",
     "[s] refresh: expected an integer, got '2.5'"),
    ("[s]\ncmd = true\nrefresh = soon\nservice_port = 1\nzookeeper_path = /s\n",
     "[s] refresh: expected an integer, got 'soon'"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = services/s\n",
     "[s] zookeeper_path: must be an absolute path starting with '/', got 'services/s'"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s//x\n",
     "[s] zookeeper_path: not a valid znode path: '/s//x'"),
    ("[s]\ncmd = true\nservice_port = 1\n", "[s] zookeeper_path: required key is missing"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\nzookeeper_data = {\"a\": \n",
     "[s] zookeeper_data: not valid JSON"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\nzookeeper_data = [1, 2]\n",
     "[s] zookeeper_data: expected key=value, got '[1'"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\nzookeeper_data = a=1, b\n",
     "[s] zookeeper_data: expected key=value, got 'b'"),
    ("[s]\nservice_port = 1\nzookeeper_path = /s\n", "[s]: needs 'cmd', 'program' or both"),
    ("[s]\nprogram = a:b:c\nservice_port = 1\nzookeeper_path = /s\n",
     "[s] program: expected name, group:name or group:*, got 'a:b:c'"),
    ("[s]\ncmd = true\ntimeout = 0\nservice_port = 1\nzookeeper_path = /s\n",
     "[s] timeout: must be a positive number of seconds, got '0'"),
    ("[s]\ncmd = true\nrise = 0\nservice_port = 1\nzookeeper_path = /s\n",
     "[s] rise: must be >= 1, got 0"),
    ("[zkwatcher]\nsession_timeout = x\n[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "[zkwatcher] session_timeout: expected a number of seconds, got 'x'"),
    ("[zkwatcher]\nhosts = zk1:two\n[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "[zkwatcher] hosts: expected host:port"),
    ("[auth]\nuser = u\n[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "[auth] password: required key is missing"),
    ("[a]\ncmd = true\nservice_port = 1\nservice_hostname = h\nzookeeper_path = /s\n"
     "[b]\ncmd = false\nservice_port = 1\nservice_hostname = h\nzookeeper_path = /s/\n",
     "[b]: same znode /s/h:1 as [a]"),
    ("[zkwatcher]\nhosts = a:1\n", "no service sections; nothing to register"),
    ("[s]\ncmd = true\n[s]\ncmd = false\n", "section 's' already exists"),
    ("cmd = true\n", "File contains no section headers"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_names_file_section_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.cfg: cannot read config file: No such file"):
        load_config(str(tmp_path / "nope.cfg"))


def test_program_spec_follows_supervisorctl_namespecs():
    assert ProgramSpec.parse("web").matches("web", "web")
    assert not ProgramSpec.parse("web").matches("web", "web_01")
    assert ProgramSpec.parse("grp:web").matches("grp", "web")
    assert not ProgramSpec.parse("grp:web").matches("grp", "other")
    spec = ProgramSpec.parse("grp:*")
    assert spec.matches("grp", "web_00") and spec.matches("grp", "web_01")
    assert not spec.matches("other", "web_00")


def test_payload_is_compact_json_and_user_keys_win(tmp_path):
    path = write(tmp_path, "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n"
                           "zookeeper_data = {\"pid\": \"custom\", \"weight\": 3}\n")
    (service,) = load_config(path).services
    raw = node_payload(service, pid=4242, created=0)
    assert b" " not in raw.replace(b"1970-01-01 ", b"")
    data = json.loads(raw)
    assert data == {"pid": "custom", "created": data["created"], "weight": 3}


keys = st.text(alphabet=st.characters(blacklist_characters=",=", blacklist_categories=["Cs"]),
               min_size=1).filter(lambda k: k.strip() and not k.strip().startswith("{"))
values = st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=["Cs"]))


@given(st.dictionaries(keys, values, min_size=1))
def test_key_value_data_round_trips_with_stripping(pairs):
    stripped = {k.strip(): v.strip() for k, v in pairs.items()}
    text = " , ".join(f" {k} = {v} " for k, v in pairs.items())
    if len(stripped) == len(pairs):
        assert parse_zookeeper_data(text) == stripped


@given(st.dictionaries(st.text(), st.one_of(st.integers(), st.text(), st.booleans())))
def test_json_data_round_trips(data):
    assert parse_zookeeper_data(json.dumps(data)) == data
