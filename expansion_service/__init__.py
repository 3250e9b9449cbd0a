"""crossinfer's expansion service: Beam's ExpansionService API, serving ``crossinfer.Inference`` only.

Run it with ``crossinfer-expansion-service --port PORT`` (or ``python -m expansion_service``);
``--help`` lists the options. ``connect`` gives Python clients a stub for a service that wants
a token or TLS. Everything else in this package is private.
"""

from expansion_service._cli import main
from expansion_service._client import connect

__all__ = ["connect", "main"]
