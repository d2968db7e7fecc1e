"""Run under ``mpiexec -n 2``: evo_mpi.train with an env factory and a callback that ends the run early.

Usage: api_script.py RUN_DIR. Each rank writes what it saw to RUN_DIR-rank<r>.json.
"""

import json
import sys

import gymnasium

import evo_mpi


def short_cartpole(**kwargs):
    """A factory, not an id: CartPole cut at 25 steps."""
    return gymnasium.make("CartPole-v1", max_episode_steps=25, **kwargs)


seen = []


def stop_after_second(summary: evo_mpi.GenerationSummary) -> bool:
    seen.append([summary.generation, summary.timesteps, summary.fitness, len(summary.hparams)])
    return summary.generation == 1


result = evo_mpi.train(
    env=short_cartpole,
    callback=stop_after_second,
    agents_per_rank=2,
    generations=5,
    steps_per_generation=256,
    n_envs=2,
    n_steps=64,
    search_space={"batch_size": "choice:32,64", "n_epochs": "int:1:2"},
    run_dir=sys.argv[1],
    seed=11,
    echo=None,
)
with open(f"{sys.argv[1]}-rank{result.rank}.json", "w", encoding="utf-8") as fh:
    fh.write(
        json.dumps(
            {
                "rank": result.rank,
                "status": result.status,
                "seen": seen,
                "history": result.history,
                "best": [result.best_member, result.best_fitness],
                "model_steps": int(result.best_model.num_timesteps),
                "env_id": result.config.env_id,
            }
        )
    )
