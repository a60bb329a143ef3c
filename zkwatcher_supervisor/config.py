"""Read a zk_watcher-compatible ``config.cfg`` into immutable settings.

Every problem is reported as a :class:`ConfigError` naming the file, the section
and the key, so the command line can print one line and exit 2 before anything
touches ZooKeeper.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

GLOBAL_SECTION = "zkwatcher"
AUTH_SECTION = "auth"

DEFAULT_HOSTS = "localhost:2181"
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_REFRESH = 30
DEFAULT_TIMEOUT = 10.0

GLOBAL_KEYS = {"hosts", "session_timeout", "status_file", "metrics_port", "use_ssl", "ca",
               "certfile", "keyfile"}
PAYLOAD_FORMATS = ("nd_service_registry", "serverset", "curator")
AUTH_KEYS = {"user", "password"}
SERVICE_KEYS = {
    "program",
    "cmd",
    "refresh",
    "timeout",
    "rise",
    "fall",
    "service_port",
    "service_hostname",
    "zookeeper_path",
    "zookeeper_data",
    "payload_format",
    "expect_status",
}

# supervisord process and group names: anything but ':' and whitespace.
_NAMESPEC = re.compile(r"^(?P<group>[^:\s]+)(?::(?P<name>[^:\s]+))?$")


class ConfigError(Exception):
    """A config problem, located as precisely as we can."""

    def __init__(
        self, filename: str, message: str, section: str | None = None, key: str | None = None
    ) -> None:
        self.filename = filename
        self.section = section
        self.key = key
        self.message = message
        where = filename
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ProgramSpec:
    """Which supervisord processes a section follows: ``name``, ``group:name`` or ``group:*``.

    A bare ``name`` means ``name:name``, exactly as supervisorctl reads it.
    """

    group: str
    name: str | None  # None means every process of the group

    @classmethod
    def parse(cls, text: str) -> ProgramSpec:
        match = _NAMESPEC.match(text)
        if not match:
            raise ValueError("expected name, group:name or group:*")
        group, name = match.group("group"), match.group("name")
        if name is None:
            return cls(group, group)
        return cls(group, None if name == "*" else name)

    def matches(self, group: str, name: str) -> bool:
        return group == self.group and (self.name is None or name == self.name)

    def __str__(self) -> str:
        return f"{self.group}:{self.name or '*'}"


@dataclass(frozen=True)
class Auth:
    user: str
    password: str


@dataclass(frozen=True)
class TLSSettings:
    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True)
class ZooKeeperSettings:
    hosts: str = DEFAULT_HOSTS
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    auth: Auth | None = None
    tls: TLSSettings | None = None  # None: plain TCP


@dataclass(frozen=True)
class ServiceSettings:
    """One service section: what to watch and which znode stands for it."""

    name: str
    zookeeper_path: str
    service_port: int
    service_hostname: str
    program: ProgramSpec | None = None
    cmd: str | None = None
    refresh: int = DEFAULT_REFRESH
    timeout: float = DEFAULT_TIMEOUT
    rise: int = 1
    fall: int = 1
    zookeeper_data: dict[str, Any] = field(default_factory=dict, hash=False)
    payload_format: str = "nd_service_registry"
    expect_status: int | None = None  # for http:// checks; None = any 2xx

    @property
    def node_path(self) -> str:
        """The registration's key: the znode path, or for a ServerSet member
        ``<path>/member_#<host>:<port>`` — ZooKeeper names the member itself
        (``member_`` + a sequence number, as ServerSet readers expect)."""
        parent = self.zookeeper_path.rstrip("/")
        if self.payload_format == "serverset":
            return f"{parent}/member_#{self.service_hostname}:{self.service_port}"
        return f"{parent}/{self.service_hostname}:{self.service_port}"

    @property
    def display_path(self) -> str:
        """The node path as an operator should read it (before ZooKeeper names a member)."""
        if self.payload_format == "serverset":
            return f"{self.zookeeper_path.rstrip('/')}/member_<sequence>"
        return self.node_path


@dataclass(frozen=True)
class BuiltinCheck:
    """``cmd = tcp://host:port`` or ``cmd = http://host:port/path``: checked without a fork."""

    scheme: str
    host: str
    port: int
    path: str = "/"

    @classmethod
    def parse(cls, cmd: str) -> BuiltinCheck | None:
        scheme, sep, _ = cmd.partition("://")
        if not sep or scheme not in ("tcp", "http", "https") or " " in cmd.strip():
            return None
        if scheme == "https":
            raise ValueError("https:// is not built in; use e.g. cmd = curl -fsS https://...")
        url = urllib.parse.urlsplit(cmd.strip())
        try:
            port = url.port
        except ValueError:
            raise ValueError(f"bad port in {cmd!r}") from None
        if not url.hostname:
            raise ValueError(f"no host in {cmd!r}")
        if port is None:
            if scheme == "tcp":
                raise ValueError(f"tcp:// needs a port, got {cmd!r}")
            port = 80
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        return cls(scheme, url.hostname, port, path)


@dataclass(frozen=True)
class Config:
    filename: str
    zookeeper: ZooKeeperSettings
    services: tuple[ServiceSettings, ...]
    warnings: tuple[str, ...] = ()
    status_file: str = ""
    metrics_port: int | None = None


def default_status_file(config_filename: str) -> str:
    """Where the listener for ``config_filename`` publishes its state unless told otherwise."""
    digest = hashlib.sha256(os.path.realpath(config_filename).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"zkwatcher-supervisor-{digest}.json")


def parse_zookeeper_data(text: str) -> dict[str, Any]:
    """Parse ``zookeeper_data``: a JSON object, or ``k=v, k2=v2`` (keys and values stripped)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(data, dict):
            raise ValueError("JSON must be an object")
        return data
    data = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item.strip()!r}")
        data[key.strip()] = value.strip()
    return data


def _check_znode_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"must be an absolute path starting with '/', got {path!r}")
    parts = path.rstrip("/").split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a valid znode path: {path!r}")


def _check_hosts(hosts: str) -> None:
    servers = hosts.split("/", 1)[0]
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not server.strip() or (port and not port.isdigit()) or (":" in server and not host):
            raise ValueError(f"expected host:port[,host:port...][/chroot], got {hosts!r}")
    if "/" in hosts:
        _check_znode_path("/" + hosts.split("/", 1)[1])


class _Section:
    """Typed access to one section that turns every bad value into a located ConfigError."""

    def __init__(self, filename: str, parser: configparser.ConfigParser, name: str) -> None:
        self.filename = filename
        self.name = name
        self.values = {key: value.strip() for key, value in parser.items(name)}

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.filename, message, self.name, key)

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        return value if value else None

    def required(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.error(key, "required key is missing")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self.error(key, f"expected an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self.error(key, f"must be {bounds}, got {value}")
        return value

    def seconds(self, key: str, default: float) -> float:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(key, f"expected a number of seconds, got {raw!r}") from None
        if not value > 0 or value == float("inf"):
            raise self.error(key, f"must be a positive number of seconds, got {raw!r}")
        return value

    def unknown_keys(self, known: set[str]) -> list[str]:
        return [
            f"{self.filename}: [{self.name}] {key}: unknown key, ignored"
            for key in sorted(set(self.values) - known)
        ]


def _read_service(section: _Section, default_hostname: str) -> ServiceSettings:
    program = None
    if section.text("program") is not None:
        try:
            program = ProgramSpec.parse(section.text("program"))
        except ValueError as exc:
            raise section.error("program", f"{exc}, got {section.text('program')!r}") from None
    cmd = section.text("cmd")
    if program is None and cmd is None:
        raise section.error(None, "needs 'cmd', 'program' or both")
    try:
        builtin = BuiltinCheck.parse(cmd) if cmd else None
    except ValueError as exc:
        raise section.error("cmd", str(exc)) from None
    payload_format = section.text("payload_format") or "nd_service_registry"
    if payload_format not in PAYLOAD_FORMATS:
        raise section.error("payload_format",
                            f"expected one of {', '.join(PAYLOAD_FORMATS)}, got {payload_format!r}")
    expect_status = None
    if section.text("expect_status") is not None:
        if builtin is None or builtin.scheme != "http":
            raise section.error("expect_status", "only applies to cmd = http://...")
        expect_status = section.integer("expect_status", 200, minimum=100, maximum=599)

    zookeeper_path = section.required("zookeeper_path")
    try:
        _check_znode_path(zookeeper_path)
    except ValueError as exc:
        raise section.error("zookeeper_path", str(exc)) from None

    hostname = section.text("service_hostname") or default_hostname
    if "/" in hostname:
        raise section.error("service_hostname", f"must not contain '/', got {hostname!r}")

    try:
        data = parse_zookeeper_data(section.values.get("zookeeper_data", ""))
    except ValueError as exc:
        raise section.error("zookeeper_data", str(exc)) from None

    section.required("service_port")
    port = section.integer("service_port", default=0, minimum=1, maximum=65535)

    return ServiceSettings(
        name=section.name,
        zookeeper_path=zookeeper_path,
        service_port=port,
        service_hostname=hostname,
        program=program,
        cmd=cmd,
        refresh=section.integer("refresh", DEFAULT_REFRESH, minimum=1),
        timeout=section.seconds("timeout", DEFAULT_TIMEOUT),
        rise=section.integer("rise", 1, minimum=1),
        fall=section.integer("fall", 1, minimum=1),
        zookeeper_data=data,
        payload_format=payload_format,
        expect_status=expect_status,
    )


def _read_zookeeper(filename: str, parser: configparser.ConfigParser) -> ZooKeeperSettings:
    hosts, timeout, auth, tls = DEFAULT_HOSTS, DEFAULT_SESSION_TIMEOUT, None, None
    if parser.has_section(GLOBAL_SECTION):
        section = _Section(filename, parser, GLOBAL_SECTION)
        hosts = section.text("hosts") or DEFAULT_HOSTS
        try:
            _check_hosts(hosts)
        except ValueError as exc:
            raise section.error("hosts", str(exc)) from None
        timeout = section.seconds("session_timeout", DEFAULT_SESSION_TIMEOUT)
        tls = _read_tls(section)
    if parser.has_section(AUTH_SECTION):
        section = _Section(filename, parser, AUTH_SECTION)
        auth = Auth(section.required("user"), section.required("password"))
    return ZooKeeperSettings(hosts=hosts, session_timeout=timeout, auth=auth, tls=tls)


def _read_tls(section: _Section) -> TLSSettings | None:
    use_ssl = (section.text("use_ssl") or "false").lower()
    if use_ssl not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        raise section.error("use_ssl", f"expected true or false, got {use_ssl!r}")
    files = {key: section.text(key) for key in ("ca", "certfile", "keyfile")}
    if use_ssl not in ("true", "yes", "1", "on"):
        for key, value in files.items():
            if value:
                raise section.error(key, "set use_ssl = true to use it")
        return None
    for key, value in files.items():
        if value and not os.access(value, os.R_OK):
            raise section.error(key, f"cannot read {value}")
    if bool(files["certfile"]) != bool(files["keyfile"]):
        raise section.error("certfile" if not files["certfile"] else "keyfile",
                            "certfile and keyfile go together")
    return TLSSettings(**files)


def load_config(filename: str, hosts_override: str | None = None) -> Config:
    """Read and validate ``filename``; ``hosts_override`` is the ``-s/--server`` flag."""
    # No interpolation: check commands carry '%' (date +%s) far more often than
    # anyone relies on %(name)s.
    parser = configparser.ConfigParser(interpolation=None, default_section="\0no-defaults")
    try:
        with open(filename, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(filename, f"cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(filename, "config file is not UTF-8 text") from None
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0].replace(repr(filename), "").strip(" :")
        raise ConfigError(filename, first_line) from None

    zookeeper = _read_zookeeper(filename, parser)
    if hosts_override:
        try:
            _check_hosts(hosts_override)
        except ValueError as exc:
            raise ConfigError(filename, f"--server: {exc}") from None
        zookeeper = ZooKeeperSettings(hosts_override, zookeeper.session_timeout, zookeeper.auth,
                                      zookeeper.tls)

    warnings: list[str] = []
    for special, known in ((GLOBAL_SECTION, GLOBAL_KEYS), (AUTH_SECTION, AUTH_KEYS)):
        if parser.has_section(special):
            warnings += _Section(filename, parser, special).unknown_keys(known)

    default_hostname = ""
    services: list[ServiceSettings] = []
    seen_paths: dict[str, str] = {}
    for name in parser.sections():
        if name in (GLOBAL_SECTION, AUTH_SECTION):
            continue
        section = _Section(filename, parser, name)
        if not section.text("service_hostname") and not default_hostname:
            default_hostname = socket.getfqdn()
        service = _read_service(section, default_hostname)
        if service.node_path in seen_paths:
            raise section.error(
                None, f"same znode {service.display_path} as [{seen_paths[service.node_path]}]"
            )
        seen_paths[service.node_path] = name
        warnings += section.unknown_keys(SERVICE_KEYS)
        services.append(service)
    if not services:
        raise ConfigError(filename, "no service sections; nothing to register")
    status_file, metrics_port = default_status_file(filename), None
    if parser.has_section(GLOBAL_SECTION):
        section = _Section(filename, parser, GLOBAL_SECTION)
        status_file = section.text("status_file") or status_file
        if section.text("metrics_port") is not None:
            metrics_port = section.integer("metrics_port", 0, minimum=1, maximum=65535)
    return Config(filename, zookeeper, tuple(services), tuple(warnings), status_file,
                  metrics_port)
