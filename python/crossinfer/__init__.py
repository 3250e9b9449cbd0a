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
from crossinfer._transform import Inference

__all__ = [
    "Failure",
    "Inference",
    "CallableNotAllowedError",
    "ConfigurationError",
    "CrossinferError",
    "InputError",
    "ModelLoadError",
    "OutputError",
]
