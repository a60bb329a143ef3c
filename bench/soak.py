"""The long concurrency soak: ``python bench/soak.py --minutes 10 [--seed S] [--json]``.

Starts its own ZooKeeper, then runs zkwatcher_supervisor.testing.soak.Soak (supervisord,
the listener behind a fault proxy, concurrent actors, the quiet-point checker)
and prints its report.  Exit status 1 when there was any violation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from zkwatcher_supervisor.testing import LocalZooKeeper
from zkwatcher_supervisor.testing.soak import Soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, help="replay a run's random choices")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--check-period", type=float, metavar="S",
                        help="allow checks to run only every S seconds instead of every "
                             "refresh (e.g. 6 for a listener that runs them on TICK_5 only)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (always kept after a violation)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="zkwatcher-soak-"))
    zookeeper = LocalZooKeeper(workdir / "zookeeper").start()
    try:
        soak = Soak(zookeeper, workdir / "soak", args.minutes * 60, seed=args.seed,
                    check_period=args.check_period,
                    progress=lambda line: print(line, file=sys.stderr, flush=True))
        report = soak.run()
    finally:
        zookeeper.stop()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    if report.violations or args.keep:
        print(f"scratch directory kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
