"""Runs io.crossinfer.examples.FrameworkRows (a Java pipeline using a framework's named
factory) against Beam's Python job server; shared by the per-framework test modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests._java import EXAMPLES_TEST_CLASSPATH, classpath, run_java


def java_rows(job_server: Any, tmp: Path, framework: str, model: Path, x: np.ndarray,
              data_root: Path, trusted_root: Path) -> tuple[list[dict], list[dict]]:
    """Rows 0..n-1 of ``x`` plus row 900 with too few features, scored from Java;
    (predictions, failures) as JSON objects."""
    rows = tmp / "rows.csv"
    lines = [",".join([str(i)] + [repr(float(v)) for v in r]) for i, r in enumerate(x)]
    lines.append("900,0.5,0.5,0.5")
    rows.write_text("\n".join(lines) + "\n")
    out = tmp / f"java-{framework}"
    done = run_java(classpath(EXAMPLES_TEST_CLASSPATH), "io.crossinfer.examples.FrameworkRows",
                    str(out), framework, str(model), str(rows), str(data_root),
                    str(trusted_root), *job_server.flags())
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    read = lambda kind: [json.loads(l) for l in Path(f"{out}-{kind}.jsonl").read_text()
                         .splitlines() if l.strip()]
    return read("predictions"), read("failures")
