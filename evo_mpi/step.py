"""The PBT step, written once for both schedulers: who copies whom, and what each member trains with next.

Pure (numpy; no MPI, torch or SB3 import). A scheduler describes each member
it sees as a :class:`Seen` and calls :meth:`PBTStep.choose`, then
:meth:`PBTStep.explore` for each member that copied (or, with ``--mutate
all``, for every member). The sync scheduler does both for the whole
population after each generation; the async one for one member after its
interval, and explores from the donor's snapshot once it has arrived (it may
be newer than the record the choice saw).

In the step: ``--ready-after`` (steps trained since the last exploit), the
t-test's samples, failure repair (sync: every failed member copies; async:
a member that failed copies, deciding for itself), the seeded streams of
each decision, the mutation and explore draws, PB2's kernel and pending
choices, MF-PBT's migrants, and the fitness a member's next change is
measured from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import decision, seeding
from .config import Config
from .decision import Choice, Explorer, View
from .pb2 import KernelParams, Observation, fit_observations
from .records import Mutation
from .space import Prior, Value


@dataclass(frozen=True)
class Seen:
    """One member as a decision sees it (sync: this generation's table; async: its latest published row).

    Attributes:
        member: Its id.
        fitness: Its fitness (NaN: missing).
        scores: Its recent scores, the t-test's samples (the objective's with ``--fitness info:KEY``).
        since_exploit: Env steps it trained since its last exploit or its start (None: unknown, ready).
        failed: Its last generation (interval) failed.

    """

    member: int
    fitness: float
    scores: Sequence[float] = ()
    since_exploit: int | None = None
    failed: bool = False


class PBTStep:
    """The decision and explore rules of one run (its config, search space and mutation kinds)."""

    def __init__(self, cfg: Config, space: Mapping[str, Prior], default_activation: str) -> None:
        self.cfg = cfg
        self.space = space
        #: The mutation and explore draws (:mod:`evo_mpi.decision`).
        self.explorer = Explorer(cfg, space, default_activation)

    def ready(self, seen: Sequence[Seen]) -> np.ndarray | None:
        """``--ready-after``: which members may copy or be copied (None: all)."""
        need = self.cfg.ready_after
        if need <= 0:
            return None
        return np.array([s.since_exploit is None or s.since_exploit >= need for s in seen], dtype=bool)

    def choose(self, step: int, seen: Sequence[Seen], deciding: int | None = None) -> Choice:
        """Who copies whom after ``step``, among ``seen`` (in id order).

        ``deciding``: the member an async decision is for (its draws come from ``(step, deciding)``, and
        failed members are repaired only when it is one of them); None: a sync decision for everyone.
        """
        cfg = self.cfg
        scores = [np.array(s.scores, dtype=np.float64) for s in seen] if cfg.selection == "ttest" else None
        failed: list[int] = [s.member for s in seen if s.failed]
        if deciding is not None and deciding not in failed:
            failed = []
        view = View([s.member for s in seen], np.array([s.fitness for s in seen]), scores, self.ready(seen), failed)
        keys = (step,) if deciding is None else (deciding, step)
        select_rng = seeding.stream(cfg.seed, seeding.SELECT, *keys)
        repair_rng = seeding.stream(cfg.seed, seeding.REPAIR, *keys)
        return decision.donors(cfg, view, select_rng, repair_rng, step if deciding is None else 0)

    def kernel(self, observations: Sequence[Observation]) -> KernelParams | None:
        """PB2's GP fitted to ``observations`` (None: not PB2), shared by one decision's explores."""
        return fit_observations(observations, self.space) if self.cfg.explore == "pb2" else None

    def explore(
        self,
        step: int,
        member: int,
        source: dict[str, Value],
        observations: Sequence[Observation] = (),
        kernel: KernelParams | None = None,
        pending: list[dict[str, Value]] | None = None,
        draw_hparams: bool = True,
    ) -> tuple[dict[str, Value] | None, Mutation | None]:
        """What ``member`` trains with after ``step``, from ``source`` (its donor's hyperparameters, or its own).

        Returns ``(hyperparameters, mutation)``. A mutation of the architecture or activation changes
        them itself; otherwise the explore rule does, from ``observations`` with PB2 (``pending``: the
        choices made so far in this decision, which PB2 spreads out; the new one is appended). With
        ``draw_hparams`` False (a sync rank other than 0 under PB2, which receives rank 0's) the
        hyperparameters are None when the explore rule would draw them.
        """
        kind, mutated, mutation = self.explorer.mutation(step, member, source)
        if kind != "hparams":
            return mutated, mutation
        if not draw_hparams:
            return None, mutation
        new = self.explorer.explore(step, member, source, observations, kernel, pending or ())
        if pending is not None:
            pending.append(new)
        return new, mutation


def start_fitness(fitness: np.ndarray, donors: Mapping[int, int]) -> np.ndarray:
    """The fitness each member's next change is measured from (PB2's data): its own, or its donor's if it copied.

    (Async mode takes the donor's fitness from the snapshot it copied, which may be newer than the row seen.)
    """
    start = np.array(fitness, dtype=np.float64)
    for loser, donor in donors.items():
        start[loser] = fitness[donor]
    return start


__all__ = ["PBTStep", "Seen", "start_fitness"]
