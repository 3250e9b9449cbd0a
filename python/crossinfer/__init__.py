"""crossinfer: cross-language ML inference for Apache Beam."""

from crossinfer._errors import (
    CallableNotAllowedError,
    ConfigurationError,
    CrossinferError,
    InputError,
    ModelLoadError,
    OutputError,
)
from crossinfer._schemas import Failure

__all__ = [
    "Failure",
    "Inference",
    "Prepare",
    "CallableNotAllowedError",
    "ConfigurationError",
    "CrossinferError",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "prism_location",
]


def prism_location() -> str:
    """The path of a Prism runner binary of the installed Beam release, for ``PrismRunner``'s
    ``prism_location``; raises an error saying how to get one when there is none."""
    from crossinfer._prism import locate

    return str(locate())


def __getattr__(name: str):
    # Imported on first use, so that `python -m crossinfer._arguments` runs without Beam's
    # pipeline machinery being imported first.
    if name == "Inference":
        from crossinfer._transform import Inference

        return Inference
    if name == "Prepare":
        from crossinfer._prepare import Prepare

        return Prepare
    raise AttributeError(f"module 'crossinfer' has no attribute {name!r}")
