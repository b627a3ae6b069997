"""Make the repository root importable so tests can import the ``bench`` package
(benchmarks are run from the root with ``python -m bench.replay``, not installed)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
