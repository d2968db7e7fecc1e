"""Cost of --share-experience: bytes moved, share of wall time, memory (one invocation).

SAC on Pendulum-v1, 8 members on 2 ranks (``-n 2 --agents-per-rank 4``),
the same seed and budget with and without ``--share-experience``, in sync mode
and in async mode, so every ratio compares runs on the same machine state.

* bytes per interval: what one rank gathers per generation (sync:
  ``shared_bytes`` of its timings records: every member's new replay rows), and
  in async mode what a rank sends per interval.
* share of wall: sync, the ``share`` phase (packing, the ``Allgatherv``,
  appending to the buffers) over each rank's generation wall time; async, the
  time packing and adding rows (``share_s``) over the rank's training wall.
  Target: <= 5 % (sync).
* memory: peak RSS per rank with sharing / without (the buffers hold 8x the
  rows, up to ``--buffer-size``).
* wall: the whole run with sharing / without.

    python scripts/bench_share.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl

MEMBERS_PER_RANK, RANKS = 4, 2


def args(generations: int, steps: int, mode: str, share: bool) -> list[str]:
    out = [
        "--algo", "sac", "--env-id", "Pendulum-v1", "--seed", "3", "--mode", mode,
        "--generations", str(generations), "--steps-per-generation", str(steps), "--n-envs", "8",
        "--buffer-size", "200000", "--agents-per-rank", str(MEMBERS_PER_RANK),
    ]  # fmt: skip
    return [*out, "--share-experience"] if share else out


def sync_figures(run: bl.Run) -> dict[str, float]:
    gens = run.generations()
    share = sum(bl.phase(r, "share") for r in gens)
    wall = sum(r["total_wall"] for r in gens)
    return {
        "bytes": bl.mean(r.get("shared_bytes", 0) for r in gens),
        "share": share / wall,
        "rss": max(r["peak_rss_mb"] for r in gens),
        "wall": run.end_unix - run.launch_unix,
    }


def async_figures(run: bl.Run) -> dict[str, float]:
    summaries = [r for r in run.records if r.get("summary")]
    intervals = sum(s["intervals"] for s in summaries)
    share = sum(s.get("share_s", 0.0) for s in summaries)
    wall = sum(s["end_unix"] - s["first_train_unix"] for s in summaries)
    return {
        "bytes": sum(s.get("shared_bytes", 0) for s in summaries) / max(intervals, 1),
        "share": share / wall,
        "rss": float("nan"),
        "wall": run.end_unix - run.launch_unix,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1024, help="steps per generation per member")
    opts = parser.parse_args(argv)
    bl.header(
        "bench_share: --share-experience cost, SAC Pendulum-v1, 8 members on 2 ranks", ["scripts/bench_share.py", *argv]
    )
    rows = []
    figures = {}
    for mode in ("sync", "async"):
        for share in (False, True):
            run = bl.run_evo(RANKS, args(opts.generations, opts.steps, mode, share), timeout=1200)
            figures[(mode, share)] = (sync_figures if mode == "sync" else async_figures)(run)
            print(f"  {mode} share={share}: {bl.launched(run)}", flush=True)
    for mode in ("sync", "async"):
        on, off = figures[(mode, True)], figures[(mode, False)]
        rows.append(
            [
                mode,
                f"{on['bytes'] / 1e6:.2f} MB",
                f"{100 * on['share']:.2f} %",
                f"{on['rss'] / off['rss']:.2f}" if mode == "sync" else "-",
                f"{on['wall'] / off['wall']:.2f}",
            ]
        )
    print()
    print(bl.table(["mode", "bytes per generation (sync: per rank) / interval (async)", "share of wall",
                    "peak RSS shared/not", "wall shared/not"], rows))  # fmt: skip
    ok = figures[("sync", True)]["share"] <= 0.05
    print(f"\ntarget: sync share of wall <= 5 %: {100 * figures[('sync', True)]['share']:.2f} % -> {bl.verdict(ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
