"""How hyperparameter values reach SB3, shared by the algorithm modules.

SB3 reads some values only through objects it builds once at set-up (the
learning-rate and clip-range schedules, the rollout buffer's gamma, DQN's
epsilon schedule); setting the model's attribute later changes nothing. Each
applier here sets the value where SB3 actually reads it. SB3 is imported
inside the appliers so that the registry stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import Apply

if TYPE_CHECKING:
    import torch
    from stable_baselines3.common.base_class import BaseAlgorithm


def optimizers(model: BaseAlgorithm) -> list[torch.optim.Optimizer]:
    """Every optimizer of ``model`` (policy, actor, critic, entropy coefficient), in SB3's save order."""
    import torch
    from stable_baselines3.common.save_util import recursive_getattr

    names, _ = model._get_torch_save_params()
    found = [recursive_getattr(model, n) for n in names]
    return [o for o in found if isinstance(o, torch.optim.Optimizer)]


class Linear:
    """``--schedules NAME=linear``: ``start`` at the first step, decaying linearly to 0 at the end of the budget.

    SB3 calls a schedule with the progress remaining (1 at the start, 0 at
    the end; evo_mpi measures it against the run's steps per member). A class,
    not a closure, so that saved models can be loaded.
    """

    def __init__(self, start: float) -> None:
        self.start = float(start)

    def __call__(self, progress_remaining: float) -> float:
        return self.start * float(progress_remaining)

    def __repr__(self) -> str:
        return f"Linear({self.start})"


def set_learning_rate(model: Any, value: Any) -> None:
    """Lr goes through ``lr_schedule`` (rebuilt from ``learning_rate``) and every optimizer's param groups.

    ``value`` is a number or a schedule (:class:`Linear`).
    """
    from stable_baselines3.common.utils import update_learning_rate

    model.learning_rate = value if callable(value) else float(value)
    model._setup_lr_schedule()
    for opt in optimizers(model):
        update_learning_rate(opt, float(model.lr_schedule(model._current_progress_remaining)))


def set_clip_range(model: Any, value: Any) -> None:
    """PPO calls ``self.clip_range(progress)`` in ``train()``: it must stay a schedule (``value`` may be one)."""
    from stable_baselines3.common.utils import FloatSchedule

    model.clip_range = value if callable(value) else FloatSchedule(float(value))


def set_buffer_float(name: str) -> Apply:
    """Gamma / gae_lambda are copied into the rollout buffer at set-up; GAE reads the buffer's copy."""

    def apply(model: Any, value: Any) -> None:
        setattr(model, name, float(value))
        setattr(model.rollout_buffer, name, float(value))

    return apply


def set_attr(name: str, cast: Callable[[Any], Any]) -> Apply:
    """For values SB3 reads from the model on every ``train()`` / ``collect_rollouts()`` call."""

    def apply(model: Any, value: Any) -> None:
        setattr(model, name, cast(value))

    return apply


def set_action_noise(model: Any, value: Any) -> None:
    """Gaussian exploration noise in the policy's [-1, 1] action scale; ``learn()`` vectorises it."""
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise

    dim = int(np.prod(model.action_space.shape or (1,)))
    model.action_noise = NormalActionNoise(np.zeros(dim), float(value) * np.ones(dim))


def set_exploration_final_eps(model: Any, value: Any) -> None:
    """DQN reads epsilon from ``exploration_schedule``, built from ``exploration_final_eps`` at set-up."""
    from stable_baselines3.common.utils import LinearSchedule

    model.exploration_final_eps = float(value)
    model.exploration_schedule = LinearSchedule(model.exploration_initial_eps, float(value), model.exploration_fraction)
    model.exploration_rate = model.exploration_schedule(model._current_progress_remaining)


#: Appliers every on-policy (PPO, A2C) algorithm shares.
ON_POLICY: dict[str, Apply] = {
    "learning_rate": set_learning_rate,
    "gamma": set_buffer_float("gamma"),
    "gae_lambda": set_buffer_float("gae_lambda"),
    "ent_coef": set_attr("ent_coef", float),
    "vf_coef": set_attr("vf_coef", float),
    "max_grad_norm": set_attr("max_grad_norm", float),
}

#: Appliers every off-policy (SAC, TD3, DDPG, DQN) algorithm shares.
OFF_POLICY: dict[str, Apply] = {
    "learning_rate": set_learning_rate,
    "gamma": set_attr("gamma", float),
    "tau": set_attr("tau", float),
    "batch_size": set_attr("batch_size", int),
    "gradient_steps": set_attr("gradient_steps", int),
}

#: Priors most algorithms start from.
RL_SPACE = {"learning_rate": "loguniform:1e-4:3e-3", "gamma": "uniform:0.95:0.9999"}
ACTOR_CRITIC_SPACE = {**RL_SPACE, "tau": "loguniform:0.001:0.05", "batch_size": "choice:64,128,256,512"}
#: Action spaces of algorithms with a stochastic categorical or Gaussian policy.
ANY_ACTION = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")
