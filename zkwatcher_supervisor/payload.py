"""The data stored in each znode, as nd_service_registry (and so zk_watcher) wrote it."""

from __future__ import annotations

import json
import time

from .config import ServiceSettings


def node_payload(service: ServiceSettings, pid: int, created: float | None = None) -> bytes:
    """Compact JSON of ``{"pid", "created"}`` updated with ``zookeeper_data`` (user keys win)."""
    data = {
        "pid": pid,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)),
    }
    data.update(service.zookeeper_data)
    return json.dumps(data, separators=(",", ":")).encode("utf-8")
