#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), then runs the demo: a Java pipeline classifies
# rows through Python via the crossinfer expansion service, locally, with no Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" scripts/demo.py "$@"
