"""Torch threads per rank: throughput with 1 thread vs torch's default vs ``--torch-threads 0`` (automatic).

Three real ``mpiexec -n 2 python -m evo_mpi.run`` runs that differ only in
``--torch-threads``:

* ``1``: evo_mpi's default;
* ``os.cpu_count()``: what torch uses when nobody sets it (with 2 ranks on
  the node that is 2 x cores threads: oversubscribed);
* ``0``: evo_mpi's automatic choice, usable cores / ranks on the node.

The compute-relevant hyperparameters are fixed (``n_epochs=const:10``,
``batch_size=const:64``, SB3's defaults) so every member does the same work in
every generation, whatever exploit and explore do. Generation 0 (one-time
set-up) is left out. Runs with ranks x threads > cores are 10-100x slower and
erratic, so they run ``--oversubscribed-generations`` (2) generations only. Reported, per run:

* training throughput: sum over ranks of (env steps the rank trained / its
  ``train`` wall seconds), mean over generations >= 1;
* end-to-end throughput: population env steps per generation / generation
  wall (mean over ranks and generations >= 1), which also counts waits;
* train CPU / train wall per rank (above 1 = the rank used more than one core);
* the ratio of each run's throughput to the ``--torch-threads 1`` run.

    python scripts/bench_threads.py                # 1-2 minutes on 2 cores
    python scripts/bench_threads.py --ranks 2 --generations 3
"""

from __future__ import annotations

import argparse
import os
import sys

import benchlib as bl

FIXED_WORK = ["--search-space", "n_epochs=const:10", "--search-space", "batch_size=const:64"]


def throughput(run: bl.Run, steps: int, agents: int) -> tuple[float, float, float, int]:
    """(training steps/s, end-to-end steps/s, train CPU/wall, torch threads) over generations >= 1."""
    recs = run.generations(1)
    gens = sorted({r["generation"] for r in recs})
    train_rate, e2e = [], []
    for g in gens:
        here = [r for r in recs if r["generation"] == g]
        train_rate.append(sum(agents * steps / bl.phase(r, "train") for r in here))
        e2e.append(len(here) * agents * steps / bl.mean(r["total_wall"] for r in here))
    cpu_share = bl.mean(bl.phase(r, "train", "cpu") / bl.phase(r, "train") for r in recs)
    threads = sorted({r["torch_threads"] for r in recs})
    return bl.mean(train_rate), bl.mean(e2e), cpu_share, threads[0] if len(threads) == 1 else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks (default 2)")
    parser.add_argument("--generations", type=int, default=6, help="generations per run (default 6)")
    parser.add_argument(
        "--oversubscribed-generations",
        type=int,
        default=2,
        help="generations of runs with ranks x threads > cores, which are 10-100x slower (default 2)",
    )
    parser.add_argument("--steps-per-generation", type=int, default=2048, help="per member (default 2048)")
    parser.add_argument("--echo", action="store_true", help="show rank 0's progress lines")
    args = parser.parse_args()
    bl.header("bench_threads: torch threads per rank", sys.argv)

    default_threads = os.cpu_count() or 1
    settings = [("1 (evo_mpi default)", 1), (f"{default_threads} (torch default: os.cpu_count())", default_threads)]
    settings.append(("0 (automatic)", 0))
    cores = bl.usable_cores()
    common = ["--steps-per-generation", str(args.steps_per_generation), *FIXED_WORK]
    results = []
    for label, threads in settings:
        oversubscribed = args.ranks * (threads or 1) > cores
        gens = args.oversubscribed_generations if oversubscribed else args.generations
        run = bl.run_evo(
            args.ranks, ["--generations", str(gens), *common, "--torch-threads", str(threads)], echo=args.echo
        )
        per_gen = [line.split("|")[4].strip() for _, line in run.lines if line.startswith("gen ")]
        took = run.end_unix - run.launch_unix
        print(f"ran: {bl.launched(run)}  ({took:.0f} s; per generation: {', '.join(per_gen)})", flush=True)
        results.append((label, *throughput(run, args.steps_per_generation, 1)))

    base_train, base_e2e = results[0][1], results[0][2]
    rows = [
        [
            label,
            str(threads),
            f"{train:.0f}",
            f"{train / base_train:.2f}",
            f"{e2e:.0f}",
            f"{e2e / base_e2e:.2f}",
            f"{cpu:.2f}",
        ]
        for label, train, e2e, cpu, threads in results
    ]
    print()
    print(
        f"{args.ranks} ranks x 1 member on {cores} cores, {args.steps_per_generation} steps per member per generation, "
        "mean over generations >= 1:"
    )
    print()
    print(
        bl.table(
            [
                "--torch-threads",
                "threads/rank",
                "train steps/s",
                "ratio",
                "end-to-end steps/s",
                "ratio",
                "train CPU/wall",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
