"""Reaching supervisord's XML-RPC interface from the command line.

The commands reach supervisord as ``supervisor.childutils`` does: a URL
(``unix://`` or ``http://``) and optional credentials, passed in the
environment-shaped mapping childutils reads.  One place builds it, so
``drain`` and ``handoff`` cannot drift apart.
"""

from __future__ import annotations

from supervisor import childutils

DEFAULT_SERVER_URL = "unix:///var/run/supervisor.sock"


def rpc_interface(server_url: str | None, username: str | None = None,
                  password: str | None = None):
    """A proxy for supervisord's XML-RPC namespaces (``.supervisor``, ...).

    It connects on its first call; errors (refused, bad credentials, faults)
    arrive there.
    """
    env = {"SUPERVISOR_SERVER_URL": server_url or DEFAULT_SERVER_URL}
    if username:
        env.update(SUPERVISOR_USERNAME=username, SUPERVISOR_PASSWORD=password or "")
    return childutils.getRPCInterface(env)
