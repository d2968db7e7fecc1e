"""Run under ``mpiexec -n K``: move member state through each backend and check it bit for bit.

Usage: mpi_exchange_check.py AGENTS_PER_RANK BACKEND...
Each backend starts from the same states. Prints one line ``OK <n> transfers ... backend <b>`` per
backend on rank 0, or raises (non-zero exit).
"""

import hashlib
import sys

import torch

from evo_mpi.comm import Comm
from evo_mpi.config import Config
from evo_mpi.member import Member

torch.set_num_threads(1)
per_rank, backends = int(sys.argv[1]), sys.argv[2:]
comm = Comm()
cfg = Config(n_envs=1, n_steps=32, agents_per_rank=per_rank)
population = comm.size * per_rank
local = range(comm.rank * per_rank, (comm.rank + 1) * per_rank)
members = {}
for m in local:
    members[m] = Member(m, cfg, {"learning_rate": 1e-3 * (m + 1), "batch_size": 16, "n_epochs": 1}, None)
    members[m].train(32 * (1 + m % 3), 0)  # different amounts of training: different states


def digest(m):
    return hashlib.sha256(members[m].pack().tobytes()).hexdigest()


original = {m: members[m].pack().copy() for m in local}
before = {}
for r in range(comm.size):
    before.update(comm.bcast_obj({m: digest(m) for m in local} if comm.rank == r else None, root=r))
assert len(set(before.values())) == population, "members must start different"

# Member 0 is both a donor (of the last member) and a loser (of member 1): it must hand on its old state.
donors = {0: 1, population - 1: 0}
for loser in range(2, population - 1):
    donors[loser] = (loser * 7) % population if (loser * 7) % population != loser else 1
owner = lambda m: m // per_rank  # noqa: E731
nbytes = members[local[0]].state_nbytes
for backend in backends:
    for m in local:  # every backend moves the same states
        members[m].unpack(original[m])
        assert digest(m) == before[m]
    buffers = comm.move(donors, owner, lambda w: members[w].pack(), nbytes, backend)
    for loser, donor in donors.items():
        if owner(loser) == comm.rank:
            members[loser].unpack(buffers[donor])
    after = {}
    for r in range(comm.size):
        after.update(comm.bcast_obj({m: digest(m) for m in local} if comm.rank == r else None, root=r))
    for m in range(population):
        expected = before[donors[m]] if m in donors else before[m]
        assert after[m] == expected, f"{backend}: member {m} got state {after[m][:8]}, expected {expected[:8]}"
    if comm.rank == 0:
        print(f"OK {len(donors)} transfers, {nbytes} bytes each, backend {backend}, {comm.size} ranks", flush=True)
