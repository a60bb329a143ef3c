#!/usr/bin/env bash
# Installs what the demo needs, then runs it (see examples/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 examples/demo.py "$@"
