"""The constraints of the argument table (scikit-learn's ``_parameter_constraints`` style).

Each checks one argument's value and returns it normalized, or raises ConfigurationError
naming the argument; ``describe`` is the README's "values" column, ``bounds`` (numbers only)
the range the expansion service checks on a raw request.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from crossinfer._errors import ConfigurationError

MAX_RANK = 8  # axes of one row's input
MAX_AXIS = 1_000_000  # size of one axis of one row's input
MAX_PLAIN_DEPTH = 8  # nesting of model_params / inference_args
_CALLABLE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _fail(name: str, want: str, value: Any) -> ConfigurationError:
    return ConfigurationError(f"{name} must be {want}, got {value!r}")


# Constraints: each checks one argument's value and returns it normalized, or raises
# ConfigurationError naming the argument.

@dataclasses.dataclass(frozen=True)
class Text:
    """A non-empty string, optionally one of ``options`` (compared case-insensitively if
    ``upper``) or a 'package.module:function' name (``callable_ok``)."""

    options: tuple[str, ...] = ()
    callable_ok: bool = False
    upper: bool = False

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise _fail(name, "a non-empty string", value)
        if self.upper:
            value = value.upper()
        if value in self.options or (not self.options and not self.callable_ok):
            return value
        if self.callable_ok and (":" in value or not self.options):
            if not _CALLABLE.match(value):
                raise ConfigurationError(
                    f"{name}={value!r} is not a callable name; give it as "
                    "'package.module:function' (a string, no code)")
            return value
        extra = " or a 'package.module:function' name" if self.callable_ok else ""
        raise ConfigurationError(
            f"{name}={value!r} is not supported; use one of {', '.join(self.options)}{extra}")

    def describe(self) -> str:
        if not self.options:
            return '`"pkg.module:name"`' if self.callable_ok else "non-empty string"
        return " \\| ".join(f"`{o!r}`".replace("'", '"') for o in self.options) + (
            " or `\"pkg.module:function\"`" if self.callable_ok else "")


@dataclasses.dataclass(frozen=True)
class Integer:
    low: int
    high: int

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                self.low <= value <= self.high):
            raise _fail(name, f"an integer in [{self.low}, {self.high}]", value)
        return int(value)

    def describe(self) -> str:
        return f"integer in [{self.low}, {self.high:,}]"

    def bounds(self) -> tuple[float, float]:
        return self.low, self.high


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite number; ``positive`` excludes 0 and below, ``high`` caps it; ``as_float``
    turns an int into a float (an int stays an int otherwise: a pad value for token ids)."""

    positive: bool = False
    high: float = math.inf
    as_float: bool = False

    def check(self, name: str, value: Any) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (not self.positive or value > 0)
              and value <= self.high)
        if not ok:
            want = "a positive number" if self.positive else "a finite number"
            if self.high < math.inf:
                want += f" at most {self.high:g}"
            raise _fail(name, want, value)
        return float(value) if self.as_float else value

    def describe(self) -> str:
        return ("number in (0, " + f"{self.high:g}]") if self.positive else "finite number"

    def bounds(self) -> tuple[float, float]:
        return (0 if self.positive else -math.inf), self.high


@dataclasses.dataclass(frozen=True)
class Flag:
    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(name, "true or false", value)
        return value

    def describe(self) -> str:
        return "true \\| false"


@dataclasses.dataclass(frozen=True)
class Names:
    """A list of distinct non-empty strings (field names, or ``what``)."""

    what: str = "field names"
    example: str = "'id'"

    def check(self, name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigurationError(
                f"{name} must be a list of {self.what}, e.g. {name}=[{self.example}]")
        names = tuple(value)
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigurationError(f"{name} must hold non-empty strings, got {list(names)!r}")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"{name} names a field twice: {list(names)!r}")
        return names

    def describe(self) -> str:
        return f"list of distinct {self.what}"


@dataclasses.dataclass(frozen=True)
class Shape:
    """One row's input shape: sizes >= 1, and at most one -1 (a sequence axis)."""

    def check(self, name: str, value: Any) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _fail(name, "a list of axis sizes, e.g. [32] or [-1]", value)
        shape = tuple(value)
        if not 1 <= len(shape) <= MAX_RANK or not all(
                type(d) is int and (d >= 1 or d == -1) and d <= MAX_AXIS for d in shape):
            raise ConfigurationError(
                f"{name} must list 1 to {MAX_RANK} axis sizes per row (positive, or -1 for a "
                f"variable-length axis), without the batch axis; got {list(shape)!r}")
        if shape.count(-1) > 1:
            raise ConfigurationError(f"{name} may have one variable-length axis (-1), got "
                                     f"{list(shape)!r}")
        return shape

    def describe(self) -> str:
        return "list of axis sizes, -1 for a sequence axis"


def plain(value: Any, name: str, depth: int = 0) -> Any:
    """A JSON-like value (str, int, float, bool, None, list, dict of str keys), Java Rows
    turned into dicts; anything else is a ConfigurationError naming ``name``."""
    if depth > MAX_PLAIN_DEPTH:
        raise ConfigurationError(f"{name} is nested deeper than {MAX_PLAIN_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "_asdict"):  # a Java Row arrives as a NamedTuple
        value = value._asdict()
    elif hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigurationError(f"{name} keys must be strings")
        return {k: plain(v, f"{name}[{k!r}]", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise ConfigurationError(
        f"{name} holds {type(value).__name__}; only plain values (strings, numbers, booleans, "
        "lists, dicts) can be arguments")


@dataclasses.dataclass(frozen=True)
class Dict:
    """A dict with string keys: of strings (``strings``) or of plain values."""

    strings: bool = False

    def check(self, name: str, value: Any) -> dict[str, Any]:
        if hasattr(value, "_asdict") or hasattr(value, "as_dict"):
            value = plain(value, name)
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"{name} must be a dict (a Java Map), not {type(value).__name__}")
        out = plain(value, name)
        if self.strings and not all(isinstance(v, str) and v for v in out.values()):
            raise ConfigurationError(f"{name} must map names to non-empty strings")
        return out

    def describe(self) -> str:
        return "dict of strings" if self.strings else "dict of plain values"
