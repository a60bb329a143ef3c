"""The test harness, shipped for the demo, the tests and the benchmarks.

Real servers on loopback — a ZooKeeper from Debian's package, a supervisord
from the installed ``supervisor`` — a proxy that cuts, freezes and partitions
the link between them and a listener, and (in :mod:`.soak`) the concurrency
soak with its checker.  No module of the listener imports anything here.
"""

from .sandbox import (
    FaultProxy,
    LocalSupervisord,
    LocalZooKeeper,
    die_with_parent,
    four_letter_word,
    free_port,
    local_ensemble,
    log_time,
    term_recorder,
    wait_until,
)

__all__ = ["FaultProxy", "LocalSupervisord", "LocalZooKeeper", "die_with_parent",
           "four_letter_word", "free_port", "local_ensemble", "log_time", "term_recorder",
           "wait_until"]
