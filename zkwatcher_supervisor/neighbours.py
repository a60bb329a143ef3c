"""Other sessions' nodes that announce the endpoint of a sequential node of ours.

A sequential name (ServerSet's ``member_<n>``, Nerve's ``<instance_id>_<n>``)
never collides, so while another registrant — Nerve or an Aurora executor
during a migration, a second listener started by mistake — announces the same
host and port under the same parent, both nodes exist and a reader that lists
the children sees the endpoint twice.  We cannot tell whose is right; the
registry logs it once per node found.
"""

from __future__ import annotations

import posixpath

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError

from .payload import names_endpoint

REPLY_TIMEOUT = 10.0


def endpoint_of(key: str) -> tuple[str, str] | None:
    """``(host, port)`` from a sequential registration key ``<parent>/<prefix>#<host>:<port>``."""
    _, sep, endpoint = posixpath.basename(key).partition("#")
    host, colon, port = endpoint.rpartition(":")
    if not sep or not colon or not host:
        return None
    return host, port


def announcing_alongside(client: KazooClient, key: str, ours: str,
                         session_id: int) -> list[str]:
    """The nodes beside ``ours`` (our node for ``key``) held by another session
    whose data names ``key``'s host and port.  One listing and a pipelined read
    of each sibling; connection errors reach the caller."""
    endpoint = endpoint_of(key)
    if endpoint is None:
        return []
    parent = posixpath.dirname(key)
    try:
        children = client.get_children(parent)
    except NoNodeError:
        return []
    reads = [(node, client.get_async(node)) for node in
             sorted(posixpath.join(parent, child) for child in children) if node != ours]
    found = []
    for node, read in reads:
        try:
            data, stat = read.get(timeout=REPLY_TIMEOUT)
        except (NoNodeError, NoAuthError):
            continue  # gone, or not readable: nothing a reader could see either
        if stat.ephemeralOwner != session_id and names_endpoint(data or b"", *endpoint):
            found.append(node)
    return found
