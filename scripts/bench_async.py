"""Sync vs async PBT at the same total env steps: wall time, utilisation, waiting, snapshot service delay.

Every case runs the default PPO search space on CartPole-v1 twice, ``--mode
sync`` and ``--mode async``, with the same seed and the same population
budget (population x generations x steps per generation env steps), in one
invocation, so the ratios compare like with like on the same machine state.

* wall: from the first training step of any rank to the last rank's end of
  training (start-up and final model writing are the same in both modes and
  left out).
* utilisation: sum over ranks of training CPU seconds / (cores x wall), with
  cores = min(ranks, usable cores).
* straggler: rank 0's env steps cost 5x the others' (busy-waited,
  ``tests/user_envs.py:straggler_cartpole``); the fast ranks' waiting (for
  tickets and snapshots) and their end-of-run drain are reported apart.
* service delay: for every exploit whose donor lives on another rank, the
  time from sending the request to holding the whole snapshot, while the
  owner keeps training (p50 and max).
* projection: utilisation of one member per core at 64, 256 and 1024 members,
  simulated from the per-interval train times measured here (sync: each
  generation waits for its slowest member; async: each core takes the next
  interval when free, until the same budget is spent).

    python scripts/bench_async.py                  # ~8 minutes on 2 cores
    python scripts/bench_async.py --scale          # also -n 16 x 2 and -n 32 tiny async runs (correctness)
    python scripts/bench_async.py --cases 0,3      # only -n 2 and the straggler
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import benchlib as bl
import numpy as np

from evo_mpi.records import step_of

STRAGGLER = ["--env-id", "tests.user_envs:straggler_cartpole", "--env-kwargs", '{"step_cost": 0.0002, "factor": 5}']


def measure(run: bl.Run, mode: str) -> dict[str, Any]:
    """Wall, utilisation and per-rank waiting of one run, from its timings records."""
    cores = min(run.ranks, bl.usable_cores())
    if mode == "async":
        summaries = {r["rank"]: r for r in run.records if r.get("summary")}
        start = min(s["first_train_unix"] for s in summaries.values())
        end = max(s["end_unix"] for s in summaries.values())
        cpu = sum(s["train_cpu"] for s in summaries.values())
        wait = {k: s["wait_s"] / (s["end_unix"] - s["first_train_unix"]) for k, s in summaries.items()}
        drain = {k: s["drain_s"] / (end - start) for k, s in summaries.items()}
    else:
        gens = [r for r in run.records if "generation" in r]
        start = min(r["first_train_unix"] for r in gens)
        end = max(r["unix"] for r in gens)
        cpu = sum(bl.phase(r, "train", "cpu") for r in gens)
        wait = {}
        for r in gens:
            wait[r["rank"]] = wait.get(r["rank"], 0.0) + bl.phase(r, "wait")
        wait = {k: v / (end - start) for k, v in wait.items()}
        drain = {}
    wall = end - start
    return {"wall": wall, "util": cpu / (cores * wall), "wait": wait, "drain": drain}


def service_delays(history: list[dict[str, Any]], per_rank: int) -> list[float]:
    """Fetch times of exploits whose donor is on another rank."""
    return [float(r["fetch_s"]) for r in bl.remote_fetches(history, per_rank)]


def interval_times(history: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[float]:
    """Train CPU seconds of every async interval (one sample of the member-time distribution each)."""
    return [float(r["train_cpu"]) for r in records if "interval" in r and not r.get("summary")]


def simulate(times: list[float], members: int, generations: int, rng: np.random.Generator) -> tuple[float, float]:
    """(sync, async) utilisation of ``members`` cores, each interval's time drawn from ``times``."""
    draws = rng.choice(np.array(times), size=(generations, members))
    sync = float(draws.sum() / (members * draws.max(axis=1).sum()))
    free = np.zeros(members)
    for t in draws.reshape(-1):  # the next ticket goes to the core that is free first
        i = int(np.argmin(free))
        free[i] += t
    return sync, float(draws.sum() / (members * free.max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=12, help="generations (sync) = budget per member (12)")
    parser.add_argument("--steps-per-generation", type=int, default=4096, help="per member (default 4096)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", action="store_true", help="also run tiny async jobs on -n 16 x 2 and -n 32")
    parser.add_argument("--echo", action="store_true", help="show rank 0's progress lines")
    parser.add_argument("--cases", default="0,1,2,3", help="which cases to run, by index (default all: 0,1,2,3)")
    args = parser.parse_args()
    bl.header("bench_async: sync vs async PBT at equal total env steps", sys.argv)
    common = ["--generations", str(args.generations), "--steps-per-generation", str(args.steps_per_generation)]
    common += ["--seed", str(args.seed)]
    cases = [
        ("-n 2", 2, 1, []),
        ("-n 2 --agents-per-rank 4", 2, 4, []),
        ("-n 4", 4, 1, []),
        ("straggler -n 2 (rank 0 env 5x slower)", 2, 1, STRAGGLER),
    ]
    cases = [cases[int(i)] for i in args.cases.split(",")]
    rows, delays, samples, straggler_rows = [], [], [], []
    raw: list[tuple[float, float]] = []  # (async/sync wall, async utilisation) per case, unrounded
    for label, ranks, per_rank, extra in cases:
        result = {}
        for mode in ("sync", "async"):
            run = bl.run_evo(
                ranks, [*common, *extra, "--agents-per-rank", str(per_rank), "--mode", mode], echo=args.echo
            )
            print(f"ran: {bl.launched(run)}  ({run.end_unix - run.launch_unix:.0f} s)", flush=True)
            result[mode] = measure(run, mode)
            if mode == "async":
                delays += service_delays(run.history, per_rank)
                if not extra:
                    samples += interval_times(run.history, run.records)
                steps = sum(r["timesteps"] for r in {h["member"]: h for h in run.history}.values())
                assert steps == ranks * per_rank * args.generations * args.steps_per_generation, steps
        s, a = result["sync"], result["async"]
        ratio = a["wall"] / s["wall"]
        raw.append((ratio, a["util"]))
        rows.append(
            [
                label,
                f"{s['wall']:.1f}",
                f"{a['wall']:.1f}",
                f"{ratio:.3f}",
                f"{s['util']:.3f}",
                f"{a['util']:.3f}",
            ]
        )
        if extra:
            fast = [k for k in a["wait"] if k != 0]
            straggler_rows.append(
                [
                    f"{ratio:.3f} (target <= 0.5: {bl.verdict(ratio <= 0.5)})",
                    f"{100 * max(s['wait'][k] for k in fast):.1f}%",
                    f"{100 * max(a['wait'][k] for k in fast):.2f}% (target <= 2%: "
                    f"{bl.verdict(max(a['wait'][k] for k in fast) <= 0.02)})",
                    f"{100 * max(a['drain'][k] for k in fast):.1f}%",
                ]
            )
    print()
    print(f"Same total env steps per case ({args.generations} x {args.steps_per_generation} per member):")
    print()
    print(bl.table(["case", "sync wall s", "async wall s", "async/sync", "sync util", "async util"], rows))
    plain = [r for r, (_, _, _, extra) in zip(raw, cases, strict=True) if not extra]
    print()
    print(
        f"targets (cases without a straggler): async utilisation >= 0.95: "
        f"{bl.verdict(all(u >= 0.95 for _, u in plain))}; async wall <= 0.8x sync: "
        f"{bl.verdict(all(r <= 0.8 for r, _ in plain))}"
    )
    print()
    print("Straggler (the fast rank 1):")
    print()
    print(
        bl.table(["async/sync wall", "sync wait", "async wait (tickets, fetches)", "async end drain"], straggler_rows)
    )
    if delays:
        print()
        print(
            f"Snapshot service delay while the owner trains ({len(delays)} remote fetches): "
            f"p50 {1000 * statistics.median(delays):.1f} ms, max {1000 * max(delays):.1f} ms"
        )
    if samples:
        rng = np.random.default_rng(args.seed)
        proj = [[str(p), *(f"{u:.2f}" for u in simulate(samples, p, 30, rng))] for p in (16, 64, 256, 1024)]
        print()
        print(
            f"Projection, one member per core, 30 generations, from {len(samples)} measured interval train times "
            f"(CPU s: min {min(samples):.2f}, median {statistics.median(samples):.2f}, max {max(samples):.2f}):"
        )
        print()
        print(bl.table(["members", "sync utilisation", "async utilisation"], proj))
    if args.scale:
        tiny = ["--generations", "2", "--steps-per-generation", "128", "--n-envs", "2", "--n-steps", "64"]
        tiny += ["--mode", "async", "--search-space", "n_epochs=const:1"]
        print()
        for ranks, per_rank in ((16, 2), (32, 1)):
            run = bl.run_evo(ranks, [*tiny, "--agents-per-rank", str(per_rank)], timeout=900, echo=args.echo)
            keys = {(h["member"], step_of(h)) for h in run.history}
            print(
                f"scale: {bl.launched(run)}: exit {run.returncode}, {len(run.history)} records, "
                f"{len(keys)} distinct (member, interval) of {ranks * per_rank * 2} budgeted, "
                f"{run.end_unix - run.launch_unix:.0f} s"
            )


if __name__ == "__main__":
    main()
