"""The policy an ``Inference`` is built under: which callables resolve, which model files open,
and where they are opened.

A Python pipeline is built under ``DEFAULT``: its author's own code and files, so every
importable callable resolves and any path opens, in this process. The expansion service makes
one ``Policy`` at start-up (its ``--allow`` globs, its model repository, its isolated
inspectors) and builds every request under it. The value is passed explicitly down the
expansion path (``Inference`` -> plan -> inspection, callables, frameworks, handlers), never
kept in a module-wide setting, so two policies in one process (two services, or tests) do not
see each other's.

One hop cannot be explicit: Beam's expansion servicer constructs the transform itself from the
request, by name, so the servicer puts its policy in a context variable for the duration of
that one request (``applied``) and ``Inference`` reads it once, at construction.

Handlers carry their policy to the workers. A policy pickles as a reference: in the process
that made it (the service's own loopback workers) it is the same live value, with the
repository's held descriptors; in any other process (a remote worker) it has no inspectors,
and a repository of the same roots, opened there (a worker that cannot open them fails, never
falling back to reading by name); a policy without a repository (a Python pipeline's own)
reads the file as the pipeline names it, as Beam's handlers do.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import uuid
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional

from crossinfer import _callables, _copies, _repository
from crossinfer._errors import ModelLoadError

# (the transform's plain keyword arguments, model key) -> Signature.to_dict(), opened elsewhere
Runner = Callable[[Mapping[str, Any], Optional[str]], Mapping[str, Any]]

# Which process a pickled policy was made in (a fork shares it, and the descriptors with it).
_PROCESS = uuid.uuid4().hex
_LIVE: "weakref.WeakValueDictionary[str, Policy]" = weakref.WeakValueDictionary()


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """``allowlist``: globs a named callable must match (``None``: any importable name);
    ``repository``: where model files may be opened (``None``: anywhere); ``runner``: opens
    model files for their signature in another process (``None``: in this one)."""

    allowlist: Optional[tuple[str, ...]] = None
    repository: Optional[_repository.Repository] = None
    runner: Optional[Runner] = None
    _key: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex, init=False,
                                  repr=False)

    def __post_init__(self) -> None:
        if self.allowlist is not None:
            globs = tuple(self.allowlist)
            _callables.check_allowlist(globs)
            object.__setattr__(self, "allowlist", globs)
        _LIVE[self._key] = self

    def resolve(self, name: Any, argument: str, *, want_class: bool = False) -> Callable[..., Any]:
        """The callable ``name`` ("package.module:attr") names, under this allowlist."""
        return _callables.resolve(name, argument, allowlist=self.allowlist,
                                  want_class=want_class)

    def read(self, uri: str) -> bytes:
        """The bytes of model file ``uri`` (through the repository, if any)."""
        return _repository.read(uri, self.repository)

    def descriptor_path(self, uri: str) -> contextlib.AbstractContextManager[Optional[str]]:
        """``/proc/self/fd/N`` of model file ``uri`` as the core opened it (through the
        repository, if any) while the block runs, for loaders that map a file (a big model is
        then held once); ``None`` for a remote file (use ``read``)."""
        return _repository.descriptor_path(uri, self.repository)

    def snapshot(self, uri: str) -> contextlib.AbstractContextManager[str]:
        """A private copy of model file or directory ``uri`` made through the repository
        (see ``_copies.snapshot``), for loaders that read only paths."""
        return _copies.snapshot(uri, self.repository)

    def __reduce__(self) -> Any:
        roots = None if self.repository is None else tuple(
            (r.prefix, r.trusted) for r in self.repository.roots)
        return _revive, (_PROCESS, self._key, self.allowlist, roots)


_REMOTE: dict[tuple, Policy] = {}  # another process's policies, rebuilt once each


def _revive(process: str, key: str, allowlist: Optional[tuple[str, ...]],
            roots: Optional[tuple[tuple[str, bool], ...]] = None) -> Policy:
    if process != _PROCESS:
        # Another process (a remote worker): no inspectors of this one, but the same roots,
        # opened here, so its files are read by the same descriptor walk, never by name.
        if roots is None:
            return Policy(allowlist=allowlist)
        cache = (allowlist, roots)
        if cache not in _REMOTE:
            try:
                repository = _repository.Repository(
                    [p for p, trusted in roots if not trusted],
                    [p for p, trusted in roots if trusted])
            except ValueError as e:  # fail closed: never open files without the roots
                raise ModelLoadError(f"this worker cannot open the model roots of the "
                                     f"service that built the transform: {e}") from None
            _REMOTE[cache] = Policy(allowlist=allowlist, repository=repository)
        return _REMOTE[cache]
    live = _LIVE.get(key)
    if live is None:
        # Fail closed: never fall back to opening files without the service's repository.
        raise ModelLoadError("the expansion service that built this transform has stopped")
    return live


DEFAULT = Policy()

_IN_FORCE: contextvars.ContextVar[Policy] = contextvars.ContextVar(
    "crossinfer_policy", default=DEFAULT)


def current() -> Policy:
    """The policy an ``Inference`` constructed now is built under."""
    return _IN_FORCE.get()


@contextlib.contextmanager
def applied(policy: Policy) -> Iterator[Policy]:
    """Build the transforms constructed in this block (this thread only) under ``policy``."""
    if not isinstance(policy, Policy):
        raise TypeError(f"expected a crossinfer Policy, got {type(policy).__name__}")
    token = _IN_FORCE.set(policy)
    try:
        yield policy
    finally:
        _IN_FORCE.reset(token)

