"""Deliberately faulty gymnasium envs for the failure tests (registered on import).

Both misbehave only in the MPI rank named by ``EVO_TEST_BAD_RANK`` (default 1),
so one rank fails while the others are healthy.
"""

import math
import os

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


def _bad_rank() -> bool:
    return os.environ.get("PMI_RANK", "0") == os.environ.get("EVO_TEST_BAD_RANK", "1")


class CrashingCartPole(CartPoleEnv):
    """Raises after 300 steps (an env bug) in the bad rank, and cannot be built again there after that.

    The step's error is a member failure (isolated); the failed rebuild is
    not (the member cannot go on), so it ends the whole job.
    """

    steps = 0

    def __init__(self, **kwargs):
        if _bad_rank() and CrashingCartPole.steps > 300:
            raise RuntimeError("simulated env bug: cannot build the env again")
        super().__init__(**kwargs)

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


class RankShapedCartPole(CartPoleEnv):
    """Observes one extra (constant) value in the bad rank: its members' networks have another input size."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if _bad_rank():
            low = np.append(self.observation_space.low, 0.0).astype(np.float32)
            high = np.append(self.observation_space.high, 1.0).astype(np.float32)
            self.observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)

    def _extend(self, obs):
        return np.append(obs, np.float32(0.5)).astype(np.float32) if _bad_rank() else obs

    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        return self._extend(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return self._extend(obs), reward, terminated, truncated, info


gymnasium.register("RankShapedCartPole-v0", entry_point=RankShapedCartPole, max_episode_steps=500)


class FlakyCartPole(CartPoleEnv):
    """CartPole that raises at its ``fail_step``-th step (counted from construction), in a chosen member.

    ``fail_seeds``: the first reset seeds of the envs that fail (a member's env
    ``i`` is first reset with ``derive_seed(seed, INIT, member) + i``); None: every
    env fails. ``fail_step`` < 0, or ``EVO_TEST_FIXED=1`` in the environment (the user fixed the bug): never.
    ``bad_rank_only``: only in the bad rank.
    A rebuilt env has another seed, so it does not fail again.
    """

    def __init__(self, fail_step=-1, fail_seeds=None, bad_rank_only=False, **kwargs):
        super().__init__(**kwargs)
        self.fail_step, self.fail_seeds = int(fail_step), fail_seeds
        self.bad_rank_only = bad_rank_only
        self.count, self.first_seed = 0, None

    def reset(self, *, seed=None, options=None):
        if self.first_seed is None:
            self.first_seed = seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.count += 1
        chosen = self.fail_seeds is None or self.first_seed in self.fail_seeds
        chosen = chosen and os.environ.get("EVO_TEST_FIXED") != "1" and (_bad_rank() or not self.bad_rank_only)
        if chosen and self.count == self.fail_step:
            raise RuntimeError(f"simulated env bug at step {self.count} (seed {self.first_seed})")
        return super().step(action)


gymnasium.register("FlakyCartPole-v0", entry_point=FlakyCartPole, max_episode_steps=500)
