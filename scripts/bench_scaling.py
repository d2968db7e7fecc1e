"""Scaling over ranks: aggregate env steps/s of 2 ranks (and 4 ranks on 2 cores) vs 1 rank.

A population of 1 is refused, so the 1-rank reference is ``mpiexec -n 1
--agents-per-rank 2``: the *same* population of 2 as ``mpiexec -n 2``, with the
same members, seeds and hyperparameters (evo_mpi's results do not depend on
the rank layout), so both runs do exactly the same computation; the single
rank just trains its two members one after the other on one core. The
compute-relevant hyperparameters are fixed (``n_epochs=const:10``,
``batch_size=const:64``) so that every member's work per generation is the
same, also for the third run, ``mpiexec -n 4`` (4 members; on this 2-core
machine 2 ranks share each core).

Throughput, over generations >= 1 (generation 0 pays one-time set-up):

* training (judged): population env steps per generation / mean over ranks
  of the rank's ``train`` wall seconds. Per rank, ``train`` already sums its
  members' training; across ranks the walls are averaged, not summed, because
  ranks train at the same time (summing would count each wall second once per
  rank). Startup, waiting and PBT overhead are left out, so this isolates how
  well training itself scales (core contention, memory bandwidth, turbo).
* end-to-end: population env steps per generation / generation wall, i.e.
  including waiting for the slowest rank and the PBT phases.

Target: 2 ranks >= 1.8 x the (one-core) throughput of 1 rank. 4 ranks on 2
cores is judged against the same 1.8 (2 cores' worth).

    python scripts/bench_scaling.py                # ~1.5 minutes on 2 cores
    python scripts/bench_scaling.py --generations 3 --steps-per-generation 2048
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl

FIXED_WORK = ["--search-space", "n_epochs=const:10", "--search-space", "batch_size=const:64"]


def rates(run: bl.Run, population: int, steps: int) -> tuple[float, float]:
    """(training, end-to-end) population env steps/s, mean over generations >= 1."""
    recs = run.generations(1)
    train, e2e = [], []
    for g in sorted({r["generation"] for r in recs}):
        here = [r for r in recs if r["generation"] == g]
        train.append(population * steps / bl.mean(bl.phase(r, "train") for r in here))
        e2e.append(population * steps / max(r["total_wall"] for r in here))
    return bl.mean(train), bl.mean(e2e)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=8, help="generations per run (default 8)")
    parser.add_argument("--steps-per-generation", type=int, default=4096, help="per member (default 4096)")
    parser.add_argument("--target", type=float, default=1.8, help="speed-up target (default 1.8)")
    parser.add_argument("--echo", action="store_true", help="show rank 0's progress lines")
    args = parser.parse_args()
    bl.header("bench_scaling: aggregate env steps/s over ranks", sys.argv)

    steps = args.steps_per_generation
    common = ["--generations", str(args.generations), "--steps-per-generation", str(steps), *FIXED_WORK]
    layouts = [("1 rank x 2 members", 1, 2), ("2 ranks x 1 member", 2, 1), ("4 ranks x 1 member", 4, 1)]
    results = []
    for label, ranks, agents in layouts:
        run = bl.run_evo(ranks, [*common, "--agents-per-rank", str(agents)], echo=args.echo)
        print(f"ran: {bl.launched(run)}  ({run.end_unix - run.launch_unix:.0f} s)", flush=True)
        results.append((label, ranks * agents, *rates(run, ranks * agents, steps)))

    base_train, base_e2e = results[0][2], results[0][3]
    rows = []
    for label, population, train, e2e in results:
        ratio = train / base_train
        judged = population > 2 or label.startswith("2 ")
        rows.append(
            [
                label,
                str(population),
                f"{train:.0f}",
                f"{ratio:.2f}",
                f"{e2e:.0f}",
                f"{e2e / base_e2e:.2f}",
                f">= {args.target:g}: {bl.verdict(ratio >= args.target)}" if judged else "(reference)",
            ]
        )
    print()
    print(f"{steps} env steps per member per generation, generations 1..{args.generations - 1}:")
    print()
    print(
        bl.table(
            ["layout", "population", "train steps/s", "x 1 rank", "end-to-end steps/s", "x 1 rank", "target"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
