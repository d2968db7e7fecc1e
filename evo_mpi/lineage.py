"""Read a run's ``history.jsonl`` and follow members' lineages through exploits.

Pure: json, the standard library and numpy only (no matplotlib, torch or SB3),
so plotting and replay share it and tests can call it on hand-written records.

A history record ``{"generation": g, "member": m, "hparams": h, "parent": p, ...}``
says member slot ``m`` trained generation ``g`` with hyperparameters ``h`` and,
when ``p`` is not None, copied member ``p``'s weights at the end of ``g`` (its
generation ``g + 1`` record then holds the hyperparameters explored from ``p``'s).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import parent_step_of, step_field, step_of

HISTORY = "history.jsonl"
CONFIG = "config.json"


class HistoryError(ValueError):
    """A run directory or history that cannot be used (missing, empty, bad member)."""


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every decodable record of ``RUN_DIR/history.jsonl``, in file order.

    A run in progress (or killed mid-write) may end with a partial line: lines
    that are not a JSON object with integer ``generation`` (``interval``) and ``member`` are
    skipped.

    Raises:
        HistoryError: The run dir or its history file does not exist.
    """
    if not os.path.isdir(run_dir):
        raise HistoryError(f"{os.fspath(run_dir)!r} is not a directory")
    path = os.path.join(run_dir, HISTORY)
    if not os.path.isfile(path):
        raise HistoryError(f"no {HISTORY} in {os.fspath(run_dir)!r} (not an evo-mpi run dir, or not started yet)")
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if _valid(rec):
                records.append(rec)
    return records


def _valid(rec: Any) -> bool:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if not isinstance(rec, dict):
        return False
    step: Any = step_field(rec)
    member: Any = rec.get("member")
    return is_int(step) and is_int(member) and step >= 0 and member >= 0


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``RUN_DIR/config.json`` as a dict, or None when absent or unreadable."""
    try:
        with open(os.path.join(run_dir, CONFIG), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def champion_member(run_dir: str | os.PathLike[str]) -> int | None:
    """The member in ``best.zip`` as ``RUN_DIR/champion.json`` names it (None: no finished run's pick yet)."""
    try:
        with open(os.path.join(run_dir, "champion.json"), encoding="utf-8") as fh:
            member = json.load(fh).get("member")
    except (OSError, ValueError, AttributeError):
        return None
    return member if isinstance(member, int) and not isinstance(member, bool) else None


@dataclass(frozen=True)
class History:
    """The complete generations of a history as arrays indexed ``[generation, member]``.

    Attributes:
        fitness: Float array, NaN where the record has null (non-finite) fitness.
        timesteps: Env steps each member had trained at the end of the generation.
        parent: The member copied at the end of the generation, -1 where none.
        hparams: ``hparams[g][m]``: what member ``m`` used during generation ``g``.

    """

    fitness: np.ndarray
    timesteps: np.ndarray
    parent: np.ndarray
    hparams: list[list[dict[str, Any]]]

    @property
    def generations(self) -> int:
        """Number of complete generations."""
        return int(self.fitness.shape[0])

    @property
    def population(self) -> int:
        """Number of members."""
        return int(self.fitness.shape[1])

    @property
    def names(self) -> list[str]:
        """Sorted names of every hyperparameter that appears."""
        return sorted({name for row in self.hparams for h in row for name in h})

    def exploits(self) -> list[tuple[int, int, int]]:
        """``(generation, loser, winner)`` for every exploit, in order."""
        gs, losers = np.nonzero(self.parent >= 0)
        return [(int(g), int(m), int(self.parent[g, m])) for g, m in zip(gs, losers, strict=True)]

    def best_member(self) -> int:
        """The member with the best fitness in the last generation (ties: lowest index; NaN last)."""
        last = self.fitness[-1]
        finite = np.isfinite(last)
        if not finite.any():
            return 0
        return int(np.flatnonzero(finite & (last == last[finite].max()))[0])

    def _check_member(self, member: int) -> None:
        if not 0 <= member < self.population:
            raise HistoryError(f"member {member} is out of range: the run has members 0..{self.population - 1}")

    def ancestry(self, member: int) -> list[tuple[int, int]]:
        """``(generation, slot)`` for g = 0..last: where the weights of ``member``'s final lineage lived."""
        self._check_member(member)
        slot = member
        path = [(self.generations - 1, slot)]
        for g in range(self.generations - 2, -1, -1):
            parent = int(self.parent[g, slot])
            if parent >= 0:
                slot = parent
            path.append((g, slot))
        return path[::-1]

    def schedule(self, member: int) -> list[dict[str, Any]]:
        """The hyperparameters ``member``'s lineage used in each generation (index = generation)."""
        return [dict(self.hparams[g][slot]) for g, slot in self.ancestry(member)]


def tabulate(records: Iterable[Mapping[str, Any]], population: int | None = None) -> History:
    """Arrange records into a :class:`History` of the complete generations.

    Generations count from 0 and stop before the first one that lacks a
    member's record (a run in progress writes a generation at a time). A later
    record for the same (generation, member) replaces an earlier one.

    Args:
        records: History records (see the module docstring).
        population: Number of members; default 1 + the largest member id seen.

    Raises:
        HistoryError: No complete generation.
    """
    by_key: dict[tuple[int, int], Mapping[str, Any]] = {}
    for rec in records:
        if _valid(rec):
            by_key[(step_of(rec), int(rec["member"]))] = rec
    if population is None:
        population = 1 + max((m for _, m in by_key), default=-1)
    generations = 0
    while population > 0 and all((generations, m) in by_key for m in range(population)):
        generations += 1
    if generations == 0:
        raise HistoryError("the history holds no complete generation yet")
    fitness = np.full((generations, population), math.nan)
    timesteps = np.zeros((generations, population), dtype=np.int64)
    parent = np.full((generations, population), -1, dtype=np.int64)
    hparams: list[list[dict[str, Any]]] = []
    for g in range(generations):
        row = []
        for m in range(population):
            rec = by_key[(g, m)]
            fit = rec.get("fitness")
            if isinstance(fit, (int, float)) and not isinstance(fit, bool):
                fitness[g, m] = float(fit)
            steps = rec.get("timesteps")
            timesteps[g, m] = int(steps) if isinstance(steps, (int, float)) else 0
            p = rec.get("parent")
            if isinstance(p, int) and not isinstance(p, bool) and 0 <= p < population:
                parent[g, m] = p
            h = rec.get("hparams")
            row.append(dict(h) if isinstance(h, Mapping) else {})
        hparams.append(row)
    return History(fitness, timesteps, parent, hparams)


def _as_history(records: Sequence[Mapping[str, Any]] | History) -> History:
    return records if isinstance(records, History) else tabulate(records)


def ancestry(records: Sequence[Mapping[str, Any]] | History, member: int) -> list[tuple[int, int]]:
    """For g = 0..last complete generation, the slot holding the weights of ``member``'s final lineage.

    Raises:
        HistoryError: No complete generation, or ``member`` out of range.
    """
    return _as_history(records).ancestry(member)


def schedule(records: Sequence[Mapping[str, Any]] | History, member: int) -> list[dict[str, Any]]:
    """The hyperparameters ``member``'s lineage used in each generation (index = generation).

    Raises:
        HistoryError: No complete generation, or ``member`` out of range.
    """
    return _as_history(records).schedule(member)


def best_member(records: Sequence[Mapping[str, Any]] | History) -> int:
    """The best member of the last complete generation (ties: lowest index; null fitness last)."""
    return _as_history(records).best_member()


def load(run_dir: str | os.PathLike[str]) -> tuple[History, dict[str, Any] | None]:
    """The run's :class:`History` (population from ``config.json`` when present) and its config.

    Raises:
        HistoryError: Missing run dir or history, or no complete generation.
    """
    records = read_history(run_dir)
    config = read_config(run_dir)
    population = config.get("population") if config else None
    if not isinstance(population, int) or isinstance(population, bool) or population < 1:
        population = None
    if not records:
        raise HistoryError(f"{os.path.join(run_dir, HISTORY)!r} holds no record yet")
    return tabulate(records, population), config


# -- asynchronous runs: each member has its own intervals ---------------------------------------------


def is_async(config: Mapping[str, Any] | None) -> bool:
    """Whether ``config.json`` says the run used ``--mode async``."""
    return bool(config) and config.get("mode") == "async"  # type: ignore[union-attr]


def latest_records(records: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """Each member's record of its highest interval (sync: of the last generation it reached)."""
    latest: dict[int, Mapping[str, Any]] = {}
    for rec in records:
        if _valid(rec) and (rec["member"] not in latest or step_of(rec) >= step_of(latest[rec["member"]])):
            latest[int(rec["member"])] = rec
    return latest


def latest_best(records: Iterable[Mapping[str, Any]]) -> int:
    """The member whose latest record has the best fitness (ties: lowest id; null fitness last)."""
    latest = latest_records(records)
    if not latest:
        raise HistoryError("the history holds no record yet")

    def key(m: int) -> tuple[bool, float, int]:
        fit = latest[m].get("fitness")
        ok = isinstance(fit, (int, float)) and not isinstance(fit, bool) and math.isfinite(fit)
        return (not ok, -float(fit) if ok else 0.0, m)  # type: ignore[arg-type]

    return min(latest, key=key)


def chain(records: Iterable[Mapping[str, Any]], member: int) -> list[tuple[int, int]]:
    """``(interval, slot)`` of every interval whose training made ``member``'s latest state, oldest first.

    The weights a slot starts interval ``k + 1`` with are its own from the end of ``k``, or, when its
    record of ``k`` has a ``parent``, that parent's from the end of ``parent_interval`` (the
    donor's interval whose snapshot was copied; in sync runs the same generation). For a sync run
    this is :meth:`History.ancestry`.

    Raises:
        HistoryError: ``member`` has no record, or a record the walk needs is missing.
    """
    by_key = {(int(r["member"]), step_of(r)): r for r in records if _valid(r)}
    mine = [k for m, k in by_key if m == member]
    if not mine:
        raise HistoryError(f"member {member} has no record in the history")
    slot, k = member, max(mine)
    path = [(k, slot)]
    while k > 0:
        prev = by_key.get((slot, k - 1))
        if prev is None:
            raise HistoryError(f"the history lacks member {slot}'s record of interval {k - 1}")
        parent = prev.get("parent")
        if isinstance(parent, int) and not isinstance(parent, bool):
            d = parent_step_of(prev)
            slot, k = parent, int(d) if isinstance(d, int) else k - 1
        else:
            k -= 1
        if (slot, k) not in by_key:
            raise HistoryError(f"the history lacks member {slot}'s record of interval {k}")
        path.append((k, slot))
    return path[::-1]
