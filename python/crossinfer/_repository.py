"""The model repository: where a service may open model files, and how it opens them.

A Python pipeline opens its own files in its own process and needs no repository. The
expansion service's policy carries one, like Triton's model repository: a
``model_uri`` must then lie under one of the operator's roots (local directories or
``gs://bucket/path/`` prefixes), and a format that runs code when loaded (pickle, joblib,
TorchScript, a custom handler's file) under a *trusted* root.

Local roots are opened once, at start-up, and held by descriptor; a model file is opened by
walking its path from its root's descriptor one component at a time, never following a
symbolic link (``O_NOFOLLOW``), and checked as a regular file on the descriptor it was opened
with. Whatever happens to the names afterwards (a root renamed and re-created, a file swapped
for a link), what loads is the file that was checked: the core reads that descriptor and
hands the framework its bytes (or a private copy, ``_copies``). Roots
that overlap are refused, and so are names with control or bidirectional-format characters,
``.``/``..``/empty segments or a trailing slash. Refusals outside the roots say nothing about
the path (not whether it exists, nor whether it is readable); errors inside a root name the
path relative to it, never the directory behind it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import stat
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

from crossinfer._errors import ModelLoadError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Object stores whose paths are plain prefixes (no symlinks, no "..") that Beam reads.
_OBJECT_STORES = ("gs",)
_MAX_URI = 4096
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not regular).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

HOW_TO_ADD = ("start the service with --model-root DIR (ONNX, torch state_dict, safetensors) or "
              "--trusted-model-root DIR (also pickle, joblib, TorchScript, custom handler files)")
# A request from the Java library: the service may be the one CrossInference started, whose
# roots come from these methods.
JAVA_HOW_TO_ADD = ("from Java: CrossInference.withModelRoots(DIR) (ONNX, torch state_dict, "
                   "safetensors) or .withTrustedModelRoots(DIR) (also pickle, joblib, TorchScript, "
                   "custom handler files) for the service CrossInference starts; a service you "
                   "run yourself takes --model-root / --trusted-model-root")


@dataclass(frozen=True)
class Root:
    """One prefix models may be loaded from; ``trusted``: also formats that are code."""

    prefix: str  # normalised: a real absolute directory ending in "/", or "gs://bucket/path/"
    trusted: bool
    alias: str = ""  # the directory as the operator named it, if that differs (a symlink)
    fd: int = field(default=-1, compare=False)  # the directory, held open (local roots)

    @property
    def scheme(self) -> str:
        match = _SCHEME.match(self.prefix)
        return match.group(1).lower() if match else ""

    def held(self) -> tuple[str, bool, str, int]:
        """What a child process needs to use this root through an inherited descriptor."""
        return (self.prefix, self.trusted, self.alias, self.fd)


def _object_path(uri: str) -> Optional[str]:
    """``uri`` if it is a clean object-store path (no empty, '.' or '..' segments), else None."""
    scheme, rest = uri.split("://", 1)
    parts = rest.split("/")
    if scheme.lower() not in _OBJECT_STORES or not parts[0] or any(
            p in ("", ".", "..") for p in parts[1:-1]) or parts[-1] in (".", ".."):
        return None
    return f"{scheme.lower()}://{rest}"


def _unprintable(text: str) -> bool:
    # Control characters and Unicode format characters (bidi overrides, zero-width joiners):
    # a name that reads differently from what it is.
    return any(unicodedata.category(c)[0] in "CZ" and c != " " for c in text)


def normalise_root(prefix: str, trusted: bool) -> Root:
    """Check an operator's ``--model-root`` and open it; raise ValueError if unusable."""
    if not isinstance(prefix, str) or not prefix or "\x00" in prefix:
        raise ValueError(f"model root {prefix!r} is empty")
    if _unprintable(prefix):
        raise ValueError(f"model root {prefix!r} has control or format characters")
    if _SCHEME.match(prefix):
        clean = _object_path(prefix.rstrip("/") + "/x")
        if clean is None:
            raise ValueError(f"model root {prefix!r}: only gs://bucket/path/ prefixes (no '.', "
                             "'..' or empty segments) are supported")
        return Root(clean[:-1], trusted)
    if not os.path.isabs(prefix):
        raise ValueError(f"model root {prefix!r} must be an absolute directory")
    real = os.path.realpath(prefix)
    if not os.path.isdir(real):
        raise ValueError(f"model root {prefix!r} is not a directory")
    if real == "/" or real.startswith(("/proc", "/dev", "/sys")):
        raise ValueError(f"model root {prefix!r} would expose the whole machine or its devices")
    try:
        fd = os.open(real, _DIR_FLAGS)
    except OSError as e:
        raise ValueError(f"model root {prefix!r} cannot be opened ({e.strerror})") from None
    named = posixpath.normpath(prefix).rstrip("/") + "/"
    real = real.rstrip("/") + "/"
    return Root(real, trusted, alias=named if named != real else "", fd=fd)


def _check_overlaps(roots: Sequence[Root]) -> None:
    # Nested roots would put one file under two sets of rules (an untrusted upload directory
    # inside a trusted root, or a trusted directory inside one anybody can rename).
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            for x, y in ((a, b), (b, a)):
                if y.prefix.startswith(x.prefix):
                    raise ValueError(
                        f"model roots overlap: {y.alias or y.prefix!r} is inside (or is) "
                        f"{x.alias or x.prefix!r}; give each directory once, and keep untrusted "
                        "roots outside trusted ones and trusted roots outside untrusted ones")


class Repository:
    """The service's model roots; ``admit`` checks one model_uri, ``open`` opens it."""

    def __init__(self, roots: Sequence[str] = (), trusted_roots: Sequence[str] = (), *,
                 held: Sequence[tuple[str, bool, str, int]] = ()) -> None:
        if held:  # a child process: the parent's roots, through inherited descriptors
            self.roots = tuple(Root(p, t, a, fd) for p, t, a, fd in held)
            return
        opened: list[Root] = []
        try:
            for r, trusted in [(r, True) for r in trusted_roots] + [(r, False) for r in roots]:
                root = normalise_root(r, trusted)
                if any(o.prefix == root.prefix and o.trusted == trusted for o in opened):
                    if root.fd >= 0:  # one directory named twice, with the same trust
                        os.close(root.fd)
                    continue
                opened.append(root)
            _check_overlaps(opened)
        except ValueError:
            for root in opened:
                if root.fd >= 0:
                    os.close(root.fd)
            raise
        self.roots = tuple(opened)

    def describe(self) -> list[str]:
        """The roots, for the service log."""
        return [f"{r.alias or r.prefix} ({'trusted' if r.trusted else 'data formats only'})"
                for r in self.roots]

    def held(self) -> list[tuple[str, bool, str, int]]:
        """The roots as a child process rebuilds them (``Repository(held=...)``)."""
        return [r.held() for r in self.roots]

    def descriptors(self) -> list[int]:
        """The held root descriptors (for ``pass_fds``)."""
        return [r.fd for r in self.roots if r.fd >= 0]

    def admit(self, uri: str, *, code: bool, what: str, argument: str = "model_uri",
              java: bool = False, directory: bool = False) -> str:
        """The normalised ``uri`` if it may be opened; else raise ModelLoadError.

        ``code``: opening the file runs code (so only trusted roots); ``what`` names the format
        in the message; ``java``: the request came from the Java library, so the messages name
        its methods too; ``directory``: the format may be a directory (a SavedModel). A local
        file is opened (by descriptor, as ``open`` does) to be checked.
        """
        root, clean, relative = self._locate(uri, argument, java)
        if root.fd >= 0:
            os.close(self._walk(root, relative, argument, uri, directory=directory))
        if code and not root.trusted:
            raise ModelLoadError(
                f"{argument}={_shown(uri)} is {what}, a format that runs code when loaded; this "
                "service loads such files only from a trusted model root ("
                + ("from Java: CrossInference.withTrustedModelRoots(DIR); a service you run "
                   "yourself: --trusted-model-root" if java else "--trusted-model-root")
                + "). Put it there, or export the model as ONNX or a torch state_dict")
        return clean

    def open(self, uri: str, argument: str = "model_uri", *,
             directory: bool = False) -> Optional[int]:
        """A new read-only descriptor of the admitted local file (or, with ``directory``, file
        or directory) ``uri`` (the caller closes it), or None for an object-store URI (Beam's
        FileSystems reads those)."""
        root, _, relative = self._locate(uri, argument)
        if root.fd < 0:
            return None
        return self._walk(root, relative, argument, uri, directory=directory)

    def open_beside(self, uri: str, location: str, argument: str = "model_uri") -> int:
        """A descriptor of ``location`` (a relative name, as ONNX external data gives it) in
        the directory of the local model file ``uri``, under the same rules."""
        root, _, relative = self._locate(uri, argument)
        if root.fd < 0:
            raise ModelLoadError(f"{argument}={_shown(uri)}: external data is read only for "
                                 "local model files")
        bad = ModelLoadError(
            f"{argument}={_shown(uri)}: the model names external data that is not a plain "
            "relative name in its own directory (an absolute path, '..', '.', an empty segment "
            "or a control character); external data must sit beside the model")
        if (not isinstance(location, str) or not location or len(location) > _MAX_URI
                or location.startswith("/") or _unprintable(location)
                or any(p in ("", ".", "..") for p in location.split("/"))):
            raise bad
        inside = posixpath.join(posixpath.dirname(relative), location)
        return self._walk(root, inside, argument, uri)

    def _locate(self, uri: str, argument: str, java: bool = False) -> tuple[Root, str, str]:
        """(root, normalised uri, path relative to the root) or ModelLoadError; no I/O."""
        if not self.roots:
            raise ModelLoadError(
                f"{argument}: this expansion service has no model repository, so it loads no "
                f"model; {JAVA_HOW_TO_ADD if java else HOW_TO_ADD}")
        shown = _shown(uri)
        outside = ModelLoadError(
            f"{argument}={shown} is not a readable file under this service's model roots "
            + (f"({JAVA_HOW_TO_ADD})" if java else
               "(the operator sets them with --model-root / --trusted-model-root)"))
        if not isinstance(uri, str) or not uri or len(uri) > _MAX_URI:
            raise outside
        if _unprintable(uri):
            raise ModelLoadError(f"{argument}={shown} has control or format characters (such "
                                 "as a right-to-left override); name the file plainly")
        if uri.endswith("/"):
            raise ModelLoadError(f"{argument}={shown} ends with '/': name a file")
        if _SCHEME.match(uri):
            clean = _object_path(uri)
            root = clean and self._root_of(clean)
            if root is None:
                raise outside
            return root, clean, clean[len(root.prefix):]
        if not os.path.isabs(uri):
            raise ModelLoadError(f"{argument}={shown} must be an absolute path (or gs://...) "
                                 "under this service's model roots")
        if any(p in (".", "..") for p in uri.split("/")) or "//" in uri:
            raise ModelLoadError(f"{argument}={shown} has '.', '..' or empty segments; name the "
                                 "file by its plain path under a model root")
        for root in self.roots:
            for prefix in (root.prefix, root.alias):
                if prefix and uri.startswith(prefix) and len(uri) > len(prefix):
                    relative = uri[len(prefix):]
                    # Kept as named (a root configured through a symlink shows so in errors).
                    return root, prefix + relative, relative
        raise outside

    def _walk(self, root: Root, relative: str, argument: str, uri: str, *,
              directory: bool = False) -> int:
        """Open ``relative`` from ``root``'s descriptor, no link followed; a regular file (or,
        with ``directory``, a directory, opened for reading its entries)."""
        parts = relative.split("/")
        where = f"{argument}={_shown(uri)}"
        rel = _shown(relative)
        current = root.fd
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    fd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=current)
                except OSError as e:
                    if not (last and directory and e.errno == errno.EISDIR):
                        raise ModelLoadError(_refusal(e, where, rel)) from None
                    fd = _open_dir(part, current, where, rel)
                if current != root.fd:
                    os.close(current)
                current = fd
            info = os.fstat(current)
            if not (stat.S_ISREG(info.st_mode) or directory and stat.S_ISDIR(info.st_mode)):
                raise ModelLoadError(f"{where}: {rel} in its model root is not a regular file")
            os.set_blocking(current, True)
            fd, current = current, root.fd
            return fd
        finally:
            if current != root.fd:
                os.close(current)

    def _root_of(self, path: str) -> Optional[Root]:
        for root in self.roots:
            if path.startswith(root.prefix) and len(path) > len(root.prefix):
                return root
        return None


_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, parent: int, where: str, rel: str) -> int:
    try:
        return os.open(name, _DIR_READ, dir_fd=parent)
    except OSError as e:
        raise ModelLoadError(_refusal(e, where, rel)) from None


def _refusal(error: OSError, where: str, rel: str) -> str:

    if error.errno == errno.ENOENT:
        return f"{where} does not exist in the model repository ({rel} under its root)"
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return (f"{where}: {rel} in its model root goes through a symbolic link or a "
                "non-directory; the repository follows no links")
    if error.errno in (errno.EACCES, errno.EPERM):
        # Inspectors of a service running as root run as nobody (crossinfer/_sandbox/fences.py).
        return (f"{where}: {rel} in its model root is not readable by the service or by its "
                "model inspectors, which run as the unprivileged user 'nobody' when the "
                "service runs as root: make it readable by others (chmod o+r, and o+x on its "
                "directories), or run the service as the files' owner")
    code = errno.errorcode.get(error.errno, "error")
    return f"{where}: {rel} in its model root cannot be opened ({code})"


def _shown(uri: object) -> str:
    text = repr(uri)
    return text if len(text) <= 200 else text[:197] + "..."


def read(uri: str, repository: Optional[Repository]) -> bytes:
    """The bytes of model file ``uri``: through ``repository``'s descriptor walk, or with
    Beam's FileSystems when there is none (a pipeline's own files)."""
    fd = repository.open(uri) if repository is not None else None
    if fd is None:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(uri) as f:
            return f.read()
    with os.fdopen(fd, "rb") as f:
        return f.read()


@contextlib.contextmanager
def descriptor_path(uri: str, repository: Optional[Repository]) -> Iterator[Optional[str]]:
    """``/proc/self/fd/N`` of a descriptor the core opened for local model file ``uri``
    (through ``repository``'s walk, or by name when there is none: a pipeline's own file), so
    a loader that takes a path reads the very file that was checked; ``None`` for a remote
    file."""
    if repository is not None:
        fd = repository.open(uri)
    elif "://" in uri:
        fd = None
    else:
        fd = os.open(uri, os.O_RDONLY | os.O_CLOEXEC)
    if fd is None:
        yield None
        return
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
