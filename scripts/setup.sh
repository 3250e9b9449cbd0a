#!/usr/bin/env bash
# Sets up a fresh machine for crossinfer: the Python package with Beam and the ML libraries,
# Beam's Prism runner, Debian's Gradle and Maven, the Java build (its JUnit tests run too) and
# the Java artifact in the local Maven repository. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
echo "== Python packages (apache-beam[gcp]==2.77.0, torch, scikit-learn, onnxruntime, tensorflow, xgboost, tensorflow-transform, crossinfer)"
# The tensorflow, xgboost and prepare extras add about 1.4 GB and a minute; the tests of those
# frameworks are skipped where they are not installed.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -e ".[test,bench,tensorflow,xgboost,prepare]"

# Prism of the installed apache-beam: $CROSSINFER_PRISM or a `prism` on PATH if it is that
# version, else a build kept in ~/.cache/crossinfer/prism/v<version>/, else built there from
# Beam's Go module with `go install` (needs Go; about 8 minutes on 2 cores, once).
echo "== Prism runner of apache-beam $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("apache-beam"))')"
"$PYTHON" -m crossinfer._prism

if ! command -v gradle >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1 \
    || ! command -v mvn >/dev/null 2>&1; then
  echo "== Debian packages: gradle, maven, a JDK"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gradle maven \
    default-jdk-headless >/dev/null
fi

# A second local user, for the tests that probe a service as someone else (it must be refused).
if [ "$(id -u)" = 0 ] && ! id crossinfer-other >/dev/null 2>&1; then
  echo "== a second local user for the access tests: crossinfer-other (no login, no home)"
  useradd --system --no-create-home --shell /usr/sbin/nologin crossinfer-other
fi
# The security tests run the service twice: as root, and as this unprivileged user (created
# only where this script runs as root). It needs to run this Python: where the interpreter
# sits under a directory others cannot enter (e.g. /root), the user alone is let through
# (an ACL: search only, no listing).
if [ "$(id -u)" = 0 ] && command -v useradd >/dev/null 2>&1; then
  echo "== The unprivileged user of the security tests (crossinfer-test)"
  id crossinfer-test >/dev/null 2>&1 || useradd --system --no-create-home \
    --shell /usr/sbin/nologin crossinfer-test
  command -v setfacl >/dev/null 2>&1 || { apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq acl >/dev/null; }
  dir=$(dirname "$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')")
  while [ "$dir" != / ]; do
    [ -n "$(find "$dir" -maxdepth 0 -perm -o=x)" ] || setfacl -m u:crossinfer-test:x "$dir"
    dir=$(dirname "$dir")
  done
fi
# The inspectors' seccomp filter uses the C library libseccomp (Debian: libseccomp2).
if ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp2 >/dev/null
fi

echo "== Java build (gradle build: library, examples, JUnit, classpath files for the tests)"
gradle -q --console=plain build
echo "== Java artifact io.crossinfer:crossinfer into the local Maven repository"
gradle -q --console=plain publishToMavenLocal
# The Maven consumer tests build offline (mvn -o); fetch their plugins and dependencies once, for
# each Beam version and runner they use: Beam 2.65.0 with the PortableRunner, Beam 2.68.0 with the
# Dataflow runner, and 2.68.0 with a 2.65.0 PortableRunner (the mixed-versions test).
echo "== Maven: what the consumer projects (tests/maven_consumer) need, fetched once"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
for flags in "-Pportable" "-Pdataflow -Dbeam.version=2.68.0" \
    "-Pportable -Dbeam.version=2.68.0 -Dportable.runner.version=2.65.0"; do
  CONSUMER=$(mktemp -d)
  cp -r tests/maven_consumer/. "$CONSUMER"
  # shellcheck disable=SC2086  # $flags is several flags
  (cd "$CONSUMER" && mvn -q -B package dependency:build-classpath $flags \
    -Dcrossinfer.version="$VERSION" -Dmdep.outputFile=target/classpath.txt)
  rm -rf "$CONSUMER"
done
