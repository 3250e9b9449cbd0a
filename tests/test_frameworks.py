"""The framework registry: every registered framework has a module that implements the
protocol, the README's table is the rendered registry, and TensorFlow is imported only when a
TensorFlow transform is built (not by `import crossinfer` nor the expansion service's start)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossinfer import frameworks

ROOT = Path(__file__).resolve().parent.parent


def test_readme_table_is_the_rendered_registry():
    assert frameworks.markdown() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("plugin", frameworks.REGISTRY, ids=frameworks.NAMES)
def test_every_framework_implements_the_protocol(plugin):
    if plugin.extra and importlib.util.find_spec(plugin.extra) is None:
        pytest.skip(f"the {plugin.extra} extra is not installed")
    # In a fresh interpreter: TensorFlow and torch's compiler cannot share one process (both
    # register LLVM's options), and later tests in this one train torch models.
    code = ("from crossinfer import frameworks\n"
            f"module = frameworks.module({plugin.name!r})\n"
            "print(','.join(n for n in ('loads_code', 'describe', 'build')\n"
            "               if callable(getattr(module, n, None))))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "loads_code,describe,build", plugin.name
    assert plugin.extra is None or f'{plugin.extra} = [' in (ROOT / "pyproject.toml").read_text()


def test_argument_table_reads_the_registry():
    from crossinfer._arguments import BY_NAME

    assert BY_NAME["framework"].constraint.options == frameworks.NAMES
    assert BY_NAME["pad_value"].frameworks == frameworks.taking("pad_value")
    assert "xgboost" in BY_NAME["blocks"].frameworks
    assert "xgboost" not in BY_NAME["pad_value"].frameworks


def test_the_service_imports_frameworks_on_use_and_its_inspectors_ahead(tmp_path):
    """The service imports no framework library at start (a request imports the one it names);
    its inspectors' zygote, forked from it, imports the warm ones ahead of the first
    inspection; TensorFlow (not warm) is in neither until used."""
    import time

    from tests._service_helpers import Service

    svc = Service("--port", "0", log_path=tmp_path / "service.log")
    try:
        deadline = time.monotonic() + 60
        while "model inspectors run with" not in svc.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        zygote = subprocess.run(["pgrep", "-P", str(svc.proc.pid)], capture_output=True,
                                text=True).stdout.split()
        assert len(zygote) == 1, zygote
        service_maps = Path(f"/proc/{svc.proc.pid}/maps").read_text()
        zygote_maps = Path(f"/proc/{zygote[0]}/maps").read_text()
    finally:
        svc.stop()
    for library in ("onnxruntime", "sklearn"):
        assert f"/{library}/" in zygote_maps, f"the inspectors did not import {library}"
        assert f"/{library}/" not in service_maps, f"the service imported {library} at start"
    assert "/tensorflow/" not in zygote_maps + service_maps
