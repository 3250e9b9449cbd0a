#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), then runs every test: the Python suite, which
# includes the end-to-end runs of a Java pipeline through our expansion service and Beam's
# Python job server. The Java unit tests run inside the setup's `gradle build`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== pytest"
PY=${PYTHON:-python3}
# TensorFlow's tests run in a pytest process of their own: TensorFlow and torch's compiler
# cannot share one process (both register LLVM's options), and the other tests train torch
# models. Exit 5 is "no test selected" (e.g. a path given that holds none of them).
tf=0
"$PY" -m pytest -q -p no:cacheprovider -m tensorflow tests "$@" || tf=$?
rest=0
"$PY" -m pytest -q -p no:cacheprovider -m "not tensorflow" tests "$@" || rest=$?
[ "$tf" = 0 ] || [ "$tf" = 5 ] || exit "$tf"
exit "$rest"
