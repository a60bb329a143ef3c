"""Config parsing: zk_watcher's files load unchanged; every mistake is located."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from zkwatcher_supervisor.config import (
    Config,
    ConfigError,
    ProgramSpec,
    ServiceSettings,
    ZooKeeperSettings,
    load_config,
    parse_zookeeper_data,
)
from zkwatcher_supervisor.payload import node_payload
from zkwatcher_supervisor.privilege import (
    CheckUser,
    check_user,
    may_enter,
    switch_error,
    unsafe_path,
)

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
    assert ssh.registration_key == "/services/ssh/123.123.123.123:22"


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
    assert web.registration_key == f"/services/web/{web.service_hostname}:8080"


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
    assert config.warnings == (f"{path}: line 5: [s] colour: unknown key, ignored",)


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
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\nzookeeper_data = [1, 2]\n",
     "line 5: [s] zookeeper_data: expected a JSON object or k=v pairs, got '[1, 2]' "
     "(zk_watcher could not store it"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\nzookeeper_data = 7\n",
     "[s] zookeeper_data: expected a JSON object or k=v pairs, got '7'"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\nzookeeper_data = true\n",
     "[s] zookeeper_data: expected a JSON object or k=v pairs, got 'true'"),
    ("[s]\ncmd = true\nservice_port = +80\nzookeeper_path = /s\n",
     "line 3: [s] service_port: expected an integer, got '+80'"),
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
    ("[auth]\nuser = u\npassword = p\nmechanism = GSSAPI\n"
     "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "line 4: [auth] mechanism: GSSAPI (Kerberos) is not supported; use DIGEST-MD5 or digest"),
    ("[auth]\nuser = u\npassword = p\nmechanism = PLAIN\n"
     "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "line 4: [auth] mechanism: expected digest or DIGEST-MD5, got 'PLAIN'"),
    ("[a]\ncmd = true\nservice_port = 1\nservice_hostname = h\nzookeeper_path = /s\n"
     "[b]\ncmd = false\nservice_port = 1\nservice_hostname = h\nzookeeper_path = /s/\n",
     "[b]: same znode /s/h:1 as [a]"),
    ("[a]\ncmd = true\nservice_port = 80\nservice_hostname = h\nzookeeper_path = /s\n"
     "payload_format = nerve\ninstance_id = i-1\n"
     "[b]\ncmd = true\nservice_port = 80\nservice_hostname = h\nzookeeper_path = /s/\n"
     "payload_format = nerve\ninstance_id = i-2\n",
     "[b]: announces h:80 under /s as [a] does; readers would list it twice"),
    ("[a]\ncmd = true\nservice_port = 80\nservice_hostname = h\nzookeeper_path = /s\n"
     "payload_format = serverset\n"
     "[b]\ncmd = true\nservice_port = 0080\nservice_hostname = H\nzookeeper_path = /s\n"
     "payload_format = nerve\n",
     "[b]: announces H:80 under /s as [a] does; readers would list it twice"),
    ("[zkwatcher]\nhosts = a:1\n", "no service sections; nothing to register"),
    ("[s]\ncmd = true\n[s]\ncmd = false\n", "line 3: section [s] appears twice"),
    ("[s]\ncmd = true\nCMD = false\n", "line 3: [s] cmd: key appears twice in the section"),
    ("cmd = true\n", "line 1: 'cmd = true' comes before the first [section] header"),
    ("[s]\ncmd = true\nservice_port\nzookeeper_path = /s\n",
     "line 3: 'service_port': a key without a value"),
    ("# c\n[s]\ncmd = true\n[t\n", "line 4: '[t': a section header needs a closing ']'"),
    ("[s]\n = true\n", "line 2: '= true': no key before '='"),
    ("[s]\ncmd = true\nzookeeper_path = /s\nservice_port = %(port)s\n",
     "line 4: [s] service_port: %(port)s: no key 'port' in [s] or [DEFAULT]"),
    ("[DEFAULT]\nloop = %(loop)s\n[s]\ncmd = true\nzookeeper_path = /s\nservice_port = 1\n",
     "line 2: [s] loop: %(...)s references nest too deeply"),
    ("[s]\ncmd = true\nuser = no-such-user-zkw\nservice_port = 1\nzookeeper_path = /s\n",
     "line 3: [s] user: no such user 'no-such-user-zkw'"),
    ("[s]\ncmd = true\nuser = 4000000000\nservice_port = 1\nzookeeper_path = /s\n",
     "line 3: [s] user: no such user '4000000000'"),
    ("[s]\ncmd = true\nuser = nobody\ngroup = no-such-group-zkw\nservice_port = 1\n"
     "zookeeper_path = /s\n", "line 4: [s] group: no such group 'no-such-group-zkw'"),
    ("[s]\ncmd = true\ngroup = nogroup\nservice_port = 1\nzookeeper_path = /s\n",
     "line 3: [s] group: needs a user too (a check left running as root could change"),
    ("[zkwatcher]\ngroup = nogroup\n[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "line 2: [zkwatcher] group: needs a user too for [s] (a check"),
    ("[zkwatcher]\nuser = no-such-user-zkw\n[s]\ncmd = true\nservice_port = 1\n"
     "zookeeper_path = /s\n", "line 2: [zkwatcher] user: no such user 'no-such-user-zkw'"),
    ("[s]\ncmd = true\nenvironment = A\nservice_port = 1\nzookeeper_path = /s\n",
     "line 3: [s] environment: expected KEY=\"value\",KEY2=\"value2\", as in supervisord's"),
    ("[s]\ncmd = true\nservice_hostname = web1 # primary\nservice_port = 1\n"
     "zookeeper_path = /s\n", "line 3: [s] service_hostname: must not contain '#' (an "
     "inline comment is part of the value), got 'web1 # primary'"),
    ("[s]\ncmd = true\nstart_drained = maybe\nservice_port = 1\nzookeeper_path = /s\n",
     "line 3: [s] start_drained: expected true or false, got 'maybe'"),
    ("[" + "s" * 1001 + "]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n",
     "section name longer than 1000 characters"),
    ("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /" + "p" * 4100 + "\n",
     "is longer than 4096 characters"),
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
    created = 1795600000.0
    raw = node_payload(service, pid=4242, created=created)
    # The local time, as zk_watcher wrote it, in compact JSON.
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    assert raw == b'{"pid":"custom","created":"%s","weight":3}' % local.encode()


keys = st.text(alphabet=st.characters(blacklist_characters=",=", blacklist_categories=["Cs"]),
               min_size=1).filter(lambda k: k.strip() and not k.strip().startswith("{"))
values = st.text(alphabet=st.characters(blacklist_characters=",=", blacklist_categories=["Cs"]))


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@given(st.dictionaries(keys, values, min_size=1))
def test_key_value_data_round_trips_with_stripping(pairs):
    stripped = {k.strip(): v.strip() for k, v in pairs.items()}
    text = " , ".join(f" {k} = {v} " for k, v in pairs.items())
    assume(not_json(text.strip()))
    assume(len(stripped) == len(pairs))  # keys differing only in spaces collide
    assert parse_zookeeper_data(text) == stripped


@given(st.dictionaries(st.text(), st.one_of(st.integers(), st.text(), st.booleans())))
def test_json_data_round_trips(data):
    assert parse_zookeeper_data(json.dumps(data)) == data


def zk_watcher_data(text: str) -> dict:
    """What zk_watcher 0.4.0 + nd_service_registry 1.1.0 merged into the payload for ``text``
    (read from their source), with our one deliberate change: k=v keys and values stripped.
    Raises TypeError where nd_service_registry could not store the value."""
    text = text.strip()  # configparser strips every value
    try:
        data = json.loads(text)
    except Exception:
        data = {}
        for pair in text.split(","):
            if len(pair.split("=")) == 2:
                key, value = pair.split("=")
                data[key.strip()] = value.strip()
    if isinstance(data, str):
        data = {"string_value": data}
    merged: dict = {}
    if data:
        merged.update(data)
    return merged


zookeeper_data_texts = st.one_of(
    st.text(alphabet=' ={}[],:"ab1\'\\'),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet="ab =,"),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(alphabet="ab ="), inner, max_size=3))
    .map(json.dumps),
)


@given(zookeeper_data_texts)
def test_zookeeper_data_gives_what_zk_watcher_stored(text):
    try:
        expected = zk_watcher_data(text)
    except (TypeError, ValueError):
        with pytest.raises(ValueError, match="zk_watcher could not store it"):
            parse_zookeeper_data(text)
    else:
        assert parse_zookeeper_data(text) == expected


@pytest.mark.parametrize(("text", "data", "warning"), [
    ("foo", {}, "ignored 'foo': not key=value with a single '=' (zk_watcher ignored it too)"),
    ('"str"', {"string_value": "str"}, "a JSON string; stored as {\"string_value\": 'str'}"),
    ("{'a': 1}", {}, "not valid JSON (Expecting property name enclosed in double quotes at "
     "column 2); read as k=v pairs, as zk_watcher did"),
    ("url=http://x/?a=b, n=1", {"n": "1"}, "ignored 'url=http://x/?a=b'"),
    ("null", {}, "null adds no data (zk_watcher ignored it too)"),
    ("[]", {}, "[] adds no data"),
    ('[["a", 1]]', {"a": 1}, "a JSON array of pairs; stored as an object"),
    ("a=1, b", {"a": "1"}, "ignored 'b'"),
])
def test_zookeeper_data_zk_watcher_tolerated_loads_with_a_warning(tmp_path, text, data, warning):
    path = write(tmp_path, "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n"
                           f"zookeeper_data = {text}\n")
    config = load_config(path)
    assert config.services[0].zookeeper_data == data
    (message,) = config.warnings
    assert message.startswith(f"{path}: line 5: [s] zookeeper_data: {warning}")
    payload = json.loads(node_payload(config.services[0], pid=1, created=0))
    assert {k: v for k, v in payload.items() if k not in ("pid", "created")} == data


def test_default_section_is_inherited_and_not_a_service(tmp_path):
    path = write(tmp_path, """
        [DEFAULT]
        cmd: true
        refresh: 60
        service_hostname: web1
        env: prod

        [ssh]
        service_port: 22
        zookeeper_path: /services/%(env)s/ssh

        [web]
        refresh: 5
        service_port: 80
        zookeeper_path: /services/%(env)s/web
        zookeeper_data: {"env": "%(env)s", "load": "100%%"}
        """)
    config = load_config(path)
    assert config.warnings == ()  # env is a variable, not an unknown key
    ssh, web = config.services
    assert [s.name for s in config.services] == ["ssh", "web"]
    assert (ssh.cmd, ssh.refresh, web.refresh) == ("true", 60, 5)
    assert ssh.registration_key == "/services/prod/ssh/web1:22"
    assert web.registration_key == "/services/prod/web/web1:80"
    assert web.zookeeper_data == {"env": "prod", "load": "100%"}


def test_auth_password_is_interpolated_like_zk_watcher(tmp_path):
    path = write(tmp_path, "[auth]\nuser: deploy\npassword: 50%%off-%(user)s\n"
                           "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n")
    assert load_config(path).zookeeper.auth.password == "50%off-deploy"


def test_bare_percent_stays_literal_with_a_warning(tmp_path):
    path = write(tmp_path, "[s]\ncmd = test $(date +%s) -gt 0\nservice_port = 1\n"
                           "zookeeper_path = /s\n")
    config = load_config(path)
    assert config.services[0].cmd == "test $(date +%s) -gt 0"
    assert config.warnings == (
        f"{path}: line 2: [s] cmd: '%' kept literally (zk_watcher's parser rejected this value; "
        "write %% for a literal %)",)


@pytest.mark.parametrize("refresh", ["0", "-5"])
def test_refresh_zero_runs_every_second_with_a_warning(tmp_path, refresh):
    path = write(tmp_path, f"[s]\ncmd = true\nrefresh: {refresh}\nservice_port = 1\n"
                           "zookeeper_path = /s\n")
    config = load_config(path)
    assert config.services[0].refresh == 1
    assert config.warnings == (f"{path}: line 3: [s] refresh: {refresh}: running the check "
                               "every 1 s, as zk_watcher did",)


def test_port_with_leading_zeros_keeps_zk_watchers_node_name(tmp_path):
    path = write(tmp_path, "[s]\ncmd = true\nservice_port: 0080\nservice_hostname: h\n"
                           "zookeeper_path = /s\n")
    config = load_config(path)
    (service,) = config.services
    assert service.registration_key == "/s/h:0080"
    assert service.service_port == 80
    assert "line 3: [s] service_port: leading zeros kept in the node name h:0080" in \
        config.warnings[0]


def test_empty_service_hostname_means_fqdn_with_a_warning(tmp_path):
    path = write(tmp_path, "[s]\ncmd = true\nservice_port: 22\nservice_hostname:\n"
                           "zookeeper_path = /s\n")
    config = load_config(path)
    assert config.services[0].service_hostname == socket.getfqdn()
    assert "[s] service_hostname: empty; using this host's FQDN" in config.warnings[0]


def test_auth_password_readable_by_others_is_a_warning(tmp_path):
    path = write(tmp_path, "[auth]\nuser: u\npassword: p\n"
                           "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n")
    os.chmod(path, 0o644)
    assert load_config(path).warnings == (
        f"{path}: line 3: [auth] password: the file is readable by group or others (mode 0644); "
        f"chmod go-rwx {path}",)
    os.chmod(path, 0o600)
    assert load_config(path).warnings == ()


def test_huge_or_endless_file_is_a_clear_error(tmp_path):
    big = tmp_path / "big.cfg"
    big.write_bytes(b"[s]\n" + b"#" * (16 * 2**20))
    for path in (str(big), "/dev/zero"):
        with pytest.raises(ConfigError, match=r": larger than 16 MiB; not a config file$"):
            load_config(path)


@pytest.mark.parametrize(("text", "message"), [
    ("[s]\ncmd = true\n[s]\n", "line 3: section [s] appears twice"),
    ("[s]\ncmd = true\n  zookeeper_path\n", None),  # continuation: valid, cmd = "true\nzoo..."
    ("[s]\ncmd = true\nzookeeper_path\n", "line 3: 'zookeeper_path': a key without a value"),
    (b"[s]\ncmd = \xff\n", "line 2: config file is not UTF-8 text"),
    ("[a]\ncmd = true\nservice_port = 80\nzookeeper_path = /s\npayload_format = serverset\n"
     "[b]\ncmd = true\nservice_port = 80\nzookeeper_path = /s\npayload_format = nerve\n",
     "line 6: [b]: announces "),
])
def test_command_line_names_file_and_line_and_exits_2(tmp_path, text, message):
    path = tmp_path / "config.cfg"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "-c", str(path),
                             "--check-config"], capture_output=True, text=True, timeout=30)
    if message is None:
        # The indented line continues cmd, so the section then lacks its keys.
        message = "[s] zookeeper_path: required key is missing"
    assert result.returncode == 2
    assert result.stderr.startswith(f"zkwatcher-supervisor: {path}: {message}")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_unused_default_key_is_a_warning(tmp_path):
    path = write(tmp_path, "[DEFAULT]\nrefrsh = 5\nenv = prod\nrefresh = 5\n"
                           "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /%(env)s\n")
    assert load_config(path).warnings == (f"{path}: line 2: [DEFAULT] refrsh: unknown key, "
                                          "ignored",)


def nobody_gid() -> int:
    return pwd.getpwnam("nobody").pw_gid


def test_check_user_is_resolved_as_initgroups_would_set_it(tmp_path):
    config = load_config(write(tmp_path, """
        [by-name]
        cmd = true
        user = nobody
        service_port = 1
        zookeeper_path = /s

        [by-uid]
        cmd = true
        user = 65534
        group = daemon
        service_port = 2
        zookeeper_path = /s
        """))
    by_name, by_uid = config.services
    gid = nobody_gid()
    assert by_name.user == CheckUser("nobody", 65534, gid, tuple(os.getgrouplist("nobody", gid)),
                                     "/nonexistent", directory="/")  # home: cannot enter
    daemon = grp.getgrnam("daemon").gr_gid
    assert (by_uid.user.name, by_uid.user.uid, by_uid.user.gid) == ("nobody", 65534, daemon)
    assert by_uid.user.groups == tuple(os.getgrouplist("nobody", daemon))


def test_zkwatcher_user_is_the_default_for_check_commands_only(tmp_path):
    config = load_config(write(tmp_path, """
        [zkwatcher]
        user = nobody

        [script]
        cmd = true
        service_port = 1
        zookeeper_path = /s

        [own]
        cmd = true
        user = root
        service_port = 2
        zookeeper_path = /s

        [probe]
        cmd = tcp://127.0.0.1:22
        service_port = 3
        zookeeper_path = /s

        [bound]
        program = web
        service_port = 4
        zookeeper_path = /s
        """))
    users = {service.name: service.user and service.user.name for service in config.services}
    assert users == {"script": "nobody", "own": "root", "probe": None, "bound": None}
    assert config.warnings == ()


def test_defaults_user_is_auths_and_not_who_runs_the_checks(tmp_path):
    # zk_watcher configs put [auth] user in [DEFAULT]; this host need not have one.
    path = write(tmp_path, """
        [DEFAULT]
        user = deploy-zkw-nonexistent

        [zkwatcher]
        hosts = zk1:2181

        [auth]
        password = p

        [web]
        cmd = true
        service_port = 1
        zookeeper_path = /s

        [own]
        cmd = true
        user = nobody
        service_port = 2
        zookeeper_path = /s
        """)
    os.chmod(path, 0o600)
    config = load_config(path)
    assert config.zookeeper.auth.user == "deploy-zkw-nonexistent"
    web, own = config.services
    assert web.user is None and web.check_env == {
        key: value for key, value in os.environ.items() if not key.startswith("SUPERVISOR_")}
    assert own.user.name == "nobody"
    assert config.warnings == (
        f"{path}: line 3: [DEFAULT] user: not taken for check commands (it is [auth] user, "
        "as for zk_watcher); to set the checks' user, write it in [zkwatcher] or a section",)


def test_no_check_identity_key_is_inherited_from_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("FROM_DEFAULT", raising=False)
    path = write(tmp_path, """
        [DEFAULT]
        user = nobody
        group = daemon
        environment = FROM_DEFAULT="1"

        [zkwatcher]
        hosts = zk1:2181

        [auth]
        user = digest-user
        password = p

        [web]
        cmd = true
        service_port = 1
        zookeeper_path = /s
        """)
    os.chmod(path, 0o600)
    config = load_config(path)
    (web,) = config.services
    assert (web.user, web.environment) == (None, ())
    assert "FROM_DEFAULT" not in web.check_env
    assert config.zookeeper.auth.user == "digest-user"
    assert config.warnings == tuple(
        f"{path}: line {line}: [DEFAULT] {key}: not taken for check commands; to set the "
        f"checks' {key}, write it in {where}"
        for line, key, where in ((3, "user", "[zkwatcher] or a section"),
                                 (4, "group", "[zkwatcher] or a section"),
                                 (5, "environment", "a section")))


def test_user_where_nothing_is_spawned_is_a_warning(tmp_path):
    path = write(tmp_path, "[probe]\ncmd = tcp://127.0.0.1:22\nuser = nobody\n"
                           "service_port = 1\nzookeeper_path = /s\n")
    config = load_config(path)
    assert config.services[0].user is None
    assert config.warnings == (f"{path}: line 3: [probe] user: has no effect: only a check "
                               "command (not tcp:// or http://) runs as a user with an "
                               "environment",)


def test_checks_get_our_environment_without_supervisords_plus_their_own(tmp_path, monkeypatch):
    for key, value in {"SUPERVISOR_USERNAME": "admin", "SUPERVISOR_PASSWORD": "s3cret",
                       "SUPERVISOR_SERVER_URL": "unix:///s.sock", "SUPERVISOR_ENABLED": "1",
                       "SUPERVISOR_PROCESS_NAME": "zkwatcher", "KEPT": "yes"}.items():
        monkeypatch.setenv(key, value)
    config = load_config(write(tmp_path, """
        [DEFAULT]
        service_port = 1
        zookeeper_path = /s

        [plain]
        cmd = true

        [nobody]
        cmd = true
        user = nobody
        environment = A="1",B="x, y",C=plain,HOME="/var/empty"
        service_port = 2

        [also-plain]
        cmd = false
        service_port = 3
        """))
    plain, nobody, also_plain = config.services
    for service in (plain, nobody):
        assert not [key for key in service.check_env if key.startswith("SUPERVISOR_")]
        assert service.check_env["KEPT"] == "yes"
    assert plain.check_env == {k: v for k, v in os.environ.items()
                               if not k.startswith("SUPERVISOR_")}
    assert nobody.environment == (("A", "1"), ("B", "x, y"), ("C", "plain"),
                                  ("HOME", "/var/empty"))
    # As sudo -u sets them; the section's own environment wins.
    assert {k: nobody.check_env[k] for k in ("A", "B", "C", "HOME", "USER", "LOGNAME")} == {
        "A": "1", "B": "x, y", "C": "plain", "HOME": "/var/empty", "USER": "nobody",
        "LOGNAME": "nobody"}
    # Built once per distinct setting, not per section.
    assert plain.check_env is also_plain.check_env
    assert "s3cret" not in repr(nobody)


def test_a_sections_environment_may_give_a_check_supervisords_address_back(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///ours.sock")
    config = load_config(write(tmp_path, """
        [web]
        cmd = supervisorctl status web
        environment = SUPERVISOR_SERVER_URL="unix:///var/run/supervisor.sock"
        service_port = 1
        zookeeper_path = /s
        """))
    assert config.services[0].check_env["SUPERVISOR_SERVER_URL"] == (
        "unix:///var/run/supervisor.sock")


def test_a_listener_that_is_not_root_runs_checks_only_as_itself():
    def config(user, group=None):
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else None
        service = ServiceSettings("s", "/s", 1, "h", cmd="true", user=check_user(entry, gid))
        return Config("c.cfg", ZooKeeperSettings(), (service,))

    gid = nobody_gid()
    assert switch_error(config("nobody"), 0, 0) is None  # root may switch to anyone
    assert switch_error(config("nobody"), 65534, gid) is None  # itself: nothing to switch
    assert str(switch_error(config("root"), 65534, gid)) == (
        "c.cfg: [s] user: the listener runs as uid 65534, not root, and cannot switch to "
        "user 'root'")
    assert str(switch_error(config("nobody", "daemon"), 65534, gid)) == (
        f"c.cfg: [s] group: the listener runs with gid {gid}, not root, and cannot switch "
        f"to gid {grp.getgrnam('daemon').gr_gid}")


def test_may_enter_needs_search_permission_all_the_way_down(tmp_path, reachable_dir):
    gid = nobody_gid()
    # tmp_path is under pytest's 0700 directory: nobody cannot get that far.
    assert not may_enter(str(tmp_path), 65534, [gid])
    assert may_enter(str(tmp_path), 0, [0])
    assert not may_enter(str(tmp_path / "missing"), 0, [0])
    assert not may_enter("relative/home", 0, [0])
    top = reachable_dir / "top"
    (top / "home").mkdir(parents=True)
    os.chmod(top, 0o750)
    os.chown(top, 0, gid)
    os.chmod(top / "home", 0o700)
    os.chown(top / "home", 65534, gid)
    assert may_enter(str(top / "home"), 65534, [gid])  # via the group, then as owner
    assert not may_enter(str(top / "home"), 65533, [65533])
    os.chmod(top, 0o700)
    assert not may_enter(str(top / "home"), 65534, [gid])


def as_root():
    assert os.geteuid() == 0, "these tests check what the listener refuses as root"


@pytest.mark.parametrize(("layout", "culprit", "problem"), [
    ("file 0666", "cfg", "is writable by others (mode 0666); chmod o-w"),
    ("file 0620", "cfg", "is writable by group (mode 0620); chmod g-w"),
    ("file owned by nobody", "cfg", "is owned by uid 65534 (nobody), not root"),
    ("dir 0775", "dir", "is writable by group (mode 0775); chmod g-w"),
    ("dir 0777", "dir", "is writable by others (mode 0777); chmod o-w"),
    ("dir owned by nobody", "dir", "is owned by uid 65534 (nobody), not root"),
    ("sticky dir owned by nobody", "dir", "is owned by uid 65534 (nobody), not root"),
    ("link into dir 0777", "dir", "is writable by others (mode 0777); chmod o-w"),
    ("link via a link in dir 0777", "shared", "is writable by others (mode 0777); chmod o-w"),
    ("link via a relative link in dir 0777", "shared",
     "is writable by others (mode 0777); chmod o-w"),
    ("'..' after a link into dir 0777", "dir", "is writable by others (mode 0777); chmod o-w"),
    ("link by nobody in a sticky dir", "link", "is owned by uid 65534 (nobody), not root"),
])
def test_config_others_can_change_is_refused_as_root(tmp_path, layout, culprit, problem):
    as_root()
    directory = tmp_path / "etc"
    directory.mkdir()
    cfg = directory / "config.cfg"
    cfg.write_text("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n")
    os.chmod(cfg, 0o644)
    given = cfg
    if layout.startswith("file 0"):
        os.chmod(cfg, int(layout[-4:], 8))
    elif layout == "file owned by nobody":
        os.chown(cfg, 65534, -1)
    elif layout.startswith("dir 0"):
        os.chmod(directory, int(layout[-4:], 8))
    elif layout == "dir owned by nobody":
        os.chown(directory, 65534, -1)
    elif layout == "sticky dir owned by nobody":
        os.chmod(directory, 0o1777)
        os.chown(directory, 65534, -1)
    elif layout == "link into dir 0777":
        os.chmod(directory, 0o777)
        (tmp_path / "safe").mkdir()
        given = tmp_path / "safe" / "config.cfg"
        given.symlink_to(cfg)
    elif layout.startswith(("link via a", "link by nobody")):
        # given -> shared/hop -> etc/config.cfg: whoever can write shared/ could
        # point the hop elsewhere, though neither the path as given nor the file
        # it ends at is in a writable directory.
        shared = tmp_path / "shared"
        shared.mkdir()
        hop = shared / "hop"
        hop.symlink_to(cfg if "relative" not in layout else "../etc/config.cfg")
        if layout == "link by nobody in a sticky dir":
            os.chmod(shared, 0o1777)
            os.lchown(hop, 65534, -1)
        else:
            os.chmod(shared, 0o777)
        (tmp_path / "safe").mkdir()
        given = tmp_path / "safe" / "config.cfg"
        given.symlink_to(hop if "relative" not in layout else "../shared/hop")
    elif layout == "'..' after a link into dir 0777":
        # safe/sub -> etc/inner, so safe/sub/../config.cfg is etc/config.cfg for
        # the kernel, not safe/config.cfg as the path reads.
        os.chmod(directory, 0o777)
        (directory / "inner").mkdir()
        (tmp_path / "safe").mkdir()
        (tmp_path / "safe" / "sub").symlink_to(directory / "inner")
        (tmp_path / "safe" / "config.cfg").write_text(cfg.read_text())
        given = tmp_path / "safe" / "sub" / ".." / "config.cfg"
    with pytest.raises(ConfigError) as caught:
        load_config(str(given))
    culprit_path = {"cfg": cfg, "dir": directory, "shared": tmp_path / "shared",
                    "link": tmp_path / "shared" / "hop"}[culprit]
    assert str(caught.value) == (
        f"{given}: refused as root: others could change it, and with it the commands we "
        f"run: {culprit_path} {problem}" + (f" {culprit_path}" if "chmod" in problem else ""))


def test_a_chain_of_links_through_root_only_directories_loads_as_root(tmp_path):
    as_root()
    for name in ("etc", "shared", "real"):
        (tmp_path / name).mkdir()
    cfg = tmp_path / "real" / "config.cfg"
    cfg.write_text("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n")
    os.chmod(cfg, 0o644)
    (tmp_path / "shared" / "link").symlink_to("../real/config.cfg")
    (tmp_path / "etc" / "config.cfg").symlink_to(tmp_path / "shared" / "link")
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "link").symlink_to(cfg)  # root's link: nobody else may replace it
    for path in (tmp_path / "etc" / "config.cfg", sticky / "link"):
        assert load_config(str(path)).services[0].cmd == "true"
    assert unsafe_path(str(tmp_path / "etc" / "config.cfg")) is None


def test_a_link_loop_met_on_the_way_ends_the_walk(tmp_path):
    """The file may change between its stat and the walk: a loop by then stops it."""
    as_root()
    cfg = tmp_path / "config.cfg"
    cfg.write_text("")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert unsafe_path(str(tmp_path / "a"), os.stat(cfg)) == (
        f"cannot resolve {tmp_path / 'a'}: too many levels of symbolic links")


def test_config_in_a_root_sticky_directory_like_tmp_loads_as_root(tmp_path):
    as_root()
    directory = tmp_path / "tmp"
    directory.mkdir()
    os.chmod(directory, 0o1777)
    cfg = directory / "config.cfg"
    cfg.write_text("[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n")
    assert load_config(str(cfg)).services[0].cmd == "true"


@pytest.mark.parametrize(("written", "expected"), [
    ("", False), ("start_drained = true", True), ("start_drained = yes", True),
    ("start_drained = 1", True), ("start_drained = on", True), ("start_drained = False", False),
    ("start_drained = no", False)])
def test_start_drained_reads_as_the_other_booleans(tmp_path, written, expected):
    config = load_config(write(tmp_path, f"""
        [s]
        cmd = true
        {written}
        service_port = 1
        zookeeper_path = /s
        """))
    assert config.warnings == ()  # a known key
    assert config.services[0].start_drained is expected


def test_start_drained_in_defaults_is_every_sections(tmp_path):
    config = load_config(write(tmp_path, """
        [DEFAULT]
        start_drained = true

        [a]
        cmd = true
        service_port = 1
        zookeeper_path = /a

        [b]
        cmd = true
        start_drained = false
        service_port = 2
        zookeeper_path = /b
        """))
    assert [service.start_drained for service in config.services] == [True, False]
    assert config.warnings == ()
