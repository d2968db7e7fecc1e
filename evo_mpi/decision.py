"""The PBT decision, written once for both engines: who copies whom, and what a member tries next.

Pure numpy: no MPI, torch or SB3 import. The sync engine asks after every
generation with the gathered table, the async engine after every interval with
the latest published records; both describe what they see as a :class:`View`.
The engines keep only timing, communication, moving state and logging.

Every draw comes from a stream named by ``(seed, purpose, step, member)``
(:mod:`evo_mpi.seeding`), so any rank can repeat any decision: sync decides
with ``step`` = the generation, async with the member's interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import mfpbt, seeding
from .arch import draw_kind, draw_weight_noise, mutate_activation, mutate_arch
from .config import Config
from .pb2 import MAX_OBSERVATIONS, KernelParams, Observation, pb2_explore
from .records import Mutation
from .selection import Held, exploit_margin, repair, select
from .space import Prior, Value, explore


@dataclass(frozen=True)
class View:
    """The population as one decision sees it.

    Attributes:
        ids: The members it sees (sync: all; async: those with a published record).
        fitness: Their fitness, by position in ``ids`` (NaN: none).
        returns: Their recent episode returns, the t-test's samples (None: not needed).
        ready: Which of them may copy or be copied (``--ready-after``; None: all).
        failed: Members (ids) whose last generation or interval failed: they copy a healthy donor.

    """

    ids: Sequence[int]
    fitness: np.ndarray
    returns: list[np.ndarray] | None = None
    ready: np.ndarray | None = None
    failed: Sequence[int] = field(default_factory=tuple)


@dataclass(frozen=True)
class Choice:
    """Who copies whom after one decision.

    Attributes:
        donors: Loser -> donor (member ids), failed members included.
        held: Losers the exploit margin kept from copying (they keep their weights and hyperparameters).

    """

    donors: dict[int, int]
    held: dict[int, Held] = field(default_factory=dict)
    #: Losers that take another member's hyperparameters than their donor's (MF-PBT's migrants from a faster
    #: sub-population take their own sub-population's best member's).
    hparams_from: dict[int, int] = field(default_factory=dict)
    #: Losers that copy without exploring (MF-PBT's migrants).
    unexplored: frozenset[int] = frozenset()

    def hparams_source(self, member: int) -> int:
        """Whose hyperparameters ``member`` continues from (itself when it copies nobody)."""
        return self.hparams_from.get(member, self.donors.get(member, member))


def donors(
    cfg: Config, view: View, select_rng: np.random.Generator, repair_rng: np.random.Generator, step: int = 0
) -> Choice:
    """Loser -> donor (member ids): the selection rule, the exploit margin, then every failed member to a donor.

    The margin (``--exploit-margin-std`` / ``--exploit-margin-abs``; not for the t-test, which is its own
    margin) compares positions in ``view``. ``repair_rng`` draws only when a member failed, so the rule's
    draws are the same with or without failures. ``step`` (the generation) matters to MF-PBT only, whose
    sub-populations evolve at their own periods; it sees the whole population (sync mode).
    """
    moves = None
    if cfg.selection == "mfpbt":
        moves = mfpbt.moves(view.fitness, cfg.mfpbt_periods, step)
        donors = dict(moves.weights)
    else:
        donors = select(
            cfg.selection,
            view.fitness,
            select_rng,
            fraction=cfg.truncation_fraction,
            tournament_size=cfg.tournament_size,
            elitism=cfg.elitism,
            returns=view.returns,
            alpha=cfg.ttest_alpha,
            ready=view.ready,
        )
    held: dict[int, Held] = {}
    if cfg.selection != "ttest":
        donors, held = exploit_margin(donors, view.fitness, cfg.exploit_margin_std, cfg.exploit_margin_abs)
    if view.failed:
        positions = [list(view.ids).index(m) for m in view.failed]
        donors = repair(donors, view.fitness, positions, cfg.truncation_fraction, repair_rng)
    ids = view.ids
    hparams_from: dict[int, int] = {}
    unexplored: frozenset[int] = frozenset()
    if moves is not None:  # failed members repaired above copy and explore as with any rule
        hparams_from = {ids[m]: ids[h] for m, h in moves.hparams.items() if m in donors and h != donors[m]}
        unexplored = frozenset(ids[m] for m in donors if m in moves.weights and m not in moves.explore)
    return Choice(
        {ids[loser]: ids[donor] for loser, donor in donors.items()},
        {ids[loser]: Held(ids[h.donor], h.gap, h.margin) for loser, h in held.items() if loser not in donors},
        hparams_from,
        unexplored,
    )


def held_record(held: Held) -> dict[str, Any]:
    """History's ``held`` field: the donor the margin refused, the gap and the margin (NaN: null)."""
    return {
        "donor": held.donor,
        "gap": held.gap if math.isfinite(held.gap) else None,
        "margin": held.margin if math.isfinite(held.margin) else None,
    }


def observe(observations: list[Observation], step: int, hparams: Mapping[str, Value], delta: float | None) -> None:
    """PB2: remember that ``hparams`` changed fitness by ``delta`` over ``step`` (non-finite deltas are skipped)."""
    if delta is not None and math.isfinite(delta):
        observations.append(Observation(float(step), dict(hparams), float(delta)))
        del observations[:-MAX_OBSERVATIONS]


class Explorer:
    """What a member tries after copying a donor (or, with ``--mutate all``, its own): a mutation, then explore."""

    def __init__(self, cfg: Config, space: Mapping[str, Prior], default_activation: str) -> None:
        self.cfg = cfg
        self.space = space
        #: Relative weights of the mutation kinds (``{"hparams": 1.0}``: PBT's explore only, no draw).
        self.weights = cfg.mutation_weights
        self.default_activation = default_activation

    def mutation(self, step: int, m: int, hparams: dict[str, Value]) -> tuple[str, dict[str, Value], Mutation | None]:
        """Which mutation member ``m`` undergoes after ``step``, from ``hparams``.

        Returns ``(kind, new hyperparameters, what it decided)``: for ``hparams``
        the caller runs :meth:`explore` (the hyperparameters come back
        unchanged); the :class:`~evo_mpi.records.Mutation` is what the lineage
        and history keep (None: PBT's explore only, no kind drawn). The draws
        come from their own stream, so the explore rule's draws are the same
        with or without other kinds.
        """
        if self.weights == {"hparams": 1.0}:
            return "hparams", hparams, None
        cfg = self.cfg
        rng = seeding.stream(cfg.seed, seeding.MUTATE, step, m)
        kind = draw_kind(self.weights, rng)
        new = dict(hparams)
        if kind == "arch":
            activation = str(hparams.get("activation_fn", self.default_activation))
            new["net_arch"], op = mutate_arch(hparams["net_arch"], self.space["net_arch"], activation, rng)
            return kind, new, Mutation(kind, arch_op=op)
        if kind == "activation":
            new["activation_fn"] = mutate_activation(hparams["activation_fn"], self.space["activation_fn"], rng)
        elif kind == "weights":
            noise = draw_weight_noise(cfg.weight_mutation_fraction, cfg.weight_mutation_sd, rng)
            return kind, new, Mutation(kind, weight_noise=noise)
        return kind, new, Mutation(kind)

    def explore(
        self,
        step: int,
        m: int,
        hparams: Mapping[str, Value],
        observations: Sequence[Observation],
        kernel: KernelParams | None = None,
        pending: Sequence[Mapping[str, Value]] = (),
    ) -> dict[str, Value]:
        """Member ``m``'s hyperparameters after ``step``, explored from ``hparams`` by the explore rule.

        PB2 chooses with the observations so far (``kernel``: their fitted GP,
        shared by the losers of one generation; ``pending``: the choices already
        made for them); perturb multiplies or resamples.
        """
        cfg = self.cfg
        rng = seeding.stream(cfg.seed, seeding.EXPLORE, step, m)
        if cfg.explore == "pb2":
            return pb2_explore(
                hparams,
                self.space,
                observations,
                float(step + 1),
                rng,
                pending=pending,
                factors=cfg.perturb_factors,
                resample_probability=cfg.resample_probability,
                params=kernel,
            )
        return explore(hparams, self.space, cfg.perturb_factors, cfg.resample_probability, rng)


__all__ = ["Choice", "Explorer", "Held", "View", "donors", "held_record", "observe"]
