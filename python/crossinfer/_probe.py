"""Completes and checks a model's signature: explicit arguments, then declared metadata, then
a probe on a tiny synthetic batch.

Framework-neutral: a framework module reads its model's metadata into ``Declared`` facts and
gives a ``run(batch) -> output`` function; this module applies the order of precedence, runs
the probe, and turns what cannot be determined into a ConfigurationError naming the argument
to set.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Optional

import numpy as np

from crossinfer._arguments import BUILTIN_POSTPROCESS
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._signature import Signature, sample

_LOG = logging.getLogger(__name__)

Run = Callable[[np.ndarray], Any]  # a stacked batch -> numpy output, or a dict of them

_PROBE_ROWS = 3
_LONG, _SHORT = 6, 3  # probe sequence lengths: the short row is padded to the long one


@dataclasses.dataclass
class Declared:
    """What the model's own metadata says; each fact with where it was read."""

    input_name: Optional[str] = None
    input_shape: Optional[tuple[int, ...]] = None
    input_dtype: Optional[str] = None
    pad_value: Optional[float] = None
    output: Optional[str] = None
    labels: Optional[tuple[int, ...]] = None
    allow_nan: bool = True
    token_high: Optional[int] = None  # integer inputs are ids below this (an Embedding's size)
    output_names: Optional[tuple[str, ...]] = None
    label_names: Optional[tuple[str, ...]] = None  # class names (sklearn classes_, ONNX)
    output_index: Optional[int] = None  # several outputs: the one used
    zipmap_keys: Optional[tuple[str, ...]] = None  # the output is a map per row: its keys
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


def probe_rows(shape: tuple[int, ...], dtype: str, lengths: list[int], pad_value: float,
               token_high: Optional[int], seed: int = 0) -> list[np.ndarray]:
    """Synthetic rows of ``shape`` (its -1 axis of each length): small normal floats, or
    integer ids that are never the pad value."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        row_shape = tuple(n if d == -1 else d for d in shape)
        if dtype in ("int64", "int32"):
            high = max(3, min(token_high or 8, 64))
            ids = np.array([i for i in range(high) if i != pad_value][1:] or [0], dtype=dtype)
            rows.append(rng.choice(ids, size=row_shape))
        elif dtype == "bool":
            rows.append(rng.random(row_shape) > 0.5)
        elif dtype == "string":  # a model that takes strings maps unknown ones itself
            rows.append(rng.choice(np.array(["a", "b", "probe"]), size=row_shape))
        else:
            rows.append(rng.normal(size=row_shape).astype(dtype))
    return rows


def _pad(rows: list[np.ndarray], axis: int, value: float) -> np.ndarray:
    longest = max(r.shape[axis] for r in rows)
    out = []
    for r in rows:
        widths = [(0, 0)] * r.ndim
        widths[axis] = (0, longest - r.shape[axis])
        out.append(np.pad(r, widths, constant_values=np.asarray(value).astype(r.dtype)))
    return np.stack(out)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _call(run: Run, batch: np.ndarray, what: str) -> Any:
    try:
        return run(batch)
    except ConfigurationError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        missing = missing_argument(e)
        if missing:
            fix = missing
        elif _dtype_error(text):
            fix = "set input_dtype to the dtype the model takes (e.g. 'float32')"
        else:
            fix = "set input_shape and input_dtype to what the model takes"
        raise ConfigurationError(
            f"{what} fails on a probe batch of shape {list(batch.shape)} {batch.dtype}: "
            f"{type(e).__name__}: {text}; {fix}") from e


def missing_argument(e: BaseException) -> str:
    """For a model call that failed for want of an argument: what to do ('' otherwise)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    missing = re.search(r"missing \d+ required (?:keyword-only |positional )?arguments?: "
                        r"'(\w+)'", text)
    if not isinstance(e, TypeError) or not missing:
        return ""
    return (f"the model needs the argument {missing.group(1)!r}, which crossinfer does not "
            f"pass: give it in inference_args (e.g. inference_args="
            f"{{'{missing.group(1)}': ...}})")


def _dtype_error(text: str) -> bool:
    """An error a library raises when the input's dtype is not the one it computes in."""
    return bool(re.search(r"dtype|scalar type|expected .*(Float|Double|Long|Int)|"
                          r"tensor\((float|double|int64|int32)\)", text))


def _difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs of one row (inf: not comparable)."""
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or set(a) != set(b):
            return np.inf
        return max((_difference(a[k], b[k]) for k in a), default=0.0)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return np.inf
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return 0.0 if np.array_equal(a, b) else np.inf
    a, b = a.astype(np.float64), b.astype(np.float64)
    if np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
        return 0.0
    return float(np.nanmax(np.abs(a - b))) if a.size else 0.0


def _row(out: Any, i: int) -> Any:
    return {k: np.asarray(v)[i] for k, v in out.items()} if isinstance(out, dict) else \
        np.asarray(out)[i]


def _padding_changes(run: Run, rows: list[np.ndarray], seq: int, value: float, alone: Any,
                     what: str, padded: Any = None) -> float:
    """How much padding the short probe row with ``value`` changes its output."""
    if padded is None:
        padded = _call(run, _pad(rows, seq, value), what)
    return _difference(_row(padded, 1), _row(alone, 0))


def _check_padding(config: Config, declared: Declared, run: Run, rows: list[np.ndarray],
                   seq: int, pad_value: Any, out: Any, sources: dict[str, str],
                   what: str, integer: bool) -> tuple[Any, bool]:
    """(the pad value, whether rows must be grouped by exact length instead): a stated
    pad_value that changes a padded row's output is refused; an inferred one is replaced by
    one that does not, else padding is dropped."""
    alone = _call(run, rows[1][None, ...], what)
    diff = _padding_changes(run, rows, seq, pad_value, alone, what, out)
    if diff == 0:
        return pad_value, False
    suggested = declared.pad_value
    change = "makes it not comparable" if np.isinf(diff) else f"changes it by up to {diff:.3g}"
    if config.pad_value is not None:
        message = (f"pad_value={config.pad_value} (the pad_value argument) changes {what}'s "
                   f"output: padding a probe row with it {change}")
        if suggested is not None and suggested != config.pad_value and _padding_changes(
                run, rows, seq, suggested, alone, what) == 0:
            message += (f"; the model's metadata ({declared.sources.get('pad_value')}) "
                        f"suggests pad_value={suggested}, under which padding changes nothing: "
                        "set that")
        else:
            message += ("; set pad_value to the value the model ignores, or leave it out: rows "
                        "of different lengths are then scored in groups of equal length, "
                        "without padding")
        raise ConfigurationError(message)
    for candidate in (suggested, 0):
        if candidate is not None and candidate != pad_value and _padding_changes(
                run, rows, seq, candidate, alone, what) == 0:
            sources["pad_value"] = (f"{candidate} (probe: padding with {pad_value} "
                                    f"{change.replace('it', 'the output', 1)}; with {candidate} "
                                    "nothing)")
            return candidate, False
    sources["pad_value"] = (f"none: padding a row with {pad_value} {change.replace('it', 'its output', 1)} "
                            "(probe); rows of different lengths are scored in groups of equal "
                            "length, without padding (exact)")
    _LOG.warning("crossinfer: %s: padding changes its output; rows of different lengths are "
                 "scored in groups of equal length, without padding", what)
    return None, True


def _non_numeric(config: Config, out: np.ndarray, output: Optional[str], what: str) -> None:
    """A model output of strings (a classifier's predict): only a custom postprocess reads it."""
    first = out.ravel()[0] if out.size else ""
    first = first.item() if isinstance(first, np.generic) else first
    if config.postprocess not in BUILTIN_POSTPROCESS:
        return
    if config.postprocess == "argmax" and output == "value":
        fix = ("leave out output='value': argmax then scores the classes, and a string class "
               "comes as label_name")
    else:
        fix = ("use postprocess='argmax' (a string class comes as label_name) or a custom "
               "postprocess with output_schema")
    raise ConfigurationError(
        f"{what} returns {'string' if isinstance(first, str) else type(first).__name__} values "
        f"(e.g. {first!r}), not numbers, so "
        f"postprocess={config.postprocess!r}" + (f" with output={output!r}" if output else "")
        + f" cannot use them; {fix}")


def complete(config: Config, declared: Declared, run: Optional[Run], what: str) -> Signature:
    """The signature: explicit arguments over ``declared`` facts, checked by probing ``run``
    (None: the model cannot be run here, e.g. a custom handler's)."""
    sources = dict(declared.sources)

    def pick(fact: str, explicit: Any, found: Any) -> Any:
        if explicit is not None:
            if found is not None and found != explicit and fact != "output":
                sources[fact] = (f"the {fact} argument (the model says {found!r}: "
                                 f"{sources.get(fact, 'metadata')})")
            else:
                sources[fact] = f"the {fact} argument"
            return explicit
        return found

    shape = pick("input_shape", config.input_shape, declared.input_shape)
    dtype = pick("input_dtype", config.input_dtype, declared.input_dtype)
    integer = dtype in ("int64", "int32", "bool")
    pad_value = None
    if shape is not None and -1 in shape:
        pad_value = pick("pad_value", config.pad_value, declared.pad_value)
        if pad_value is None:
            pad_value, sources["pad_value"] = 0, "0 (checked by the probe: padding a row " \
                                                 "does not change its output)"
        if integer and float(pad_value) != int(pad_value):
            raise ConfigurationError(f"pad_value={pad_value} is not an integer, but the model "
                                     f"takes {dtype}")
    output = pick("output", config.output, declared.output)
    label_names = pick("labels", tuple(config.labels) if config.labels else None,
                       declared.label_names)
    signature: dict[str, Any] = dict(
        input_name=declared.input_name, input_dtype=dtype,
        input_shape=None if shape is None else tuple(shape), allow_nan=declared.allow_nan,
        labels=declared.labels, label_names=label_names, output_names=declared.output_names,
        output_index=declared.output_index, zipmap_keys=declared.zipmap_keys)

    def done(output: Optional[str], pad: Any = pad_value) -> Signature:
        signature["pad_value"] = None if pad is None else (
            int(pad) if float(pad).is_integer() else float(pad))
        return Signature(**signature, output=output, sources=tuple(sorted(sources.items())))

    if run is None:
        return done(output)
    if shape is None or dtype is None:
        missing = " and ".join(n for n, v in (("input_shape", shape), ("input_dtype", dtype))
                               if v is None)
        raise ConfigurationError(
            f"cannot tell what input {what} takes ({sources.get('input_shape', 'no metadata')}); "
            f"set {missing} (e.g. input_shape=[32] for 32 values per row, [-1] for a sequence)")

    seq = shape.index(-1) if -1 in shape else None
    lengths = [_LONG, _SHORT] + [_LONG] * (_PROBE_ROWS - 2) if seq is not None else \
        [1] * _PROBE_ROWS
    rows = probe_rows(shape, dtype, lengths, pad_value or 0, declared.token_high)
    batch = _pad(rows, seq, pad_value) if seq is not None else np.stack(rows)
    out = _call(run, batch, what)

    if isinstance(out, dict):
        if output != "named":
            raise ConfigurationError(
                f"{what} returns a dict of outputs {sorted(out)[:8]}; set output='named' and "
                "a custom postprocess that picks the fields (every output is then passed to it)")
    elif output == "named":
        raise ConfigurationError(f"output='named', but {what} returns one array, not a dict")
    if seq is not None:
        pad_value, signature["exact_lengths"] = _check_padding(
            config, declared, run, rows, seq, pad_value, out, sources, what, integer)
    if isinstance(out, dict):
        signature["output_names"] = tuple(str(k) for k in out)
        if any(np.asarray(v).ndim == 0 or len(v) != len(rows) for v in out.values()):
            raise ConfigurationError(
                f"{what} returns a dict whose arrays do not hold one entry per row; it must "
                "return one output per row")
        signature["sample"] = sample(_row(out, 0))
        return done("named", pad_value)

    out = np.asarray(out)
    if out.ndim == 0 or out.shape[0] != len(rows):
        raise ConfigurationError(
            f"{what} returned shape {list(out.shape)} for a probe batch of {len(rows)} rows; "
            "it must return one output per row")
    per_row = out.shape[1:]
    signature["output_shape"] = tuple(int(d) for d in per_row)
    signature["sample"] = sample(out[0])
    if out.dtype.kind not in "biuf":
        _non_numeric(config, out, output, what)
        sources.setdefault("output_shape", f"probe: {_shape_text(per_row)} per row")
        return done(output, pad_value)

    values = out.reshape(len(out), -1).astype(np.float64)
    sums_to_one = (bool(np.all(values >= -1e-6)) and bool(np.all(values <= 1 + 1e-6))
                   and bool(np.allclose(values.sum(axis=1), 1.0, atol=1e-3)))
    if output in ("probabilities", "logits") and len(per_row) > 1:
        raise ConfigurationError(
            f"output={output!r} ({sources.get('output', '')}), but {what} returns shape "
            f"{_shape_text(per_row)} per row; class scores are one number per class")
    if output == "probabilities" and values.shape[1] > 1 and not sums_to_one:
        raise ConfigurationError(
            f"output='probabilities' ({sources.get('output', '')}), but {what}'s outputs on a "
            "probe batch do not sum to 1; set output='logits'")
    if output is None and len(per_row) <= 1:
        k = values.shape[1]
        if k >= 2 and sums_to_one:
            output = "probabilities"
            sources["output"] = f"probe: {k} values per row in [0, 1] that sum to 1"
        elif k >= 2:
            output = "logits"
            sources["output"] = f"probe: {k} scores per row that do not sum to 1 (logits)"
        else:
            sources["output"] = ("probe: one value per row (a regression value or a binary "
                                 "logit: set output)")
    if config.postprocess == "regression" and values.shape[1] != 1:
        raise ConfigurationError(
            f"postprocess='regression' needs one value per row, but {what} returns "
            f"{values.shape[1]} ({_shape_text(per_row)} per row); use postprocess='raw' for "
            "all of them, or 'argmax' for class scores")
    if output in ("probabilities", "logits"):
        k = values.shape[1]
        signature["num_classes"] = k
        labels = signature["labels"]
        if labels is not None and len(labels) != k:
            raise ConfigurationError(
                f"{what} declares {len(labels)} classes but returns {k} scores")
        names = signature["label_names"]
        if names is not None and len(names) != max(k, 2 if k == 1 else k):
            where = sources.get("labels", "")
            raise ConfigurationError(
                f"labels names {len(names)} classes ({where}), but {what} returns {k} class "
                f"score{'s' if k != 1 else ''} per row" + (" (one logit: 2 classes)"
                                                           if k == 1 else "")
                + "; give one name per class, in the order of the model's outputs")
    elif signature["label_names"] is not None and config.labels:
        raise ConfigurationError(
            f"labels are class names for postprocess='argmax', but {what} returns "
            f"{output or 'an output of unknown kind'} ({sources.get('output', '')}); set "
            "output='logits' or 'probabilities' if these are class scores")
    sources.setdefault("output_shape", f"probe: {_shape_text(per_row)} per row")
    return done(output, pad_value)
