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
