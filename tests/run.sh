#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/setup.sh: Debian's zookeeper
# package and a .venv with this package), then runs every test from .venv
# against real ZooKeeper and supervisord servers started by the fixtures.
# pytest's exit status is this script's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# As if .venv were activated: tests also run the installed console script.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"  # pytest.ini: testpaths = tests
