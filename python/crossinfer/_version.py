"""This crossinfer's version, and the check that a client (the Java library) matches it."""

from __future__ import annotations

import importlib.metadata
from typing import Optional

from crossinfer._errors import ConfigurationError


def installed() -> Optional[str]:
    """The version pip recorded for crossinfer, or None when it was not installed with pip."""
    try:
        return importlib.metadata.version("crossinfer")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_client(client_version: Optional[str]) -> None:
    """Refuse a request built by another crossinfer version: the Java library and the Python
    side share the wire format of arguments, blocks and failure rows."""
    if client_version is None:
        return
    mine = installed()
    if mine == client_version:
        return
    if mine is None:
        raise ConfigurationError(
            f"client_version={client_version!r}: the expansion service's crossinfer has no "
            f"version (it was not installed with pip); install crossinfer {client_version} "
            f"with `pip install .` from the root of a crossinfer {client_version} checkout (the "
            f"directory holding pyproject.toml; crossinfer is on no package index)")
    raise ConfigurationError(
        f"client_version={client_version!r}: the client is crossinfer {client_version}, but the "
        f"expansion service has crossinfer {mine}; the two sides must be the same version: "
        f"where the service runs, `pip install .` from the root of a crossinfer "
        f"{client_version} checkout (crossinfer is on no package index), or depend on "
        f"io.crossinfer:crossinfer:{mine}")
