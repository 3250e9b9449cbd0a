"""The crossinfer exception hierarchy: one base, a few leaves."""


class CrossinferError(Exception):
    """Base class for every error crossinfer raises."""


class ConfigurationError(CrossinferError, ValueError):
    """The transform's arguments are wrong; raised before the pipeline runs."""


class CallableNotAllowedError(ConfigurationError):
    """A named callable is outside the allowlist or is not a plain function or class."""


class ModelLoadError(ConfigurationError):
    """The model file is missing or does not load with the named framework."""


class InputError(CrossinferError, ValueError):
    """One input row cannot be turned into a model input."""


class OutputError(CrossinferError, ValueError):
    """One model output cannot be turned into a prediction row."""


def describe(e: BaseException) -> str:
    """'ExceptionType: message', the form of every failure's error field."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
