"""Exchange cost vs raw MPI, measured in one process: run under ``mpiexec -n K``.

For policies of about 1e4 .. 1e7 parameters, moves one member's state (weights
+ Adam state) with evo_mpi's real path (``Member.pack`` -> ``Comm.move`` ->
``Member.unpack``) and compares it with a raw mpi4py buffer transfer of the
same number of bytes between the same ranks:

* p2p: member on rank 0 -> loser on rank K-1, vs raw ``Send``/``Recv``.
* collective: member on rank 0 -> a loser on every other rank, vs raw ``Bcast``.

Prints a table with the median of ``--repeats`` runs and the ratio (target <= 1.5).

    mpiexec -n 2 python scripts/bench_exchange.py
    mpiexec -n 4 python scripts/bench_exchange.py --sizes 1e4,1e5,1e6
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import numpy as np
import torch
from mpi4py import MPI

from evo_mpi.comm import Comm
from evo_mpi.config import Config
from evo_mpi.member import Member

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def hidden_for(params: float) -> int:
    """Hidden width h of a [h, h] MLP (policy + value nets on CartPole) with about ``params`` parameters."""
    # two nets of (4h + h + h*h + h) + heads ~ 2h^2 + 12h
    return max(4, int((-12 + math.sqrt(144 + 8 * params)) / 4))


def make_member(member_id: int, hidden: int) -> Member:
    cfg = Config(n_envs=1, n_steps=32, net_arch=(hidden, hidden))
    member = Member(member_id, cfg, {"batch_size": 32, "n_epochs": 1}, None)
    policy = member.model.policy
    for p in policy.parameters():  # one zero-gradient Adam step creates the optimizer state
        p.grad = torch.zeros_like(p)
    policy.optimizer.step()
    return member


def timed(fn, comm: MPI.Comm, repeats: int) -> float:
    """Median over ranks-synchronised repeats of the slowest rank's time (seconds)."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        times.append(dt)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="approximate parameter counts")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if size < 2:
        raise SystemExit("run under mpiexec -n K with K >= 2")
    comm = Comm(world)
    if rank == 0:
        print(
            f"# bench_exchange: {size} ranks, {os.cpu_count()} cores, median of {args.repeats}, "
            f"{time.strftime('%Y-%m-%d')}"
        )
        print(
            f"{'params':>10} {'bytes':>11} {'backend':>10} {'evo_mpi ms':>11} {'raw MPI ms':>11} {'ratio':>6}  target"
        )
    for target in (float(x) for x in args.sizes.split(",")):
        bench_size(world, comm, target, args.repeats)


def bench_size(world: MPI.Comm, comm: Comm, target: float, repeats: int) -> None:
    """Time both backends and their raw MPI counterparts for one policy size; rank 0 prints."""
    rank, size = world.Get_rank(), world.Get_size()
    member = make_member(rank, hidden_for(target))
    nparams = sum(p.numel() for p in member.model.policy.parameters())
    nbytes = member.state_nbytes
    raw = np.empty(nbytes, dtype=np.uint8)

    def ours(plan: dict[int, int], backend: str) -> None:
        got = comm.move(
            plan,
            lambda m: m,  # one member per rank
            lambda _w: member.pack(),
            nbytes,
            backend,
            receive_into=lambda _w: member.receive_buffer() if rank in plan else None,
        )
        if rank in plan:
            member.unpack(got[plan[rank]])

    def raw_p2p() -> None:
        if rank == 0:
            world.Send(raw, dest=size - 1, tag=7)
        elif rank == size - 1:
            world.Recv(raw, source=0, tag=7)

    rows = [
        ("p2p", timed(lambda: ours({size - 1: 0}, "p2p"), world, repeats), timed(raw_p2p, world, repeats)),
        (
            "collective",
            timed(lambda: ours({r: 0 for r in range(1, size)}, "collective"), world, repeats),
            timed(lambda: world.Bcast(raw, root=0), world, repeats),
        ),
    ]
    if rank == 0:
        for backend, t_ours, t_raw in rows:
            ratio = t_ours / t_raw
            verdict = "ok" if ratio <= 1.5 else "MISSED"
            print(
                f"{nparams:>10} {nbytes:>11} {backend:>10} {1e3 * t_ours:>11.3f} {1e3 * t_raw:>11.3f} "
                f"{ratio:>6.2f}  <=1.5 {verdict}",
                flush=True,
            )
    member.close()


if __name__ == "__main__":
    main()
