"""The framework registry: every registered framework has a module that implements the
protocol, the README's table is the rendered registry, and TensorFlow is imported only when a
TensorFlow transform is built (not by `import crossinfer` nor the expansion service's warm-up)."""

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


def test_tensorflow_is_not_imported_until_used():
    code = (
        "import sys, crossinfer\n"
        "from crossinfer import _inspect, _plan\n"
        "from expansion_service import _server\n"
        "_server._warm_up()\n"
        "assert 'tensorflow' not in sys.modules, 'imported at start'\n"
        "assert 'crossinfer.frameworks._sklearn' in sys.modules, 'warm-up did not warm'\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
