"""A supervisorctl plugin: ``drain``, ``undrain``, ``handoff`` and ``zkstatus``.

Enabled by a section of the file supervisorctl reads (``-c``)::

    [ctlplugin:zkwatcher]
    supervisor.ctl_factory = zkwatcher_supervisor.ctlplugin:make_plugin
    config = /etc/zk/config.cfg

(supervisorctl offers no ``%(here)s`` there: a relative ``config`` is taken
from the directory of the file supervisorctl read.)  The commands are those
of ``zkwatcher-supervisor``, with supervisorctl's own connection and
credentials.  They read the listener's status file and ``/proc`` of this
machine, so they refuse a supervisord elsewhere.

supervisorctl imports every ``[ctlplugin:x]`` before it runs any command and
turns a factory's exception into a traceback for every command, so nothing
here may raise while supervisorctl starts: a bad key of the section is
reported by the commands, one line each.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import sys
from urllib.parse import urlsplit

from supervisor.supervisorctl import ControllerPluginBase, LSBInitExitStatuses

from .cli import IntermixedParser

DEFAULT_CONFIG = "/etc/zk/config.cfg"
KNOWN_KEYS = ("config",)
# Our commands' exit statuses (0 done, 1 could not, 2 bad usage or config) as
# supervisorctl's.
_EXIT_STATUSES = {0: LSBInitExitStatuses.SUCCESS, 1: LSBInitExitStatuses.GENERIC,
                  2: LSBInitExitStatuses.INVALID_ARGS}


class _Usage(Exception):
    """Bad arguments to one of our commands."""


class _Finished(Exception):
    """argparse is done (``--help``): nothing more to do."""


class _Parser(IntermixedParser):
    """Our commands' parser (options and sections in any order) raising
    instead of exiting: ``sys.exit`` would end supervisorctl's interactive shell."""

    def error(self, message: str):
        raise _Usage(message)

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            print(message.rstrip(), file=sys.stderr)
        raise _Finished()


def drain_parser(command: str) -> argparse.ArgumentParser:
    from .cli import add_drain_arguments

    parser = _Parser(prog=command, description=(
        "take sections out of discovery without stopping them" if command == "drain"
        else "put drained sections back into discovery"))
    add_drain_arguments(parser, command, status_command="zkstatus")
    return parser


def remote_server(url: str) -> str | None:
    """Why the supervisord at ``url`` is not on this machine; None when it is
    (a unix socket, ``localhost`` or a loopback address)."""
    if url.startswith("unix://"):
        return None
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"serverurl {url} is not on this machine; these commands read the listener's "
            "status file and /proc here, so they need a local supervisord (unix:// or a "
            "loopback address)")


class ZkwatcherPlugin(ControllerPluginBase):
    """The commands; supervisorctl finds them by their ``do_`` prefix."""

    def __init__(self, controller, **settings: str) -> None:
        super().__init__(controller)
        path = settings.pop("config", DEFAULT_CONFIG)
        if not os.path.isabs(path) and getattr(controller.options, "configfile", None):
            path = os.path.join(os.path.dirname(os.path.abspath(controller.options.configfile)),
                                path)
        self.config_path = path
        self.unknown_keys = sorted(settings)

    # -- shared --------------------------------------------------------------

    def _finish(self, command: str, status: int, message: str = "") -> None:
        if message:
            print(f"supervisorctl {command}: {message}", file=sys.stderr)
        if status:
            self.ctl.exitstatus = _EXIT_STATUSES.get(status, LSBInitExitStatuses.GENERIC)

    def _setup_problem(self) -> str | None:
        """What keeps every command from working: a bad key, a remote supervisord."""
        if self.unknown_keys:
            return (f"[ctlplugin:{self.name}]: unknown key(s) {', '.join(self.unknown_keys)} "
                    f"(known: {', '.join(KNOWN_KEYS)})")
        return remote_server(self.ctl.options.serverurl or "")

    def _words(self, command: str, arg: str) -> list[str] | None:
        try:
            return shlex.split(arg)
        except ValueError as exc:  # an unclosed quote
            self._finish(command, 2, f"{exc}")
            return None

    def _load(self, command: str):
        from .config import ConfigError, load_config

        try:
            return load_config(self.config_path, link_files=False)
        except ConfigError as exc:
            self._finish(command, 2, str(exc))
            return None

    # -- drain, undrain ------------------------------------------------------

    def _drain(self, command: str, arg: str) -> None:
        problem = self._setup_problem()
        if problem:
            self._finish(command, 2, problem)
            return
        words = self._words(command, arg)
        if words is None:
            return
        try:
            args = drain_parser(command).parse_args(words)
        except _Usage as exc:
            self._finish(command, 2, f"{exc} (help {command})")
            return
        except _Finished:
            return
        config = self._load(command)
        if config is None:
            return
        from .drain import run_drain

        options = self.ctl.options
        args.command = command
        args.username = options.username
        args.server = None  # read ZooKeeper where the listener says it is connected
        self._finish(command, run_drain(config, args, rpc=self.ctl.get_server_proxy(),
                                        where=f"supervisord at {options.serverurl}",
                                        prog="supervisorctl"))

    def do_drain(self, arg: str) -> None:
        self._drain("drain", arg)

    def help_drain(self) -> None:
        self.ctl.output(drain_parser("drain").format_help().rstrip() + "\n\n"
                        "e.g. drain web --for 15m --stop --wait 10")

    def do_undrain(self, arg: str) -> None:
        self._drain("undrain", arg)

    def help_undrain(self) -> None:
        self.ctl.output(drain_parser("undrain").format_help().rstrip() + "\n\n"
                        "e.g. undrain web")

    # -- handoff, zkstatus ---------------------------------------------------

    def _no_arguments(self, command: str, arg: str) -> bool:
        problem = self._setup_problem()
        if problem:
            self._finish(command, 2, problem)
            return False
        words = self._words(command, arg)
        if words:
            self._finish(command, 2, f"takes no arguments, got {' '.join(words)!r} "
                         f"(help {command})")
            return False
        return words is not None

    def do_handoff(self, arg: str) -> None:
        if not self._no_arguments("handoff", arg):
            return
        config = self._load("handoff")
        if config is None:
            return
        from .handoff import hand_over

        options = self.ctl.options
        ok, message = hand_over(config, rpc=self.ctl.get_server_proxy(),
                                where=f"supervisord at {options.serverurl}")
        if ok:
            self.ctl.output(message)
            return
        self._finish("handoff", 1, message)

    def help_handoff(self) -> None:
        self.ctl.output("handoff\trestart the zkwatcher listener keeping its ZooKeeper "
                        "session and every node\n\t(exit 1 with the reason if it could not)")

    def do_zkstatus(self, arg: str) -> None:
        if not self._no_arguments("zkstatus", arg):
            return
        from .cli import show_status
        from .config import ConfigError, load_config

        try:
            config = load_config(self.config_path, link_files=False)
        except ConfigError as exc:
            if not exc.unreadable:
                self._finish("zkstatus", 2, str(exc))
                return
            config = None  # as `status` does: the status file alone
        self._finish("zkstatus", show_status(config, self.config_path))

    def help_zkstatus(self) -> None:
        self.ctl.output("zkstatus\tone line per zkwatcher section: registered, healthy, "
                        "drained\n\t(exit 1 unless each is registered exactly when healthy)")


def make_plugin(controller, **settings: str) -> ZkwatcherPlugin:
    """supervisorctl's ``supervisor.ctl_factory``: the section's other keys are ``settings``."""
    return ZkwatcherPlugin(controller, **settings)
