"""Entry point of ``python -m bench.replay`` (run from the repository root)."""

import sys

from bench.replay.cli import main

sys.exit(main())
