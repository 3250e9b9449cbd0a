"""Where model files are opened at construction: in this process, or where a runner says.

A Python pipeline opens its own model files in its own process (``describe_here``). Under the
expansion service's policy every model URI is first checked against its model repository,
before any I/O, and the files are opened by its runner in a child process out of reach of what
a model file does when loaded; it gets back only the plain-data ``Signature``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from crossinfer import frameworks
from crossinfer._config import Config, parse
from crossinfer._policy import Policy
from crossinfer._signature import Signature


def code_format(framework: str) -> str:
    """What a framework's code-running files are, for a repository refusal."""
    return frameworks.get(framework).code_formats or "a model file of this kind"


def framework_module(framework: str) -> Any:
    """The module that owns everything about ``framework`` (loading, signature, predict)."""
    return frameworks.module(framework)


def admit(config: Config, policy: Policy) -> dict[Optional[str], Optional[str]]:
    """Every model URI of ``config``, checked against the policy's repository (if any) and
    normalised.

    All of them are checked before any one is opened; nothing is looked up for a URI outside
    the roots.
    """
    uris = config.model_uris()
    repository = policy.repository
    if repository is None:
        return uris
    module = framework_module(config.framework)
    admitted = {}
    for key, uri in uris.items():
        if uri is None:  # a custom handler without a file
            admitted[key] = None
            continue
        argument = "model_uri" if key is None else f"models[{key!r}]"
        admitted[key] = repository.admit(
            uri, code=bool(module.loads_code(config, uri)), argument=argument,
            what=code_format(config.framework), java=config.client_version is not None,
            directory=frameworks.get(config.framework).directories)
    return admitted


def describe(config: Config, key: Optional[str], policy: Policy) -> Signature:
    """The signature of the model ``key`` names (``None``: the only model)."""
    uris = admit(config, policy)
    if policy.runner is None:
        return describe_here(config, key, policy, uris[key])
    kwargs = config.kwargs()
    # The runner opens exactly the files admitted here, symlinks already resolved.
    if config.models is not None:
        kwargs["models"] = {k: uris[k] for k in config.models}
    else:
        kwargs["model_uri"] = uris[None]
    return Signature.from_dict(policy.runner(kwargs, key))


def describe_here(config: Config, key: Optional[str], policy: Policy,
                  uri: Optional[str] = None) -> Signature:
    """Open the model in this process and read its signature."""
    if uri is None:
        uri = config.model_uris()[key]
    return framework_module(config.framework).describe(config, uri, policy)


def describe_kwargs(kwargs: Mapping[str, Any], key: Optional[str],
                    policy: Policy) -> dict[str, Any]:
    """``describe`` from plain arguments, as a runner's other side calls it (``policy`` has no
    runner there)."""
    config = parse(**kwargs)
    return describe_here(config, key, policy, admit(config, policy)[key]).to_dict()
