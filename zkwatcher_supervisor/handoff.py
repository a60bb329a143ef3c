"""``zkwatcher-supervisor handoff``: restart the listener without a single flap.

Finds the running listener from its status file, asks supervisord to send it
SIGUSR2 (so it works wherever supervisorctl works, with supervisord's own
access control), and waits until the successor supervisord starts has taken
over and published its status.
"""

from __future__ import annotations

import time

from supervisor import childutils

from .config import Config
from .status import process_alive, read_status_file

DEFAULT_SERVER_URL = "unix:///var/run/supervisor.sock"


def hand_over(config: Config, server_url: str, username: str | None, password: str | None,
              timeout: float = 15.0) -> tuple[bool, str]:
    """Hand the listener of ``config`` over to a fresh one; (success, what happened)."""
    state = read_status_file(config.status_file)
    pid = (state or {}).get("pid")
    if not pid or not process_alive(pid):
        return False, f"no running listener for {config.filename} (status file " \
                      f"{config.status_file})"
    env = {"SUPERVISOR_SERVER_URL": server_url}
    if username:
        env.update(SUPERVISOR_USERNAME=username, SUPERVISOR_PASSWORD=password or "")
    try:
        rpc = childutils.getRPCInterface(env)
        infos = rpc.supervisor.getAllProcessInfo()
        matches = [f"{info['group']}:{info['name']}" for info in infos if info["pid"] == pid]
        if not matches:
            return False, f"listener pid {pid} is not a process of the supervisord at " \
                          f"{server_url}"
        rpc.supervisor.signalProcess(matches[0], "USR2")
    except Exception as exc:  # xmlrpc faults, refused connections, bad credentials
        return False, f"supervisord at {server_url}: {exc}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_status_file(config.status_file)
        successor = (state or {}).get("pid")
        if successor and successor != pid and process_alive(successor):
            return True, f"handed over: pid {pid} -> pid {successor}"
        time.sleep(0.1)
    return False, f"pid {pid} was signalled but no successor published its status within " \
                  f"{timeout:.0f}s; is autorestart = true set for {matches[0]}?"
