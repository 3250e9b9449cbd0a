"""Loads a model once at construction, so a bad model_uri fails before the job starts."""

from __future__ import annotations

from typing import Any, Callable

from apache_beam.io.filesystems import FileSystems

from crossinfer._errors import ModelLoadError


def check_exists(uri: str, argument: str = "model_uri") -> None:
    """Raise ModelLoadError unless Beam's FileSystems can see ``uri``."""
    try:
        exists = FileSystems.exists(uri)
    except Exception as e:  # pylint: disable=broad-except
        raise ModelLoadError(f"{argument}={uri!r} cannot be checked: {type(e).__name__}: {e}; "
                             "is the filesystem (e.g. gs://) installed and reachable?") from e
    if not exists:
        raise ModelLoadError(
            f"{argument}={uri!r} does not exist; give a local path or a URI Beam's "
            "FileSystems reads (gs://...), reachable from where the pipeline is expanded")


def load_once(load: Callable[[], Any], uri: str, framework: str) -> Any:
    """Run Beam's own loader once; wrap any failure into ModelLoadError."""
    check_exists(uri)
    try:
        return load()
    except Exception as e:  # pylint: disable=broad-except
        raise ModelLoadError(
            f"model_uri={uri!r} did not load as a {framework} model: {type(e).__name__}: {e}"
        ) from e
