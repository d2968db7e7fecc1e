"""PBT overhead: share of each generation's wall time spent outside training.

Runs the real ``mpiexec -n 4 python -m evo_mpi.run`` with the default settings
(CartPole-v1, default generation length, fitness from training episodes) for
``--generations`` generations, then the same with ``--eval-episodes 10``, and
reads ``RUN_DIR/timings/rank_XXX.jsonl``. For every phase the engine times
(train, fitness, wait, exchange, explore, log, checkpoint) it prints the share
of the generation's wall time, as the mean over ranks and generations of
``phase wall / generation wall``.

Overhead = everything except ``train`` and ``wait`` (waiting for slower peers
is load imbalance, not PBT machinery); target <= 3 % with the defaults.
Generation 0 is shown in its own column and left out of the headline figure
because it can carry one-time costs that a 30-generation run amortises (SB3's
first ``learn`` set-up, the one-off flattening of each member's weights and
Adam state into one buffer at the first exploit, the start-up skew between
ranks, which lands in ``wait``); compare the columns to see what that changes.

Also reported: the time rank 0 spends *between* generations (writing its
timings record, the population TensorBoard scalars and the progress line),
which no phase covers; measured as the gap between the arrival of successive
progress lines minus rank 0's generation wall.

    python scripts/bench_overhead.py                 # ~2.5 minutes on 2 cores
    python scripts/bench_overhead.py --generations 5 --ranks 2
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl


def untimed_share(run: bl.Run) -> tuple[float, float]:
    """Mean over generations >= 1 of rank 0's untimed seconds between generations, and their share."""
    arrivals = run.gen_line_times()
    rank0 = {r["generation"]: r for r in run.records if r["rank"] == 0}
    gaps, shares = [], []
    for g in range(1, len(arrivals)):
        period = arrivals[g] - arrivals[g - 1]
        gap = max(0.0, period - rank0[g]["total_wall"])
        gaps.append(gap)
        shares.append(gap / period)
    return bl.mean(gaps), bl.mean(shares)


def shares(run: bl.Run, skip: int, only: int | None = None) -> dict[str, float]:
    """Mean over ranks and generations of each phase's share of the generation wall."""
    recs = [r for r in run.generations(skip) if only is None or r["generation"] == only]
    out = {p: bl.mean(bl.phase(r, p) / r["total_wall"] for r in recs) for p in bl.PHASES}
    out["overhead"] = bl.mean(bl.overhead_s(r) / r["total_wall"] for r in recs)
    out["overhead_no_fitness"] = bl.mean((bl.overhead_s(r) - bl.phase(r, "fitness")) / r["total_wall"] for r in recs)
    out["gen_wall"] = bl.mean(r["total_wall"] for r in recs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4)")
    parser.add_argument("--generations", type=int, default=8, help="generations per run (default 8)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="eval episodes of the second run (default 10)")
    parser.add_argument("--target", type=float, default=3.0, help="overhead target in %% (default 3)")
    parser.add_argument("--echo", action="store_true", help="show rank 0's progress lines")
    args = parser.parse_args()
    bl.header("bench_overhead: share of generation wall time per phase", sys.argv)

    common = ["--generations", str(args.generations)]
    runs = {}
    for name, extra in (("default", []), (f"eval {args.eval_episodes}", ["--eval-episodes", str(args.eval_episodes)])):
        run = bl.run_evo(args.ranks, [*common, *extra], echo=args.echo)
        print(f"ran: {bl.launched(run)}  ({run.end_unix - run.launch_unix:.0f} s)", flush=True)
        runs[name] = run

    default, evalrun = runs.values()
    cols = [
        ("default, gens>=1", shares(default, 1)),
        ("default, gen 0", shares(default, 0, only=0)),
        (f"eval {args.eval_episodes}, gens>=1", shares(evalrun, 1)),
    ]
    rows = [[p, *(f"{100 * s[p]:.2f}%" for _, s in cols)] for p in bl.PHASES]
    rows.append(["**overhead** (all but train, wait)", *(f"**{100 * s['overhead']:.2f}%**" for _, s in cols)])
    rows.append(["overhead without fitness", *(f"{100 * s['overhead_no_fitness']:.2f}%" for _, s in cols)])
    rows.append(["generation wall (s)", *(f"{s['gen_wall']:.2f}" for _, s in cols)])
    gap_d, gap_share_d = untimed_share(default)
    gap_e, gap_share_e = untimed_share(evalrun)
    rows.append(
        [
            "rank 0 between generations (untimed)",
            f"{1e3 * gap_d:.0f} ms = {100 * gap_share_d:.2f}%",
            "n/a",
            f"{1e3 * gap_e:.0f} ms = {100 * gap_share_e:.2f}%",
        ]
    )
    print()
    print(f"Share of generation wall time, mean over {args.ranks} ranks and generations:")
    print()
    print(bl.table(["phase", *(name for name, _ in cols)], rows))

    head = cols[0][1]["overhead"] * 100
    head_all = head + 100 * gap_share_d
    ev = cols[2][1]
    champ = default.champion
    run_wall = default.end_unix - default.launch_unix
    champ_share = float(champ.get("wall_s", 0.0)) / run_wall
    print()
    print(
        bl.table(
            ["figure", "measured", "target", "verdict"],
            [
                [
                    "overhead, defaults, gens>=1",
                    f"{head:.2f}%",
                    f"<= {args.target:g}%",
                    bl.verdict(head <= args.target),
                ],
                [
                    "same + rank 0's untimed time between generations",
                    f"{head_all:.2f}%",
                    f"<= {args.target:g}%",
                    bl.verdict(head_all <= args.target),
                ],
                [
                    f"overhead with --eval-episodes {args.eval_episodes}, gens>=1",
                    f"{100 * ev['overhead']:.2f}%",
                    "(reported)",
                    "",
                ],
                [
                    f"  of which fitness (the {args.eval_episodes} eval episodes)",
                    f"{100 * ev['fitness']:.2f}%",
                    "(reported)",
                    "",
                ],
                [
                    f"final evaluation (champion phase, {champ.get('episodes', 0)} episodes x "
                    f"{len(champ.get('candidates', []))} candidates), share of the run's wall",
                    f"{100 * champ_share:.2f}% ({champ.get('wall_s', 0.0):.2f} s of {run_wall:.0f} s)",
                    "(reported)",
                    "",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
