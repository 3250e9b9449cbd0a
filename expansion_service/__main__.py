"""``python -m expansion_service``: the same as the ``crossinfer-expansion-service`` command."""

from expansion_service._cli import main

raise SystemExit(main())
