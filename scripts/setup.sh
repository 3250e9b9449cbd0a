#!/usr/bin/env bash
# Sets up a fresh machine for crossinfer: the Python package with Beam and the ML libraries,
# Debian's Gradle, and the Java build (its JUnit tests run too). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
echo "== Python packages (apache-beam[gcp]==2.77.0, torch, scikit-learn, onnxruntime, crossinfer)"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -e ".[test,bench]"

if ! command -v gradle >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
  echo "== Debian packages: gradle, a JDK"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gradle default-jdk-headless >/dev/null
fi

echo "== Java build (gradle build: compile, JUnit, classpath for the example pipeline)"
gradle -q --console=plain build writeClasspath
