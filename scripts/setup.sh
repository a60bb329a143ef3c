#!/usr/bin/env bash
# Install what the demo and the tests need on a Debian machine: ZooKeeper
# (Debian's package; tests start their own servers from it), the consumers the
# tests read our nodes with (Prometheus; Apache Curator's discovery and a JDK
# to compile its reader) and this package
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
consumers=()
[ -x /usr/bin/prometheus ] || consumers+=(prometheus)
[ -e /usr/share/java/curator-x-discovery.jar ] || consumers+=(libcurator-discovery-java)
# ServiceProvider's cache; the discovery package does not depend on it.
[ -e /usr/share/java/curator-recipes.jar ] || consumers+=(libcurator-recipes-java)
command -v javac >/dev/null || consumers+=(openjdk-17-jdk-headless)
# Debian's own supervisor, for the test that its supervisorctl works beside
# our example files (the tests run their own supervisords).
[ -x /usr/bin/supervisorctl ] || consumers+=(supervisor)
if [ ${#missing[@]} -gt 0 ] || [ ${#consumers[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]} ${consumers[*]}" >&2
  $sudo apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if [ ${#consumers[@]} -gt 0 ]; then
  # The tests run their own Prometheus and supervisord: keep the packages'
  # services from starting (policy-rc.d 101 = "do not start").
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT  # however the install ends
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${consumers[@]}"
  [ -z "$made_policy" ] || { $sudo rm -f /usr/sbin/policy-rc.d; trap - EXIT; }
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
