"""Exploit planning: which members copy which.

Pure numpy. Given the whole population's fitness and a seeded generator,
every rank computes the same plan ``{loser: winner}``.
"""

from __future__ import annotations

import math

import numpy as np

SELECTIONS = ("truncation", "wta")


def rank_order(fitness: np.ndarray) -> np.ndarray:
    """Member indices from best to worst.

    Higher fitness is better; NaN and +/-inf rank last; ties go to the lowest
    member index.
    """
    fit = np.asarray(fitness, dtype=np.float64)
    finite = np.isfinite(fit)
    key = np.where(finite, -fit, 0.0)
    index = np.arange(fit.size)
    # np.lexsort sorts by the last key first.
    return np.lexsort((index, key, ~finite))


def quantile_size(population: int, fraction: float) -> int:
    """ceil(fraction * population), immune to float noise like 0.3 * 10."""
    return max(1, math.ceil(round(fraction * population, 9)))


def truncation(fitness: np.ndarray, fraction: float, rng: np.random.Generator) -> dict[int, int]:
    """The bottom ceil(q*P) members each copy one drawn uniformly from the top ceil(q*P).

    Only members with finite fitness can be winners; with none, the plan is
    empty. With q = 0.5 and an odd P the median member is in both sets: it
    copies one of the *other* top members (never itself).
    """
    fit = np.asarray(fitness, dtype=np.float64)
    if not 0 < fraction <= 0.5:
        raise ValueError(f"truncation fraction must be in (0, 0.5], got {fraction}")
    order = rank_order(fit)
    n = quantile_size(fit.size, fraction)
    top = [int(m) for m in order[:n] if np.isfinite(fit[m])]
    plan: dict[int, int] = {}
    for loser in sorted(int(m) for m in order[fit.size - n :]):
        choices = [w for w in top if w != loser]
        if choices:
            plan[loser] = choices[int(rng.integers(len(choices)))]
    return plan


def winner_takes_all(fitness: np.ndarray) -> dict[int, int]:
    """Every member except the best copies the best (empty if none is finite)."""
    fit = np.asarray(fitness, dtype=np.float64)
    best = int(rank_order(fit)[0])
    if not np.isfinite(fit[best]):
        return {}
    return {m: best for m in range(fit.size) if m != best}


def select(name: str, fitness: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.25) -> dict[int, int]:
    """Dispatch to a selection rule by name."""
    if name == "truncation":
        return truncation(fitness, fraction, rng)
    if name == "wta":
        return winner_takes_all(fitness)
    raise ValueError(f"unknown selection {name!r} (expected one of {', '.join(SELECTIONS)})")
