"""Episodes that survive checkpoints: record what rebuilds the running episode, rebuild it on resume.

A member's envs keep running across generations, intervals and exploits (the
PBT paper's rule: exploit replaces weights and hyperparameters, not the world
the agent acts in). To resume such a run exactly without pickling an env,
:class:`EpisodeRecorder` keeps, per env, what its running episode was started
from (the seed passed to ``reset`` or, for an unseeded reset, the env's numpy
``bit_generator.state``, a plain dict of ints) plus every action taken since.
On resume :meth:`EpisodeRecorder.rebuild` restores that, resets, re-steps the
actions and checks the observation against the saved one bit for bit.

Gymnasium's classic-control, Box2D and MuJoCo envs are deterministic given
these. An env that is not (its own RNG, wall clock, external state) fails the
check, and the caller starts a fresh episode instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

#: Longest running episode that is recorded; a longer one cannot be rebuilt (bounds memory and checkpoints).
MAX_RECORDED_STEPS = 100_000


#: Key of the objective's sample in an episode record (SB3's ``ep_info_buffer``), beside ``r`` and ``l``.
OBJECTIVE = "o"


def objective_value(value: Any) -> float:
    """An ``info[KEY]`` value as a float sample (bools count 0/1; absent or not a number: NaN)."""
    try:
        return float(value) if value is not None and np.ndim(value) == 0 else math.nan
    except (TypeError, ValueError):
        return math.nan


def obs_arrays(obs: Any) -> list[np.ndarray]:
    """An observation as a list of arrays (a dict observation by sorted key)."""
    if isinstance(obs, Mapping):
        return [np.asarray(obs[k]) for k in sorted(obs)]
    return [np.asarray(obs)]


def same_arrays(xs: list[np.ndarray], ys: list[np.ndarray]) -> bool:
    """Whether two lists of arrays are equal bit for bit (dtype and shape included)."""
    return len(xs) == len(ys) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(xs, ys, strict=True)
    )


class EpisodeRecorder(gymnasium.Wrapper):  # type: ignore[type-arg]
    """Records the running episode's start (seed or RNG state) and its actions, so it can be rebuilt."""

    def __init__(self, env: gymnasium.Env, info_key: str | None = None) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        #: ``--fitness info:KEY``: at each episode's end ``info[KEY]`` goes into Monitor's episode record as
        #: :data:`OBJECTIVE` (NaN when absent), where SB3 keeps it with the return.
        self.info_key = info_key
        #: Whether any ended episode's info had ``info_key``; the keys of the last one that lacked it.
        self.key_seen = False
        self.missing_in: list[str] | None = None
        #: ``{"seed": s}``, ``{"rng": state}``, or None when the episode cannot be rebuilt.
        self.start: dict[str, Any] | None = None
        self.options: dict[str, Any] | None = None
        self.actions: list[np.ndarray] = []
        #: The last observation this env returned (from ``reset`` or ``step``).
        self.obs: Any = None
        self.too_long = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset, noting the seed or the RNG state the new episode starts from."""
        start: dict[str, Any] | None
        if seed is not None:
            start = {"seed": int(seed)}
        else:
            rng = getattr(self.env.unwrapped, "_np_random", None)
            start = {"rng": rng.bit_generator.state} if isinstance(rng, np.random.Generator) else None
        if options is not None:
            try:
                json.dumps(options)
            except (TypeError, ValueError):
                start = None  # options we cannot store: this episode cannot be rebuilt
        obs, info = self.env.reset(seed=seed, options=options)
        self.start, self.options, self.actions, self.obs, self.too_long = start, options, [], obs, False
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step, recording the action."""
        out = self.env.step(action)
        info = out[4]
        if self.info_key is not None and "episode" in info:  # Monitor's record: the episode has ended
            value = info.get(self.info_key)
            info["episode"][OBJECTIVE] = objective_value(value)
            self.key_seen = self.key_seen or value is not None
            self.missing_in = sorted(map(str, info)) if value is None else None
        if len(self.actions) < MAX_RECORDED_STEPS:
            self.actions.append(np.array(action, copy=True))
        else:
            self.too_long = True
        self.obs = out[0]
        return out

    # -- checkpoint ----------------------------------------------------------------------------------
    def rebuildable(self) -> bool:
        """Whether the running episode's start and every action are known."""
        return self.start is not None and not self.too_long and self.obs is not None

    def record(self) -> dict[str, Any]:
        """The JSON part of the running episode: how it started and its length so far."""
        return {
            "start": self.start if self.rebuildable() else None,
            "options": self.options,
            "steps": len(self.actions),
        }

    def action_array(self) -> np.ndarray | None:
        """The actions since the reset, stacked (None when there are none)."""
        return np.stack(self.actions) if self.actions else None

    def rebuild(self, record: Mapping[str, Any], actions: np.ndarray | None, obs: list[np.ndarray]) -> str | None:
        """Re-create a recorded episode; None when its observation matches ``obs`` (:func:`obs_arrays`), else why not.

        Steps go to the wrapped env directly, so wrappers above this one
        (VecNormalize, loggers) see nothing; the Monitor below it rebuilds the
        episode's running return, which then counts once, when the episode ends.
        """
        start = record.get("start")
        if start is None:
            return "its running episode was not recorded (unseeded RNG, unstorable options or too long)"
        steps = int(record.get("steps", 0))
        if steps and (actions is None or len(actions) != steps):
            return f"{steps} recorded actions expected, found {0 if actions is None else len(actions)}"
        options = record.get("options")
        if "seed" in start:
            got, _ = self.env.reset(seed=int(start["seed"]), options=options)
        else:
            rng = getattr(self.env.unwrapped, "_np_random", None)
            if not isinstance(rng, np.random.Generator):
                rng = np.random.default_rng()
                self.env.unwrapped._np_random = rng  # type: ignore[attr-defined]
            kind, saved_kind = rng.bit_generator.state["bit_generator"], start["rng"]["bit_generator"]
            if kind != saved_kind:
                return f"its RNG is a {kind}, the record's a {saved_kind}"
            rng.bit_generator.state = start["rng"]
            got, _ = self.env.reset(options=options)
        for i in range(steps):
            assert actions is not None
            got, _, terminated, truncated, _ = self.env.step(actions[i])
            if terminated or truncated:
                return f"the episode ended after {i + 1} of {steps} replayed steps"
        self.start, self.options, self.obs, self.too_long = dict(start), options, got, False
        self.actions = [] if actions is None else [np.array(a, copy=True) for a in actions]
        if not same_arrays(obs_arrays(got), obs):
            return f"the observation after replaying {steps} steps differs from the saved one"
        return None


@dataclass(frozen=True)
class EpisodeRecord:
    """One ended episode as an objective sees it: its return, its length and its final ``info``."""

    return_: float
    length: int
    info: Mapping[str, Any]


#: The info key under which :class:`Objective` publishes its value (``--fitness info:evo_mpi.objective``).
OBJECTIVE_INFO_KEY = "evo_mpi.objective"


class Objective(gymnasium.Wrapper):  # type: ignore[type-arg]
    """Adds ``objective(EpisodeRecord)`` to the final info of every episode (the API's ``objective=``)."""

    def __init__(self, env: gymnasium.Env, objective: Callable[[EpisodeRecord], float]) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.objective = objective
        self.total, self.steps = 0.0, 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset, starting a new episode's count."""
        self.total, self.steps = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step; at the episode's end the objective's value joins the info."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.total += float(reward)
        self.steps += 1
        if terminated or truncated:
            info = {**info, OBJECTIVE_INFO_KEY: float(self.objective(EpisodeRecord(self.total, self.steps, info)))}
        return obs, reward, terminated, truncated, info
