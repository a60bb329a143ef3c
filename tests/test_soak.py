"""The concurrency soak: random faults at once, and ZooKeeper checked against the rules.

Real supervisord, real ZooKeeper behind a proxy that cuts, expires and
partitions the listener's session; programs stopped, started, restarted and
SIGKILLed; check flags flipped; configs rewritten and reloaded with SIGHUP;
nodes deleted by hand.  At random quiet moments the nodes in ZooKeeper must
equal the health rules applied to the true state within 1 s of when the
listener could know it (the rule is in ``zkwatcher_supervisor/testing/soak.py``).

``SOAK_SEED=<seed>`` replays a run's random choices (timing still varies).
"""

from __future__ import annotations

import os

import pytest

from zkwatcher_supervisor.testing.soak import RELOADS, Soak

pytestmark = pytest.mark.e2e

SECONDS = 80


def test_soak_nodes_equal_the_rules_at_every_quiet_point(zookeeper, tmp_path):
    seed = int(os.environ["SOAK_SEED"]) if "SOAK_SEED" in os.environ else None
    report = Soak(zookeeper, tmp_path / "soak", SECONDS, seed=seed, progress=print).run()
    print(report.text())

    if report.violations:
        pytest.fail(report.text(), pytrace=False)
    # A soak that did nothing proves nothing: every kind of fault happened.
    kinds = ["stop", "start", "restart", "kill -9", "flag flip", "delete by hand",
             *(f"reload: {change}" for change in RELOADS),
             "zookeeper cut", "zookeeper expiry", "zookeeper partition", "drain", "undrain"]
    done = {kind: report.operations.get(kind, 0) for kind in kinds}
    assert all(count >= 2 for count in done.values()), done
    assert sum(done.values()) >= 150, done
    assert report.checks >= 5
    assert report.members_seen >= 2  # ServerSet members came and went too
    assert report.nerve_seen >= 2  # and Nerve nodes
