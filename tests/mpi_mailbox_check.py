"""Run under ``mpiexec -n K``: the async engine's snapshot mail, with buffers far past MPI's eager size.

1. A ring: every rank asks the next one for a 16 MB buffer and serves requests while it waits,
   so every rank is asked while it is itself waiting (with K = 2, two ranks serve each other).
   Nobody may hang, and every buffer must arrive whole, although each rank overwrites what it
   served as soon as its own buffer is in: ``receive_buffer`` sees those sends through first.
2. Rank 0 asks rank 1, which waits for nothing: ``deliver_buffer`` must have sent the whole buffer
   when it returns, so rank 1 overwrites it at once and rank 0 must still get the old bytes.

Prints ``OK ...`` on rank 0, or raises (non-zero exit).
"""

import numpy as np
from mpi4py import MPI

from evo_mpi.comm import Comm, Mailbox

REQUEST, SNAPSHOT = 11, 12
NBYTES = 16 * 2**20

comm = Comm()
box = Mailbox(comm)
rank, size = comm.rank, comm.size
served: list[int] = []
delivered: list[np.ndarray] = []


def payload(value: int) -> np.ndarray:
    return np.full(NBYTES, value, dtype=np.uint8)


def serve(value: int, overwrite: bool = False) -> None:
    """Answer every snapshot request that has arrived with a buffer of ``value``."""
    for source, _tag, _obj in box.incoming([REQUEST]):
        buf = payload(value)
        box.deliver_buffer(source, SNAPSHOT, buf)
        if overwrite:
            buf[:] = 0  # allowed only once the send is complete
        served.append(source)
        delivered.append(buf)


def check(buf: np.ndarray, value: int, what: str) -> None:
    if buf.nbytes != NBYTES or not (buf == value).all():
        wrong = int((buf != value).sum()) if buf.nbytes == NBYTES else buf.nbytes
        print(f"rank {rank}: {what}: {wrong} bytes wrong (expected {NBYTES} bytes of {value})", flush=True)
        comm.abort(1)  # the other ranks may be waiting for this one


# 1. the ring
ahead = (rank + 1) % size
box.send(ahead, REQUEST, rank)
check(box.receive_buffer(ahead, SNAPSHOT, lambda: serve(10 + rank)), 10 + ahead, f"ring, from rank {ahead}")
for buf in delivered:
    buf[:] = 0  # allowed only once the send is complete
box.barrier(lambda: serve(10 + rank))
assert len(served) == 1, f"rank {rank} served {served} in the ring"

# 2. a delivery from a rank that waits for nothing
if rank == 0:
    box.send(1, REQUEST, 0)
    check(box.receive_buffer(1, SNAPSHOT, lambda: None), 77, "delivery from rank 1")
elif rank == 1:
    while len(served) < 2:
        serve(77, overwrite=True)
box.barrier(lambda: None)
box.close()
if rank == 0:
    print(f"OK {size} ranks: ring of {size} buffers of {NBYTES} bytes, then a delivery seen through", flush=True)
MPI.Finalize()
