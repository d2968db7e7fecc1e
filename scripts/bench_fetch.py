"""Async snapshot fetches against a raw MPI transfer of the same bytes (one invocation).

An exploit in async mode fetches the donor's snapshot from the rank that owns it,
which serves it between its own training steps. For a small (64,64) and a large
(1024,1024) PPO policy on CartPole-v1, ``mpiexec -n 2 --mode async``, this prints
the remote fetch times the history records (``fetch_s``: request, the owner's
answer, the transfer) next to a raw ``Send``/``Recv`` of as many bytes between two
ranks, and the largest share of a rank's wall time that its fetches took. Then two
ranks fetch 25 MB from each other at once through the engine's ``Mailbox`` alone, the
case where each serves the other while it waits itself.

    python scripts/bench_fetch.py          # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap

import benchlib as bl

SIZES = {"64,64": "120 KB", "1024,1024": "25 MB"}

RAW = textwrap.dedent(
    """
    import statistics, sys, time
    import numpy as np
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    buf = np.zeros(int(sys.argv[1]), dtype=np.uint8)
    times = []
    for _ in range(7):
        world.Barrier()
        t0 = time.perf_counter()
        if world.rank == 0:
            world.Send(buf, dest=1, tag=1)
        else:
            world.Recv(buf, source=0, tag=1)
        times.append(world.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    if world.rank == 0:
        print(statistics.median(times))
    """
)


MUTUAL = textwrap.dedent(
    """
    import statistics, sys, time
    import numpy as np
    from mpi4py import MPI
    from evo_mpi.comm import Comm, Mailbox
    REQUEST, SNAPSHOT = 11, 12
    comm = Comm(); box = Mailbox(comm); other = 1 - comm.rank
    nbytes, repeats = int(sys.argv[1]), int(sys.argv[2])
    def serve():
        for source, _tag, _obj in box.incoming([REQUEST]):
            box.deliver_buffer(source, SNAPSHOT, np.full(nbytes, comm.rank, np.uint8))
    times = []
    for rep in range(repeats):
        MPI.COMM_WORLD.Barrier()
        if comm.rank == 1:
            time.sleep(0.002 * (rep % 5))  # the two requests cross at different moments
        t0 = time.perf_counter()
        box.send(other, REQUEST, comm.rank)
        buf = box.receive_buffer(other, SNAPSHOT, serve)
        times.append(time.perf_counter() - t0)
        assert (buf == other).all()
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:  # training: the engine serves at most once per ms
            serve(); box._reap(); time.sleep(0.001)
    box.barrier(serve)
    gathered = MPI.COMM_WORLD.gather(times)
    if comm.rank == 0:
        flat = sorted(t for ts in gathered for t in ts)
        print(statistics.median(flat), flat[-1], sum(t > 0.3 for t in flat), len(flat))
    """
)


def two_ranks(code: str, *args: object, timeout: float) -> list[str]:
    """Run ``code`` under ``mpiexec -n 2`` from the repository root (its evo_mpi, not the caller's); rank 0's words."""
    cmd = [bl.mpiexec(), "-n", "2", sys.executable, "-c", code, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=bl.child_env(), cwd=bl.ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} -c ... exited {proc.returncode}\n{proc.stderr}")
    return proc.stdout.split()


def mutual_s(nbytes: int, repeats: int) -> tuple[float, float, int, int]:
    """Two ranks fetch ``nbytes`` from each other at once, ``repeats`` times: median, max, fetches over 0.3 s, all."""
    median, worst, slow, count = two_ranks(MUTUAL, nbytes, repeats, timeout=300)[-4:]
    return float(median), float(worst), int(slow), int(count)


def raw_send_s(nbytes: int) -> float:
    """Median of 7 raw ``Send``/``Recv`` of ``nbytes`` from rank 0 to rank 1."""
    return float(two_ranks(RAW, nbytes, timeout=120)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--mutual-repeats", type=int, default=10, help="rounds of the two-way fetch (Mailbox only)")
    args = parser.parse_args()
    bl.header("bench_fetch: async snapshot fetches vs raw MPI", sys.argv)
    rows = []
    for arch, label in SIZES.items():
        job = [
            "--mode", "async", "--net-arch", arch, "--generations", str(args.generations),
            "--steps-per-generation", "1024", "--n-envs", "4", "--n-steps", "128",
            "--search-space", "n_epochs=const:1", "--seed", "1",
        ]  # fmt: skip
        run = bl.run_evo(2, job)
        print(bl.launched(run), flush=True)
        served = [r for r in run.records if "served" in r]
        remote = bl.remote_fetches(run.history, 1)
        fetches = [float(r["fetch_s"]) for r in remote]
        if not served or not fetches:
            rows.append([arch, label, "-", "no remote exploit in this run", "", "", ""])
            continue
        nbytes = int(served[0]["bytes"])
        raw = raw_send_s(nbytes)
        wall = {s["rank"]: s["end_unix"] - s["first_train_unix"] for s in run.records if s.get("summary")}
        waited = {rank: 0.0 for rank in wall}
        for r, fetch_s in zip(remote, fetches, strict=True):  # one member per rank: member k is on rank k
            waited[r["member"]] += fetch_s
        median = statistics.median(fetches)
        rows.append(
            [
                arch,
                f"{nbytes / 1e6:.2f} MB",
                str(len(fetches)),
                f"{1e3 * median:.1f} / {1e3 * max(fetches):.1f}",
                f"{1e3 * raw:.2f}",
                f"{median / raw:.1f}",
                f"{100 * max(waited[k] / wall[k] for k in wall):.1f} %",
            ]
        )
    print()
    headers = ["net_arch", "snapshot", "fetches", "fetch ms (median / max)", "raw Send ms", "median / raw"]
    headers.append("of a rank's wall (max)")
    print(bl.table(headers, rows))
    nbytes = 25 * 2**20
    median, worst, slow, count = mutual_s(nbytes, args.mutual_repeats)
    print(
        f"\nTwo ranks fetching {nbytes / 1e6:.1f} MB from each other at once, each then training (serving once per"
        f" ms), {count} fetches: median {1e3 * median:.1f} ms, max {1e3 * worst:.1f} ms, {slow} over 300 ms"
    )


if __name__ == "__main__":
    main()
