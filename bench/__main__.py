"""``python -m bench [--quick]`` from the repository root; see bench/README.md."""

import sys

from bench.cli import main

sys.exit(main())
