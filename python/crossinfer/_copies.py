"""Private copies of model files and directories, for loaders that read only paths.

A Keras file or a SavedModel directory (with its variables and assets) is loaded by
TensorFlow from a path. The path it gets is never the model's name: the core copies what the
model repository's descriptor walk opened (every entry opened from its parent's descriptor, no
link followed, only regular files and directories) into a new directory only this process's
user can open, and removes it once the model is loaded. Whatever happens to the names in the
root meanwhile, what loads is what the repository checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Optional

from crossinfer._errors import ModelLoadError
from crossinfer._repository import _FILE_FLAGS, Repository, _open_dir, _refusal, _shown

_MAX_COPY = 64 << 30  # bytes one private copy may hold: a bound on a directory that grows


def _copy(fd: int, destination: str, where: str, budget: list[int]) -> None:
    """Copy what descriptor ``fd`` holds (a regular file or a directory tree) to
    ``destination``; anything but regular files and directories is refused."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode):
        budget[0] -= info.st_size
        if budget[0] < 0:
            raise ModelLoadError(f"{where} is larger than one model may be")
        out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600)
        with os.fdopen(out, "wb") as target:
            os.lseek(fd, 0, os.SEEK_SET)
            while chunk := os.read(fd, 1 << 20):
                target.write(chunk)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{where} holds an entry that is neither a file nor a directory")
    os.mkdir(destination, 0o700)
    for name in sorted(os.listdir(fd)):
        try:
            child = os.open(name, _FILE_FLAGS, dir_fd=fd)
        except OSError as e:
            if e.errno != errno.EISDIR:
                raise ModelLoadError(_refusal(e, where, _shown(name))) from None
            child = _open_dir(name, fd, where, _shown(name))
        try:
            os.set_blocking(child, True)
            _copy(child, os.path.join(destination, name), where, budget)
        finally:
            os.close(child)


@contextlib.contextmanager
def snapshot(uri: str, repository: Optional[Repository],
             argument: str = "model_uri") -> Iterator[str]:
    """The path of a private copy of model ``uri`` (a file, or a directory such as a
    SavedModel) while the block runs, removed afterwards. With no repository (a pipeline's
    own files), or for an object-store URI, ``uri`` itself (the loader reads it as Beam's
    handlers do)."""
    fd = repository.open(uri, argument, directory=True) if repository is not None else None
    if fd is None:
        yield uri
        return
    private = tempfile.mkdtemp(prefix="crossinfer-model-")  # mode 0700
    try:
        try:
            copy = os.path.join(private, posixpath.basename(uri.rstrip("/")) or "model")
            _copy(fd, copy, f"{argument}={_shown(uri)}", [_MAX_COPY])
        finally:
            os.close(fd)
        yield copy
    finally:
        shutil.rmtree(private, ignore_errors=True)
