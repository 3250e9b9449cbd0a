"""Resolve user callables named as "package.module:name", under an optional allowlist.

In a Python pipeline the user's own code is trusted, so any importable function or class
resolves (allowlist ``None``). The expansion service's policy carries an allowlist: then a name
resolves only if it matches one of the globs, only to a function or class defined in that very
module (never something the module merely imported, like ``os.system``), and only from a
module a glob names exactly ("mypkg.features.*" names mypkg.features): importing a module runs
it, so no module the operator did not name (a sibling, a ``__main__``, a test) is ever
imported. Which globs a service accepts at all is the service's own check.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
from collections.abc import Sequence
from typing import Any, Callable, Optional

from crossinfer._errors import CallableNotAllowedError, ConfigurationError

_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

_WILDCARDS = set("*?[]")

def _named_modules(globs: Sequence[str]) -> set[str]:
    """The modules the globs name exactly: the part before a final '.pattern' or ':pattern'."""
    named = set()
    for glob in globs:
        module = re.split(r"[.:](?=[^.:]*$)", glob, 1)[0]
        if module != glob and not _WILDCARDS & set(module):
            named.add(module)
    return named


def check_allowlist(globs: Sequence[str]) -> None:
    """Refuse a glob that admits everything (ConfigurationError)."""
    for glob in globs:
        if glob.strip("*.?[]") == "":
            raise ConfigurationError(
                f"allowlist glob {glob!r} admits everything; name packages, "
                "e.g. 'mypkg.features.*'")


def resolve(name: Any, argument: str, *, allowlist: Optional[Sequence[str]],
            want_class: bool = False) -> Callable[..., Any]:
    """Import the function (or class) that ``name`` ("package.module:attr") points at, if
    ``allowlist`` admits it (``None``: any importable name; a policy's ``resolve`` passes its
    own)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{argument}={name!r} is not a callable name; give it as "
            "'package.module:function' (a string, no code)")
    module_name, attr = name.split(":")
    dotted = f"{module_name}.{attr}"
    if attr.startswith("__"):
        raise CallableNotAllowedError(f"{argument}={name!r}: dunder names are never resolved")
    if allowlist is not None and not any(fnmatch.fnmatchcase(dotted, g) for g in allowlist):
        raise CallableNotAllowedError(
            f"{argument}={name!r} is not allowed by this expansion service; start it with "
            f"--allow '{module_name}.*' (allowed now: {list(allowlist) or 'nothing'})")
    if allowlist is not None:
        if "__main__" in module_name.split("."):
            raise CallableNotAllowedError(
                f"{argument}={name!r}: __main__ modules are never imported")
        if module_name not in _named_modules(allowlist):
            raise CallableNotAllowedError(
                f"{argument}={name!r}: module {module_name!r} is not named exactly by an --allow "
                f"glob, and this service imports no module it was not named (importing runs "
                f"it); start it with --allow '{module_name}.*'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(
            f"{argument}={name!r}: cannot import module {module_name!r} ({e}); "
            "install the package where the pipeline is expanded and run") from e
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigurationError(f"{argument}={name!r}: module {module_name!r} has no {attr!r}")
    kind_ok = inspect.isclass(obj) if want_class else (inspect.isfunction(obj) or inspect.isclass(obj))
    defined_here = getattr(obj, "__module__", None) == module_name and getattr(
        obj, "__qualname__", None) == attr
    if not kind_ok or not defined_here:
        what = "a class" if want_class else "a function or class"
        raise CallableNotAllowedError(
            f"{argument}={name!r} must name {what} defined in {module_name!r} itself, "
            f"not {type(obj).__name__} {getattr(obj, '__module__', '?')}."
            f"{getattr(obj, '__qualname__', attr)}")
    return obj
