"""The data stored in each znode, in the format its consumers read.

* ``nd_service_registry`` (default): what zk_watcher wrote —
  ``{"pid", "created"}`` updated with ``zookeeper_data`` (user keys win).
* ``serverset``: Finagle/Aurora ServerSet member JSON — ``serviceEndpoint``,
  ``additionalEndpoints``, ``status: ALIVE`` — updated with ``zookeeper_data``
  (so ``shard`` or extra endpoints can be given there).
* ``curator``: Apache Curator x-discovery ``ServiceInstance`` JSON; the service
  name is the last element of ``zookeeper_path`` (Curator's
  ``<basePath>/<name>/<id>`` layout), the id is the node name ``host:port``
  and ``zookeeper_data`` becomes the instance payload.
* ``nerve``: Airbnb Nerve's (SmartStack) node JSON — ``host``, ``port``,
  ``name`` (the section's ``instance_id``) — updated with ``zookeeper_data``
  (``weight``, ``haproxy_server_options``, ``labels``, anything else as given;
  checked when the config loads).
"""

from __future__ import annotations

import json
import posixpath
import time

from .config import ServiceSettings


def node_payload(service: ServiceSettings, pid: int, created: float | None = None) -> bytes:
    """The node data for ``service``: compact JSON in its ``payload_format``."""
    if created is None:
        created = time.time()
    data: dict
    if service.payload_format == "serverset":
        data = {
            "serviceEndpoint": {"host": service.service_hostname, "port": service.service_port},
            "additionalEndpoints": {},
            "status": "ALIVE",
        }
        data.update(service.zookeeper_data)
    elif service.payload_format == "curator":
        data = {
            "name": posixpath.basename(service.zookeeper_path.rstrip("/")),
            "id": f"{service.service_hostname}:{service.service_port}",
            "address": service.service_hostname,
            "port": service.service_port,
            "sslPort": None,
            "payload": service.zookeeper_data or None,
            "registrationTimeUTC": int(created * 1000),
            "serviceType": "DYNAMIC",
            "uriSpec": None,
            "enabled": True,
        }
    elif service.payload_format == "nerve":
        data = {"host": service.service_hostname, "port": service.service_port,
                "name": service.instance_id}
        data.update(service.zookeeper_data)
    else:
        data = {"pid": pid, "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))}
        data.update(service.zookeeper_data)
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


# Fields that say which listener process wrote a node and when, not what it registers.
_IDENTITY_FIELDS = ("pid", "created", "registrationTimeUTC")


def same_registration(a: bytes, b: bytes) -> bool:
    """Whether two payloads register the same thing, apart from who wrote them and when.

    A listener that took over its predecessor's session keeps the
    predecessor's node as it is when this holds, instead of rewriting it
    with its own pid: consumers then see no change at all.
    """
    if a == b:
        return True
    try:
        first, second = json.loads(a), json.loads(b)
    except (ValueError, RecursionError):  # node data is whatever its writer put there
        return False
    if not isinstance(first, dict) or not isinstance(second, dict):
        return False
    for field in _IDENTITY_FIELDS:
        first.pop(field, None)
        second.pop(field, None)
    return first == second


def _port_number(value: object) -> int | None:
    """A port as JSON gives it: a number, or ASCII digits in a string ("0080"
    is 80); None for anything else or outside 0..65535 (node data is whatever
    its writer put there: "²" is a digit to str.isdigit but not to int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, int) and 0 <= value <= 65535:
        return value
    return None


def announced_endpoints(data: bytes) -> set[tuple[str, int]]:
    """The ``(host, port)`` pairs node data (any format we write, or a peer's) advertises."""
    try:
        value = json.loads(data[:1 << 20])  # ZooKeeper's own limit on node data
    except (ValueError, RecursionError):
        return set()
    if not isinstance(value, dict):
        return set()
    endpoint = value.get("serviceEndpoint")
    found = set()
    for candidate in (endpoint if isinstance(endpoint, dict) else {}, value):
        name = candidate.get("host", candidate.get("address"))
        port = _port_number(candidate.get("port"))
        if isinstance(name, str) and port is not None:
            found.add((name, port))
    return found


def names_endpoint(data: bytes, host: str, port: int) -> bool:
    """Whether node data (any format we write, or a peer's) advertises ``host:port``."""
    return (host, port) in announced_endpoints(data)
