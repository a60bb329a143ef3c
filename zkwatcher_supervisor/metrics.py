"""Prometheus metrics on 127.0.0.1:``metrics_port``, built from the status snapshot at scrape time.

Nothing is counted on the event path: a custom collector reads the same
snapshot the status file is written from, so metrics cost nothing between
scrapes.  Needs ``prometheus_client`` (``pip install 'zkwatcher-supervisor[metrics]'``).
"""

from __future__ import annotations

from .status import Snapshot

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # optional dependency
    CollectorRegistry = None


class SnapshotCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self):
        state = self._snapshot()
        if not state:
            return  # nothing published yet (the first moments after start)
        up = GaugeMetricFamily("zkwatcher_section_up", "1 while the section is healthy",
                               labels=["section"])
        registered = GaugeMetricFamily("zkwatcher_section_registered",
                                       "1 while the section's znode is in ZooKeeper",
                                       labels=["section"])
        drained = GaugeMetricFamily("zkwatcher_section_drained",
                                    "1 while the section is drained (out of discovery on purpose)",
                                    labels=["section"])
        duration = GaugeMetricFamily("zkwatcher_check_duration_seconds",
                                     "How long the section's last check took", labels=["section"])
        for name, section in state["sections"].items():
            up.add_metric([name], int(section["healthy"]))
            registered.add_metric([name], int(section["registered"]))
            drained.add_metric([name], int(bool(section.get("drained"))))
            check = section.get("check") or {}
            if check.get("duration") is not None:
                duration.add_metric([name], check["duration"])
        yield up
        yield registered
        yield drained
        yield duration
        counters = state["counters"]
        yield CounterMetricFamily("zkwatcher_registrations", "Znodes created",
                                  value=counters["registrations"])
        yield CounterMetricFamily("zkwatcher_deregistrations", "Znodes deleted",
                                  value=counters["deregistrations"])
        zookeeper = state["zookeeper"]
        yield GaugeMetricFamily("zkwatcher_zookeeper_connected",
                                "1 while connected to ZooKeeper", value=int(zookeeper["connected"]))
        yield CounterMetricFamily("zkwatcher_zookeeper_reconnects",
                                  "Connections to ZooKeeper after the first",
                                  value=max(0, zookeeper["connects"] - 1))


def serve(port: int, snapshot: Snapshot) -> None:
    """Serve /metrics on 127.0.0.1:``port`` from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    start_http_server(port, addr="127.0.0.1", registry=registry)
