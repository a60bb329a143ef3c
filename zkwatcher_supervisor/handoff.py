"""``zkwatcher-supervisor handoff``: restart the listener without a single flap.

Finds the running listener from its status file, asks supervisord to send it
SIGUSR2 (so it works wherever supervisorctl works, with supervisord's own
access control), and waits until the successor holds the very ZooKeeper
session the old listener had — the proof that no node was deleted.  The old
listener exits with a status supervisord's default ``autorestart =
unexpected`` restarts; where supervisord does not restart it
(``autorestart = false``), this command starts it.
"""

from __future__ import annotations

import time

from .config import Config
from .status import (
    distrust,
    locate_status,
    of_an_earlier_version,
    owner_of,
    process_alive,
    read_status_file,
    reading_settings,
)
from .supervisord import describe_error, rpc_interface, supervisorctl_defaults
from .untrusted import printable

SETTLE = 2.0
# States in which supervisord will not start the successor by itself.
_NOT_RESTARTING = ("EXITED", "STOPPED", "FATAL")


def _session(state: dict | None) -> str | None:
    zookeeper = (state or {}).get("zookeeper") or {}
    session = zookeeper.get("session")
    return session if isinstance(session, str) and zookeeper.get("connected") else None


def hand_over(config: Config, server_url: str | None = None, username: str | None = None,
              password: str | None = None, timeout: float = 15.0, *, rpc=None,
              where: str | None = None,
              hosts_override: str | None = None) -> tuple[bool, str]:
    """Hand the listener of ``config`` over to a fresh one; (success, what happened).

    supervisord is reached at ``server_url`` with ``username``/``password``,
    or through ``rpc``, an XML-RPC proxy already made (supervisorctl's own, in a
    plugin); ``where`` names it in messages.  ``hosts_override``: the
    ensemble to read an earlier version's nodes from (default: where the
    listener says it is connected, else the config's)."""
    where = where or f"supervisord at {server_url or supervisorctl_defaults().server_url}"
    path, state = locate_status(config.filename, config.status_file)
    pid = (state or {}).get("pid")
    if not pid or not process_alive(pid):
        return False, f"no running listener for {config.filename} (status file " \
                      f"{distrust(path) or path})"
    owner = owner_of(path)
    # The file is published within half a second of a change: a listener that
    # has just connected may not say so yet.
    settle = time.monotonic() + SETTLE
    while _session(state) is None and time.monotonic() < settle:
        time.sleep(0.05)
        state = read_status_file(path, owner) or state
    session = _session(state)
    if session is None and of_an_earlier_version(state):
        # A listener of an earlier version does not publish its session: its nodes'
        # owner is the session the successor must hold.
        try:
            session = _session_of_nodes(config, state, hosts_override)
        except Exception as exc:  # unreachable, refused: nothing to prove a hand-over by
            return False, f"the listener (pid {pid}) is of an earlier version and its " \
                          f"session cannot be read from ZooKeeper ({exc}); nothing was done"
    elif session is None:
        return False, f"the listener (pid {pid}) is not connected to ZooKeeper: there is " \
                      "no session to hand over (a restart now would re-register every node)"
    refused_before = state.get("handoff_refused")
    try:
        if rpc is None:
            rpc = rpc_interface(server_url, username, password)
        infos = rpc.supervisor.getAllProcessInfo()
        matches = [f"{info['group']}:{info['name']}" for info in infos if info["pid"] == pid]
        if not matches:
            return False, f"listener pid {pid} is not a process of {where}"
        name = matches[0]
        rpc.supervisor.signalProcess(name, "USR2")
    except Exception as exc:  # xmlrpc faults, refused connections, bad credentials
        return False, f"{where}: {describe_error(exc)}"
    deadline = time.monotonic() + timeout
    started = False
    while time.monotonic() < deadline:
        # Looked for afresh: a successor of another version may publish elsewhere.
        state = read_status_file(path, owner) or locate_status(config.filename,
                                                                config.status_file)[1]
        successor = (state or {}).get("pid")
        if successor == pid and state.get("handoff_refused") not in (None, refused_before):
            why = printable(state["handoff_refused"]["why"])
            return False, f"the listener (pid {pid}) refused to hand over: {why}; it is " \
                          "still running, nothing changed"
        if successor and successor != pid and process_alive(successor):
            now_session = _session(state)
            if now_session is not None and session is None:
                return True, f"handed over: pid {pid} -> pid {successor} (no node was " \
                             "registered, so none could flap)"
            if now_session == session:
                return True, f"handed over: pid {pid} -> pid {successor}, ZooKeeper " \
                             f"session {session} kept"
            if now_session is not None:
                return False, f"pid {successor} took over with a new ZooKeeper session " \
                              f"{now_session} (was {session}): every node was deleted and " \
                              "registered again; see the listener's log"
        if not started and not process_alive(pid):
            try:
                if rpc.supervisor.getProcessInfo(name)["statename"] in _NOT_RESTARTING:
                    rpc.supervisor.startProcess(name, False)
                    started = True
            except Exception:  # already starting (supervisord was quicker), or gone
                pass
        time.sleep(0.05)
    return False, f"pid {pid} was signalled but no successor took over its session within " \
                  f"{timeout:.0f}s; see the log of {name}"


def _session_of_nodes(config: Config, state: dict, hosts_override: str | None) -> str | None:
    """The session holding the nodes the status file says are registered, read from
    ZooKeeper; None if none is registered."""
    from .znode_reads import owners  # imports kazoo

    paths = [info["path"] for info in state.get("sections", {}).values()
             if info.get("registered") and "<" not in info["path"]]
    if not paths:
        return None
    held = owners(reading_settings(config, state, hosts_override), paths[:20])
    return next((f"0x{owner:x}" for owner in held.values() if owner), None)
