"""Reading input rows: as dicts, as JSON for failure reports."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np


def as_dict(row: Any) -> dict[str, Any]:
    """beam.Row, NamedTuple (Java rows arrive as these) or dict -> dict."""
    if hasattr(row, "_asdict"):
        return row._asdict()
    if hasattr(row, "as_dict"):
        return row.as_dict()
    if isinstance(row, dict):
        return row
    return dict(vars(row))


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (list, tuple)) and not hasattr(value, "_asdict"):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "_asdict") or hasattr(value, "as_dict"):
        return _plain(as_dict(value))
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def to_json(row: Any) -> str:
    """The row as strict JSON (NaN and infinities as strings, bytes as base64)."""
    try:
        return json.dumps(_plain(as_dict(row)), sort_keys=False)
    except Exception:  # pylint: disable=broad-except
        return json.dumps({"unreadable_row": repr(row)})
