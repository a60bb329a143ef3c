#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh Debian machine:
# ZooKeeper (Debian's package; tests start their own servers from it) and this
# package with its test extra.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q zookeeper
fi
python3 -m pip install -q -e '.[test]'
