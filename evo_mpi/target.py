"""Stopping at a target score: pure functions over the population's fitness (no MPI, torch or SB3)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: What ``--target-fitness`` is compared with.
TARGET_METRICS = ("best", "mean")


def target_value(fitness: Sequence[float] | np.ndarray, metric: str) -> float:
    """The population's score for ``metric``: the best finite fitness, or the mean of all members.

    ``best`` ignores non-finite members (NaN if none is finite); ``mean`` is NaN
    when any member's fitness is not finite, so a diverged member never helps
    the population reach its target.
    """
    values = np.asarray(fitness, dtype=np.float64)
    if metric == "best":
        finite = values[np.isfinite(values)]
        return float(finite.max()) if finite.size else float("nan")
    if metric == "mean":
        return float(values.mean()) if values.size and bool(np.isfinite(values).all()) else float("nan")
    raise ValueError(f"unknown target metric {metric!r}; expected one of {', '.join(TARGET_METRICS)}")


def reached(fitness: Sequence[float] | np.ndarray, target: float | None, metric: str) -> bool:
    """True when a target is set and the population's ``metric`` is at least ``target``."""
    if target is None:
        return False
    value = target_value(fitness, metric)
    return bool(np.isfinite(value) and value >= target)


def reached_line(fitness: Sequence[float] | np.ndarray, metric: str, given: str, where: str) -> str:
    """The line rank 0 prints when the target is reached (``where``: after what, and what happens now)."""
    value = target_value(fitness, metric)
    return f"evo-mpi: target reached: {metric} fitness {value:.2f} >= --target-fitness {given} {where}"
