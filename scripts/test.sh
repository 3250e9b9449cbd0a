#!/usr/bin/env bash
# Two ways to run the tests:
#   bash scripts/test.sh [PYTEST ARGS]          the full run (what CI calls): sets up a fresh
#       machine (scripts/setup.sh: Python packages, `gradle build` with the JUnit tests, Prism),
#       then every test, including the end-to-end runs of Java pipelines on Prism and on Beam's
#       Python job server.
#   bash scripts/test.sh --quick [PYTEST ARGS]  the developer loop: no setup, no JVM, no Prism,
#       nothing marked `slow` (pytest markers `java`, `prism`, `slow`; see pyproject.toml).
#       Under 5 minutes on 2 cores. A test that starts a JVM or Prism without its marker fails
#       here, saying which marker it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
markers="tensorflow"
others="not tensorflow"
if [ "$quick" = 1 ]; then
  skip="not java and not prism and not slow"
  markers="tensorflow and $skip"
  others="not tensorflow and $skip"
  # Stand-ins for `java` and Prism that fail loudly: an unmarked test that needs them fails.
  guard=$(mktemp -d -t quick-mode-has-no-java-nor-prism.XXXX)
  trap 'rm -rf "$guard"' EXIT
  for tool in java prism; do
    printf '#!/bin/sh\necho "scripts/test.sh --quick: this test runs %s; mark it @pytest.mark.%s" >&2\nexit 97\n' \
      "$tool" "$tool" >"$guard/$tool"
    chmod +x "$guard/$tool"
  done
  export PATH="$guard:$PATH" CROSSINFER_PRISM="$guard/prism"
  export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  bash scripts/setup.sh
fi
echo "== pytest"
# TensorFlow's tests run in a pytest process of their own: TensorFlow and torch's compiler
# cannot share one process (both register LLVM's options), and the other tests train torch
# models. Exit 5 is "no test selected" (e.g. a path given that holds none of them).
tf=0
"$PY" -m pytest -q -p no:cacheprovider -m "$markers" tests "$@" || tf=$?
rest=0
"$PY" -m pytest -q -p no:cacheprovider -m "$others" tests "$@" || rest=$?
[ "$tf" = 0 ] || [ "$tf" = 5 ] || exit "$tf"
[ "$rest" = 0 ] || [ "$rest" = 5 ] || exit "$rest"
exit 0
