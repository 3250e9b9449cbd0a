"""The models the conformance suite runs each framework with: built in the test, one builder
per registry row. A builder returns a Case: three model files of one signature (the served one,
a second for updates and keyed models, and one outside the model roots for the swap attacks),
one of another signature, rows, and the library's own prediction for each file; plus the
library's tricky models, each with its own rows and expected outputs.

A new registry row without a builder here fails the suite (tests/test_conformance.py)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Callable, Optional

import apache_beam as beam
import numpy as np

from tests import models

N = models.N_FEATURES


@dataclasses.dataclass
class Tricky:
    """One tricky model: Inference kwargs (model_uri included), rows, and per row id what the
    library's own predict gives, compared with ``got(prediction)``."""

    kwargs: dict[str, Any]
    rows: list[Any]
    want: dict[int, Any]
    got: Callable[[Any], Any]
    exact: bool = False  # labels: equal, not close


@dataclasses.dataclass
class Case:
    """What one framework is checked with. ``predict(path, x)``: the library's own raw
    output for rows ``x`` of the model at ``path``."""

    model: Path
    other: Path  # same signature, other weights
    outside: Path  # same signature, other weights, outside every model root
    narrow: Path  # another signature (an update that must be refused)
    kwargs: dict[str, Any]  # Inference arguments besides framework and model_uri
    x: np.ndarray
    predict: Callable[[Path, np.ndarray], np.ndarray]
    tricky: dict[str, Callable[[Path], Tricky]] = dataclasses.field(default_factory=dict)
    # Framework-specific arguments: (kwargs that change what it does, check(preds, base))
    effects: dict[str, Callable[[Path], tuple[dict[str, Any], Callable[..., bool]]]] = \
        dataclasses.field(default_factory=dict)

    def rows(self) -> list[Any]:
        return [beam.Row(id=i, features=[float(v) for v in r]) for i, r in enumerate(self.x)]


def _rows(x: np.ndarray, field: str = "features") -> list[Any]:
    return [beam.Row(**{"id": i, field: [v.item() for v in np.asarray(r).ravel()]})
            for i, r in enumerate(x)]


def _raw(p: Any) -> np.ndarray:
    return np.asarray(p.output, dtype=np.float64)


# --- XGBoost ---------------------------------------------------------------------------------

def _xgb_train(path: Path, seed: int, width: int = N, objective: str = "binary:logistic",
               rounds: int = 8, **params: Any) -> Any:
    import xgboost

    x, y = models.dataset(n=300, seed=seed)
    x = x[:, :width]
    label = {"binary": (y > 0), "multi": y, "reg": x[:, 0] * 2}[objective.split(":")[0]]
    booster = xgboost.train({"objective": objective, "max_depth": 3, "seed": seed, **params},
                            xgboost.DMatrix(x, label=label.astype(np.float32)), rounds)
    booster.save_model(str(path))
    return booster


def _xgb_booster_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(path))
    return booster.predict(xgboost.DMatrix(x))


def _xgb_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """A classifier's class probabilities (binary: [1 - p, p])."""
    p = _xgb_booster_predict(path, x)
    return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p


def _xgb_early_stopped(d: Path) -> Tricky:
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, N)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=800) > 0).astype(int)
    clf = xgboost.XGBClassifier(n_estimators=60, early_stopping_rounds=10, max_depth=4,
                                learning_rate=0.5)
    clf.fit(x[:400], y[:400], eval_set=[(x[400:600], y[400:600])], verbose=False)
    assert clf.best_iteration + 1 < clf.get_booster().num_boosted_rounds()  # stopped early
    clf.save_model(str(d / "es.json"))
    test = x[600:]
    return Tricky({"model_uri": str(d / "es.json"), "feature_field": "features"}, _rows(test),
                  {i: int(v) for i, v in enumerate(clf.predict(test))}, lambda p: p.label,
                  exact=True)


def _xgb_multiclass(d: Path) -> Tricky:
    _xgb_train(d / "multi.ubj", 3, objective="multi:softprob", num_class=3)
    x, _ = models.dataset(n=60, seed=9)
    return Tricky({"model_uri": str(d / "multi.ubj"), "feature_field": "features",
                   "postprocess": "raw"}, _rows(x), dict(enumerate(_xgb_predict(
                       d / "multi.ubj", x))), _raw)


def _xgb_nan(d: Path) -> Tricky:
    _xgb_train(d / "nan.json", 4)
    x, _ = models.dataset(n=40, seed=10)
    x[::3, 2] = np.nan
    x[::5, 0] = np.nan
    return Tricky({"model_uri": str(d / "nan.json"), "feature_field": "features",
                   "postprocess": "raw"}, _rows(x), dict(enumerate(_xgb_predict(
                       d / "nan.json", x))), _raw)


def _xgb_regression(d: Path) -> Tricky:
    _xgb_train(d / "reg.json", 5, objective="reg:squarederror")
    x, _ = models.dataset(n=40, seed=11)
    return Tricky({"model_uri": str(d / "reg.json"), "feature_field": "features",
                   "postprocess": "regression"}, _rows(x),
                  dict(enumerate(_xgb_booster_predict(d / "reg.json", x))), lambda p: p.value)


def xgboost_case(d: Path, outside: Path) -> Case:
    for path, seed in ((d / "m.json", 0), (d / "m2.json", 1), (outside / "m.json", 2)):
        _xgb_train(path, seed)
    _xgb_train(d / "narrow.json", 0, width=5)
    x, _ = models.dataset(n=30, seed=7)
    return Case(d / "m.json", d / "m2.json", outside / "m.json", d / "narrow.json",
                {"feature_field": "features"}, x, _xgb_predict,
                tricky={"early-stopped": _xgb_early_stopped, "multi-class": _xgb_multiclass,
                        "NaN inputs": _xgb_nan, "regression": _xgb_regression},
                effects={"inference_args": lambda d: (
                    {"inference_args": {"iteration_range": [0, 1]}}, _differs)})


def _differs(preds: list[Any], base: list[Any]) -> bool:
    a = {p.id: _raw(p) for p in preds}
    b = {p.id: _raw(p) for p in base}
    return a.keys() == b.keys() and any(not np.allclose(a[k], b[k]) for k in a)


# --- scikit-learn ----------------------------------------------------------------------------

def _pickle(path: Path, model: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(model, f)


def _sk_predict(path: Path, x: np.ndarray) -> np.ndarray:
    with open(path, "rb") as f:
        return pickle.load(f).predict_proba(x)


def _sk_strings(d: Path) -> Tricky:
    from sklearn.linear_model import LogisticRegression

    x, y = models.dataset(seed=4)
    clf = LogisticRegression(max_iter=500).fit(x, np.array(["cat", "dog", "emu"])[y])
    _pickle(d / "strings.pkl", clf)
    test = x[:40]
    return Tricky({"model_uri": str(d / "strings.pkl"), "feature_field": "features"},
                  _rows(test), dict(enumerate(clf.predict(test))), lambda p: p.label_name,
                  exact=True)


def _sk_pipeline(d: Path) -> Tricky:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = models.dataset(seed=5)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x * 10, y)
    _pickle(d / "pipe.pkl", pipe)
    test = x[:40] * 10
    return Tricky({"model_uri": str(d / "pipe.pkl"), "feature_field": "features",
                   "postprocess": "raw"}, _rows(test),
                  dict(enumerate(pipe.predict_proba(test))), _raw)


def sklearn_case(d: Path, outside: Path) -> Case:
    from sklearn.linear_model import LogisticRegression

    for path, seed in ((d / "m.pkl", 0), (d / "m2.pkl", 1), (outside / "m.pkl", 2)):
        models.train_sklearn(path, seed=seed)
    x, y = models.dataset()
    _pickle(d / "narrow.pkl", LogisticRegression(max_iter=500).fit(x[:, :5], y))
    return Case(d / "m.pkl", d / "m2.pkl", outside / "m.pkl", d / "narrow.pkl",
                {"feature_field": "features"}, models.dataset(n=30, seed=7)[0], _sk_predict,
                tricky={"string classes": _sk_strings, "pipelines": _sk_pipeline},
                effects={"model_file_type": _sk_file_type})


def _sk_file_type(d: Path) -> tuple[dict[str, Any], Callable[..., bool]]:
    """A compressed joblib file read as a plain pickle (as stated) does not load."""
    import joblib

    with open(d / "m.pkl", "rb") as f:
        joblib.dump(pickle.load(f), d / "m.joblib", compress=3)
    return {"model_uri": str(d / "m.joblib"), "model_file_type": "pickle"}, _failed


def _failed(preds: list[Any], base: list[Any]) -> bool:
    return preds is None  # the construction failed: the argument was read


# --- PyTorch ---------------------------------------------------------------------------------

def _torch_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import torch

    model = models.MLP()
    model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _torch_dict(d: Path) -> Tricky:
    import torch

    torch.manual_seed(0)
    model = models.DictOutput().eval()
    torch.save(model.state_dict(), d / "dict.pt")
    x, _ = models.dataset(n=30, seed=12)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    want = {i: (int(out["logits"][i].argmax()), float(out["embedding"][i][0]))
            for i in range(len(x))}
    return Tricky({"model_uri": str(d / "dict.pt"), "model_class": "tests.models:DictOutput",
                   "feature_field": "features", "output": "named",
                   "postprocess": "tests.models:named_fields",
                   "output_schema": {"top": "int64", "first": "float64"}}, _rows(x), want,
                  lambda p: (p.top, p.first))


def pytorch_case(d: Path, outside: Path) -> Case:
    import torch

    for path, seed in ((d / "m.pt", 0), (d / "m2.pt", 1), (outside / "m.pt", 2)):
        models.train_mlp(path, seed=seed)
    torch.manual_seed(0)
    torch.save(models.MLP(n_features=5).state_dict(), d / "narrow.pt")
    return Case(d / "m.pt", d / "m2.pt", outside / "m.pt", d / "narrow.pt",
                {"feature_field": "features", "model_class": "tests.models:MLP"},
                models.dataset(n=30, seed=7)[0], _torch_predict,
                tricky={"dict outputs": _torch_dict},
                # The weights do not fit another shape; a torch.save file is no safetensors.
                effects={"model_params": lambda d: ({"model_params": {"hidden": 32}}, _failed),
                         "model_file_type": lambda d: ({"model_file_type": "safetensors"},
                                                       _failed)})


# --- ONNX ------------------------------------------------------------------------------------

def _onnx_predict(path: Path, x: np.ndarray, index: int = 0) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[index]


def _onnx_export(model: Any, path: Path, width: int = N, outputs: tuple[str, ...] = ("y",)
                 ) -> None:
    import torch

    axes = {"x": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    torch.onnx.export(model, (torch.zeros(2, width),), str(path), dynamo=False,
                      input_names=["x"], output_names=list(outputs), dynamic_axes=axes)


def _onnx_multi(d: Path) -> Tricky:
    import torch

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(N, 3), torch.nn.Linear(N, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(x), self.b(x)

    torch.manual_seed(3)
    _onnx_export(Two().eval(), d / "two.onnx", outputs=("first", "second"))
    x, _ = models.dataset(n=30, seed=13)
    return Tricky({"model_uri": str(d / "two.onnx"), "feature_field": "features",
                   "postprocess": "raw", "output_index": 1}, _rows(x),
                  dict(enumerate(_onnx_predict(d / "two.onnx", x, 1))), _raw)


def onnx_case(d: Path, outside: Path) -> Case:
    import torch

    for path, seed in ((d / "m.onnx", 0), (d / "m2.onnx", 1), (outside / "m.onnx", 2)):
        torch.manual_seed(seed)
        _onnx_export(models.MLP().eval(), path)
    torch.manual_seed(0)
    _onnx_export(models.MLP(n_features=5).eval(), d / "narrow.onnx", width=5)
    return Case(d / "m.onnx", d / "m2.onnx", outside / "m.onnx", d / "narrow.onnx",
                {"feature_field": "features"}, models.dataset(n=30, seed=7)[0], _onnx_predict,
                tricky={"multiple outputs": _onnx_multi})


# --- TensorFlow ------------------------------------------------------------------------------

def _keras_dense(path: Path, seed: int, width: int = N) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    model.save(str(path))
    return model


def _tf_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.models.load_model(str(path), compile=False).predict_on_batch(x))


def _tf_embedding(d: Path) -> Tricky:
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,), dtype="int64")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(5, 4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    model.save(str(d / "embedding.keras"))
    x = np.random.default_rng(0).integers(0, 5, size=(30, 6)).astype(np.int64)
    return Tricky({"model_uri": str(d / "embedding.keras"), "feature_field": "features",
                   "postprocess": "raw", "input_dtype": "int64"}, _rows(x),
                  dict(enumerate(np.asarray(model.predict_on_batch(x)))), _raw)


def _tf_multi(d: Path) -> Tricky:
    import keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((N,))
    model = keras.Model(inputs, [keras.layers.Dense(3, name="a")(inputs),
                                 keras.layers.Dense(2, name="b")(inputs)])
    model.save(str(d / "multi.keras"))
    x, _ = models.dataset(n=30, seed=14)
    return Tricky({"model_uri": str(d / "multi.keras"), "feature_field": "features",
                   "postprocess": "raw", "output_index": 1}, _rows(x),
                  dict(enumerate(np.asarray(model.predict_on_batch(x)[1]))), _raw)


def _tf_masking(d: Path) -> Tricky:
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None,), dtype="int64")
    embedded = keras.layers.Embedding(20, 4, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LSTM(4)(embedded)))
    model.save(str(d / "masking.keras"))
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 20, size=n) for n in rng.integers(2, 9, size=24)]
    want = {i: np.asarray(model.predict_on_batch(s[None, :]))[0] for i, s in enumerate(seqs)}
    rows = [beam.Row(id=i, features=[int(v) for v in s]) for i, s in enumerate(seqs)]
    return Tricky({"model_uri": str(d / "masking.keras"), "feature_field": "features",
                   "postprocess": "raw", "pad_value": 0}, rows, want, _raw)


def _tf_strings(d: Path) -> Tricky:
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((2,), dtype="string")
    hot = keras.layers.StringLookup(vocabulary=["cat", "dog", "emu"],
                                    output_mode="multi_hot")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hot))
    model.save(str(d / "strings.keras"))
    rng = np.random.default_rng(2)
    words = rng.choice(np.array(["cat", "dog", "emu", "zebra"]), size=(24, 2))
    rows = [beam.Row(id=i, features=[str(v) for v in w]) for i, w in enumerate(words)]
    return Tricky({"model_uri": str(d / "strings.keras"), "feature_field": "features",
                   "postprocess": "raw", "input_dtype": "string"}, rows,
                  dict(enumerate(np.asarray(model.predict_on_batch(words)))), _raw)


def tensorflow_case(d: Path, outside: Path) -> Case:
    import keras

    for path, seed in ((d / "m.keras", 0), (d / "m2.keras", 1), (outside / "m.keras", 2)):
        _keras_dense(path, seed)
    _keras_dense(d / "narrow.keras", 0, width=5)
    keras.utils.set_random_seed(4)
    inputs = keras.Input((N,))
    dropped = keras.layers.Dropout(0.5)(keras.layers.Dense(8)(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(dropped)).save(str(d / "dropout.keras"))
    return Case(d / "m.keras", d / "m2.keras", outside / "m.keras", d / "narrow.keras",
                {"feature_field": "features"}, models.dataset(n=30, seed=7)[0], _tf_predict,
                tricky={"small embedding": _tf_embedding, "multi-output": _tf_multi,
                        "masking": _tf_masking, "string inputs": _tf_strings},
                effects={"inference_args": lambda d: (
                    {"model_uri": str(d / "dropout.keras"), "postprocess": "raw",
                     "inference_args": {"training": True}}, _differs_from_model(
                         d / "dropout.keras"))})


def _differs_from_model(path: Path) -> Callable[..., bool]:
    def check(preds: list[Any], base: list[Any]) -> bool:
        x = np.asarray([models.dataset(n=30, seed=7)[0][p.id] for p in preds])
        want = _tf_predict(path, x)
        return any(not np.allclose(_raw(p), w, atol=1e-6) for p, w in zip(preds, want))
    return check


# The builder of each registry row; None: the row has no model file (a custom handler's
# factory opens what it likes: the core's guarantees are about crossinfer's own loaders).
BUILDERS: dict[str, Optional[Callable[[Path, Path], Case]]] = {
    "sklearn": sklearn_case, "pytorch": pytorch_case, "onnx": onnx_case,
    "tensorflow": tensorflow_case, "xgboost": xgboost_case, "custom": None,
}
