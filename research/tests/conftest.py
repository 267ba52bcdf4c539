"""Tests of the research scripts: ``pytest research/tests`` from the repository root (not in ``make test``).

The scripts are plain files, not a package, so their folder goes on the import path.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
