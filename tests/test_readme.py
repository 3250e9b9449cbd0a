"""README's Python examples, copied literally and run in order in an empty directory, as a new
user would (the first one writes the model.pkl the others use)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def _run(scratch: Path, index: int) -> str:
    script = scratch / f"example{index}.py"
    script.write_text(EXAMPLES[index])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "python"), str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, script.name], cwd=scratch, env=env, text=True,
                          capture_output=True, timeout=500, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, str]:
    """The directory the first example ran in (it wrote model.pkl there), and its output."""
    scratch = tmp_path_factory.mktemp("readme")
    return scratch, _run(scratch, 0)


def test_readme_has_the_examples_this_file_runs():
    assert len(EXAMPLES) == 4, "a Python example was added to README: run it here too"


def test_the_first_example_prints_a_prediction_and_a_failure(first):
    out = first[1].splitlines()
    assert out[0].startswith("Prediction(id=1, label=0, score=0.8"), out
    assert out[1].startswith("Failure(element='{\"id\": 2"), out
    assert "has 31 values but the model takes exactly 32" in out[1]


@pytest.mark.prism
def test_the_model_updates_example_switches_models_while_it_runs(first):
    out = [l for l in _run(first[0], 1).splitlines() if l.startswith("Prediction(")]
    # An update's model_id is its path and a version (path@sha256 prefix).
    models = [re.sub(r"@[0-9a-f]{12}$", "", re.search(r"model_id='([^']+)'", l).group(1))
              for l in out]
    assert set(models) == {"models/model-001.pkl", "models/model-002.pkl"}, models
    first_new = models.index("models/model-002.pkl")
    # One swap: every prediction after the first from the new model comes from it too
    # (predictions of a window print together, windows in order).
    assert models[:first_new] and set(models[first_new:]) == {"models/model-002.pkl"}, models


@pytest.mark.prism
def test_the_prism_example_predicts_on_prism(first):
    out = _run(first[0], 2).splitlines()
    predictions = [l for l in out if l.startswith("Prediction(")]
    assert len(predictions) == 1, out
    assert re.fullmatch(r"Prediction\(id=1, label=0, score=0\.82\d*, model_id='model\.pkl'\)",
                        predictions[0]), predictions


def test_the_data_preparation_example_prepares_then_predicts(tmp_path):
    """Prepare (write mode), then Prepare (read mode) straight into Inference; the NaN row is
    a failure. Its own directory: it writes the artifacts and model it reads."""
    out = _run(tmp_path, 3).splitlines()
    assert sorted(l for l in out if l.startswith("Row(")) == [
        "Row(id=1, amount=0.0, color=0)", "Row(id=2, amount=0.7727272510528564, color=2)",
        "Row(id=3, amount=0.375, color=0)", "Row(id=4, amount=1.0, color=1)"], out
    [prediction] = [l for l in out if l.startswith("Prediction(")]
    assert re.fullmatch(r"Prediction\(id=5, label=1, score=0\.7\d*, model_id='sales\.pkl'\)",
                        prediction), prediction
    [failure] = [l for l in out if l.startswith("Failure(")]
    assert failure.startswith("Failure(element='{\"id\": 6, \"amount\": \"nan\"") and \
        "stage='prepare'" in failure and "field 'amount' is nan" in failure, failure
