"""Reaching supervisord's XML-RPC interface from the command line, as supervisorctl would.

Where supervisord is and which credentials it wants are taken, in this
order, from:

1. the flags ``--serverurl``, ``-u`` and ``--password-file`` (or ``-p``),
   each overriding its own field of whatever comes next;
2. the ``[supervisorctl]`` section of ``-C/--supervisord-conf FILE``;
3. ``$SUPERVISOR_SERVER_URL`` with ``$SUPERVISOR_USERNAME`` and
   ``$SUPERVISOR_PASSWORD`` (what supervisord gives its children and
   ``supervisor.childutils`` reads);
4. the ``[supervisorctl]`` section of the first file on supervisorctl's own
   search path (``supervisord.conf`` in the current directory,
   ``/etc/supervisord.conf``, ``/etc/supervisor/supervisord.conf``, ...);
5. supervisorctl's defaults.

A file is read by supervisor's own ``ClientOptions``, so it means here what
it means to supervisorctl (``%(here)s``, ``%(ENV_X)s``, comments, a relative
``unix://`` path).  One place does this, so ``drain``, ``undrain`` and
``handoff`` cannot drift apart.
"""

from __future__ import annotations

import configparser
import errno
import os
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass

from supervisor import childutils
from supervisor.datatypes import url as supervisor_url
from supervisor.options import ClientOptions, UnhosedConfigParser
from supervisor.xmlrpc import SupervisorTransport

from .secret_files import read_secret

SECTION = "supervisorctl"


class SupervisordConfError(ValueError):
    """Where to reach supervisord cannot be worked out; the message names the file
    or setting at fault."""


@dataclass(frozen=True)
class Connection:
    """How to reach one supervisord, and where that was found."""

    server_url: str
    username: str | None = None
    password: str | None = None
    source: str = "supervisorctl's default"

    def proxy(self):
        """A proxy for supervisord's XML-RPC namespaces (``.supervisor``, ...).

        It connects on its first call; errors (refused, bad credentials,
        faults) arrive there: :func:`describe_error` words them."""
        return rpc_interface(self.server_url, self.username, self.password)

    def describe(self) -> str:
        """``supervisord at URL (from SOURCE)``: for messages."""
        return f"supervisord at {self.server_url} ({self.source})"


class _ConnectionOptions(ClientOptions):
    """supervisorctl's option reader, for its connection settings only: a
    ``[ctlplugin:x]`` we would never use must not stop us (importing it might fail)."""

    def get_plugins(self, parser, factory_key, section_prefix):
        return []


def supervisorctl_defaults() -> Connection:
    """What supervisorctl uses when no file and no flag say otherwise."""
    options = _ConnectionOptions()
    return Connection(options.default_map["serverurl"], None, None,
                      "supervisorctl's default")


def search_path() -> list[str]:
    """supervisorctl's own list of places for its config file, first match wins
    (partly relative to the current directory and to the program's own
    ``bin/..``, as supervisorctl's are)."""
    return list(_ConnectionOptions().searchpaths)


def found_on_search_path() -> str | None:
    return next((path for path in search_path() if os.path.exists(path)), None)


def read_supervisorctl_section(path: str) -> Connection:
    """``serverurl``, ``username`` and ``password`` of ``[supervisorctl]`` in ``path``;
    supervisorctl's defaults when the file has no such section.
    SupervisordConfError names the file when it cannot be read or parsed."""
    def refuse(why: str) -> SupervisordConfError:
        return SupervisordConfError(f"supervisord config {path}: {why}")

    try:
        with open(path, encoding="utf-8") as handle:
            parser = UnhosedConfigParser()
            parser.read_file(handle)
    except OSError as exc:
        raise refuse(f"cannot read it: {exc.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise refuse(" ".join(str(exc).split())) from None
    source = f"[{SECTION}] of {path}"
    if SECTION not in parser.sections():
        defaults = supervisorctl_defaults()
        return Connection(defaults.server_url, source=f"{path} has no [{SECTION}]: "
                          "supervisorctl's default")
    options = _ConnectionOptions()
    try:
        section = options.read_config(path)
    except (OSError, ValueError, configparser.Error) as exc:
        raise refuse(_first_sentence(exc)) from None
    server_url = section.serverurl
    check_url(server_url, f"supervisord config {path}: [{SECTION}] serverurl")
    return Connection(server_url, section.username or None, section.password, source)


def _first_sentence(exc: Exception) -> str:
    """supervisor's message on one line, without the list of every
    environment variable's name it appends to an expansion it cannot do."""
    text = " ".join(str(exc).split())
    return text.split(". Available names:", 1)[0].split(" Available names:", 1)[0]


def check_url(value: str, what: str) -> None:
    """SupervisordConfError naming ``what`` unless supervisor's client can use ``value``."""
    try:
        supervisor_url(value)
        SupervisorTransport(None, None, value)  # http:// and unix:// only
    except ValueError as exc:
        raise SupervisordConfError(f"{what}: {exc}") from None


def resolve(serverurl: str | None = None, username: str | None = None,
            password: str | None = None, password_file: str | None = None,
            supervisord_conf: str | None = None,
            environ: Mapping[str, str] | None = None) -> Connection:
    """Where supervisord is, and how to log in, as described in this module's
    docstring.  SupervisordConfError for a file or value that cannot be used."""
    environ = os.environ if environ is None else environ
    if supervisord_conf:
        base = read_supervisorctl_section(supervisord_conf)
    elif environ.get("SUPERVISOR_SERVER_URL"):
        base = Connection(environ["SUPERVISOR_SERVER_URL"],
                          environ.get("SUPERVISOR_USERNAME") or None,
                          environ.get("SUPERVISOR_PASSWORD"), "$SUPERVISOR_SERVER_URL")
        check_url(base.server_url, "$SUPERVISOR_SERVER_URL")
    else:
        found = found_on_search_path()
        base = read_supervisorctl_section(found) if found else supervisorctl_defaults()
    if password_file:
        try:
            password = read_secret(password_file, private=False)
        except ValueError as exc:
            raise SupervisordConfError(f"--password-file: {exc}") from None
    if serverurl:
        check_url(serverurl, "--serverurl")
    return Connection(serverurl or base.server_url,
                      username if username is not None else base.username,
                      password if password is not None else base.password,
                      "--serverurl" if serverurl else base.source)


def describe_error(exc: BaseException) -> str:
    """What went wrong talking to supervisord, in words an operator can act on."""
    if isinstance(exc, xmlrpc.client.ProtocolError) and exc.errcode == 401:
        return "401 Unauthorized: it refused the username and password (or their absence)"
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return f"HTTP {exc.errcode} {exc.errmsg}"
    if isinstance(exc, xmlrpc.client.Fault):
        return f"refused: {exc.faultString}"
    if isinstance(exc, OSError):
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc)
        return f"unreachable ({reason})"
    return f"{type(exc).__name__}: {exc}"


def rpc_interface(server_url: str | None, username: str | None = None,
                  password: str | None = None):
    """A proxy for supervisord's XML-RPC namespaces (``.supervisor``, ...), built
    as ``supervisor.childutils`` builds it; ``server_url`` None: supervisorctl's default.

    It connects on its first call; errors (refused, bad credentials, faults)
    arrive there.
    """
    env = {"SUPERVISOR_SERVER_URL": server_url or supervisorctl_defaults().server_url}
    if username:
        env.update(SUPERVISOR_USERNAME=username, SUPERVISOR_PASSWORD=password or "")
    return childutils.getRPCInterface(env)


def resolve_from(args) -> Connection:
    """:func:`resolve` with the flags of a parsed command line (a flag it lacks: not given)."""
    return resolve(**{name: getattr(args, name, None) for name in (
        "serverurl", "username", "password", "password_file", "supervisord_conf")})
