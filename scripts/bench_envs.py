"""Benchmark-only gymnasium environments; importing this module registers them.

``SlowRank0CartPole-v1``: CartPole-v1 that sleeps ``EVO_BENCH_SLEEP_MS``
milliseconds (default 2) in every ``step()``, but only in MPI rank 0 (the rank
comes from ``PMI_RANK``, set by MPICH's Hydra; without it the process counts
as rank 0). The other ranks then finish their generation early and wait for
rank 0 at the sync point, which is what ``bench_spin.py`` measures.

Use it as ``--env-id bench_envs:SlowRank0CartPole-v1`` with ``scripts/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


def _rank() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


class SlowRank0CartPole(CartPoleEnv):
    """CartPole whose ``step`` sleeps in rank 0 only."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ms = float(os.environ.get("EVO_BENCH_SLEEP_MS", "2"))
        self.sleep_s = ms / 1000 if _rank() == 0 else 0.0

    def step(self, action: Any) -> Any:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().step(action)


if "SlowRank0CartPole-v1" not in gym.registry:
    gym.register(
        id="SlowRank0CartPole-v1",
        entry_point=SlowRank0CartPole,
        max_episode_steps=500,
        reward_threshold=475.0,
    )
