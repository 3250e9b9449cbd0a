"""Loads a model once at construction, so a bad model_uri fails before the job starts.

Each ModelLoadError raised here carries two messages: the full one (``str(e)``, for the user's
own process and the service log) and ``e.public``, which names the problem without quoting the
file or the loader's words about it (a loader's error can quote the bytes it choked on). The
expansion service sends only ``public`` to its clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from apache_beam.io.filesystems import FileSystems

from crossinfer._errors import ModelLoadError

if TYPE_CHECKING:
    from crossinfer._policy import Policy


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


def argument_for(config: Any, uri: str) -> str:
    """The argument that names ``uri``: ``models['key']`` for one of several models."""
    for key, value in (getattr(config, "models", None) or {}).items():
        if value == uri:
            return f"models[{key!r}]"
    return "model_uri"


# What a file's first bytes say it is, and the framework that loads it.
_FORMATS = (
    (b"\x80", "a Python pickle (framework='sklearn' for a pickled estimator)"),
)
_TORCH_ZIP = "a zip archive, as torch.save and TorchScript write (framework='pytorch')"


def sniff(uri: str, policy: "Policy") -> str:
    """What the file looks like, for a message ('' when unknown)."""
    try:
        # Through the repository: the file it checked, never another one behind its name.
        head = policy.read(uri)[:4096]
    except Exception:  # pylint: disable=broad-except
        return ""
    for magic, what in _FORMATS:
        if head.startswith(magic):
            return what
    # torch.save and TorchScript zips start with their pickle (".../data.pkl"); other zips
    # (a Keras file) are not torch's, and say nothing here.
    if head.startswith(b"PK\x03\x04") and (b"data.pkl" in head or b"/version" in head):
        return _TORCH_ZIP
    if head[8:9] == b"{" and len(head) > 8:
        return "a safetensors file (framework='pytorch' with model_class)"
    if _looks_like_onnx(head):
        return "an ONNX model (framework='onnx')"
    return ""


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with ir_version (field 1, varint) and names its producer or
    graph early on."""
    return head[:1] == b"\x08" and (b"pytorch" in head[:200] or b"onnx" in head[:400].lower()
                                      or b"skl2onnx" in head[:400])


def load_once(load: Callable[[], Any], uri: str, framework: str,
              argument: str = "model_uri", *, policy: "Policy") -> Any:
    """Run Beam's own loader once; wrap any failure into ModelLoadError (what the file looks
    like is read through ``policy``)."""
    if policy.repository is None or not uri.startswith("/"):
        # (A local file under a repository was found by its descriptor walk, not by name.)
        check_exists(uri, argument)
    try:
        return load()
    except ModelLoadError:
        raise  # crossinfer's own (the repository's, external data's): already says what
    except Exception as e:  # pylint: disable=broad-except
        kind = sniff(uri, policy)
        base = framework.split()[0].lower().replace("torchscript", "pytorch")
        if kind and f"framework='{base}'" not in kind:
            message = (f"{argument}={uri!r} did not load as a {framework} model: the file is "
                       f"{kind}")
            raise _error(message, message) from e
        raise _error(
            f"{argument}={uri!r} did not load as a {framework} model: {type(e).__name__}: {e}",
            f"{argument}={uri!r} did not load as a {framework} model ({type(e).__name__}); "
            "check the file and the framework") from e
