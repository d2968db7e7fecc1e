"""Run under ``mpiexec -n 2``: ranks that disagree on a state's size must fail loudly, never copy short.

Usage: mpi_count_check.py BACKEND short|long
Rank 1 owns member 1 and packs 100 bytes; rank 0 owns member 0, which copies
member 1 while expecting 120 (``short``: a shorter message arrives) or 80
(``long``: a longer one) bytes. The rank that detects the mismatch prints
``caught <ExchangeError message>`` and aborts the job, as the entry point does.
"""

import sys
import time

import numpy as np

from evo_mpi.comm import Comm, ExchangeError

backend, mode = sys.argv[1], sys.argv[2]
comm = Comm()
expected = {"short": 120, "long": 80}[mode] if comm.rank == 0 else 100
state = np.arange(100, dtype=np.uint8)
try:
    buffers = comm.move({0: 1}, lambda m: m, lambda _w: state, expected, backend)
except ExchangeError as exc:
    print(f"caught {exc}", flush=True)
    time.sleep(1)  # as the entry point does: let the launcher forward the report before the abort
    comm.abort(3)
    sys.exit(3)
if comm.rank == 0:
    print(f"silently received {buffers[1].nbytes} bytes", flush=True)
