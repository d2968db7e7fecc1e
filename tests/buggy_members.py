"""A custom (non-SB3) member whose fitness raises once, for the member-failure tests."""

from collections.abc import Mapping
from typing import Any

from evo_mpi.config import Config
from evo_mpi.torch_member import TorchMember
from examples.custom_trainer import SineRegression

#: (member, generation) whose fitness measurement raises.
FAILING = (1, 1)


class FlakySineRegression(SineRegression):
    """The example trainer; its fitness raises in generation 1 of member 1; recover() says it ran."""

    def fitness(self, generation: int) -> float:
        if (self.id, generation) == FAILING:
            raise ValueError(f"simulated validation bug in member {self.id}")
        return super().fitness(generation)

    def recover(self, step: int) -> None:
        print(f"test: member {self.id} recovered after step {step}", flush=True)


def make_member(member_id: int, cfg: Config, hparams: Mapping[str, Any], tb_dir: str | None) -> TorchMember:
    return FlakySineRegression(member_id, cfg, hparams, tb_dir)
