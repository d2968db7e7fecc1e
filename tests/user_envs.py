"""User-defined envs for the ``module:Class`` / ``module:factory`` tests (nothing registered)."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.wrappers import TimeLimit


class Corridor(gymnasium.Env):
    """Walk right along a corridor of ``length`` cells: reward -1 per step, episode ends at the far end."""

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.position = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position / self.length], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action):
        self.position = max(0, self.position + (1 if action == 1 else -1))
        done = self.position >= self.length
        return self._obs(), -1.0, done, False, {}


def short_cartpole(max_episode_steps: int = 500) -> gymnasium.Env:
    """CartPole whose episodes are cut at ``max_episode_steps`` (a factory taking env kwargs)."""
    return TimeLimit(CartPoleEnv(), max_episode_steps=max_episode_steps)


class StragglerCartPole(CartPoleEnv):
    """CartPole with a busy-waited cost per step (``step_cost`` s), ``factor`` times higher on MPI rank 0.

    Busy-waiting, not sleeping: a slow node's steps cost CPU time.
    """

    def __init__(self, step_cost: float = 1e-4, factor: float = 5.0, **kwargs) -> None:
        super().__init__(**kwargs)
        import os

        rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
        self.cost = step_cost * (factor if rank == "0" else 1.0)

    def step(self, action):
        import time

        end = time.perf_counter() + self.cost
        out = super().step(action)
        while time.perf_counter() < end:
            pass
        return out


def straggler_cartpole(step_cost: float = 1e-4, factor: float = 5.0) -> gymnasium.Env:
    """:class:`StragglerCartPole` with CartPole's 500-step episodes."""
    return TimeLimit(StragglerCartPole(step_cost=step_cost, factor=factor), max_episode_steps=500)


class SeedLogCartPole(CartPoleEnv):
    """CartPole that appends every seed it is reset with (not the unseeded resets) to the file ``log``."""

    def __init__(self, log: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log = log

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            with open(self.log, "a", encoding="utf-8") as fh:
                fh.write(f"{seed}\n")
        return super().reset(seed=seed, options=options)


def seed_log_cartpole(log: str, max_episode_steps: int = 200) -> gymnasium.Env:
    """:class:`SeedLogCartPole` with episodes cut at ``max_episode_steps``."""
    return TimeLimit(SeedLogCartPole(log), max_episode_steps=max_episode_steps)


class FixedLength(gymnasium.Env):
    """Every episode lasts exactly ``length`` steps with reward 1 per step, so every return is ``length``
    (with ``bonus``, between ``length`` and ``length + 0.5``).

    The observation is the elapsed fraction and a draw from the env's own RNG (``np_random``), so a
    rebuilt episode matches only if its RNG was restored exactly. With ``entropy=True`` the draw comes
    from fresh OS entropy instead: the episode cannot be rebuilt.
    """

    def __init__(self, length: int = 300, entropy: bool = False, bonus: bool = False) -> None:
        self.length, self.entropy, self.bonus = length, entropy, bonus
        self.ones = 0
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        rng = np.random.default_rng() if self.entropy else self.np_random
        return np.array([self.t / self.length, rng.uniform()], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = self.ones = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.ones += int(action == 1)
        done = self.t >= self.length
        # bonus: the last step adds half the episode's share of action 1, so members' returns differ
        # (a return in [length, length + 0.5]) while every episode still lasts exactly length steps
        extra = 0.5 * self.ones / self.length if self.bonus and done else 0.0
        return self._obs(), 1.0 + extra, done, False, {}


class ScoredCartPole(gymnasium.Wrapper):
    """CartPole whose final info has ``score`` = episode length mod 7: an objective that is not the return.

    With ``only_seed0`` the score appears only in episodes reset with seed 0 (the first one validation
    tries), so training, which uses other seeds, never sees it.
    """

    def __init__(self, only_seed0: bool = False) -> None:
        super().__init__(TimeLimit(CartPoleEnv(), max_episode_steps=500))
        self.only_seed0, self.seeded0, self.steps = only_seed0, False, 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.seeded0 = seed == 0
        self.steps = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if (terminated or truncated) and (self.seeded0 or not self.only_seed0):
            info = {**info, "score": float(self.steps % 7)}
        return obs, reward, terminated, truncated, info
