"""Completes and checks a model's signature: explicit arguments, then declared metadata, then
a probe on a tiny synthetic batch.

Framework-neutral: a framework module reads its model's metadata into ``Declared`` facts and
gives a ``run(batch) -> output`` function; this module applies the order of precedence, runs
the probe, and turns what cannot be determined into a ConfigurationError naming the argument
to set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._signature import Signature

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
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigurationError(
            f"{what} fails on a probe batch of shape {list(batch.shape)} {batch.dtype}: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
            "set input_shape and input_dtype to what the model takes") from e


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
    pad_value = None
    if shape is not None and -1 in shape:
        pad_value = pick("pad_value", config.pad_value, declared.pad_value)
        if pad_value is None:
            pad_value, sources["pad_value"] = 0, "0 (checked by the probe: padding a row " \
                                                 "does not change its output)"
        if dtype in ("int64", "int32", "bool") and float(pad_value) != int(pad_value):
            raise ConfigurationError(f"pad_value={pad_value} is not an integer, but the model "
                                     f"takes {dtype}")
    output = pick("output", config.output, declared.output)
    signature = dict(input_name=declared.input_name, input_dtype=dtype,
                     input_shape=None if shape is None else tuple(shape),
                     pad_value=None if pad_value is None else (
                         int(pad_value) if float(pad_value).is_integer() else float(pad_value)),
                     allow_nan=declared.allow_nan, labels=declared.labels,
                     output_names=declared.output_names)
    if run is None:
        return Signature(**signature, output=output,
                         sources=tuple(sorted(sources.items())))
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
                "a custom postprocess that picks the fields")
        signature["output_names"] = tuple(str(k) for k in out)
        return Signature(**signature, output="named", sources=tuple(sorted(sources.items())))
    if output == "named":
        raise ConfigurationError(f"output='named', but {what} returns one array, not a dict")
    out = np.asarray(out)
    if out.ndim == 0 or out.shape[0] != len(rows):
        raise ConfigurationError(
            f"{what} returned shape {list(out.shape)} for a probe batch of {len(rows)} rows; "
            "it must return one output per row")

    if seq is not None and config.pad_value is None:
        alone = np.asarray(_call(run, rows[1][None, ...], what))
        if alone.shape[1:] != out.shape[1:] or not np.allclose(
                out[1], alone[0], rtol=1e-4, atol=1e-5, equal_nan=True):
            raise ConfigurationError(
                f"padding a probe row with {pad_value} ({sources['pad_value']}) changes "
                f"{what}'s output for it; set pad_value to the id the model ignores, or "
                "input_shape to a fixed length")

    per_row = out.shape[1:]
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
    if output in ("probabilities", "logits"):
        signature["num_classes"] = values.shape[1]
        labels = signature["labels"]
        if labels is not None and len(labels) != values.shape[1]:
            raise ConfigurationError(
                f"{what} declares {len(labels)} classes but returns {values.shape[1]} scores")
    sources.setdefault("output_shape", f"probe: {_shape_text(per_row)} per row")
    return Signature(**signature, output=output, sources=tuple(sorted(sources.items())))
