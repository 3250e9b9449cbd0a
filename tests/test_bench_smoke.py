"""The benchmark command runs end to end (--quick): a smoke test, not a timed assertion."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import plan

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.java  # its W5 rows run the Java pipeline


def test_quick_benchmark_measures_every_system(tmp_path):
    out = tmp_path / "QUICK.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--workdir", str(tmp_path), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    for workload, system in plan.QUICK:
        label = plan.LABELS[system]
        rows = [line for line in table.splitlines()
                if line.startswith(f"| {workload} | {label} |")]
        assert rows, f"{workload} {label} missing from the table"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        rate = cells[4].replace(",", "")
        assert re.fullmatch(r"[0-9.]+[KM]?", rate), f"{workload} {label}: {rows[0]}"
    # The Java pipeline ran all three ways: Beam's Java RunInference and CrossInference with
    # and without blocks across the boundary.
    from bench.peer import LABELS as JAVA_SYSTEMS
    for system in JAVA_SYSTEMS.values():
        assert any(f"| {system} |" in line for line in table.splitlines()), system
