"""Read a zk_watcher-compatible ``config.cfg`` into immutable settings.

Every problem is reported as a :class:`ConfigError` naming the file, the section
and the key, so the command line can print one line and exit 2 before anything
touches ZooKeeper.
"""

from __future__ import annotations

import configparser
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any

GLOBAL_SECTION = "zkwatcher"
AUTH_SECTION = "auth"

DEFAULT_HOSTS = "localhost:2181"
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_REFRESH = 30
DEFAULT_TIMEOUT = 10.0

GLOBAL_KEYS = {"hosts", "session_timeout"}
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
class ZooKeeperSettings:
    hosts: str = DEFAULT_HOSTS
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    auth: Auth | None = None


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

    @property
    def node_path(self) -> str:
        return f"{self.zookeeper_path.rstrip('/')}/{self.service_hostname}:{self.service_port}"


@dataclass(frozen=True)
class Config:
    filename: str
    zookeeper: ZooKeeperSettings
    services: tuple[ServiceSettings, ...]
    warnings: tuple[str, ...] = ()


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
    )


def _read_zookeeper(filename: str, parser: configparser.ConfigParser) -> ZooKeeperSettings:
    hosts, timeout, auth = DEFAULT_HOSTS, DEFAULT_SESSION_TIMEOUT, None
    if parser.has_section(GLOBAL_SECTION):
        section = _Section(filename, parser, GLOBAL_SECTION)
        hosts = section.text("hosts") or DEFAULT_HOSTS
        try:
            _check_hosts(hosts)
        except ValueError as exc:
            raise section.error("hosts", str(exc)) from None
        timeout = section.seconds("session_timeout", DEFAULT_SESSION_TIMEOUT)
    if parser.has_section(AUTH_SECTION):
        section = _Section(filename, parser, AUTH_SECTION)
        auth = Auth(section.required("user"), section.required("password"))
    return ZooKeeperSettings(hosts=hosts, session_timeout=timeout, auth=auth)


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
        zookeeper = ZooKeeperSettings(hosts_override, zookeeper.session_timeout, zookeeper.auth)

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
                None, f"same znode {service.node_path} as [{seen_paths[service.node_path]}]"
            )
        seen_paths[service.node_path] = name
        warnings += section.unknown_keys(SERVICE_KEYS)
        services.append(service)
    if not services:
        raise ConfigError(filename, "no service sections; nothing to register")
    return Config(filename, zookeeper, tuple(services), tuple(warnings))
