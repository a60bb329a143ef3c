#!/usr/bin/env bash
# Installs what the demo needs (scripts/setup.sh), then runs it from .venv (see
# examples/demo.py).  supervisord finds `zkwatcher-supervisor` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python examples/demo.py "$@"
