"""Everything generated from the argument table is written by one command: the checked-in Java
and README tables are current, a stale one is named with the command that regenerates it, and
the Java surface is one public class whose every method is in CrossInference.java."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from crossinfer import _javagen, frameworks
from crossinfer._arguments import ARGUMENTS, BLOCKS_RULES, markdown

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / _javagen.PACKAGE_DIR


class _Done(NamedTuple):
    returncode: int
    stderr: str


def _run(root: Path, *flags: str) -> _Done:
    """``python -m crossinfer._javagen FLAGS --root ROOT``, in this process (the command is
    its ``main``): its exit code and message."""
    try:
        _javagen.main([*flags, "--root", str(root)])
    except SystemExit as e:
        return _Done(1 if e.code else 0, str(e.code or ""))
    return _Done(0, "")


def test_the_checked_in_java_and_readme_tables_are_current():
    done = _run(ROOT, "--check")
    assert done.returncode == 0, done.stderr


def _copy(tmp_path: Path) -> None:
    for target in _javagen.TARGETS:
        (tmp_path / target.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / target.path).write_text((ROOT / target.path).read_text(encoding="utf-8"),
                                            encoding="utf-8")


def test_one_command_rewrites_a_stale_java_method_and_readme_table(tmp_path):
    _copy(tmp_path)
    java = tmp_path / _javagen.PACKAGE_DIR / "CrossInference.java"
    readme = tmp_path / "README.md"
    java.write_text(java.read_text().replace("withMaxBatchSize(int", "withMaxBatch(int"))
    readme.write_text(readme.read_text().replace("| `model_copies` |", "| `copies` |"))
    done = _run(tmp_path, "--check")
    assert done.returncode != 0
    assert "CrossInference.java" in done.stderr and "README.md" in done.stderr
    assert "python -m crossinfer._javagen" in done.stderr
    assert _run(tmp_path).returncode == 0  # the one command
    assert _run(tmp_path, "--check").returncode == 0
    assert java.read_text() == (ROOT / _javagen.PACKAGE_DIR / "CrossInference.java").read_text()
    assert readme.read_text() == (ROOT / "README.md").read_text()


def test_hand_written_code_outside_the_markers_is_kept_and_a_lost_marker_named(tmp_path):
    _copy(tmp_path)
    java = tmp_path / _javagen.PACKAGE_DIR / "CrossInference.java"
    java.write_text(java.read_text().replace("public CrossInference withPython(",
                                             "public CrossInference withPythonExe("))
    assert _run(tmp_path).returncode == 0
    assert "withPythonExe(" in java.read_text()
    java.write_text(java.read_text().replace(_javagen._JAVA_MARKERS[1], ""))
    done = _run(tmp_path, "--check")
    assert done.returncode != 0 and "END GENERATED" in done.stderr


def test_readme_holds_the_rendered_tables_between_markers():
    readme = (ROOT / "README.md").read_text()
    for name, table in (("arguments", markdown()), ("frameworks", frameworks.markdown())):
        begin, end = _javagen._markers(name)
        assert begin + table + end in readme


def test_every_one_value_argument_has_a_generated_setter():
    source = _javagen.region()
    generated = [a for a in ARGUMENTS if _javagen.setter(a)]
    assert len(generated) >= 20
    for a in generated:
        assert f"public CrossInference {a.java}(" in source
        assert f'with("{a.name}", ' in source or f'"{a.name}",' in source
    rules = _javagen.argument_rules()
    for rule in BLOCKS_RULES:  # Java's boundary blocks refuse what Python's blocks refuse
        assert f'"{rule.other.name}"' in rules and rule.why.replace('"', '\\"') in rules


def test_each_transform_is_one_public_class_that_extends_ptransform():
    """The public classes are the transforms, one class each (Beam's style): CrossInference and
    CrossPrepare, each a PTransform itself, with no generated superclass in between."""
    public = sorted(p.name for p in PACKAGE.glob("*.java")
                    if re.search(r"^public .*\b(class|interface|enum)\b", p.read_text(), re.M))
    assert public == ["CrossInference.java", "CrossPrepare.java"]
    for name in public:
        declared = re.search(rf"^public final class {name[:-5]}\s+extends (\w+)<",
                             (PACKAGE / name).read_text(), re.M)
        assert declared and declared.group(1) == "PTransform", name
    source = (PACKAGE / "CrossInference.java").read_text()
    # every Java method the table names is declared in CrossInference.java itself
    for a in ARGUMENTS:
        for method in a.java.split("|"):
            name = method.split("(")[0].strip()
            if name.startswith("with"):
                assert re.search(rf"public CrossInference {name}\(", source), name
