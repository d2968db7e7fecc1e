"""What the API and the engines hand each other: how a run ended, a generation's summary for the
callback, and what a launch gives a scheduler besides the configuration (:class:`RunContext`).

A leaf module (standard library only), so that :mod:`evo_mpi.engine` and
:mod:`evo_mpi.async_engine` need not import :mod:`evo_mpi.api`, which runs them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol import MemberFactory


class Status(str, enum.Enum):
    """How a run ended; each member is its string (``Status.FINISHED == "finished"``, JSON ``"finished"``)."""

    #: The whole budget was spent; final models written.
    FINISHED = "finished"
    #: The callback ended the run early; final models written.
    STOPPED_BY_CALLBACK = "callback"
    #: ``time_limit`` ended the run early; final models written.
    TIME_LIMIT = "time_limit"
    #: ``target_fitness`` was reached; final models written.
    TARGET_REACHED = "target"
    #: A stop signal arrived; the checkpoint is on disk, resume the run.
    INTERRUPTED = "interrupted"
    #: Member failures ended the run (all at once, or more than ``max_failures``): final models of the
    #: healthy members written, no ``best.zip``; the last checkpoint precedes the failures (resumable).
    FAILED = "failed"
    #: The run dir held a finished run; nothing ran.
    ALREADY_FINISHED = "already"

    def __str__(self) -> str:
        """The plain string, so that printing a status prints ``finished``."""
        return str(self.value)

    def __format__(self, spec: str) -> str:
        """Format as the plain string (f-strings too, on every Python version)."""
        return format(str(self.value), spec)


@dataclass(frozen=True)
class GenerationSummary:
    """What a per-generation callback receives (the same on every rank).

    Attributes:
        generation: 0-based generation that just finished training and evaluation.
        generations: The run's number of generations.
        timesteps: Env steps each member has trained so far.
        fitness: Each member's fitness (NaN when not finite).
        hparams: Each member's hyperparameters during this generation.

    """

    generation: int
    generations: int
    timesteps: list[int]
    fitness: list[float]
    hparams: list[dict[str, Any]]

    @property
    def best(self) -> float:
        """The best finite fitness (NaN if none is finite)."""
        finite = [f for f in self.fitness if math.isfinite(f)]
        return max(finite) if finite else math.nan


#: ``callback(summary)``: return True to end the run after this generation (final models are written).
Callback = Callable[[GenerationSummary], "bool | None"]

__all__ = ["Callback", "GenerationSummary", "Status"]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunContext:
    """What a launch hands a scheduler besides the configuration: the same for both modes.

    Attributes:
        echo: Where rank 0's lines go (the other ranks' are dropped).
        should_stop: Polled between and inside steps: True once a stop signal arrived.
        env_factory: The user's env factory (None: ``cfg.env_id``); the final evaluation builds its env with it.
        member_factory: The user's member factory (None: ``--member`` or the SB3 adapter).
        callback: Sync mode's per-generation callback (async mode has none).
        deadline: ``time.monotonic()`` by which the launch must have written its final models (``--time-limit``).
        device: The torch device of this rank's SB3 members (``--device`` resolved for this rank).

    """

    echo: Callable[[str], None] = print
    should_stop: Callable[[], bool] = _never
    env_factory: Callable[..., Any] | None = None
    member_factory: MemberFactory | None = None
    callback: Callback | None = None
    deadline: float | None = None
    device: str = "cpu"
