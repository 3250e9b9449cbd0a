"""What a model takes and returns, as plain data.

A signature is found once per model at construction (or expansion) by the model's framework
module, and from then on it is all the transform knows about the model: the workers get it as
plain data and never inspect the model object again. Being plain data, it can also be found in
another process (the expansion service opens model files in an isolated child) and sent back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from crossinfer._errors import ModelLoadError
from crossinfer._features import InputSpec

_DTYPES = ("float32", "float64", "int64", "int32")


@dataclasses.dataclass(frozen=True)
class Signature:
    """One model's input and output, as found at construction."""

    width: Optional[int] = None  # fixed number of values per row; None: any length
    pad: bool = False  # rows of different lengths are padded into one batch
    dtype: Optional[str] = None  # what the model takes; None: keep the row's dtype
    describe: str = ""  # where the width comes from, for messages
    softmax: bool = False  # argmax over logits (True) or over probabilities (False)
    classes: Optional[tuple[int, ...]] = None  # label of each output column, if not 0..n-1
    predict_proba: bool = False  # sklearn: the estimator has predict_proba

    def input_spec(self) -> InputSpec:
        return InputSpec(width=self.width, pad=self.pad, dtype=self.dtype,
                         describe=self.describe)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able plain data."""
        d = dataclasses.asdict(self)
        d["classes"] = None if self.classes is None else list(self.classes)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Signature":
        """The inverse of ``to_dict``; checks every value, since it may come from another process."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, Mapping) or set(data) - names:
            raise ModelLoadError("the model inspection returned an unexpected answer")
        width, dtype, classes = data.get("width"), data.get("dtype"), data.get("classes")
        ok = (
            (width is None or (type(width) is int and width > 0))
            and (dtype is None or dtype in _DTYPES)
            and isinstance(data.get("describe", ""), str)
            and all(type(data.get(k, False)) is bool for k in ("pad", "softmax", "predict_proba"))
            and (classes is None or (isinstance(classes, list)
                                     and all(type(c) is int for c in classes)))
        )
        if not ok:
            raise ModelLoadError("the model inspection returned an unexpected answer")
        return cls(**{**data, "classes": None if classes is None else tuple(classes)})
