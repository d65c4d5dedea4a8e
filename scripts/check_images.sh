#!/usr/bin/env bash
# What CI can check of the Docker deployment without a Docker engine:
# 1. docker-compose accepts docker-compose.yml;
# 2. the API image's Python environment (`pip install -e .`, no extras, as Dockerfile.api does)
#    installs, builds the app and its OpenAPI document, and has no torch.
# The worker image's environment is the `model` extra, which the dev venv (scripts/setup.sh)
# already installs and the test suite exercises.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v docker-compose >/dev/null; then
  docker-compose config -q
elif docker compose version >/dev/null 2>&1; then
  docker compose config -q
else
  echo "no docker-compose here: skipping the compose file check" >&2
fi
env_dir=$(mktemp -d)
trap 'rm -rf "$env_dir"' EXIT
python3.11 -m venv "$env_dir"
"$env_dir/bin/pip" install -q -e .
"$env_dir/bin/python" - <<'PY'
import importlib.util
import sys

from api.main import create_app

create_app().openapi()
assert importlib.util.find_spec("torch") is None, "torch is in the API environment"
assert "model" not in sys.modules
print("API image environment: ok (no torch)")
PY
