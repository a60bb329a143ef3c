#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/setup.sh: Debian's zookeeper
# package and a .venv with this package), then runs every test from .venv
# against real ZooKeeper and supervisord servers started by the fixtures.
# pytest's exit status is this script's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
