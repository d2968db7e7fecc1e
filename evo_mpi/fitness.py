"""A member's fitness and why it is missing (pure: no MPI, torch or SB3), for both schedulers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .protocol import PBTMember

#: Why a fitness is missing, as ``history.jsonl``'s ``fitness_missing`` and the warning say.
NO_EPISODE, DIVERGED = "no completed episode yet", "diverged"


class ObjectiveMissing(ValueError):
    """``--fitness info:KEY`` with a key that no ended episode's info has: a configuration error, not a failure."""


def missing_reason(fitness: float, episodes: int, diverged: bool) -> str | None:
    """Why ``fitness`` is not finite: the member diverged, or it has no completed episode yet (None: it is finite)."""
    if math.isfinite(fitness):
        return None
    if diverged:
        return DIVERGED
    return NO_EPISODE if episodes == 0 else "non-finite"


def mean_finite(values: list[float]) -> float:
    """The mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def fitness_call(
    member: PBTMember, step: int, missing: list[Exception] | None = None
) -> Callable[[Callable[[], bool]], float]:
    """``member.fitness(step)`` as a call for :meth:`~evo_mpi.scheduler.EngineBase._attempt` (fitness takes no poll).

    With ``missing``, an :class:`ObjectiveMissing` is noted there (fitness NaN) instead of
    failing the member: the caller stops the run as a configuration error.
    """

    def call(_poll: Callable[[], bool]) -> float:
        try:
            return member.fitness(step)
        except ObjectiveMissing as exc:
            if missing is None:
                raise
            missing.append(exc)
            return math.nan

    return call


def missing_fitness_lines(when: str, reasons: dict[int, str | None]) -> list[str]:
    """The lines saying which members have no fitness and why: no completed episode yet is not divergence."""
    lines = []
    waiting = [m for m, r in reasons.items() if r == NO_EPISODE]
    if waiting:
        lines.append(
            f"note: {when}: no completed episode yet for member(s) {waiting}: fitness NaN, ranked last "
            "(their episodes are still running)"
        )
    for reason, text in ((DIVERGED, "diverged (non-finite weights)"), ("non-finite", "non-finite fitness")):
        hit = [m for m, r in reasons.items() if r == reason]
        if hit:
            lines.append(f"warning: {when}: {text} for member(s) {hit}; ranked last, replaced at the next exploit")
    return lines
