"""Command line entry point: ``zkwatcher-supervisor``."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import sys
import textwrap
import time

from . import __version__, statedir
from .config import (
    DEFAULT_HOSTS,
    Config,
    ConfigError,
    ZooKeeperSettings,
    check_hosts,
    load_config,
)
from .logs import KAZOO_REPEATS, LogWriter
from .payload import node_payload
from .privilege import make_undumpable, root_warnings, switch_error
from .status import (
    locate_status,
    published_ensemble,
    reading_settings,
    report_lines,
    status_document,
)
from .untrusted import printable

DEFAULT_CONFIG = "/etc/zk/config.cfg"
MAX_WAIT_SECONDS = 86400.0  # drain --stop --wait: a day is already a mistake
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_CONFIG_ERROR = 2  # bad usage, too
SYSLOG_SOCKET = "/dev/log"
HELP_WIDTH = 79  # one layout whatever the terminal, so README can show it as printed
COMMANDS = ("run", "check-config", "status", "drain", "undrain", "handoff")

EXIT_STATUS = """\
exit status (every command):
  0  done (status: every section is registered exactly when it is healthy)
  1  could not, the reason on stderr (status: something is not as it should be)
  2  bad usage, or a config or supervisord config that cannot be used"""

CONNECTION = """\
supervisord is found as supervisorctl finds it, from the first of:
  --serverurl, -u, --password-file  each overrides its part of what follows
  -C FILE                       [supervisorctl] serverurl, username, password
  $SUPERVISOR_SERVER_URL        and $SUPERVISOR_USERNAME, $SUPERVISOR_PASSWORD
  supervisorctl's config file   [supervisorctl] of the first that exists of
                                ./supervisord.conf, /etc/supervisord.conf,
                                /etc/supervisor/supervisord.conf, ...
  supervisorctl's default       http://localhost:9001"""

SUPERVISORD_OPTIONS = "[--serverurl URL] [-u USER] [--password-file FILE] [-C FILE]"
SELECTION = "(SECTION... | --program NAME | --all)"
USAGE = {
    "run": "[-c FILE] [-s HOSTS] [-v] [-l] [--drained]",
    "check-config": "[-c FILE] [-s HOSTS]",
    "status": "[-c FILE] [-s HOSTS] [--json]",
    "drain": f"{SELECTION}\n"
             "       [-c FILE] [--reason TEXT] [--for DURATION] [--stop [--wait SECONDS]]\n"
             f"       {SUPERVISORD_OPTIONS}",
    "undrain": f"{SELECTION}\n"
               f"       [-c FILE] {SUPERVISORD_OPTIONS}",
    "handoff": f"[-c FILE]\n       {SUPERVISORD_OPTIONS}",
}

LISTENER_EXAMPLE = """\
  [eventlistener:zkwatcher]
  command = zkwatcher-supervisor -c /etc/zk/config.cfg
  events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION"""

EXAMPLES = {
    None: f"""\
examples:
{LISTENER_EXAMPLE}

  zkwatcher-supervisor status -c /etc/zk/config.cfg
  zkwatcher-supervisor drain -c /etc/zk/config.cfg web --for 15m

"zkwatcher-supervisor COMMAND --help" shows the options of that command.""",
    "run": f"""\
example, in supervisord.conf (with the console script's absolute path):
{LISTENER_EXAMPLE}""",
    "check-config": """\
example:
  zkwatcher-supervisor check-config -c /etc/zk/config.cfg""",
    "status": """\
examples:
  zkwatcher-supervisor status -c /etc/zk/config.cfg
  zkwatcher-supervisor status -c /etc/zk/config.cfg --json""",
    "drain": """\
examples:
  zkwatcher-supervisor drain -c /etc/zk/config.cfg web --reason "deploy 42"
  zkwatcher-supervisor drain -c /etc/zk/config.cfg --program web --for 15m
  zkwatcher-supervisor drain -c /etc/zk/config.cfg web --stop --wait 10""",
    "undrain": """\
example:
  zkwatcher-supervisor undrain -c /etc/zk/config.cfg web""",
    "handoff": """\
example:
  zkwatcher-supervisor handoff -c /etc/zk/config.cfg""",
}


def seconds_argument(text: str) -> float:
    """``--wait``: a finite number of seconds, zero or more (float() takes "nan" and "inf")."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected seconds between 0 and {MAX_WAIT_SECONDS:g}, got {text!r}")
    return value


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH)


class IntermixedParser(argparse.ArgumentParser):
    """A command's parser: its options and positionals in any order
    (``drain web -c FILE other`` as well as ``drain -c FILE web other``)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        # parse_known_intermixed_args calls parse_known_args on some Pythons.
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _options(parser: argparse.ArgumentParser, top: bool,
             title: str = "options") -> argparse._ArgumentGroup:
    """The group every command has: -h and -c.  On a command's parser an option
    the main parser has too defaults to SUPPRESS: a default there would
    overwrite what was given before the command (``-c FILE drain web``)."""
    group = parser.add_argument_group(title)
    group.add_argument("-h", "--help", action="help", help="show this help and exit")
    group.add_argument("-c", "--config", metavar="FILE",
                       default=DEFAULT_CONFIG if top else argparse.SUPPRESS,
                       help=f"service config file (default: {DEFAULT_CONFIG})")
    return group


def _server_option(group: argparse._ArgumentGroup, what: str, top: bool = False) -> None:
    group.add_argument("-s", "--server", metavar="HOSTS",
                       default=None if top else argparse.SUPPRESS,
                       help="ZooKeeper hosts, host:port[,host:port...][/chroot]; " + what)


def _run_options(group: argparse._ArgumentGroup, top: bool) -> None:
    _server_option(group, "overrides [zkwatcher] hosts (default: localhost:2181)", top)
    flag = {"action": "store_true", "default": False if top else argparse.SUPPRESS}
    group.add_argument("-v", "--verbose", help="log debug messages", **flag)
    group.add_argument("-l", "--syslog", help="log to syslog (/dev/log) instead of stderr",
                       **flag)
    group.add_argument("--drained", help="every section as with start_drained = true: "
                       "drained from its first start until undrain", **flag)
    group.add_argument("--check-config", help="the check-config command: print each "
                       "service's znode path and payload, then exit", **flag)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reaching supervisord (see below)")
    group.add_argument("--serverurl", metavar="URL",
                       help="supervisord's URL: unix:///path/to.sock or http://host:port")
    group.add_argument("-u", "--username", metavar="USER", help="supervisord username")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="FILE",
                        help="a file holding supervisord's password")
    secret.add_argument("-p", "--password", metavar="PASSWORD",
                        help="supervisord password (every user sees it in ps: prefer "
                        "--password-file)")
    group.add_argument("-C", "--supervisord-conf", metavar="FILE",
                       help="read serverurl, username and password from [supervisorctl] "
                       "of this file, as supervisorctl -c FILE does")


def _selection(parser: argparse.ArgumentParser, verb: str) -> None:
    group = parser.add_argument_group(f"what to {verb} (one of)")
    group.add_argument("sections", nargs="*", metavar="SECTION",
                       help="sections of the config, by name")
    group.add_argument("--program", metavar="NAME",
                       help="every section bound to this program (or group)")
    group.add_argument("--all", action="store_true", help="every section")


def add_drain_arguments(parser: argparse.ArgumentParser, verb: str,
                        status_command: str = "status") -> None:
    """What ``drain`` or ``undrain`` acts on and, for drain, its options: the
    command line's and the supervisorctl plugin's commands take the same."""
    _selection(parser, verb)
    if verb != "drain":
        # Drain's fields, so code reading an undrain's namespace finds each of them.
        parser.set_defaults(reason="", duration=None, stop=False, wait=None)
        return
    group = parser.add_argument_group("drain")
    group.add_argument("--reason", default="", metavar="TEXT",
                       help=f"why (shown by {status_command})")
    group.add_argument("--for", dest="duration", metavar="DURATION",
                       help="undrain by itself after this long (90s, 15m, 2h, 1d)")
    group.add_argument("--stop", action="store_true",
                       help="once ZooKeeper confirmed the deletion, wait --wait seconds, "
                       "then stop the bound programs through supervisord")
    group.add_argument("--wait", type=seconds_argument, metavar="SECONDS",
                       help="with --stop: seconds between deregistering and stopping "
                       "(default: the sections' drain_seconds, else 0)")


def _command(subparsers, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    epilog = EXAMPLES[name] + "\n\n" + EXIT_STATUS
    if name in ("drain", "undrain", "handoff"):
        epilog = CONNECTION + "\n\n" + epilog
    prog = f"zkwatcher-supervisor {name}"
    return subparsers.add_parser(name, prog=prog, usage=f"{prog} {USAGE[name]}", help=summary,
                                 description=textwrap.fill(description, HELP_WIDTH),
                                 epilog=epilog, add_help=False, formatter_class=_formatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zkwatcher-supervisor",
        usage="%(prog)s [run] [-c FILE] [-s HOSTS] [-v] [-l] [--drained]\n"
              "       %(prog)s COMMAND [options]",
        description=textwrap.fill("supervisord event listener that registers healthy "
                                  "services in ZooKeeper, and the commands to operate it.",
                                  HELP_WIDTH),
        epilog=EXAMPLES[None] + "\n\n" + EXIT_STATUS, add_help=False,
        formatter_class=_formatter)
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                       parser_class=IntermixedParser)
    group = _options(parser, top=True, title="options of run, the default command")
    _run_options(group, top=True)
    group.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Every command's fields, so code reading a namespace finds each of them.
    parser.set_defaults(command=None, sections=[], program=None, all=False, reason="",
                        duration=None, stop=False, wait=None, json=False, serverurl=None,
                        username=None, password=None, password_file=None,
                        supervisord_conf=None)

    run = _command(subparsers, "run", "the supervisord event listener (the default)",
                   "The supervisord event listener: run it from an [eventlistener:x] section "
                   "with events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION.")
    _run_options(_options(run, top=False), top=False)

    check = _command(subparsers, "check-config", "print each section's znode and payload",
                     "Read the config as run would and print the ZooKeeper link and each "
                     "section's znode path and payload; reads none of the link's files.")
    _server_option(_options(check, top=False), "overrides [zkwatcher] hosts")

    status = _command(subparsers, "status", "one line per section: registered, healthy?",
                      "The running listener's state joined with what ZooKeeper holds, one "
                      "line per section.  ZooKeeper is asked where the listener says it "
                      "is connected (its status file), unless -s says otherwise.")
    group = _options(status, top=False)
    _server_option(group, "overrides the ensemble the listener uses")
    group.add_argument("--json", action="store_true",
                       help="print one JSON document instead (same exit status)")

    drain = _command(subparsers, "drain", "take sections out of discovery",
                     "Take sections out of discovery without stopping them: their nodes "
                     "are deleted and stay deleted until undrain (or --for ends). It "
                     "returns once the listener has taken the drain on; --stop also "
                     "waits until ZooKeeper no longer lists the nodes.")
    add_drain_arguments(drain, "drain")
    group = _options(drain, top=False)
    _server_option(group, "--stop confirms the deletion there (default: where the "
                   "listener is connected)")
    _connection_options(drain)

    undrain = _command(subparsers, "undrain", "put drained sections back",
                       "Put drained sections back into discovery (registered again if "
                       "healthy).")
    add_drain_arguments(undrain, "undrain")
    _options(undrain, top=False)
    _connection_options(undrain)

    handoff = _command(subparsers, "handoff", "restart the listener without a flap",
                       "Restart the listener through supervisord, keeping its ZooKeeper "
                       "session and every node; exit 0 once the successor holds that "
                       "session.")
    _server_option(_options(handoff, top=False),
                   "where an earlier version's nodes are read (default: where the "
                   "listener is connected)")
    _connection_options(handoff)
    return parser


def setup_logging(verbose: bool, syslog: bool) -> LogWriter:
    """Log through a queue: the event loop never waits for stderr or syslog to
    take a line.  Stop the returned writer to flush before exiting."""
    handler: logging.Handler
    to_syslog = syslog and os.path.exists(SYSLOG_SOCKET)
    if to_syslog:
        # Only for syslog: logging.handlers brings pickle and socket servers.
        from logging.handlers import SysLogHandler

        handler = SysLogHandler(address=SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter(f"zkwatcher-supervisor[{os.getpid()}]: "
                                               "%(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # No format of ours names the source line, thread or process: not looked up
    # for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = LogWriter(handler)
    writer.start()
    to_writer = writer.queue_handler()
    root = logging.getLogger()
    root.handlers[:] = [to_writer]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # kazoo logs every reconnect attempt at INFO/WARNING; keep its chatter for
    # -v, and otherwise the first warning of each kind (the registry reports
    # how many more there were).
    logging.getLogger("kazoo").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        to_writer.addFilter(KAZOO_REPEATS)
    if syslog and not to_syslog:
        logging.getLogger(__name__).warning("--syslog: %s does not exist; logging to stderr",
                                            SYSLOG_SOCKET)
    return writer


def show_status(config: Config | None, config_filename: str,
                hosts_override: str | None = None, as_json: bool = False) -> int:
    """``status``; without ``config`` (we may not read it), from the status file alone.

    ZooKeeper is asked as whoever runs us, without the listener's credentials,
    where the listener says it is connected (``hosts_override``, ``-s``, wins);
    where that is not possible (TLS files this user cannot read), the
    listener's own word stands in for it."""
    from .znode_reads import read_existing  # imports kazoo

    now = time.time()
    located = locate_status(config_filename, config.status_file if config else "")
    path, state = located
    notes: list[str] = []  # lines before the report
    settings: ZooKeeperSettings | None = None
    unchecked = None
    published = published_ensemble(state)
    if hosts_override:
        source = "-s"
    elif published is not None:
        source = "the listener's status file"
    else:
        source = "the config"
    if config is None:
        if state is None:
            print(f"zkwatcher-supervisor: cannot read {config_filename} and there is no "
                  f"status file at {path}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        notes.append(f"(cannot read {config_filename}: sections and ZooKeeper from {path})")
        if published is not None and published[1]:
            unchecked = "its TLS settings are in the config"
        else:
            settings = ZooKeeperSettings(hosts=hosts_override or (published or ("",))[0]
                                         or DEFAULT_HOSTS)
    else:
        try:
            settings = reading_settings(config, state, hosts_override)
        except ValueError as exc:
            unchecked = str(exc)
    if unchecked is not None:
        notes.append(f"ZooKeeper not checked: {unchecked}; registered as the listener "
                     "last saw it")
    zookeeper = {"hosts": settings.hosts if settings else (published or (None,))[0],
                 "from": source, "checked": settings is not None, "problem": unchecked}

    def read_nodes(paths: list[str]) -> dict[str, bool] | None:
        if settings is None:
            # Only the listener's word: what it last confirmed in ZooKeeper.
            sections = (state or {}).get("sections", {})
            registered = {info["path"] for info in sections.values() if info.get("registered")}
            return {path: path in registered for path in paths}
        try:
            return read_existing(settings, paths)
        except Exception as exc:
            zookeeper["problem"] = f"unreachable ({exc})"
            notes.append(printable(f"ZooKeeper {settings.hosts}: unreachable ({exc})"))
            return None

    document = status_document(config, read_nodes, now, located)
    if as_json:
        print(json.dumps({"ok": document["ok"],
                          "config": {"file": config_filename, "read": config is not None},
                          "zookeeper": zookeeper, "listener": document["listener"],
                          "sections": document["sections"]}, indent=2))
    else:
        print("\n".join(notes + report_lines(document, now)))
    return EXIT_DONE if document["ok"] else EXIT_FAILED


def link_file_paths(config: Config) -> list[str]:
    """The files of the link to ZooKeeper, ``key path`` each."""
    zookeeper = config.zookeeper
    found = []
    if zookeeper.tls is not None:
        for key in ("ca", "certfile", "keyfile", "keyfile_password_file"):
            if getattr(zookeeper.tls, key):
                found.append(f"{key} {getattr(zookeeper.tls, key)}")
    if zookeeper.auth is not None and zookeeper.auth.password_file:
        found.append(f"password_file {zookeeper.auth.password_file}")
    return found


def quiet_command_logging(verbose: bool) -> None:
    """Logging for the commands other than ``run``: their answer is the one
    line they print, so kazoo's reconnect chatter (a dozen lines while
    ZooKeeper is unreachable) is shown only with ``-v``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("zkwatcher-supervisor: %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("kazoo").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    command, args = parse_command(argv)
    if command == "run":
        return _run_command(args)
    quiet_command_logging(args.verbose)
    try:
        return _operator_command(command, args)
    except BrokenPipeError:
        # `status --json | head`: the reader left; nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def parse_command(argv: list[str] | None) -> tuple[str, argparse.Namespace]:
    """The command and its options; exits on bad usage.  The parser (half a MB
    of help text and actions, in reference cycles) is collected before the
    listener starts, not carried for as long as it runs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    if args.check_config:
        if command not in ("run", "check-config"):
            parser.error(f"--check-config is the check-config command, not an option of "
                         f"{command}")
        command = "check-config"
    if args.drained and command not in ("run", "check-config"):
        parser.error(f"--drained is an option of run, not of {command}")
    del parser
    gc.collect()
    return command, args


def _operator_command(command: str, args: argparse.Namespace) -> int:
    """The commands other than ``run``; their exit status."""
    try:
        config = load_config(args.config, hosts_override=args.server, link_files=False)
    except ConfigError as exc:
        if command == "status" and exc.unreadable:
            if args.server is not None:
                try:
                    check_hosts(args.server)
                except ValueError as bad:
                    print(f"zkwatcher-supervisor status: --server: {bad}", file=sys.stderr)
                    return EXIT_CONFIG_ERROR
            return show_status(None, args.config, args.server, args.json)
        print(f"zkwatcher-supervisor: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if command == "status":
        return show_status(config, args.config, args.server, args.json)
    if command in ("drain", "undrain"):
        from .drain import run_drain

        return run_drain(config, args)
    if command == "handoff":
        from .handoff import hand_over
        from .supervisord import SupervisordConfError, resolve_from

        try:
            connection = resolve_from(args)
        except SupervisordConfError as exc:
            print(f"zkwatcher-supervisor handoff: {exc}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        ok, message = hand_over(config, connection.server_url, connection.username,
                                connection.password, where=connection.describe(),
                                hosts_override=args.server)
        print(message, file=sys.stdout if ok else sys.stderr)
        return EXIT_DONE if ok else EXIT_FAILED
    if config.metrics_port and not importlib.util.find_spec("prometheus_client"):
        return _no_prometheus_client(config)
    return check_config(config)


def _no_prometheus_client(config) -> int:
    print(f"zkwatcher-supervisor: {config.filename}: [zkwatcher] metrics_port: needs "
          "prometheus_client (pip install 'zkwatcher-supervisor[metrics]')", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def _run_command(args: argparse.Namespace) -> int:
    """The listener; its exit status (supervisord restarts it unless 0).

    Only the listener reads its secrets (``link_files``); the other commands
    may run as any user, who may not be able to read them."""
    # Before the config (and its passwords) is read: from here on, other
    # processes of our user cannot read our memory or environment.
    undumpable_problem = make_undumpable()
    try:
        config = load_config(args.config, hosts_override=args.server, link_files=True)
    except ConfigError as exc:
        print(f"zkwatcher-supervisor: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    # prometheus_client (and the HTTP server it brings) only when asked for:
    # it is a tenth of the listener's memory.
    if config.metrics_port and not importlib.util.find_spec("prometheus_client"):
        return _no_prometheus_client(config)

    error = switch_error(config, os.geteuid(), os.getegid())
    if error is not None:
        print(f"zkwatcher-supervisor: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    log_writer = setup_logging(args.verbose, args.syslog)
    warnings = [*config.warnings, *(root_warnings(config.services) if os.geteuid() == 0 else [])]
    if undumpable_problem is not None:
        warnings.append(f"{undumpable_problem}: processes running as uid {os.geteuid()}, "
                        "checks without a user among them, can read its environment and "
                        "memory")
    for warning in warnings:
        logging.getLogger(__name__).warning("%s", warning)

    status = 1  # what a crash would exit with, unless run() returns
    try:
        from .listener import run  # imports kazoo; not needed for check-config

        status = run(config, hosts_override=args.server, start_drained=args.drained)
        return status
    finally:
        # Every line written before we exit.  A log that takes none (stderr
        # blocked) would hold the interpreter's own exit, which flushes stderr.
        if not log_writer.stop():
            os._exit(status)


def check_config(config: Config) -> int:
    """``check-config``: the link to ZooKeeper and each section's znode and payload."""
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    zookeeper = config.zookeeper
    print(f"zookeeper {zookeeper.hosts} session_timeout={zookeeper.session_timeout:g}s"
          + (f" auth={zookeeper.auth.user}" if zookeeper.auth else "")
          + (f" (SASL {zookeeper.auth.mechanism})" if zookeeper.auth and zookeeper.auth.sasl
             else ""))
    print(f"status file {config.status_file or statedir.state_path(config.filename, 'status')}")
    unread = link_file_paths(config)
    if unread:
        print(f"not read here (run reads and checks them, as its user): {', '.join(unread)}")
    for service in config.services:
        print(f"[{service.name}] {service.display_path} "
              f"{node_payload(service, os.getpid()).decode()}")
    return EXIT_DONE
