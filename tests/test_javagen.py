"""The Java library's argument surface is generated from the argument table: the checked-in
sources are current, a stale one is named with the command that regenerates it, and the
module sizes the project holds to are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crossinfer import _javagen
from crossinfer._arguments import ARGUMENTS, BLOCKS_RULES

ROOT = Path(__file__).resolve().parent.parent


def _check(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "crossinfer._javagen", "--check", "--root",
                           str(root)], capture_output=True, text=True, env=env, timeout=120)


def test_the_checked_in_java_sources_are_current():
    done = _check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_stale_source_is_named_with_the_command(tmp_path):
    package = tmp_path / _javagen.PACKAGE_DIR
    package.mkdir(parents=True)
    for name, make in _javagen.SOURCES.items():
        (package / name).write_text(make(), encoding="utf-8")
    assert _check(tmp_path).returncode == 0
    edited = package / "InferenceArguments.java"
    edited.write_text(edited.read_text().replace("withMaxBatchSize", "withMaxBatch"))
    done = _check(tmp_path)
    assert done.returncode != 0
    assert "InferenceArguments.java not current" in done.stderr
    assert "python -m crossinfer._javagen" in done.stderr


def test_every_one_value_argument_has_a_generated_setter():
    source = _javagen.framework_arguments() + _javagen.inference_arguments()
    generated = [a for a in ARGUMENTS if _javagen.setter(a)]
    assert len(generated) >= 20
    for a in generated:
        assert f"public CrossInference {a.java}(" in source
        assert f'with("{a.name}", ' in source or f'"{a.name}",' in source
    rules = _javagen.argument_rules()
    for rule in BLOCKS_RULES:  # Java's boundary blocks refuse what Python's blocks refuse
        assert f'"{rule.other.name}"' in rules and rule.why.replace('"', '\\"') in rules


def test_module_sizes():
    too_long = {}
    for folder in ("python", "expansion_service", "java/src"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".java"):
                lines = len(path.read_text(encoding="utf-8").splitlines())
                if lines > 400:
                    too_long[str(path.relative_to(ROOT))] = lines
    assert too_long == {}, f"split these modules (at most 400 lines each): {too_long}"
    facade = ROOT / "java/src/main/java/io/crossinfer/CrossInference.java"
    assert len(facade.read_text(encoding="utf-8").splitlines()) <= 300
