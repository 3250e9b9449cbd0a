"""Resolve user callables named as "package.module:name", under an optional allowlist.

In a Python pipeline the user's own code is trusted, so any importable function or class
resolves. The expansion service installs an allowlist (``set_allowlist``): then a name
resolves only if it matches one of the globs, only to a function or class defined in that very
module (never something the module merely imported, like ``os.system``), and only from a
module a glob names exactly ("mypkg.features.*" names mypkg.features): importing a module runs
it, so no module the operator did not name (a sibling, a ``__main__``, a test) is ever
imported. ``glob_problem`` says why a glob may not be on a service's allowlist at all: the
standard library, Beam, crossinfer, and any package installed from a distribution (numpy,
torch, yaml, ...) hold functions that run code, so --allow names the user's own code only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable, Optional

from crossinfer._errors import CallableNotAllowedError, ConfigurationError

_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

_allowlist: Optional[tuple[str, ...]] = None

# Never callable by a client: the standard library, Beam (its PythonCallableWithSource runs
# source code), crossinfer and its service.
NEVER_ALLOWED = frozenset(sys.stdlib_module_names) | {
    "apache_beam", "crossinfer", "expansion_service", "builtins", "__main__"}
_WILDCARDS = set("*?[]")


def _install_dirs() -> list[str]:
    dirs = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    with contextlib.suppress(Exception):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        dirs.add(site.getusersitepackages())
    return [os.path.realpath(d) + os.sep for d in dirs if d]


def _dependencies(names: Iterable[str]) -> set[str]:
    """Distributions ``names`` need, transitively (normalised names), themselves included."""
    seen: set[str] = set()
    todo = [re.sub(r"[-_.]+", "-", n).lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for req in importlib.metadata.requires(name) or ():
                if "extra ==" in req:
                    continue
                todo.append(re.sub(r"[-_.]+", "-", re.split(r"[\s;<>=!~\[(]", req, 1)[0]).lower())
    return seen


def glob_problem(glob: str, own_distributions: Sequence[str] = ()) -> Optional[str]:
    """Why ``glob`` cannot be on an expansion service's allowlist, or None.

    Refused: a glob that does not start with a package name, one for the standard library,
    Beam or crossinfer, and one for a package that is imported from an installed distribution
    (site-packages), unless the operator names that distribution in ``own_distributions``
    (its code is theirs) and it is not one the service itself depends on.
    """
    top = glob.split(".", 1)[0].split(":", 1)[0]
    if not top or _WILDCARDS & set(top) or not top.isidentifier():
        return f"--allow {glob!r} must start with a package name, e.g. 'mypkg.features.*'"
    if top in NEVER_ALLOWED:
        return (f"--allow {glob!r} would let clients call into {top!r}; allow your own "
                "package(s) only")
    try:
        spec = importlib.util.find_spec(top)  # finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return (f"--allow {glob!r}: package {top!r} is not importable by the service; put your "
                "code on its PYTHONPATH")
    places = [spec.origin or "", *(spec.submodule_search_locations or ())]
    installed = _install_dirs()
    if not any(os.path.realpath(p).startswith(tuple(installed)) for p in places if p):
        return None
    dists = importlib.metadata.packages_distributions().get(top) or ["an unknown distribution"]
    own = {re.sub(r"[-_.]+", "-", d).lower() for d in own_distributions}
    normalised = {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
    if normalised <= own:
        needed = normalised & _dependencies(["crossinfer", "apache-beam"])
        if not needed:
            return None
        return (f"--allow {glob!r}: {sorted(needed)} is a dependency of the service itself, "
                "never the user's own code")
    shown = sorted(dists)[:3] + (["..."] if len(dists) > 3 else [])
    return (f"--allow {glob!r}: {top!r} is installed from {shown}, third-party code "
            "whose functions can run code (e.g. numpy's runstring, yaml's unsafe_load); "
            "--allow names your own modules only. If that distribution is your own code, "
            f"also pass --own-distribution {dists[0]}")


def _named_modules(globs: Sequence[str]) -> set[str]:
    """The modules the globs name exactly: the part before a final '.pattern' or ':pattern'."""
    named = set()
    for glob in globs:
        module = re.split(r"[.:](?=[^.:]*$)", glob, 1)[0]
        if module != glob and not _WILDCARDS & set(module):
            named.add(module)
    return named


def set_allowlist(globs: Optional[Sequence[str]]) -> None:
    """Restrict named callables to these globs (``None``: no restriction, in-process use)."""
    global _allowlist
    if globs is not None:
        for glob in globs:
            if glob.strip("*.?[]") == "":
                raise ConfigurationError(
                    f"allowlist glob {glob!r} admits everything; name packages, "
                    "e.g. 'mypkg.features.*'")
    _allowlist = None if globs is None else tuple(globs)


def get_allowlist() -> Optional[tuple[str, ...]]:
    """The globs in force, or ``None`` when every importable name resolves."""
    return _allowlist


@contextlib.contextmanager
def allowlist(globs: Optional[Sequence[str]]) -> Iterator[None]:
    """Apply an allowlist for the duration of a ``with`` block."""
    old = _allowlist
    set_allowlist(globs)
    try:
        yield
    finally:
        set_allowlist(old)


def resolve(name: Any, argument: str, *, want_class: bool = False) -> Callable[..., Any]:
    """Import the function (or class) that ``name`` ("package.module:attr") points at."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{argument}={name!r} is not a callable name; give it as "
            "'package.module:function' (a string, no code)")
    module_name, attr = name.split(":")
    dotted = f"{module_name}.{attr}"
    if attr.startswith("__"):
        raise CallableNotAllowedError(f"{argument}={name!r}: dunder names are never resolved")
    if _allowlist is not None and not any(fnmatch.fnmatchcase(dotted, g) for g in _allowlist):
        raise CallableNotAllowedError(
            f"{argument}={name!r} is not allowed by this expansion service; start it with "
            f"--allow '{module_name}.*' (allowed now: {list(_allowlist) or 'nothing'})")
    if _allowlist is not None:
        if "__main__" in module_name.split("."):
            raise CallableNotAllowedError(
                f"{argument}={name!r}: __main__ modules are never imported")
        if module_name not in _named_modules(_allowlist):
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
