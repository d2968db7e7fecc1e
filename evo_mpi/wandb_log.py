"""Optional Weights & Biases logging (``--wandb-project``; the ``evo-mpi[wandb]`` extra).

Rank 0 holds the whole population's fitness and hyperparameters after each
generation's gather, so one W&B run per PBT run, written by rank 0 alone,
carries both the population curves and every member's: no W&B process per
rank, nothing on the other ranks' critical path. The run id derives from the
run dir, so a resumed run continues the same W&B run. ``WANDB_MODE=offline``
writes it under ``RUN_DIR/wandb`` with no network.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any


def run_id(run_dir: str) -> str:
    """A W&B run id that is the same for every launch on ``run_dir``."""
    return "evo-" + hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:12]


class WandbLogger:
    """One W&B run for a PBT run: population and per-member scalars per generation."""

    def __init__(self, project: str, entity: str, run_dir: str, config: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=project,
            entity=entity or None,
            name=os.path.basename(os.path.abspath(run_dir)),
            id=run_id(run_dir),
            resume="allow",
            dir=run_dir,
            config=dict(config),
        )

    def log(
        self,
        generation: int,
        timesteps: Sequence[int],
        fitness: Sequence[float],
        hparams: Sequence[Mapping[str, Any]],
        exploits: int,
        returns: Sequence[float] | None = None,
    ) -> None:
        """Log one generation (W&B's step is the generation); ``returns``: mean returns when fitness is not."""
        finite = [f for f in fitness if math.isfinite(f)]
        data: dict[str, Any] = {
            "population/best_fitness": max(finite) if finite else math.nan,
            "population/mean_fitness": sum(finite) / len(finite) if finite else math.nan,
            "population/exploits": exploits,
            "population/timesteps": max(timesteps),
        }
        for m, (f, hp) in enumerate(zip(fitness, hparams, strict=True)):
            data[f"member_{m:02d}/fitness"] = f
            data.update({f"member_{m:02d}/{k}": v for k, v in hp.items() if isinstance(v, (int, float))})
        for m, r in enumerate(returns or []):
            data[f"member_{m:02d}/episode_return"] = r
        self.run.log(data, step=generation)

    def close(self) -> None:
        """Finish the W&B run (offline: its files are complete on disk)."""
        self.run.finish()
