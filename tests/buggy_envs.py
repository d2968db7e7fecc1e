"""Deliberately faulty gymnasium envs for the failure tests (registered on import).

Both misbehave only in the MPI rank named by ``EVO_TEST_BAD_RANK`` (default 1),
so one rank fails while the others are healthy.
"""

import math
import os

import gymnasium
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


def _bad_rank() -> bool:
    return os.environ.get("PMI_RANK", "0") == os.environ.get("EVO_TEST_BAD_RANK", "1")


class CrashingCartPole(CartPoleEnv):
    """Raises after 300 steps (an env bug) in the bad rank."""

    steps = 0

    def step(self, action):
        CrashingCartPole.steps += 1
        if _bad_rank() and CrashingCartPole.steps > 300:
            raise RuntimeError("simulated env bug: physics exploded")
        return super().step(action)


class NanRewardCartPole(CartPoleEnv):
    """Returns NaN rewards for a few steps in the bad rank's first generation."""

    steps = 0

    def step(self, action):
        NanRewardCartPole.steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        if _bad_rank() and 20 <= NanRewardCartPole.steps < 30:
            reward = math.nan
        return obs, reward, terminated, truncated, info


gymnasium.register("CrashingCartPole-v0", entry_point=CrashingCartPole, max_episode_steps=500)
gymnasium.register("NanRewardCartPole-v0", entry_point=NanRewardCartPole, max_episode_steps=500)
