#!/usr/bin/env bash
# Sets up a virtualenv with cdc-daemon and the bundled Typesense, then runs the local demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[demo]'
exec .venv/bin/python scripts/demo.py
