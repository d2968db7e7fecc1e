"""Cost of rebuilding running episodes on resume, against the cost of training one generation.

For each env, one SB3 member (PPO, the default 8 envs) trains one generation
(``--steps`` env steps) so that its envs hold episodes in flight; its checkpoint
(``checkpoint_tensors`` / ``checkpoint_meta``, as the engine writes them) is
loaded into a fresh member, which re-steps every env's recorded actions and
checks the observation bit for bit (:mod:`evo_mpi.episodes`). Printed per env:
the steps replayed, the rebuild's milliseconds (mean of ``--repeats``
restores), and that time as a share of the generation's training wall time,
both measured in this one invocation.

    python scripts/bench_resume.py                     # ~1 minute on 2 cores
    python scripts/bench_resume.py --envs CartPole-v1,LunarLander-v3,HalfCheetah-v5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.util import find_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import benchlib as bl  # noqa: E402

#: Extras an env needs: skipped (and said so) when the module is missing.
NEEDS = {"LunarLander-v3": "Box2D", "HalfCheetah-v5": "mujoco"}


def measure(env_id: str, steps: int, repeats: int) -> list[str]:
    """One row: steps replayed per member, rebuild ms, generation train s, share."""
    import numpy as np
    import torch

    from evo_mpi import config
    from evo_mpi.member import Member
    from evo_mpi.space import parse_space, sample_hparams

    torch.set_num_threads(1)
    cfg = config.merge({}, {"env_id": env_id, "steps_per_generation": steps})
    hparams = sample_hparams(parse_space(cfg.space_specs), np.random.default_rng(0))
    member = Member(0, cfg, hparams, None)
    t0 = time.perf_counter()
    member.train(steps, 0)
    train_s = time.perf_counter() - t0
    tensors, meta = member.checkpoint_tensors(), member.checkpoint_meta()
    member.close()
    ms, replayed, exact = [], 0, True
    for _ in range(repeats):
        fresh = Member(0, cfg, hparams, None)
        fresh.restore(tensors, meta)
        assert fresh.rebuild_stats is not None
        ms.append(fresh.rebuild_stats["ms"])
        replayed, exact = fresh.rebuild_stats["steps"], exact and fresh.rebuild_stats["exact"]
        fresh.close()
    mean_ms = bl.mean(ms)
    return [
        env_id,
        str(cfg.n_envs),
        str(replayed),
        f"{mean_ms:.1f}",
        f"{1e3 * mean_ms / max(replayed, 1):.1f}",
        f"{train_s:.2f}",
        f"{100 * mean_ms / 1e3 / train_s:.2f}%",
        "yes" if exact else "NO",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="CartPole-v1,Pendulum-v1,Acrobot-v1,LunarLander-v3,HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=8192, help="env steps of the generation (default 8192)")
    parser.add_argument("--repeats", type=int, default=3, help="restores per env (default 3)")
    args = parser.parse_args()
    bl.header("bench_resume: rebuilding running episodes on resume", sys.argv)
    rows = []
    for env_id in args.envs.split(","):
        need = NEEDS.get(env_id)
        if need is not None and find_spec(need) is None:
            print(f"skipped {env_id}: {need} is not installed", flush=True)
            continue
        rows.append(measure(env_id, args.steps, args.repeats))
        print(f"measured {env_id}", flush=True)
    print()
    print(
        bl.table(
            [
                "env",
                "envs",
                "steps replayed",
                "rebuild ms (one member)",
                "us per step",
                "generation train s",
                "rebuild / generation",
                "bit-exact",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
