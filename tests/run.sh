#!/usr/bin/env bash
# The test suite: installs what it needs, then runs every test against real
# ZooKeeper and supervisord servers started by the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest tests "$@"
