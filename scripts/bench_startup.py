"""Start-up time and memory of evo_mpi ranks vs a plain stable-baselines3 PPO process.

1. Launches ``mpiexec -n 4 python -m evo_mpi.run --generations 1
   --steps-per-generation 2048`` (CartPole-v1, evo_mpi's defaults otherwise:
   8 envs x 256 steps, [64, 64] nets, 1 torch thread) and reports the time from
   launch (a timestamp taken just before ``mpiexec`` starts) to
   ``first_train_unix`` (when a rank starts its first training step; max and
   min over ranks), and each rank's ``peak_rss_mb`` (``ru_maxrss`` after that
   generation: training, fitness, exploit, checkpoint).
2. References, each a fresh ``python`` process that imports torch and SB3,
   builds the same PPO (``make_vec_env('CartPole-v1', n_envs=8)``,
   ``n_steps=256``, ``net_arch=[64, 64]``, 1 torch thread), records the time
   when ``learn`` starts, learns the same 2048 steps, and reports
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss``:

   * plain SB3, alone (the memory reference);
   * plain SB3, 4 processes started at once (start-up on the same contended cores);
   * plain SB3 + ``mpi4py`` under ``mpiexec -n 4`` (what MPI itself adds);
   * plain SB3 + SB3's TensorBoard logger (what evo_mpi's per-member TensorBoard adds).

Target: every rank's peak RSS <= 1.2 x the plain SB3 process. Start-up has no
target; it is reported against the 4-process references.

    python scripts/bench_startup.py                # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

import benchlib as bl

STEPS = 2048

#: The reference process: argv[1] is a JSON object {"mpi": bool, "tb": bool, "steps": int}.
REFERENCE = r"""
import json, os, resource, shutil, sys, tempfile, time
opts = json.loads(sys.argv[1])
import torch
torch.set_num_threads(1)
if opts["mpi"]:
    from mpi4py import MPI
    MPI.COMM_WORLD.Barrier()
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
model = PPO("MlpPolicy", env, n_steps=256, policy_kwargs={"net_arch": [64, 64]}, seed=0, device="cpu", verbose=0)
if opts["tb"]:
    from stable_baselines3.common.logger import configure
    tb_dir = tempfile.mkdtemp(prefix="evo-bench-tb-")
    model.set_logger(configure(tb_dir, ["tensorboard"]))
t_learn = time.time()
model.learn(opts["steps"])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if opts["tb"]:
    model.logger.close()
    shutil.rmtree(tb_dir, ignore_errors=True)
print(json.dumps({"t_learn": t_learn, "rss_mb": rss}), flush=True)
"""


def reference(copies: int = 1, mpi: bool = False, tb: bool = False) -> tuple[float, list[dict[str, float]]]:
    """Launch ``copies`` reference processes at once (under ``mpiexec -n copies`` with ``mpi``)."""
    opts = json.dumps({"mpi": mpi, "tb": tb, "steps": STEPS})
    cmd = [sys.executable, "-c", REFERENCE, opts]
    env = bl.child_env()
    launch = time.time()
    if mpi:
        procs = [subprocess.Popen([bl.mpiexec(), "-n", str(copies), *cmd], stdout=subprocess.PIPE, text=True, env=env)]
    else:
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"reference process failed ({proc.returncode}): {out}")
        # ranks under mpiexec can interleave their lines: pick every {...} object
        results.extend(json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", out))
    if len(results) != copies:
        raise SystemExit(f"expected {copies} reference results, got {results}")
    return launch, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4)")
    parser.add_argument("--target", type=float, default=1.2, help="RSS ratio target (default 1.2)")
    parser.add_argument("--echo", action="store_true", help="show rank 0's progress lines")
    args = parser.parse_args()
    bl.header("bench_startup: time to first training step and peak RSS per rank", sys.argv)

    run = bl.run_evo(args.ranks, ["--generations", "1", "--steps-per-generation", str(STEPS)], echo=args.echo)
    print(f"ran: {bl.launched(run)}  ({run.end_unix - run.launch_unix:.1f} s)", flush=True)
    recs = run.by_rank()
    first = [recs[r][0]["first_train_unix"] - run.launch_unix for r in recs]
    header_line = next(t for t, line in run.lines if line.startswith("evo-mpi:")) - run.launch_unix

    refs = {}
    for label, copies, mpi, tb in (
        ("plain SB3, 1 process", 1, False, False),
        (f"plain SB3, {args.ranks} processes at once", args.ranks, False, False),
        (f"plain SB3 + mpi4py, mpiexec -n {args.ranks}", args.ranks, True, False),
        ("plain SB3 + TensorBoard logger, 1 process", 1, False, True),
    ):
        launch, results = reference(copies, mpi, tb)
        refs[label] = ([r["t_learn"] - launch for r in results], [r["rss_mb"] for r in results])
        print(f"ran: reference '{label}'", flush=True)

    print()
    print("Start-up: seconds from launch to the first training step (max / min over processes):")
    print()
    rows = [
        [f"evo_mpi, mpiexec -n {args.ranks}", f"{max(first):.2f}", f"{min(first):.2f}"],
        ["  (rank 0's 'evo-mpi: N members ...' line arrived)", f"{header_line:.2f}", ""],
    ]
    rows += [[label, f"{max(t):.2f}", f"{min(t):.2f}"] for label, (t, _) in refs.items()]
    print(bl.table(["process(es)", "max s", "min s"], rows))

    plain = refs["plain SB3, 1 process"][1][0]
    print()
    print(f"Peak RSS (ru_maxrss) after {STEPS} training steps, vs plain SB3 ({plain:.0f} MB):")
    print()
    rows = []
    worst = 0.0
    for rank, rank_recs in recs.items():
        rss = rank_recs[-1]["peak_rss_mb"]
        worst = max(worst, rss / plain)
        rows.append(
            [
                f"evo_mpi rank {rank}",
                f"{rss:.0f}",
                f"{rss / plain:.2f}",
                f"<= {args.target:g}: {bl.verdict(rss / plain <= args.target)}",
            ]
        )
    for label, (_, rss_list) in refs.items():
        rss = max(rss_list)
        rows.append([f"{label} (max)", f"{rss:.0f}", f"{rss / plain:.2f}", "(reference)"])
    print(bl.table(["process", "peak RSS MB", "x plain SB3", "target"], rows))
    print()
    print(f"worst rank: {worst:.2f} x plain SB3 (target <= {args.target:g}): {bl.verdict(worst <= args.target)}")


if __name__ == "__main__":
    main()
