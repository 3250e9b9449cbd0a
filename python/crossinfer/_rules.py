"""Rules that tie arguments together, declared in the argument table next to the argument
they are about, checked by ``_config.parse``. They are data, so the Java library gets the ones
it applies itself (what blocks cannot be combined with) from the source generated from them
(``_javagen``), never from a second copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from crossinfer._errors import ConfigurationError


def is_set(value: Any) -> bool:
    """An argument counts as given unless it is absent, false or empty (as Java omits it)."""
    if value is None or value is False:
        return False
    return not (isinstance(value, (dict, list, tuple)) and not value)


@dataclasses.dataclass(frozen=True)
class When:
    """A condition on one argument: given at all (no ``values``), or given as one of ``values``
    (``negate``: as anything else). ``label`` names it in messages instead of the argument."""

    name: str
    values: tuple[Any, ...] = ()
    negate: bool = False
    label: str = ""

    def holds(self, v: Mapping[str, Any]) -> bool:
        value = v.get(self.name)
        if not is_set(value):
            return False
        return not self.values or (value in self.values) != self.negate


@dataclasses.dataclass(frozen=True)
class Rule:
    """While ``when`` holds (every part of it; none given: the owning argument is given),
    ``other`` must hold (``needs``) or must not (a conflict). ``message`` is a ``str.format``
    template over the checked values (``{postprocess!r}``; a literal brace doubled); ``why``
    (conflicts the Java library applies too) says in a few words why, for both languages."""

    other: When
    needs: bool
    message: str
    when: tuple[When, ...] = ()
    why: str = ""

    def broken(self, owner: str, v: Mapping[str, Any]) -> bool:
        conditions = self.when or (When(owner),)
        return all(c.holds(v) for c in conditions) and self.other.holds(v) != self.needs

    def check(self, owner: str, v: Mapping[str, Any]) -> None:
        if self.broken(owner, v):
            raise ConfigurationError(self.message.format(**v))


def needs(other: When, message: str, *when: When) -> Rule:
    """``other`` must hold while the owning argument is given (or ``when`` holds)."""
    return Rule(other, True, message, when)


def conflicts(other: When, message: str, *when: When) -> Rule:
    """``other`` must not hold while the owning argument is given (or ``when`` holds)."""
    return Rule(other, False, message, when)


def excludes(owner: str, other: When, why: str, fix: str = "") -> Rule:
    """``owner=True`` cannot be combined with ``other``, because ``why``: the conflicts that
    both languages list (the Java library names its own method for ``other``); ``fix`` is
    Python's advice only."""
    what = other.label or other.name
    because = f"{why}; {fix}" if fix else why
    return Rule(other, False,
                f"{owner}=True cannot be combined with {what} ({because})".replace(
                    "{", "{{").replace("}", "}}"), why=why)
