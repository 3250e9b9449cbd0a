"""Model output of one row -> the typed fields of its prediction row."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from crossinfer._errors import OutputError, describe

# The vectorized forms below take a whole batch's output (one entry per row) and return
# (field -> list of values, row position -> error) with the same values and messages as the
# per-row forms.
Columns = tuple[dict[str, list[Any]], dict[int, str]]


def _values(inference: Any) -> np.ndarray:
    out = np.asarray(inference, dtype=np.float64).ravel()
    if out.size == 0:
        raise OutputError("the model returned no values for this row")
    if not np.all(np.isfinite(out)):
        raise OutputError(
            f"the model output for this row is not finite ({out[~np.isfinite(out)][0]}); "
            "check the input for NaN or infinite values")
    return out


def _values_many(output: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if out.shape[1] == 0:
        error = describe(OutputError("the model returned no values for this row"))
        return out, dict.fromkeys(range(len(out)), error)
    finite = np.isfinite(out).all(axis=1)
    errors: dict[int, str] = {}
    for j in np.flatnonzero(~finite).tolist():
        bad = out[j][~np.isfinite(out[j])][0]
        errors[j] = describe(OutputError(
            f"the model output for this row is not finite ({bad}); "
            "check the input for NaN or infinite values"))
    return out, errors


class Argmax:
    """label: the winning class; score: its probability (softmax over logits); label_name:
    the class's name, for models whose classes have names."""

    def __init__(self, softmax: Mapping[str, bool],
                 classes: Mapping[str, Optional[Sequence[int]]],
                 names: Optional[Mapping[str, Optional[Sequence[str]]]] = None) -> None:
        self._softmax = dict(softmax)  # per model_id
        self._classes = dict(classes)
        self._names = {m: list(n) for m, n in (names or {}).items() if n is not None}
        # A model update has a new model_id and the same signature as the only model.
        only = len(self._softmax) == 1
        self._default_softmax = next(iter(self._softmax.values())) if only else True
        self._default_classes = next(iter(self._classes.values()), None) if only else None
        self._default_names = next(iter(self._names.values()), None) if only else None

    def __call__(self, inference: Any, model_id: str, row: Any) -> dict[str, Any]:
        out = _values(inference)
        names = self._names.get(model_id, self._default_names)
        if self._softmax.get(model_id, self._default_softmax):
            if out.size == 1:  # one logit: a binary classifier
                p1 = 1.0 / (1.0 + math.exp(-out[0]))
                label = int(p1 > 0.5)
                result = {"label": label, "score": max(p1, 1.0 - p1)}
                if names:
                    result["label_name"] = names[label]
                return result
            out = np.exp(out - out.max())
            out /= out.sum()
        i = int(out.argmax())
        classes = self._classes.get(model_id, self._default_classes)
        result = {"label": int(classes[i]) if classes else i, "score": float(out[i])}
        if names:
            result["label_name"] = names[i]
        return result

    def many(self, output: np.ndarray, model_id: str) -> Columns:
        out, errors = _values_many(output)
        with np.errstate(all="ignore"):  # rows with errors are dropped, their values unused
            if self._softmax.get(model_id, self._default_softmax) and out.shape[1] == 1:
                p1 = 1.0 / (1.0 + np.exp(-out[:, 0]))
                label = index = (p1 > 0.5).astype(np.int64)
                score = np.maximum(p1, 1.0 - p1)
            else:
                if self._softmax.get(model_id, self._default_softmax):
                    out = np.exp(out - out.max(axis=1, keepdims=True))
                    out /= out.sum(axis=1, keepdims=True)
                index = out.argmax(axis=1) if out.shape[1] else np.zeros(len(out), np.int64)
                score = out[np.arange(len(out)), index] if out.shape[1] else np.zeros(len(out))
                classes = self._classes.get(model_id, self._default_classes)
                label = np.asarray(classes, dtype=np.int64)[index] if classes else index
        columns = {"label": label.tolist(), "score": score.tolist()}
        names = self._names.get(model_id, self._default_names)
        if names:
            columns["label_name"] = [names[i] for i in index.tolist()]
        return columns, errors


def regression(inference: Any, model_id: str, row: Any) -> dict[str, Any]:
    """value: the single number the model returned."""
    out = _values(inference)
    if out.size != 1:
        raise OutputError(f"postprocess='regression' needs one output value per row, the model "
                          f"returned {out.size}; use postprocess='raw'")
    return {"value": float(out[0])}


def raw(inference: Any, model_id: str, row: Any) -> dict[str, Any]:
    """output: every value the model returned, flattened."""
    return {"output": _values(inference).tolist()}


def regression_many(output: np.ndarray, model_id: str) -> Columns:
    out, errors = _values_many(output)
    if out.shape[1] != 1:
        error = describe(OutputError(
            f"postprocess='regression' needs one output value per row, the model returned "
            f"{out.shape[1]}; use postprocess='raw'"))
        return {"value": [0.0] * len(out)}, dict.fromkeys(range(len(out)), error)
    return {"value": out[:, 0].tolist()}, errors


def raw_many(output: np.ndarray, model_id: str) -> Columns:
    out, errors = _values_many(output)
    return {"output": out.tolist()}, errors


def _coercer(t: Any) -> Callable[[Any], Any]:
    """A converter to the Python type the Row coder expects, raising on a mismatch."""
    origin = typing.get_origin(t)
    if origin is typing.Union:  # Optional[T]
        inner = _coercer(next(a for a in typing.get_args(t) if a is not type(None)))
        return lambda v: None if v is None else inner(v)
    if origin is not None and issubclass(origin, Mapping):
        k, v = (_coercer(a) for a in typing.get_args(t))
        return lambda m: {k(a): v(b) for a, b in dict(m).items()}
    if origin is not None:  # Sequence[T]
        inner = _coercer(typing.get_args(t)[0])
        return lambda v: [inner(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    if t is bytes:
        return lambda v: v if isinstance(v, bytes) else bytes(v)
    if t is str:
        return lambda v: v if isinstance(v, str) else _fail(v, "string")
    if t is bool:
        return lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else _fail(v, "bool")

    def number(v: Any) -> Any:
        if v is None or isinstance(v, (str, bytes)):
            _fail(v, getattr(t, "__name__", str(t)))
        return t(v.item() if hasattr(v, "item") else v)

    return number


def _fail(value: Any, want: str) -> Any:
    raise OutputError(f"postprocess returned {type(value).__name__} {value!r} where "
                      f"output_schema says {want}")


class Custom:
    """A user function PredictionResult(example=row, inference, model_id) -> dict."""

    def __init__(self, fn: Callable[[PredictionResult], Any], name: str,
                 fields: Sequence[tuple[str, Any]]) -> None:
        self._fn = fn
        self._name = name
        self._coerce = {field: _coercer(t) for field, t in fields}

    def __call__(self, inference: Any, model_id: str, row: Any) -> dict[str, Any]:
        result = self._fn(PredictionResult(row, inference, model_id))
        if hasattr(result, "_asdict"):
            result = result._asdict()
        if not isinstance(result, Mapping):
            raise OutputError(f"postprocess {self._name!r} returned {type(result).__name__}, "
                              "not a dict of output_schema fields")
        missing = self._coerce.keys() - result.keys()
        extra = result.keys() - self._coerce.keys()
        if missing or extra:
            raise OutputError(f"postprocess {self._name!r} returned fields {sorted(result)}; "
                              f"output_schema declares {sorted(self._coerce)}")
        return {f: coerce(result[f]) for f, coerce in self._coerce.items()}
