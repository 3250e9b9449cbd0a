"""The model repository: where a service may open model files, checked before any I/O.

A Python pipeline opens its own files in its own process and needs no repository. The
expansion service installs one (``set_repository``), like Triton's model repository: a
``model_uri`` must then lie under one of the operator's roots (local directories or
``gs://bucket/path/`` prefixes), after normalisation (``..`` folded, symlinks resolved, regular
files only), and a format that runs code when loaded (pickle, joblib, TorchScript, a custom
handler's file) must lie under a *trusted* root. Refusals outside the roots say nothing about
the path (not whether it exists, nor whether it is readable).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from crossinfer._errors import ModelLoadError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Object stores whose paths are plain prefixes (no symlinks, no "..") that Beam reads.
_OBJECT_STORES = ("gs",)
_MAX_URI = 4096

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

    @property
    def scheme(self) -> str:
        match = _SCHEME.match(self.prefix)
        return match.group(1).lower() if match else ""


def _object_path(uri: str) -> Optional[str]:
    """``uri`` if it is a clean object-store path (no empty, '.' or '..' segments), else None."""
    scheme, rest = uri.split("://", 1)
    parts = rest.split("/")
    if scheme.lower() not in _OBJECT_STORES or not parts[0] or any(
            p in ("", ".", "..") for p in parts[1:-1]) or parts[-1] in (".", ".."):
        return None
    return f"{scheme.lower()}://{rest}"


def normalise_root(prefix: str, trusted: bool) -> Root:
    """Check an operator's ``--model-root``; raise ValueError with the reason if unusable."""
    if not isinstance(prefix, str) or not prefix or "\x00" in prefix:
        raise ValueError(f"model root {prefix!r} is empty")
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
    named = posixpath.normpath(prefix).rstrip("/") + "/"
    real = real.rstrip("/") + "/"
    return Root(real, trusted, alias=named if named != real else "")


class Repository:
    """The service's model roots; ``admit`` checks one model_uri against them."""

    def __init__(self, roots: Sequence[str] = (), trusted_roots: Sequence[str] = ()) -> None:
        self.roots = tuple(normalise_root(r, True) for r in trusted_roots) + tuple(
            normalise_root(r, False) for r in roots)

    def describe(self) -> list[str]:
        """The roots, for the service log."""
        return [f"{r.prefix} ({'trusted' if r.trusted else 'data formats only'})"
                for r in self.roots]

    def admit(self, uri: str, *, code: bool, what: str, argument: str = "model_uri",
              java: bool = False) -> str:
        """The normalised ``uri`` if it may be opened; else raise ModelLoadError.

        ``code``: opening the file runs code (so only trusted roots); ``what`` names the format
        in the message; ``java``: the request came from the Java library, so the messages name
        its methods too.
        """
        if not self.roots:
            raise ModelLoadError(
                f"{argument}: this expansion service has no model repository, so it loads no "
                f"model; {JAVA_HOW_TO_ADD if java else HOW_TO_ADD}")
        shown = _shown(uri)
        outside = ModelLoadError(
            f"{argument}={shown} is not a readable file under this service's model roots "
            + (f"({JAVA_HOW_TO_ADD})" if java else
               "(the operator sets them with --model-root / --trusted-model-root)"))
        if not isinstance(uri, str) or not uri or len(uri) > _MAX_URI or any(
                ord(c) < 32 for c in uri):
            raise outside
        if _SCHEME.match(uri):
            clean = _object_path(uri)
            root = clean and self._root_of(clean)
            if root is None:
                raise outside
        else:
            if not os.path.isabs(uri):
                raise ModelLoadError(f"{argument}={shown} must be an absolute path (or gs://...) "
                                     "under this service's model roots")
            lexical = posixpath.normpath(uri)
            # First lexically, so a path outside every root costs no I/O at all.
            if self._root_of(lexical, resolved=False) is None:
                raise outside
            clean = os.path.realpath(lexical)
            root = self._root_of(clean)
            if root is None:
                raise outside
            try:
                info = os.stat(clean)
            except OSError:
                raise ModelLoadError(
                    f"{argument}={shown} does not exist in the model repository") from None
            if not stat.S_ISREG(info.st_mode):
                raise ModelLoadError(f"{argument}={shown} is not a regular file")
            if not os.access(clean, os.R_OK):
                raise ModelLoadError(f"{argument}={shown} is not readable by the service")
        if code and not root.trusted:
            raise ModelLoadError(
                f"{argument}={shown} is {what}, a format that runs code when loaded; this service "
                "loads such files only from a trusted model root ("
                + ("from Java: CrossInference.withTrustedModelRoots(DIR); a service you run "
                   "yourself: --trusted-model-root" if java else "--trusted-model-root")
                + "). Put it there, or export the model as ONNX or a torch state_dict")
        return clean

    def _root_of(self, path: str, resolved: bool = True) -> Optional[Root]:
        # A lexical check cannot know where symlinks under a root lead; it only rules out
        # paths that are outside every root before anything is looked up.
        for root in self.roots:
            prefixes = (root.prefix, root.alias) if root.alias and not resolved else (root.prefix,)
            if any(path.startswith(p) and len(path) > len(p) for p in prefixes):
                return root
        return None


def _shown(uri: object) -> str:
    text = repr(uri)
    return text if len(text) <= 200 else text[:197] + "..."


_repository: Optional[Repository] = None


def set_repository(repository: Optional[Repository]) -> None:
    """Load models only from ``repository`` from now on (``None``: anywhere, in-process use)."""
    global _repository
    _repository = repository


def get_repository() -> Optional[Repository]:
    """The repository in force, or ``None`` when any path may be opened."""
    return _repository
