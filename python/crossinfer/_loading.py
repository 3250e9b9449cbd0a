"""Loads a model once at construction, so a bad model_uri fails before the job starts.

Each ModelLoadError raised here carries two messages: the full one (``str(e)``, for the user's
own process and the service log) and ``e.public``, which names the problem without quoting the
file or the loader's words about it (a loader's error can quote the bytes it choked on). The
expansion service sends only ``public`` to its clients.
"""

from __future__ import annotations

from typing import Any, Callable

from apache_beam.io.filesystems import FileSystems

from crossinfer._errors import ModelLoadError


def _error(full: str, public: str) -> ModelLoadError:
    error = ModelLoadError(full)
    error.public = public
    return error


def check_exists(uri: str, argument: str = "model_uri") -> None:
    """Raise ModelLoadError unless Beam's FileSystems can see ``uri``."""
    try:
        exists = FileSystems.exists(uri)
    except Exception as e:  # pylint: disable=broad-except
        raise _error(
            f"{argument}={uri!r} cannot be checked: {type(e).__name__}: {e}; is the filesystem "
            "(e.g. gs://) installed and reachable?",
            f"{argument}={uri!r} cannot be checked ({type(e).__name__}); is the filesystem "
            "(e.g. gs://) installed and reachable where the pipeline is expanded?") from e
    if not exists:
        message = (f"{argument}={uri!r} does not exist; give a local path or a URI Beam's "
                   "FileSystems reads (gs://...), reachable from where the pipeline is expanded")
        raise _error(message, message)


def load_once(load: Callable[[], Any], uri: str, framework: str) -> Any:
    """Run Beam's own loader once; wrap any failure into ModelLoadError."""
    check_exists(uri)
    try:
        return load()
    except ModelLoadError:
        raise  # crossinfer's own (the repository's, external data's): already says what
    except Exception as e:  # pylint: disable=broad-except
        raise _error(
            f"model_uri={uri!r} did not load as a {framework} model: {type(e).__name__}: {e}",
            f"model_uri={uri!r} did not load as a {framework} model ({type(e).__name__}); "
            "check the file and the framework") from e
