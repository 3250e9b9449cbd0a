#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), then runs every test: the Python suite, which
# includes the end-to-end runs of a Java pipeline through our expansion service and Beam's
# Python job server. The Java unit tests run inside the setup's `gradle build`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== pytest"
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider tests "$@"
