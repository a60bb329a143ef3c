#!/usr/bin/env bash
# The portable part of the suite (config, health, checks, the protocol loop,
# programs, the command line, the registry's decisions) on the oldest and the newest Python that setup.py admits, the
# oldest one with the oldest kazoo and supervisor that setup.py admits, each in
# a virtualenv of its own.  A Python that cannot be found is a failure.
#   bash tests/matrix.sh            # all three
#   bash tests/matrix.sh 3.13       # one
set -euo pipefail
cd "$(dirname "$0")/.."
subset=(tests/test_config.py tests/test_health.py tests/test_checks.py
        tests/test_protocol.py tests/test_programs.py tests/test_loop.py
        tests/test_cli.py tests/test_registry_decisions.py)
# name, Python version prefix, pins
runs=("3.9-floors 3.9 kazoo==2.11.0 supervisor==4.2.5" "3.13 3.13")

find_python() {
  local prefix=$1 candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$prefix".*/bin/python3 \
                   /root/.pyenv/versions/"$prefix".*/bin/python3 \
                   /usr/bin/python"$prefix" /usr/local/bin/python"$prefix"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  echo "matrix: no Python $prefix found (pyenv versions or /usr/bin/python$prefix)" >&2
  return 1
}

status=0
for run in "${runs[@]}"; do
  read -r name prefix pins <<<"$run"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* && " $* " != *" $prefix "* ]]; then continue; fi
  python=$(find_python "$prefix")
  venv=".venv-$name"
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
  fi
  # shellcheck disable=SC2086  # pins are words
  "$venv/bin/python" -m pip install -q -e '.[test]' $pins
  echo "matrix: $name: $("$venv/bin/python" --version)," \
       "$("$venv/bin/python" -c 'import kazoo.version, supervisor.options as o; print("kazoo", kazoo.version.__version__, "supervisor", o.VERSION)')" >&2
  PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider "${subset[@]}" || status=1
done
exit $status
