"""The sync scheduler's fitness table: one row of numbers per member, gathered by every rank each generation.

Pure numpy. A rank fills its members' rows (:meth:`FitnessTable.local`,
:meth:`FitnessTable.fill`), ``Allgather`` joins them, and every rank reads the
same table (:class:`FitnessTable` over the gathered array), so every rank
takes the same decision. A row holds fitness, env steps, the episode count,
flags (diverged, failed, objective key missing) and three windows of
``fitness_window`` values: the scores (the fitness's samples), the episode
lengths and, with ``--fitness info:KEY``, the episode returns beside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import failures
from .fitness import missing_reason

#: Columns before the windows.
_FIT, _STEPS, _NEP, _DIV, _FAIL, _NOKEY = range(6)
_COLS = 6


class FitnessTable:
    """The gathered table of one generation (``array``: members x columns), read by name."""

    def __init__(self, array: np.ndarray, window: int, objective: bool) -> None:
        self.array = array
        self.window = window
        #: Fitness is an objective (``--fitness info:KEY``): the returns have their own window.
        self.objective = objective

    @staticmethod
    def local(members: int, window: int) -> np.ndarray:
        """Empty rows (NaN) for a rank's ``members``, to :meth:`fill` and gather."""
        return np.full((members, _COLS + 3 * window), math.nan)

    @staticmethod
    def fill(
        rows: np.ndarray,
        i: int,
        fitness: float,
        timesteps: int,
        scores: Sequence[float],
        lengths: Sequence[float],
        returns: Sequence[float] | None,
        diverged: bool,
        failed: bool,
        no_key: bool,
    ) -> None:
        """Write row ``i``: ``returns`` only with an objective (the scores are then the objective's)."""
        window = (rows.shape[1] - _COLS) // 3
        row = rows[i]
        row[_FIT], row[_STEPS], row[_NEP] = fitness, timesteps, len(scores)
        row[_DIV], row[_FAIL], row[_NOKEY] = float(diverged), float(failed), float(no_key)
        row[_COLS : _COLS + len(scores)] = scores
        row[_COLS + window : _COLS + window + len(lengths)] = lengths
        if returns is not None:
            row[_COLS + 2 * window : _COLS + 2 * window + len(returns)] = returns

    @property
    def fitness(self) -> np.ndarray:
        """Every member's fitness (NaN: missing)."""
        return self.array[:, _FIT]

    @property
    def timesteps(self) -> list[int]:
        """Every member's env steps."""
        return [int(t) for t in self.array[:, _STEPS]]

    @property
    def failed(self) -> list[int]:
        """Members whose training or fitness raised in this generation."""
        return [int(m) for m in np.flatnonzero(self.array[:, _FAIL])]

    @property
    def no_key(self) -> list[int]:
        """Members whose ended episodes never had ``--fitness info:KEY``'s key."""
        return [int(m) for m in np.flatnonzero(self.array[:, _NOKEY])]

    def scores(self, m: int) -> list[float]:
        """Member ``m``'s recent scores (the fitness's samples)."""
        n = int(self.array[m, _NEP])
        return list(self.array[m, _COLS : _COLS + n])

    def lengths(self, m: int) -> list[float]:
        """Member ``m``'s recent episode lengths."""
        n = int(self.array[m, _NEP])
        return list(self.array[m, _COLS + self.window : _COLS + self.window + n])

    def returns(self, m: int) -> list[float]:
        """Member ``m``'s recent episode returns (its scores unless fitness is an objective)."""
        if not self.objective:
            return self.scores(m)
        start = _COLS + 2 * self.window
        return list(self.array[m, start : start + int(self.array[m, _NEP])])

    def missing(self, m: int) -> str | None:
        """Why member ``m``'s fitness is missing (None: it is not)."""
        if self.array[m, _FAIL]:
            return failures.FAILED
        row = self.array[m]
        return missing_reason(float(row[_FIT]), int(row[_NEP]), bool(row[_DIV]))
