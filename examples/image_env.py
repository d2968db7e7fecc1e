"""A small image-observation env for CNN policies: move a dot onto a target in a 36 x 36 picture.

36 x 36 is the smallest picture SB3's NatureCNN (``--policy CnnPolicy``)
accepts. Used by ``scripts/gpu_check.py`` to train CNN members on a GPU::

    mpiexec -n 2 python -m evo_mpi.run --env-id examples.image_env:DotTarget --policy CnnPolicy --device cuda
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

SIZE = 36
#: Moves of actions 0-3: up, down, left, right (in cells of 4 pixels).
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
CELL = 4
GRID = SIZE // CELL


class DotTarget(gymnasium.Env):
    """A 9 x 9 grid drawn as a 36 x 36 x 1 uint8 picture: the agent (255) walks to the target (128).

    Reward +1 on reaching the target (the episode ends), -0.01 per step; at most 50 steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, max_steps: int = 50) -> None:
        self.observation_space = gymnasium.spaces.Box(0, 255, shape=(SIZE, SIZE, 1), dtype=np.uint8)
        self.action_space = gymnasium.spaces.Discrete(4)
        self.max_steps = max_steps
        self.agent = (0, 0)
        self.target = (0, 0)
        self.steps = 0

    def _draw(self) -> np.ndarray:
        picture = np.zeros((SIZE, SIZE, 1), dtype=np.uint8)
        for (r, c), value in ((self.target, 128), (self.agent, 255)):
            picture[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL, 0] = value
        return picture

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Agent and target on two different random cells."""
        super().reset(seed=seed)
        cells = self.np_random.choice(GRID * GRID, size=2, replace=False)
        self.agent, self.target = divmod(int(cells[0]), GRID), divmod(int(cells[1]), GRID)
        self.steps = 0
        return self._draw(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move one cell (walls stop the agent); reaching the target ends the episode."""
        dr, dc = MOVES[int(action)]
        self.agent = (min(GRID - 1, max(0, self.agent[0] + dr)), min(GRID - 1, max(0, self.agent[1] + dc)))
        self.steps += 1
        reached = self.agent == self.target
        reward = 1.0 if reached else -0.01
        return self._draw(), reward, reached, self.steps >= self.max_steps, {}
