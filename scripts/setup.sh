#!/usr/bin/env bash
# Install what the demo and the tests need on a Debian machine: ZooKeeper
# (Debian's package; tests start their own servers from it) and this package
# with its test extra in a project virtualenv, .venv.  Debian's own python3
# refuses `pip install` outside a virtualenv (PEP 668), so everything runs from
# .venv/bin/python.  Safe to run again; quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
missing=()
if [ ! -e /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null; then
  missing+=(zookeeper)
fi
# Debian ships venv's ensurepip in a separate package.
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}" >&2
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# A .venv whose interpreter is gone (or that was made without pip) is rebuilt.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  echo "setup: python3 -m venv .venv ($(command -v python3))" >&2
  python3 -m venv .venv
fi

# Reinstall only when setup.py changed or .venv points at another checkout.
stamp=.venv/.zkwatcher-installed
if [ ! -e "$stamp" ] || [ setup.py -nt "$stamp" ] ||
   ! .venv/bin/python -c 'import os, sys, zkwatcher_supervisor as z
sys.exit(os.path.dirname(os.path.abspath(z.__file__)) != os.path.abspath("zkwatcher_supervisor"))' \
     2>/dev/null; then
  echo "setup: .venv/bin/pip install -e '.[test]'" >&2
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
