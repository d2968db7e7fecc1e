"""Plot an evo-mpi run: ``python scripts/plot_run.py RUN_DIR [--out DIR]`` (same as ``python -m evo_mpi.plot``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evo_mpi.plot import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
