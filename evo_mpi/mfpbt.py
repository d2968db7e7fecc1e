"""MF-PBT: sub-populations that evolve at different periods, with asymmetric migration.

Multiple-Frequencies PBT (Doulazmi et al. 2025, arXiv 2506.03225; reference code WaelDLZ/MF-PBT,
``hpo/utils/mf_pbt_genetics.py``). Pure numpy, no draws: the moves depend on the fitness and the
generation only.

The population of ``P`` members is cut into ``M = len(periods)`` sub-populations of ``n = P / M``
contiguous ids (sub-population ``p``: ids ``p*n .. p*n+n-1``). Every member trains every generation;
sub-population ``p`` *evolves* after generation ``g`` (0-based) when ``(g + 1) % periods[p] == 0``.
An evolving sub-population, ranked by fitness (best first), is cut into brackets of ``q = n // 4``:
winners (the first ``q``), losers (the last ``q``), open for migration (the ``q`` above the losers) and
survivors (the rest). Then, from the rankings before anything moved:

1. **Exploit inside:** the loser at local rank ``n - q + k`` copies the winner at rank ``k`` (weights
   and hyperparameters), then explores.
2. **Migration:** the open members, best first, meet the other sub-populations' members in global
   rank order (best first). A migrant comes in when its fitness is strictly higher than the open
   member's; only then does the next migrant come up. The migrant's weights always move; its
   hyperparameters move only from a *slower* sub-population (a larger period). From a faster one the
   open member takes the weights with the hyperparameters of its own sub-population's best member,
   so a slow sub-population never imports a greedy short-horizon schedule. Migrants do not explore.

Where this differs from the reference code, and why:

* Ranks are :func:`~evo_mpi.selection.rank_order` (NaN last, ties to the lowest id) and a migrant
  must beat the open member's fitness strictly; the reference compares positions of a non-stable
  argsort, so a tie could migrate (AgileRL's port also treats a tie as no migration).
* ``n`` need only be >= 4 (the reference asks ``n % 4 == 0``): the survivors take the remainder,
  which is the reference's brackets whenever ``n`` divides by 4.
* Explore is evo_mpi's (``--explore perturb`` multiplies by ``--perturb-factors`` or resamples
  inside the prior; ``pb2`` works too); the reference multiplies by 0.8 or 1.25 without bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .selection import rank_order

#: The reference code's periods (generations between evolution steps) of its four sub-populations.
PAPER_PERIODS = (1, 10, 25, 50)


@dataclass(frozen=True)
class Moves:
    """One generation's moves.

    Attributes:
        weights: Member -> the member whose weights (and optimizer state) it takes.
        hparams: Member -> the member whose hyperparameters it takes (same keys as ``weights``).
        explore: The members that explore after copying (the losers of an internal exploit).

    """

    weights: dict[int, int]
    hparams: dict[int, int]
    explore: frozenset[int]


def group_size(population: int, periods: Sequence[int]) -> int:
    """Members per sub-population."""
    return population // len(periods)


def group_of(member: int, population: int, periods: Sequence[int]) -> int:
    """The sub-population a member belongs to (contiguous ids)."""
    return member // group_size(population, periods)


def evolving(generation: int, periods: Sequence[int]) -> list[bool]:
    """Which sub-populations evolve after ``generation`` (0-based)."""
    return [(generation + 1) % period == 0 for period in periods]


def moves(fitness: np.ndarray, periods: Sequence[int], generation: int) -> Moves:
    """The moves after ``generation``: exploit inside every evolving sub-population, then migration into it."""
    fit = np.asarray(fitness, dtype=np.float64)
    n = group_size(fit.size, periods)
    q = n // 4
    order = [int(m) for m in rank_order(fit)]
    weights: dict[int, int] = {}
    hparams: dict[int, int] = {}
    explore: set[int] = set()
    due = evolving(generation, periods)
    local = {p: [m for m in order if m // n == p] for p in range(len(periods))}
    for p in (p for p in range(len(periods)) if due[p]):  # 1. exploit inside, winners to losers by rank
        ranked = local[p]
        for k in range(q):
            loser, donor = ranked[n - q + k], ranked[k]
            if np.isfinite(fit[donor]):
                weights[loser] = hparams[loser] = donor
                explore.add(loser)
    for p in (p for p in range(len(periods)) if due[p]):  # 2. migration into the open bracket
        ranked = local[p]
        migrants = [m for m in order if m // n != p and np.isfinite(fit[m])]
        j = 0
        for member in ranked[n - 2 * q : n - q]:
            if j >= len(migrants):
                break
            migrant = migrants[j]
            if np.isfinite(fit[member]) and not fit[migrant] > fit[member]:
                continue
            weights[member] = migrant
            source = periods[migrant // n]
            hparams[member] = migrant if source > periods[p] else (ranked[0] if source < periods[p] else member)
            j += 1
    return Moves(weights, hparams, frozenset(explore))


def check(population: int, periods: Sequence[int]) -> list[str]:
    """Problems with ``--mfpbt-periods`` for a population (each naming the value); empty when fine."""
    text = ",".join(map(str, periods)) or "nothing"
    if not periods:
        return ["--mfpbt-periods is empty: give one period (generations) per sub-population, e.g. 1,10"]
    problems = []
    if any(p < 1 for p in periods):
        problems.append(f"--mfpbt-periods {text}: every period must be >= 1 generation")
    if list(periods) != sorted(set(periods)):
        problems.append(f"--mfpbt-periods {text}: periods must be distinct and increasing (fastest first)")
    if population % len(periods):
        problems.append(
            f"--selection mfpbt: a population of {population} does not divide into {len(periods)} sub-populations "
            f"(--mfpbt-periods {text}); choose a population that is a multiple of {len(periods)}"
        )
    elif population // len(periods) < 4:
        problems.append(
            f"--selection mfpbt: sub-populations of {population // len(periods)} ({population} members / "
            f"{len(periods)} periods) are too small; MF-PBT's brackets need >= 4 members each"
        )
    return problems


__all__ = ["PAPER_PERIODS", "Moves", "check", "evolving", "group_of", "group_size", "moves"]
