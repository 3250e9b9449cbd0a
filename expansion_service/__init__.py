"""crossinfer's expansion service: Beam's ExpansionService API, serving ``crossinfer.Inference`` only.

Run it with ``crossinfer-expansion-service --port PORT`` (or ``python -m expansion_service``);
``--help`` lists the options. Everything else in this package is private.
"""

from expansion_service._cli import main

__all__ = ["main"]
