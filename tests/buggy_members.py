"""Custom (non-SB3) members that misbehave on purpose, for the member-failure tests."""

import os
from collections.abc import Mapping
from typing import Any

from evo_mpi.config import Config
from evo_mpi.torch_member import TorchMember
from examples.custom_trainer import SineRegression

#: (member, generation) whose fitness measurement raises.
FAILING = (1, 1)


class FlakySineRegression(SineRegression):
    """The example trainer; its fitness raises in generation 1 of member 1; recover() says it ran.

    ``EVO_TEST_REBUILDS_FAIL=N`` in the environment: member 1's first N ``recover`` calls raise too
    (its envs cannot be rebuilt until the N+1-th try; a large N: never).
    """

    rebuilds = 0

    def fitness(self, generation: int) -> float:
        if (self.id, generation) == FAILING:
            raise ValueError(f"simulated validation bug in member {self.id}")
        return super().fitness(generation)

    def recover(self, step: int) -> None:
        if self.id == FAILING[0] and self.rebuilds < int(os.environ.get("EVO_TEST_REBUILDS_FAIL", "0")):
            self.rebuilds += 1
            raise OSError(f"simulated rebuild bug {self.rebuilds} in member {self.id} (step {step})")
        print(f"test: member {self.id} recovered after step {step}", flush=True)


class CheckpointFailingSineRegression(SineRegression):
    """The example trainer whose checkpoint of generation 1 raises in member 1: an error outside training."""

    generation = -1

    def train(self, steps: int, generation: int, should_stop: Any = lambda: False) -> None:
        self.generation = generation
        super().train(steps, generation, should_stop)

    def checkpoint_tensors(self) -> dict[str, Any]:
        if (self.id, self.generation) == FAILING:
            raise OSError(f"simulated full disk in member {self.id}")
        return super().checkpoint_tensors()


def make_member(member_id: int, cfg: Config, hparams: Mapping[str, Any], tb_dir: str | None) -> TorchMember:
    return FlakySineRegression(member_id, cfg, hparams, tb_dir)


def make_checkpoint_failing(member_id: int, cfg: Config, hparams: Mapping[str, Any], tb_dir: str | None) -> TorchMember:
    return CheckpointFailingSineRegression(member_id, cfg, hparams, tb_dir)
