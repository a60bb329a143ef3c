"""Read a zk_watcher ``config.cfg`` into immutable settings.

The file is parsed as zk_watcher 0.4.0 parsed it, with ``configparser.ConfigParser()``:
``:`` and ``=``, ``[DEFAULT]`` inherited, ``%(key)s`` and ``%%`` interpolation.  Every
problem is a :class:`ConfigError` naming the file, the line where there is one, the
section and the key, so the command line can print one line and exit 2 before
anything touches ZooKeeper.  What zk_watcher only tolerated loads as it behaved there,
with a line in :attr:`Config.warnings`.

For ``run``, loading also reads the secrets the file names (``password_file``,
``keyfile_password_file``), checks who could change those and the TLS files
(see :mod:`.secret_files`), and loads the TLS files once, so that a key that
does not decrypt is a config error too.  The other commands need no secret and
may run as another user: they get the paths only (``link_files=False``), and
:func:`settings_for_reading` makes what they connect with.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib.util
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from .privilege import (
    CheckUser,
    check_environment,
    check_user,
    lookup_group,
    lookup_user,
    unsafe_path,
    user_environment,
)
from .secret_files import check_private_path, check_readable, check_trusted_path, read_secret
from .tls import TLSSetupError, client_context

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import Any

GLOBAL_SECTION = "zkwatcher"
AUTH_SECTION = "auth"

DEFAULT_HOSTS = "localhost:2181"
DEFAULT_SESSION_TIMEOUT = 10.0
# After its session expired, a listener opens the new one a random 0..spread
# seconds later, so a fleet cut off together does not come back in the same
# second; larger spreads are set per fleet (see README "Scaling").
DEFAULT_RECONNECT_SPREAD = 1.0
MAX_RECONNECT_SPREAD = 600.0
DEFAULT_REFRESH = 30
DEFAULT_TIMEOUT = 10.0
MAX_CONFIG_BYTES = 16 * 2**20
# Longer section names and node paths could never be drained: drain requests
# and the drain file refuse them.
MAX_SECTION_NAME_CHARS = 1000
MAX_NODE_PATH_CHARS = 4096

TLS_KEYS = ("ca", "certfile", "keyfile", "keyfile_password", "keyfile_password_file",
            "tls_check_hostname")
GLOBAL_KEYS = {"hosts", "session_timeout", "reconnect_spread", "status_file", "metrics_port",
               "use_ssl", "user", "group", *TLS_KEYS}
PAYLOAD_FORMATS = ("nd_service_registry", "serverset", "curator", "nerve")
AUTH_KEYS = {"user", "password", "password_file", "mechanism"}
# [auth] mechanism: ZooKeeper's digest scheme (zk_watcher's), or a SASL mechanism.
DIGEST = "digest"
SASL_MECHANISMS = ("DIGEST-MD5",)
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
    "instance_id",
    "expect_status",
    "drain_seconds",
    "start_drained",
    "user",
    "group",
    "environment",
}

# %(key)s in a value, as configparser's BasicInterpolation reads it.
_REFERENCE = re.compile(r"%\(([^)]*)\)s")
# supervisord process and group names: anything but ':' and whitespace.
_NAMESPEC = re.compile(r"^(?P<group>[^:\s]+)(?::(?P<name>[^:\s]+))?$")


class ConfigError(Exception):
    """A config problem, located as precisely as we can."""

    def __init__(
        self, filename: str, message: str, section: str | None = None, key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.filename = filename
        self.section = section
        self.key = key
        self.line = line
        self.message = message
        self.unreadable = False  # the file itself could not be read (permissions, missing)
        where = filename
        if line is not None:
            where += f": line {line}"
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
    # None: in password_file, and not read (the config was loaded without link files).
    password: str | None = field(repr=False)
    mechanism: str = DIGEST  # or one of SASL_MECHANISMS
    password_file: str | None = None

    @property
    def sasl(self) -> bool:
        return self.mechanism != DIGEST


@dataclass(frozen=True)
class TLSSettings:
    ca: str | None = None  # None: the system's CA store
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True
    # Not read when the config was loaded without link files (keyfile_password None).
    keyfile_password_file: str | None = None


@dataclass(frozen=True)
class ZooKeeperSettings:
    hosts: str = DEFAULT_HOSTS
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    auth: Auth | None = None
    tls: TLSSettings | None = None  # None: plain TCP
    reconnect_spread: float = DEFAULT_RECONNECT_SPREAD


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
    drain_seconds: float = 0.0  # drain --stop: wait this long between deregistering and stopping
    # The port as written when that differs from str(service_port) ("0080"):
    # zk_watcher put the text into the node name, so consumers know that name.
    port_text: str | None = None
    user: CheckUser | None = None  # who runs the check command; None: the listener's user
    environment: tuple[tuple[str, str], ...] = ()  # the section's own environment = pairs
    # The whole environment of the check command, built once when the config
    # loads (shared by sections with the same user and environment); None for
    # sections that start no process.  Not shown: it may hold secrets.
    check_env: dict[str, str] | None = field(default=None, compare=False, hash=False,
                                             repr=False)
    instance_id: str | None = None  # payload_format = nerve: the instance's name
    # A section the listener has never run starts drained, until undrain.
    start_drained: bool = False

    @property
    def sequence_prefix(self) -> str | None:
        """The node name ZooKeeper appends a sequence number to, for the formats
        whose readers expect one (ServerSet's ``member_``, Nerve's
        ``<instance_id>_``); None for a fixed name."""
        if self.payload_format == "serverset":
            return "member_"
        if self.payload_format == "nerve":
            return f"{self.instance_id}_"
        return None

    @property
    def registration_key(self) -> str:
        """What the registry registers this section under: the znode path, or
        for a sequential node the pseudo-path ``<path>/<prefix>#<host>:<port>``
        standing for the node ZooKeeper names itself (the prefix + a sequence
        number, as ServerSet and Nerve readers expect)."""
        parent = self.zookeeper_path.rstrip("/")
        port = self.port_text or self.service_port  # "0080" stays "0080", as zk_watcher
        if self.sequence_prefix is not None:
            return f"{parent}/{self.sequence_prefix}#{self.service_hostname}:{port}"
        return f"{parent}/{self.service_hostname}:{port}"

    @property
    def display_path(self) -> str:
        """The node path as an operator should read it (before ZooKeeper names a member)."""
        if self.sequence_prefix is not None:
            return f"{self.zookeeper_path.rstrip('/')}/{self.sequence_prefix}<sequence>"
        return self.registration_key


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
    status_file: str = ""  # "": the listener's private state directory (see statedir)
    metrics_port: int | None = None


def parse_zookeeper_data(text: str, notes: list[str] | None = None) -> dict[str, Any]:
    """Parse ``zookeeper_data`` into the keys zk_watcher 0.4.0 stored for it.

    zk_watcher tried JSON first and fell back to ``k=v, k2=v2``; nd_service_registry
    then stored a JSON string as ``{"string_value": ...}``, ignored falsy values and
    merged a mapping into the payload.  We do the same, except that keys and values of
    ``k=v`` pairs are stripped.  Anything zk_watcher only tolerated adds a line to
    ``notes``; values it could not store at all (the section never registered) raise
    ValueError.
    """
    notes = [] if notes is None else notes
    text = text.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        data, ignored = _key_value_pairs(text)
        note = ""
        if text.startswith("{") and isinstance(exc, json.JSONDecodeError):
            note = (f"not valid JSON ({exc.msg} at column {exc.colno}); read as k=v pairs, "
                    "as zk_watcher did")
        if ignored:
            note += "; " if note else ""
            note += (f"ignored {', '.join(map(repr, ignored))}: not key=value with a single "
                     "'=' (zk_watcher ignored it too)")
        if note:
            notes.append(note)
        return data
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        notes.append(f"a JSON string; stored as {{\"string_value\": {value!r}}}, as zk_watcher "
                     "did")
        return {"string_value": value}
    if not value:  # 0, false, null, []: nd_service_registry skipped falsy data
        notes.append(f"{text} adds no data (zk_watcher ignored it too)")
        return {}
    if isinstance(value, list):
        try:
            pairs = dict(value)
        except (TypeError, ValueError):
            pass
        else:
            notes.append("a JSON array of pairs; stored as an object, as zk_watcher did")
            return pairs
    raise ValueError(f"expected a JSON object or k=v pairs, got {text!r} (zk_watcher could "
                     "not store it and never registered the section)")


# Set from service_hostname, service_port and instance_id: data may not contradict them.
NERVE_OWN_KEYS = ("host", "port", "name")


def nerve_data(data: dict[str, Any]) -> dict[str, Any]:
    """``zookeeper_data`` for a Nerve node, checked as Nerve checks its service
    config: ``weight`` a non-negative integer or a string of digits (``k=v``
    data gives strings; stored as an integer), ``haproxy_server_options`` a
    string, ``labels`` an object of strings.  Other keys are kept as given.
    ValueError says what is wrong."""
    for key in NERVE_OWN_KEYS:
        if key in data:
            raise ValueError(f"{key!r} is not allowed: Nerve's host, port and name come from "
                             "service_hostname, service_port and instance_id")
    data = dict(data)
    if "weight" in data:
        weight = data["weight"]
        if isinstance(weight, str) and weight.isascii() and weight.isdigit():
            weight = int(weight)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"weight must be a non-negative integer, got {data['weight']!r}")
        data["weight"] = weight
    if "haproxy_server_options" in data and not isinstance(data["haproxy_server_options"], str):
        raise ValueError("haproxy_server_options must be a string, got "
                         f"{data['haproxy_server_options']!r}")
    if "labels" in data:
        labels = data["labels"]
        if not isinstance(labels, dict) or not all(
                isinstance(value, str) for value in labels.values()):
            raise ValueError(f"labels must be a JSON object of strings, got {labels!r}")
    return data


def _key_value_pairs(text: str) -> tuple[dict[str, Any], list[str]]:
    """``k=v, k2=v2`` as zk_watcher split it, but stripped; also returns the items it dropped."""
    data: dict[str, Any] = {}
    ignored = []
    for item in text.split(","):
        if not item.strip():
            continue
        # zk_watcher kept only items with exactly one '='; the rest vanished.
        parts = item.split("=")
        if len(parts) != 2:
            ignored.append(item.strip())
            continue
        data[parts[0].strip()] = parts[1].strip()
    return data, ignored


def _check_znode_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"must be an absolute path starting with '/', got {path!r}")
    parts = path.rstrip("/").split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a valid znode path: {path!r}")


def check_hosts(hosts: str) -> None:
    """ValueError unless ``hosts`` reads ``host:port[,host:port...][/chroot]``."""
    servers = hosts.split("/", 1)[0]
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not server.strip() or (port and not port.isdigit()) or (":" in server and not host):
            raise ValueError(f"expected host:port[,host:port...][/chroot], got {hosts!r}")
    if "/" in hosts:
        _check_znode_path("/" + hosts.split("/", 1)[1])


class _File:
    """The parsed file: values as zk_watcher's ``ConfigParser()`` gives them, and where they are."""

    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        # zk_watcher's parser exactly: ':' and '=', [DEFAULT] inherited, %% and %(key)s.
        self.parser = configparser.ConfigParser()
        self.warnings: list[str] = []
        try:
            self.parser.read_string(text, source=filename)
        except configparser.Error as exc:
            raise _parse_error(filename, exc) from None
        self.lines = _key_lines(text, self.parser.optionxform)
        # Per section, once: a thousand sections would otherwise scan every line each.
        self.own_keys: dict[str, set[str]] = {}
        for section, key in self.lines:
            if key:
                self.own_keys.setdefault(section, set()).add(key)

    def line_of(self, section: str, key: str | None) -> int | None:
        if key is None:
            return self.lines.get((section, None))
        return self.lines.get((section, key)) or self.lines.get(
            (self.parser.default_section, key))

    def warn(self, section: str, key: str | None, message: str) -> None:
        line = self.line_of(section, key)
        where = self.filename + (f": line {line}" if line else "") + f": [{section}]"
        text = f"{where}{f' {key}' if key else ''}: {message}"
        if text not in self.warnings:
            self.warnings.append(text)

    def section(self, name: str) -> _Section:
        return _Section(self, name)

    def warn_unknown_defaults(self, known: set[str]) -> None:
        """[DEFAULT] keys that no section can use and no %(key)s refers to: typos."""
        raw = [*self.parser.defaults().values()]
        for name in self.parser.sections():
            raw += [self.parser.get(name, key, raw=True) for key in self.parser.options(name)]
        referenced = {self.parser.optionxform(ref) for value in raw
                      for ref in _REFERENCE.findall(value or "")}
        for key in sorted(set(self.parser.defaults()) - known - referenced):
            self.warn(self.parser.default_section, key, "unknown key, ignored")


class _Section:
    """Typed access to one section that turns every bad value into a located ConfigError."""

    def __init__(self, file: _File, name: str) -> None:
        self.file = file
        self.filename = file.filename
        self.name = name
        parser = file.parser
        # Keys written in this section itself; [DEFAULT]'s are inherited silently.
        self.own_keys = file.own_keys.get(name, set())
        self.values: dict[str, str] = {}
        for key in parser.options(name):
            try:
                value = parser.get(name, key)
            except configparser.InterpolationMissingOptionError as exc:
                raise self.error(key, f"%({exc.reference})s: no key {exc.reference!r} in "
                                 f"[{name}] or [DEFAULT]") from None
            except configparser.InterpolationDepthError:
                raise self.error(key, "%(...)s references nest too deeply (a loop?)") from None
            except configparser.InterpolationSyntaxError:
                # zk_watcher's parser refused a bare '%' (date +%s); keep the text.
                value = parser.get(name, key, raw=True)
                self.warn(key, "'%' kept literally (zk_watcher's parser rejected this value; "
                          "write %% for a literal %)")
            self.values[key] = value.strip()

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.filename, message, self.name, key,
                           line=self.file.line_of(self.name, key))

    def warn(self, key: str | None, message: str) -> None:
        self.file.warn(self.name, key, message)

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        return value if value else None

    def own_text(self, key: str) -> str | None:
        """Like :meth:`text`, but only if the key is written in this section, not inherited."""
        return self.text(key) if key in self.own_keys else None

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

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.text(key)
        if raw is None:
            return default
        value = configparser.ConfigParser.BOOLEAN_STATES.get(raw.lower())
        if value is None:
            raise self.error(key, f"expected true or false, got {raw!r}")
        return value

    def seconds(self, key: str, default: float, allow_zero: bool = False,
                maximum: float = float("inf")) -> float:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(key, f"expected a number of seconds, got {raw!r}") from None
        if allow_zero and value == 0:
            return value
        if not value > 0 or value == float("inf"):
            wanted = "zero or a positive" if allow_zero else "a positive"
            raise self.error(key, f"must be {wanted} number of seconds, got {raw!r}")
        if value > maximum:
            raise self.error(key, f"must be at most {maximum:g} seconds, got {raw!r}")
        return value

    def warn_unknown_keys(self, known: set[str]) -> None:
        # A key that other values refer to as %(key)s is a variable, not a typo.
        referenced = self._referenced()
        for key in sorted(self.own_keys - known - referenced):
            self.warn(key, "unknown key, ignored")

    def _referenced(self) -> set[str]:
        raw = self.file.parser
        names: set[str] = set()
        for key in raw.options(self.name):
            value = raw.get(self.name, key, raw=True) or ""
            names.update(raw.optionxform(ref) for ref in _REFERENCE.findall(value))
        return names


# Keys that say who runs a check and with what: taken from the section itself
# or from [zkwatcher], never inherited from [DEFAULT].
CHECK_IDENTITY_KEYS = ("user", "group", "environment")


class _CheckIdentities:
    """Who each section's check command runs as, and the environment it gets.

    ``user``, ``group`` and ``environment`` count only where they are written:
    in the section, or (``user``, ``group``) in [zkwatcher].  [DEFAULT]'s are
    not inherited for checks: zk_watcher configs put ``user`` there for
    [auth] (which still gets it), and it must not quietly become who runs
    every check.

    Resolved once per distinct setting, however many sections share it: a
    thousand sections with one ``user`` cost one user lookup and one
    environment.
    """

    def __init__(self, file: _File) -> None:
        self.base = check_environment(os.environ)
        self.users: dict[tuple[str, str | None], CheckUser] = {}
        self.environments: dict[tuple, dict[str, str]] = {}
        self.default_user = self.default_group = None
        self.defaults: _Section | None = None
        for key in CHECK_IDENTITY_KEYS:
            if file.parser.defaults().get(key, "").strip():
                where = "[zkwatcher] or a section" if key != "environment" else "a section"
                inherited_by_auth = (key == "user" and file.parser.has_section(AUTH_SECTION)
                                     and (AUTH_SECTION, "user") not in file.lines)
                also = (f" (it is [{AUTH_SECTION}] user, as for zk_watcher)"
                        if inherited_by_auth else "")
                file.warn(file.parser.default_section, key,
                          f"not taken for check commands{also}; to set the checks' {key}, "
                          f"write it in {where}")
        if file.parser.has_section(GLOBAL_SECTION):
            section = self.defaults = file.section(GLOBAL_SECTION)
            self.default_user = section.own_text("user")
            self.default_group = section.own_text("group")
            # Checked even when no section uses them: a typo is found now.
            self._lookup(section, self.default_user, self.default_group)

    def _lookup(self, section: _Section, user: str | None, group: str | None
                ) -> CheckUser | None:
        if user is None:
            if group is not None:
                try:
                    lookup_group(group)
                except ValueError as exc:
                    raise section.error("group", str(exc)) from None
            return None
        found = self.users.get((user, group))
        if found is None:
            try:
                entry = lookup_user(user)
            except ValueError as exc:
                raise section.error("user", str(exc)) from None
            try:
                gid = None if group is None else lookup_group(group)
            except ValueError as exc:
                raise section.error("group", str(exc)) from None
            found = self.users[(user, group)] = check_user(entry, gid)
        return found

    def read(self, section: _Section, runs_process: bool
             ) -> tuple[CheckUser | None, tuple[tuple[str, str], ...], dict[str, str] | None]:
        """The section's user, its own environment pairs, and its check's whole environment."""
        if not runs_process:
            # Builtin probes run inside the listener; without cmd nothing runs.
            for key in ("user", "group", "environment"):
                if key in section.own_keys:
                    section.warn(key, "has no effect: only a check command (not tcp:// or "
                                 "http://) runs as a user with an environment")
            return None, (), None
        user_text = section.own_text("user") or self.default_user
        group_text = section.own_text("group") or self.default_group
        if user_text is None and group_text is not None:
            own = section.own_text("group") is not None
            where, which = (section, "") if own else (self.defaults, f" for [{section.name}]")
            raise where.error("group", f"needs a user too{which} (a check left running as "
                              "root could change its group back)")
        user = self._lookup(section, user_text, group_text)
        pairs = _environment_pairs(section)
        environment = self.environments.get((user, pairs))
        if environment is None:
            environment = {**self.base, **(user_environment(user) if user else {}),
                           **dict(pairs)}
            self.environments[(user, pairs)] = environment
        return user, pairs, environment


def _environment_pairs(section: _Section) -> tuple[tuple[str, str], ...]:
    """``environment = KEY="value",KEY2="value2"``, read as supervisord reads its own."""
    raw = section.own_text("environment")
    if raw is None:
        return ()
    # Only here: supervisor.datatypes imports supervisor.compat, which imports
    # xmlrpc.client and http.client (measured: +5 MB RSS over kazoo's 20 MB).
    from supervisor.datatypes import dict_of_key_value_pairs

    try:
        pairs = dict_of_key_value_pairs(raw)
    except ValueError:
        raise section.error("environment", 'expected KEY="value",KEY2="value2", as in '
                            "supervisord's environment=") from None
    for key, value in pairs.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise section.error("environment", f"{key!r} is not a usable variable name "
                                "and value")
    return tuple(pairs.items())


def _read_service(section: _Section, default_hostname: str,
                  identities: _CheckIdentities) -> ServiceSettings:
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
    user, environment, check_env = identities.read(section, cmd is not None and builtin is None)
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
    if "service_hostname" in section.values and not section.text("service_hostname"):
        section.warn("service_hostname", f"empty; using this host's FQDN {hostname!r} "
                     "(zk_watcher registered ':PORT' with no host)")
    if "/" in hostname:
        raise section.error("service_hostname", f"must not contain '/', got {hostname!r}")
    if "#" in hostname:  # ours to mark a sequential member's name, never a host's
        raise section.error("service_hostname", "must not contain '#' (an inline comment "
                            f"is part of the value), got {hostname!r}")

    notes: list[str] = []
    try:
        data = parse_zookeeper_data(section.values.get("zookeeper_data", ""), notes)
    except ValueError as exc:
        raise section.error("zookeeper_data", str(exc)) from None
    for note in notes:
        section.warn("zookeeper_data", note)
    instance_id = None
    if payload_format == "nerve":
        instance_id = section.text("instance_id") or hostname
        if "/" in instance_id or "#" in instance_id:
            raise section.error("instance_id", f"must not contain '/' or '#', got {instance_id!r}")
        try:
            data = nerve_data(data)
        except ValueError as exc:
            raise section.error("zookeeper_data", str(exc)) from None
    elif section.text("instance_id") is not None:
        raise section.error("instance_id", "only applies to payload_format = nerve")

    port_text = section.required("service_port")
    if not (port_text.isascii() and port_text.isdigit()):
        raise section.error("service_port", f"expected an integer, got {port_text!r}")
    port = section.integer("service_port", default=0, minimum=1, maximum=65535)
    if port_text != str(port):
        section.warn("service_port", f"leading zeros kept in the node name "
                     f"{hostname}:{port_text}, as zk_watcher did")
    else:
        port_text = None

    refresh = section.integer("refresh", DEFAULT_REFRESH, minimum=-(2**63))
    if refresh < 1:
        # zk_watcher's loop then ran the check on every pass, about once a second.
        section.warn("refresh", f"{refresh}: running the check every 1 s, as zk_watcher did")
        refresh = 1

    return ServiceSettings(
        name=section.name,
        zookeeper_path=zookeeper_path,
        service_port=port,
        service_hostname=hostname,
        program=program,
        cmd=cmd,
        refresh=refresh,
        timeout=section.seconds("timeout", DEFAULT_TIMEOUT),
        rise=section.integer("rise", 1, minimum=1),
        fall=section.integer("fall", 1, minimum=1),
        zookeeper_data=data,
        payload_format=payload_format,
        expect_status=expect_status,
        port_text=port_text,
        drain_seconds=section.seconds("drain_seconds", 0.0, allow_zero=True),
        user=user,
        environment=environment,
        check_env=check_env,
        instance_id=instance_id,
        start_drained=section.boolean("start_drained", False),
    )


def _read_zookeeper(file: _File, link_files: bool) -> ZooKeeperSettings:
    hosts, timeout, auth, tls = DEFAULT_HOSTS, DEFAULT_SESSION_TIMEOUT, None, None
    spread = DEFAULT_RECONNECT_SPREAD
    if file.parser.has_section(GLOBAL_SECTION):
        section = file.section(GLOBAL_SECTION)
        hosts = section.text("hosts") or DEFAULT_HOSTS
        try:
            check_hosts(hosts)
        except ValueError as exc:
            raise section.error("hosts", str(exc)) from None
        timeout = section.seconds("session_timeout", DEFAULT_SESSION_TIMEOUT)
        spread = section.seconds("reconnect_spread", DEFAULT_RECONNECT_SPREAD, allow_zero=True,
                                 maximum=MAX_RECONNECT_SPREAD)
        tls = _read_tls(section, link_files)
    if file.parser.has_section(AUTH_SECTION):
        auth = _read_auth(file.section(AUTH_SECTION), link_files)
    return ZooKeeperSettings(hosts=hosts, session_timeout=timeout, auth=auth, tls=tls,
                             reconnect_spread=spread)


def _read_auth(section: _Section, link_files: bool) -> Auth:
    raw = section.text("mechanism") or DIGEST
    mechanism = raw.upper() if raw.upper() in SASL_MECHANISMS else raw.lower()
    if mechanism in ("gssapi", "kerberos"):
        raise section.error("mechanism", "GSSAPI (Kerberos) is not supported; use "
                            "DIGEST-MD5 or digest")
    if mechanism != DIGEST and mechanism not in SASL_MECHANISMS:
        raise section.error("mechanism", f"expected {DIGEST} or "
                            f"{', '.join(SASL_MECHANISMS)}, got {raw!r}")
    if mechanism != DIGEST and importlib.util.find_spec("puresasl") is None:
        raise section.error("mechanism", f"{mechanism} needs the pure-sasl package (pip "
                            "install 'zkwatcher-supervisor[sasl]')")
    user = section.required("user")
    return Auth(user, _secret(section, "password", link_files), mechanism,
                section.text("password_file"))


def _secret(section: _Section, key: str, link_files: bool, required: bool = True
            ) -> str | None:
    """``key`` as written, or read from the file ``<key>_file`` names (which
    must be private to us; read only with ``link_files``); exactly one of them."""
    file_key = f"{key}_file"
    value, path = section.text(key), section.text(file_key)
    if value and path:
        raise section.error(file_key, f"set {key} or {file_key}, not both")
    if path:
        if not link_files:
            return None
        try:
            return read_secret(path)
        except ValueError as exc:
            raise section.error(file_key, str(exc)) from None
    if value is None and required:
        raise section.error(key, f"required key is missing (or set {file_key})")
    return value


# What whoever could change a file we trust would change with it.
_TRUSTED_FILES = (("ca", "the servers we take for the ensemble"),
                  ("certfile", "who we are to ZooKeeper"))


def _read_tls(section: _Section, link_files: bool) -> TLSSettings | None:
    if not section.boolean("use_ssl", False):
        for key in TLS_KEYS:
            if section.text(key):
                raise section.error(key, "set use_ssl = true to use it")
        return None
    files = {key: section.text(key) for key in ("ca", "certfile", "keyfile")}
    if bool(files["certfile"]) != bool(files["keyfile"]):
        raise section.error("certfile" if not files["certfile"] else "keyfile",
                            "certfile and keyfile go together")
    password = _secret(section, "keyfile_password", link_files, required=False)
    password_file = section.text("keyfile_password_file")
    if (password or password_file) and not files["keyfile"]:
        raise section.error("keyfile_password_file" if password_file
                            else "keyfile_password", "goes with certfile and keyfile")
    settings = TLSSettings(**files, keyfile_password=password,
                           check_hostname=section.boolean("tls_check_hostname", True),
                           keyfile_password_file=password_file)
    if not link_files:
        return settings
    for key, what in _TRUSTED_FILES:
        if files[key]:
            try:
                check_trusted_path(files[key], what)
            except ValueError as exc:
                raise section.error(key, str(exc)) from None
    if files["keyfile"]:
        try:
            check_private_path(files["keyfile"])
        except ValueError as exc:
            raise section.error("keyfile", str(exc)) from None
    # Loaded once here, so a key that does not decrypt or a CA file that is
    # not PEM is a config error now rather than a refused connection later.
    try:
        client_context(settings)
    except TLSSetupError as exc:
        key = exc.key
        if key == "keyfile_password" and section.text("keyfile_password_file"):
            key = "keyfile_password_file"
        raise section.error(key, str(exc)) from None
    return settings


def settings_for_reading(zookeeper: ZooKeeperSettings) -> ZooKeeperSettings:
    """What a command that only reads ZooKeeper (``status``, ``drain --stop``)
    connects with, as whoever runs it: no credentials (whether a node exists,
    and what the world may read, need none) and our TLS, if this user can read
    its files.  ValueError says why it cannot connect."""
    tls = zookeeper.tls
    if tls is not None:
        for path in (tls.ca, tls.certfile, tls.keyfile):
            if path:
                check_readable(path)
        if tls.keyfile_password is None and tls.keyfile_password_file:
            # Whoever owns it: it only unlocks the key here, nothing is sent.
            tls = dataclasses.replace(
                tls, keyfile_password=read_secret(tls.keyfile_password_file, private=False))
        try:
            client_context(tls)
        except TLSSetupError as exc:
            raise ValueError(f"{exc.key}: {exc}") from None
    return dataclasses.replace(zookeeper, auth=None, tls=tls)


def _read_text(filename: str) -> tuple[str, os.stat_result]:
    try:
        with open(filename, "rb") as handle:
            stat = os.fstat(handle.fileno())
            # Bounded: `-c /dev/zero` or a log file by mistake must not eat memory.
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        error = ConfigError(filename, f"cannot read config file: {exc.strerror}")
        error.unreadable = True
        raise error from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(filename, f"larger than {MAX_CONFIG_BYTES // 2**20} MiB; "
                          "not a config file") from None
    try:
        # Universal newlines, as zk_watcher's text-mode read gave configparser.
        return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n"), stat
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(filename, "config file is not UTF-8 text", line=line) from None


def _parse_error(filename: str, exc: configparser.Error) -> ConfigError:
    """One located line for whatever configparser refused."""
    if isinstance(exc, configparser.DuplicateSectionError):
        return ConfigError(filename, f"section [{exc.section}] appears twice", line=exc.lineno)
    if isinstance(exc, configparser.DuplicateOptionError):
        return ConfigError(filename, "key appears twice in the section", exc.section, exc.option,
                           line=exc.lineno)
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return ConfigError(filename, f"{exc.line.strip()!r} comes before the first [section] "
                           "header", line=exc.lineno)
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno, shown = exc.errors[0]
        text = ast.literal_eval(shown) if shown.startswith(("'", '"')) else shown
        stripped = text.strip()
        if stripped.startswith("["):
            message = f"{stripped!r}: a section header needs a closing ']'"
        elif stripped[:1] in ("=", ":"):
            message = f"{stripped!r}: no key before '{stripped[0]}'"
        elif text[:1].isspace():
            message = (f"{stripped!r}: indented, but there is no key above it to continue "
                       "(continuation lines go right below their key, indented)")
        else:
            message = (f"{stripped!r}: a key without a value (write key = value or key: value; "
                       "indent a line to continue the value above)")
        more = len(exc.errors) - 1
        if more:
            message += f" (and {more} more line{'s' if more > 1 else ''} like it)"
        return ConfigError(filename, message, line=lineno)
    return ConfigError(filename, str(exc).splitlines()[0])


def _key_lines(text: str, optionxform: Callable[[str], str]) -> dict[tuple[str, str | None], int]:
    """Where each section header and key is, so errors can name the line."""
    found: dict[tuple[str, str | None], int] = {}
    section = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        header = configparser.ConfigParser.SECTCRE.match(stripped)
        if header and not line[0].isspace():
            section = header.group("header")
            found.setdefault((section, None), number)
            continue
        option = configparser.ConfigParser.OPTCRE.match(stripped)
        if section is not None and option and not line[0].isspace():
            found.setdefault((section, optionxform(option.group("option").rstrip())), number)
    return found


def load_config(filename: str, hosts_override: str | None = None,
                link_files: bool = True) -> Config:
    """Read and validate ``filename``; ``hosts_override`` is the ``-s/--server`` flag.

    ``link_files``: also read the secret files and check the files of the link
    to ZooKeeper, as the listener's user (what ``run`` needs); without, their
    paths are kept and nothing of them is read.
    """
    text, stat = _read_text(filename)
    if os.geteuid() == 0:
        # Whoever can change the file runs its commands as root (sshd and sudo
        # refuse theirs for the same reason).
        problem = unsafe_path(filename, stat)
        if problem is not None:
            raise ConfigError(filename, "refused as root: others could change it, and with "
                              f"it the commands we run: {problem}")
    file = _File(filename, text)
    parser = file.parser

    zookeeper = _read_zookeeper(file, link_files)
    if hosts_override:
        try:
            check_hosts(hosts_override)
        except ValueError as exc:
            raise ConfigError(filename, f"--server: {exc}") from None
        zookeeper = dataclasses.replace(zookeeper, hosts=hosts_override)
    if stat.st_mode & 0o044 and os.path.isfile(filename):
        for section, key in ((AUTH_SECTION, "password"), (GLOBAL_SECTION, "keyfile_password")):
            if parser.has_section(section) and file.section(section).text(key):
                file.warn(section, key, f"the file is readable by group or others (mode "
                          f"{stat.st_mode & 0o777:04o}); chmod go-rwx {filename}")

    for special, known in ((GLOBAL_SECTION, GLOBAL_KEYS), (AUTH_SECTION, AUTH_KEYS)):
        if parser.has_section(special):
            file.section(special).warn_unknown_keys(known)

    default_hostname = ""
    identities = _CheckIdentities(file)
    services: list[ServiceSettings] = []
    seen_keys: dict[str, str] = {}
    seen_endpoints: dict[tuple[str, str, int], str] = {}  # sequential sections'
    for name in parser.sections():  # never [DEFAULT]: it is inherited, not a service
        if name in (GLOBAL_SECTION, AUTH_SECTION):
            continue
        section = file.section(name)
        if len(name) > MAX_SECTION_NAME_CHARS:
            # Drain requests and the drain file name sections: longer names could
            # never be drained, and would make the listener refuse its own file.
            raise section.error(None, f"section name longer than {MAX_SECTION_NAME_CHARS} "
                                "characters")
        if not section.text("service_hostname") and not default_hostname:
            default_hostname = socket.getfqdn()
        service = _read_service(section, default_hostname, identities)
        key = service.registration_key
        if len(key) > MAX_NODE_PATH_CHARS:
            raise section.error("zookeeper_path", f"the node path {service.display_path[:60]}... "
                                f"is longer than {MAX_NODE_PATH_CHARS} characters")
        if key in seen_keys:
            raise section.error(None, f"same znode {service.display_path} as [{seen_keys[key]}]")
        seen_keys[key] = name
        if service.sequence_prefix is not None:
            # Sequential names never collide, so ZooKeeper would take both nodes:
            # readers would list the backend twice, and drain --stop of one
            # section could never see the endpoint withdrawn.
            endpoint = (service.zookeeper_path.rstrip("/"),
                        service.service_hostname.lower(), service.service_port)
            if endpoint in seen_endpoints:
                raise section.error(None, f"announces {service.service_hostname}:"
                                    f"{service.service_port} under {endpoint[0]} as "
                                    f"[{seen_endpoints[endpoint]}] does; readers would list "
                                    "it twice")
            seen_endpoints[endpoint] = name
        section.warn_unknown_keys(SERVICE_KEYS)
        services.append(service)
    if not services:
        raise ConfigError(filename, "no service sections; nothing to register")
    file.warn_unknown_defaults(SERVICE_KEYS | GLOBAL_KEYS | AUTH_KEYS)
    status_file, metrics_port = "", None
    if parser.has_section(GLOBAL_SECTION):
        section = file.section(GLOBAL_SECTION)
        status_file = section.text("status_file") or ""
        if section.text("metrics_port") is not None:
            metrics_port = section.integer("metrics_port", 0, minimum=1, maximum=65535)
    return Config(filename, zookeeper, tuple(services), tuple(file.warnings), status_file,
                  metrics_port)
