"""Does a rank that waits for slower peers burn a core? CPU seconds vs wall seconds of ``wait``.

Two real runs, read back from ``RUN_DIR/timings/rank_XXX.jsonl``:

1. ``mpiexec -n 2`` on ``bench_envs:SlowRank0CartPole-v1``: CartPole that
   sleeps ``--sleep-ms`` per env step in rank 0 only (see ``bench_envs.py``),
   so rank 1 finishes training early and waits for rank 0 at every
   generation's sync point.
2. ``mpiexec -n 4`` on plain CartPole-v1 on this machine's cores (4 ranks on 2
   cores here): members with different hyperparameters (epochs, minibatch
   size) finish at different times and wait for each other while sharing cores.

For each rank: total ``wait`` wall seconds, the CPU seconds its process used
meanwhile (``time.process_time``, all threads), and their ratio = the share of
a core a waiting rank uses. Target <= 10 % of a core. The ``exchange`` phase
(fitness gather + weight transfer, which polls without sleeping for up to
50 ms so MPI can progress) is shown for comparison.

    python scripts/bench_spin.py                    # ~1 minute on 2 cores
    python scripts/bench_spin.py --sleep-ms 4 --generations 3
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl


def rank_rows(run: bl.Run, label: str, min_wait: float) -> tuple[list[list[str]], float, float]:
    """Per-rank wait/exchange CPU vs wall rows; and the totals of ranks that really waited."""
    rows = []
    tot_wall = tot_cpu = 0.0
    for rank, recs in run.by_rank().items():
        w_wall = sum(bl.phase(r, "wait") for r in recs)
        w_cpu = sum(bl.phase(r, "wait", "cpu") for r in recs)
        x_wall = sum(bl.phase(r, "exchange") for r in recs)
        x_cpu = sum(bl.phase(r, "exchange", "cpu") for r in recs)
        t_wall = sum(r["total_wall"] for r in recs)
        waited = w_wall >= min_wait
        if waited:
            tot_wall += w_wall
            tot_cpu += w_cpu
        rows.append(
            [
                label,
                str(rank),
                f"{w_wall:.2f} ({100 * w_wall / t_wall:.0f}% of wall)",
                f"{w_cpu:.3f}",
                f"{100 * w_cpu / w_wall:.2f}%" if waited else f"not judged (waited < {min_wait:g} s)",
                f"{1e3 * x_wall:.0f} / {1e3 * x_cpu:.0f}",
            ]
        )
    return rows, tot_wall, tot_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep-ms", type=float, default=2.0, help="sleep per env step in rank 0 (default 2)")
    parser.add_argument("--generations", type=int, default=6, help="generations per run (default 6)")
    parser.add_argument("--ranks-oversubscribed", type=int, default=4, help="ranks of the second run (default 4)")
    parser.add_argument("--target", type=float, default=10.0, help="target: %% of a core while waiting (default 10)")
    parser.add_argument("--min-wait", type=float, default=0.5, help="ranks that waited less (s) are not judged")
    parser.add_argument("--echo", action="store_true", help="show rank 0's progress lines")
    args = parser.parse_args()
    bl.header("bench_spin: CPU used by ranks while they wait for peers", sys.argv)

    gens = ["--generations", str(args.generations)]
    slow = bl.run_evo(
        2,
        ["--env-id", "bench_envs:SlowRank0CartPole-v1", *gens, "--steps-per-generation", "2048"],
        env={"EVO_BENCH_SLEEP_MS": str(args.sleep_ms)},
        echo=args.echo,
    )
    print(f"ran: EVO_BENCH_SLEEP_MS={args.sleep_ms:g} {bl.launched(slow)}  ({slow.end_unix - slow.launch_unix:.0f} s)")
    over = bl.run_evo(args.ranks_oversubscribed, [*gens, "--steps-per-generation", "4096"], echo=args.echo)
    print(f"ran: {bl.launched(over)}  ({over.end_unix - over.launch_unix:.0f} s)", flush=True)

    rows_a, wall_a, cpu_a = rank_rows(slow, f"2 ranks, rank 0 sleeps {args.sleep_ms:g} ms/step", args.min_wait)
    rows_b, wall_b, cpu_b = rank_rows(over, f"{args.ranks_oversubscribed} ranks, plain CartPole", args.min_wait)
    print()
    print(f"All {args.generations} generations, summed per rank:")
    print()
    print(
        bl.table(
            ["run", "rank", "wait wall s", "wait CPU s", "CPU / wall", "exchange wall / CPU ms"],
            rows_a + rows_b,
        )
    )
    print()
    summary = []
    for label, wall, cpu in (("2 ranks, slow rank 0", wall_a, cpu_a), ("oversubscribed, plain", wall_b, cpu_b)):
        share = 100 * cpu / wall if wall else float("nan")
        summary.append(
            [
                f"{label}: waiting ranks' CPU while waiting",
                f"{share:.2f}% of a core ({cpu:.3f} s CPU in {wall:.2f} s)",
                f"<= {args.target:g}%",
                bl.verdict(share <= args.target),
            ]
        )
    print(bl.table(["figure", "measured", "target", "verdict"], summary))


if __name__ == "__main__":
    main()
