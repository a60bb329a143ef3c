"""Command line entry point: ``zkwatcher-supervisor``."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import logging.handlers
import os
import sys

from . import __version__, statedir
from .config import (
    DEFAULT_HOSTS,
    Config,
    ConfigError,
    ZooKeeperSettings,
    load_config,
    settings_for_reading,
)
from .logs import KAZOO_REPEATS, LogWriter
from .payload import node_payload
from .privilege import make_undumpable, root_warnings, switch_error
from .status import locate_status, status_report

DEFAULT_CONFIG = "/etc/zk/config.cfg"
MAX_WAIT_SECONDS = 86400.0  # drain --stop --wait: a day is already a mistake
EXIT_CONFIG_ERROR = 2
SYSLOG_SOCKET = "/dev/log"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zkwatcher-supervisor",
        description="supervisord event listener that registers healthy services in ZooKeeper. "
        "Run it from an [eventlistener:x] section with "
        "events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION.",
    )
    parser.add_argument("command", nargs="?",
                        choices=["run", "status", "handoff", "drain", "undrain"],
                        default="run",
                        help="run: the supervisord event listener (default); status: one line "
                        "per section from the running listener and ZooKeeper, exit 0 only "
                        "when every section is registered exactly when it is healthy; "
                        "handoff: restart the listener through supervisord, keeping its "
                        "ZooKeeper session and every node; drain/undrain SECTION...: take "
                        "sections out of discovery (and put them back) without stopping them")
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help="drain/undrain: the sections to act on")
    parser.add_argument("--program", help="drain/undrain: every section bound to this program")
    parser.add_argument("--all", action="store_true", help="drain/undrain: every section")
    parser.add_argument("--reason", default="", help="drain: why (shown by status)")
    parser.add_argument("--for", dest="duration", metavar="DURATION",
                        help="drain: undrain by itself after this long (90s, 15m, 2h, 1d)")
    parser.add_argument("--stop", action="store_true",
                        help="drain: once ZooKeeper confirmed the deletion, wait --wait "
                        "seconds, then stop the bound programs through supervisord")
    parser.add_argument("--wait", type=seconds_argument, metavar="SECONDS",
                        help="drain --stop: seconds between deregistering and stopping "
                        "(default: the sections' drain_seconds, else 0)")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"service config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("-s", "--server",
                        help="ZooKeeper hosts, host:port[,host:port...][/chroot]; "
                        "overrides [zkwatcher] hosts (default: localhost:2181)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-l", "--syslog", action="store_true",
                        help="log to syslog (/dev/log) instead of stderr")
    parser.add_argument("--check-config", action="store_true",
                        help="print each service's znode path and payload, then exit")
    parser.add_argument("--serverurl", default=os.environ.get("SUPERVISOR_SERVER_URL"),
                        help="handoff: supervisord's URL (default: $SUPERVISOR_SERVER_URL, "
                        "else unix:///var/run/supervisor.sock)")
    parser.add_argument("-u", "--username", default=os.environ.get("SUPERVISOR_USERNAME"),
                        help="handoff: supervisord username")
    parser.add_argument("-p", "--password", default=os.environ.get("SUPERVISOR_PASSWORD"),
                        help="handoff: supervisord password")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def setup_logging(verbose: bool, syslog: bool) -> LogWriter:
    """Log through a queue: the event loop never waits for stderr or syslog to
    take a line.  Stop the returned writer to flush before exiting."""
    handler: logging.Handler
    if syslog and os.path.exists(SYSLOG_SOCKET):
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter(f"zkwatcher-supervisor[{os.getpid()}]: "
                                               "%(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
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
    if syslog and not isinstance(handler, logging.handlers.SysLogHandler):
        logging.getLogger(__name__).warning("--syslog: %s does not exist; logging to stderr",
                                            SYSLOG_SOCKET)
    return writer


def show_status(config: Config | None, config_filename: str,
                hosts_override: str | None = None) -> int:
    """``status``; without ``config`` (we may not read it), from the status file alone.

    ZooKeeper is asked as whoever runs us, without the listener's credentials;
    where that is not possible (TLS files this user cannot read), the
    listener's own word stands in for it."""
    from .znode_reads import read_existing  # imports kazoo

    located = locate_status(config_filename, config.status_file if config else "")
    settings: ZooKeeperSettings | None = None
    unchecked = None
    if config is None:
        path, state = located
        if state is None:
            print(f"zkwatcher-supervisor: cannot read {config_filename} and there is no "
                  f"status file at {path}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        zookeeper = state.get("zookeeper", {})
        print(f"(cannot read {config_filename}: sections and ZooKeeper from {path})")
        if zookeeper.get("tls"):
            unchecked = "its TLS settings are in the config"
        else:
            settings = ZooKeeperSettings(hosts=hosts_override or zookeeper.get("hosts")
                                         or DEFAULT_HOSTS)
    else:
        try:
            settings = settings_for_reading(config.zookeeper)
        except ValueError as exc:
            unchecked = str(exc)
    if unchecked is not None:
        print(f"ZooKeeper not checked: {unchecked}; registered as the listener last saw it")

    def read_nodes(paths: list[str]) -> dict[str, bool] | None:
        if settings is None:
            # Only the listener's word: what it last confirmed in ZooKeeper.
            sections = (located[1] or {}).get("sections", {})
            registered = {info["path"] for info in sections.values() if info.get("registered")}
            return {path: path in registered for path in paths}
        try:
            return read_existing(settings, paths)
        except Exception as exc:
            print(f"ZooKeeper {settings.hosts}: unreachable ({exc})")
            return None

    lines, ok = status_report(config, read_nodes, located=located)
    print("\n".join(lines))
    return 0 if ok else 1


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Only the listener needs its secrets; the other commands may run as any
    # user, who may not read them or own them.
    runs = args.command == "run" and not args.check_config
    undumpable_problem = None
    if runs:
        # Before the config (and its passwords) is read: from here on, other
        # processes of our user cannot read our memory or environment.
        undumpable_problem = make_undumpable()
    try:
        config = load_config(args.config, hosts_override=args.server, link_files=runs)
    except ConfigError as exc:
        if args.command == "status" and exc.unreadable:
            return show_status(None, args.config, args.server)
        print(f"zkwatcher-supervisor: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    if args.command == "status":
        return show_status(config, args.config)
    if args.command in ("drain", "undrain"):
        from .drain import run_drain

        return run_drain(config, args)
    if args.command == "handoff":
        from .handoff import hand_over
        from .supervisord import DEFAULT_SERVER_URL

        ok, message = hand_over(config, args.serverurl or DEFAULT_SERVER_URL, args.username,
                                args.password)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1

    # prometheus_client (and the HTTP server it brings) only when asked for:
    # it is a tenth of the listener's memory.
    if config.metrics_port and not importlib.util.find_spec("prometheus_client"):
        print(f"zkwatcher-supervisor: {config.filename}: [zkwatcher] metrics_port: needs "
              "prometheus_client (pip install 'zkwatcher-supervisor[metrics]')", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    if args.check_config:
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
        return 0

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
        from .listener import run  # imports kazoo; not needed for --check-config

        status = run(config, hosts_override=args.server)
        return status
    finally:
        # Every line written before we exit.  A log that takes none (stderr
        # blocked) would hold the interpreter's own exit, which flushes stderr.
        if not log_writer.stop():
            os._exit(status)
