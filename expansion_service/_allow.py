"""Which --allow globs a service accepts: the user's own code only.

The standard library, Beam, crossinfer and any package installed from a distribution (numpy,
torch, yaml, ...) hold functions that run code (numpy's runstring, yaml's unsafe_load), so a
glob may name only packages imported from outside the installation's site-packages (the
user's code on PYTHONPATH, or an editable install), or a distribution the operator marks as
their own with --own-distribution (never one the service itself depends on). Kept free of
Beam and crossinfer imports so flag errors stay instant.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from typing import Optional

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
