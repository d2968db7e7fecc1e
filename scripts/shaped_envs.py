"""A task whose shaped reward misleads: the study's case for ``--fitness info:KEY`` (scripts/defaults_study.py).

``shaped_acrobot``: Acrobot-v1 (reward -1 per step until the tip swings above the line) plus a height
bonus of ``bonus * (height + 2) / 4`` per step. With the default 1.5 a step above two thirds of the
way up pays more than it costs, so hovering just below the line beats finishing: the shaped return
rewards what the task does not want. Each episode's final info holds ``task_return``, the unshaped
return (minus the steps to the goal), the true objective.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np


class ShapedAcrobot(gymnasium.Wrapper):  # type: ignore[type-arg]
    """Acrobot-v1 with a height bonus; ``info["task_return"]`` at the episode's end is the unshaped return."""

    def __init__(self, bonus: float = 1.5) -> None:
        super().__init__(gymnasium.make("Acrobot-v1"))
        self.bonus = bonus
        self.task_return = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.task_return = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.task_return += float(reward)
        cos1, sin1, cos2, sin2 = (float(x) for x in obs[:4])
        height = -cos1 - (cos1 * cos2 - sin1 * sin2)  # the tip's height, -2 (down) to 2 (up)
        shaped = float(reward) + self.bonus * (height + 2.0) / 4.0
        if terminated or truncated:
            info = {**info, "task_return": self.task_return}
        return obs, float(np.float32(shaped)), terminated, truncated, info


def shaped_acrobot(bonus: float = 1.5) -> gymnasium.Env:  # type: ignore[type-arg]
    """The factory ``--env-id shaped_envs:shaped_acrobot`` names (with this folder on PYTHONPATH)."""
    return ShapedAcrobot(bonus)
