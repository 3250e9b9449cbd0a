"""The three-model batch job (scikit-learn, XGBoost, Keras; a trusted and a data-only root)
from Java on Prism, run again and again: the check that local runs never flake.

    python -m bench.prism_three_models [--runs 30] [--rows 2000]

Prints each run's time (and the time to build the pipeline), and any failed run with the
Prism log's panic. One JVM runs all the runs (io.crossinfer.examples.ThreeModels), so the
services it starts serve every run; the tests run the same job 3 times
(tests/test_prism_three_models.py). Needs the Java build (``gradle build``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_KERAS = """
import json, sys
import numpy as np
import keras
sys.path[:0] = [{repo!r}]
from tests import models
keras.utils.set_random_seed(0)
x, y = models.dataset(n=300, seed=0)
model = keras.Sequential([keras.Input((models.N_FEATURES,)),
                          keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(x, y, epochs=3, batch_size=64, verbose=0)
model.save({path!r})
rows = np.load({rows!r})
print(json.dumps([int(v) for v in model.predict(rows, verbose=0).argmax(axis=1)]))
"""


def build_models(workdir: Path, x: np.ndarray) -> tuple[dict[str, Path], dict[str, list[int]]]:
    """The three model files (sklearn and Keras under ``trusted/``, XGBoost under ``data/``)
    and each one's labels for ``x``. Keras trains in its own process (TensorFlow and torch do
    not share one)."""
    import xgboost
    from sklearn.linear_model import LogisticRegression

    from tests import models

    trusted, data = workdir / "trusted", workdir / "data"
    trusted.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    tx, ty = models.dataset(n=300, seed=0)
    paths = {"sklearn": trusted / "model.pkl", "xgboost": data / "model.json",
             "keras": trusted / "model.keras"}
    sk = LogisticRegression(max_iter=500).fit(tx, ty)
    paths["sklearn"].write_bytes(pickle.dumps(sk))
    booster = xgboost.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3,
                             "seed": 0}, xgboost.DMatrix(tx, label=ty.astype(np.float32)), 8)
    booster.save_model(str(paths["xgboost"]))
    np.save(workdir / "rows.npy", x)
    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", _KERAS.format(
        repo=repo, path=str(paths["keras"]), rows=str(workdir / "rows.npy"))],
        capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the Keras model was not built: {done.stderr[-3000:]}")
    expected = {
        "sklearn": [int(v) for v in sk.predict(x.astype(np.float64))],
        "xgboost": [int(v) for v in booster.predict(xgboost.DMatrix(x)).argmax(axis=1)],
        "keras": json.loads(done.stdout.strip().splitlines()[-1]),
    }
    return paths, expected


def run(job_server: Any, workdir: Path, runs: int, n: int) -> dict[str, Any]:
    """Runs the job ``runs`` times in one JVM; what each run gave."""
    from tests import models
    from tests._java import EXAMPLES_TEST_CLASSPATH, classpath, java_env, run_java

    x, _ = models.dataset(n=n, seed=46)
    paths, expected = build_models(workdir, x)
    csv = workdir / "rows.csv"
    csv.write_text("".join(",".join([str(i)] + [repr(float(v)) for v in r]) + "\n"
                           for i, r in enumerate(x)))
    out = workdir / "out"
    done = run_java(classpath(EXAMPLES_TEST_CLASSPATH), "io.crossinfer.examples.ThreeModels",
                    str(out), str(csv), str(paths["sklearn"]), str(paths["xgboost"]),
                    str(paths["keras"]), str(workdir / "data"), str(workdir / "trusted"),
                    str(runs), *job_server.flags(), env=java_env(), timeout=600 + 120 * runs)
    results = []
    for line in done.stdout.splitlines():
        m = re.match(r"run (\d+): (\w+) in ([\d.]+) s \(built in ([\d.]+) s\)", line)
        if not m:
            continue
        k = int(m.group(1))
        labels, failures = {}, {}
        for name in expected:
            read = lambda kind: [json.loads(l) for l in Path(
                f"{out}-{k}-{name}-{kind}.jsonl").read_text().splitlines() if l.strip()]
            labels[name] = [p["label"] for p in sorted(read("predictions"),
                                                       key=lambda p: p["id"])]
            failures[name] = read("failures")
        results.append({"run": k, "state": m.group(2), "seconds": float(m.group(3)),
                        "built": float(m.group(4)),
                        "correct": all(labels[m_] == expected[m_] for m_ in expected),
                        "failures": sum(len(f) for f in failures.values())})
    return {"done": done, "runs": results}


def main() -> None:
    from tests._java import PrismJobServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-three-") as tmp:
        work = Path(tmp)
        (work / "prism").mkdir()
        prism = PrismJobServer(work / "prism")
        try:
            result = run(prism, work, args.runs, args.rows)
        finally:
            prism.stop()
        panics = [l for l in (work / "prism" / "prism.log").read_text(errors="replace")
                  .splitlines() if "panic" in l]
    ok = [r for r in result["runs"] if r["state"] == "DONE" and r["correct"]
          and not r["failures"]]
    for r in result["runs"]:
        print(f"run {r['run']}: {r['state']} in {r['seconds']:.1f} s (built in "
              f"{r['built']:.1f} s), labels {'ok' if r['correct'] else 'WRONG'}")
    print(f"{len(ok)} of {args.runs} runs passed ({args.rows} rows, Prism, load "
          f"{os.getloadavg()[0]:.1f})")
    for line in panics[:3]:
        print("prism:", line[:300])
    if len(ok) != args.runs:
        print(result["done"].stderr[-3000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
