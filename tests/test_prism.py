"""Prism, Beam's portable local runner: the binary setup provides, and starting it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import crossinfer

from crossinfer import _prism

pytestmark = [pytest.mark.prism, pytest.mark.timeout(300)]


def test_setup_provides_prism_of_the_installed_beam():
    path = _prism.locate()
    assert _prism.binary_version(path) == _prism.beam_version()
    # What users call: the library function and the command print the same binary.
    assert crossinfer.prism_location() == str(path)
    done = subprocess.run(["crossinfer-prism", "--no-build"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, str(path)), done.stderr


def test_a_binary_of_another_beam_named_explicitly_is_refused(tmp_path, monkeypatch):
    other = tmp_path / "prism"
    shutil.copy(sys.executable, other)  # a Go-less binary: no Beam version in it
    monkeypatch.setenv(_prism.ENV, str(other))
    with pytest.raises(_prism.PrismMismatch) as caught:
        _prism.locate()
    message = str(caught.value)
    assert f"{_prism.ENV}={other} is Prism of Beam unknown" in message
    assert _prism.beam_version() in message
    monkeypatch.setenv(_prism.ENV, str(tmp_path / "missing"))
    with pytest.raises(_prism.PrismMismatch, match="is not an executable file"):
        _prism.locate()


def test_the_version_is_read_from_the_go_build_information(tmp_path):
    fake = tmp_path / "prism"
    fake.write_bytes(b"\x00junk\npath\tgithub.com/apache/beam/sdks/v2/go/cmd/prism\n"
                     b"mod\tgithub.com/apache/beam/sdks/v2\tv2.61.0\th1:abc=\n")
    assert _prism.binary_version(fake) == "2.61.0"
    fake.write_bytes(b"mod\tgithub.com/apache/beam/sdks/v2x\tv2.61.0\n")
    assert _prism.binary_version(fake) is None


def test_prism_serves_its_job_port_and_stops_on_sigterm(tmp_path):
    prism = _prism.Prism(tmp_path / "prism.log").start()
    try:
        with socket.create_connection(("127.0.0.1", prism.port), timeout=5):
            pass
        assert prism.proc.poll() is None
    finally:
        started = time.monotonic()
        prism.stop()
    assert prism.proc.returncode == -signal.SIGTERM  # ended by SIGTERM, not the SIGKILL fallback
    assert time.monotonic() - started < 5
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", prism.port), timeout=2).close()
