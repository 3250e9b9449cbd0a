"""Three models of three frameworks (scikit-learn, XGBoost, Keras; a trusted and a data-only
root, so two services) in one Java job on Prism, three runs in a row: every row gets each
model's label, every run. Before the services' metric short ids were made unique per process
(expansion_service/_short_ids.py), Prism died in about 8 of 21 such runs ("error decoding
metrics"). The 30-run loop: ``python -m bench.prism_three_models``."""

from __future__ import annotations

import pytest

from bench import prism_three_models

pytestmark = [pytest.mark.java, pytest.mark.prism]


def test_three_models_on_prism_three_runs_in_a_row(tmp_path):
    from tests._java import PrismJobServer

    (tmp_path / "prism").mkdir()
    prism = PrismJobServer(tmp_path / "prism")
    try:
        result = prism_three_models.run(prism, tmp_path, runs=3, n=300)
    finally:
        prism.stop()
    done = result["done"]
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    assert [r["run"] for r in result["runs"]] == [1, 2, 3]
    for r in result["runs"]:
        print(f"\nrun {r['run']}: {r['seconds']:.1f} s, built in {r['built']:.1f} s")
        assert r["state"] == "DONE" and r["correct"] and r["failures"] == 0, r
    assert "panic" not in (tmp_path / "prism" / "prism.log").read_text(errors="replace")
