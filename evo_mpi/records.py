"""The rows of ``history.jsonl`` and ``lineage.jsonl`` as types, and the one NaN <-> null codec.

Pure (standard library only). In memory a missing number is NaN; on disk it is
``null`` (JSON has no NaN), so every file evo_mpi writes is strict JSON
(:func:`dumps`, ``allow_nan=False``). Writers build a :class:`HistoryRow` or
:class:`LineageRow` and call ``to_json()``; readers that want numbers call
:func:`number` (and ``numbers`` for lists). ``from_json`` reads rows written by any
version: the fields a row lacks take their defaults.

A sync row is one member's generation, written as ``generation``; an async row is
one member's interval, written as ``interval`` (with ``parent_interval``, and
``winner_interval`` in lineage), and carries the async fields
(:class:`IntervalFields`). In code both are :attr:`HistoryRow.step`. Files
written before 2026-12-05 call the async index ``generation`` too; every reader
takes either (:func:`step_of`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


def finite(x: float | None) -> float | None:
    """``x``, or None when it is None, NaN or infinite (how a missing number is written)."""
    return None if x is None or not math.isfinite(x) else float(x)


def finite_list(xs: Iterable[float | None]) -> list[float | None]:
    """:func:`finite` of each value."""
    return [finite(x) for x in xs]


def number(x: float | None) -> float:
    """A written number back in memory: None is NaN."""
    return math.nan if x is None else float(x)


def numbers(xs: Iterable[float | None]) -> list[float]:
    """:func:`number` of each value."""
    return [number(x) for x in xs]


def step_field(row: Mapping[str, Any]) -> Any:
    """A row's ``interval`` (async) or else ``generation`` value as written (None: neither), unchecked."""
    return row.get("interval", row.get("generation"))


def step_of(row: Mapping[str, Any]) -> int:
    """A history or lineage row's generation (sync) or interval (async), from a row of any version."""
    return int(row["interval"] if "interval" in row else row["generation"])


def parent_step_of(row: Mapping[str, Any], default: Any = None) -> Any:
    """An async history row's ``parent_interval`` (``parent_generation`` in earlier versions), else ``default``."""
    return row.get("parent_interval", row.get("parent_generation", default))


def dumps(obj: Any, sort_keys: bool = True) -> str:
    """The one JSON policy of the run dir's files: strict JSON (a NaN left unconverted raises ValueError)."""
    return json.dumps(obj, sort_keys=sort_keys, allow_nan=False)


@dataclass(frozen=True)
class Failure:
    """A member's exception in one generation (interval): ``history.jsonl``'s ``failure``."""

    type: str
    message: str
    phase: str

    def to_json(self) -> dict[str, Any]:
        """As written."""
        return {"type": self.type, "message": self.message, "phase": self.phase}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Failure:
        """As read."""
        return Failure(str(data["type"]), str(data["message"]), str(data["phase"]))


@dataclass(frozen=True)
class WeightNoise:
    """A weight mutation, decided on every rank alike and applied by the member that owns the weights.

    Attributes:
        variant: ``normal``, ``super`` or ``reset``.
        fraction: Share of each weight matrix's entries that change.
        sd: Standard deviation of the noise (``super``: times ``evo_mpi.arch.SUPER_FACTOR``).
        seed: Seed of the stream that picks the entries and draws the noise.

    """

    variant: str
    fraction: float
    sd: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """As written (history's and lineage's ``mutation.weight_noise``)."""
        return {"variant": self.variant, "fraction": self.fraction, "sd": self.sd, "seed": self.seed}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> WeightNoise:
        """As read."""
        return WeightNoise(str(data["variant"]), float(data["fraction"]), float(data["sd"]), int(data["seed"]))


@dataclass(frozen=True)
class Mutation:
    """What one member's mutation decided after a step: history's and lineage's ``mutation``.

    Attributes:
        kind: ``hparams``, ``arch``, ``activation`` or ``weights`` (``--mutation-probs``).
        arch_op: ``kind == "arch"``: what changed, e.g. ``add_layer`` or ``remove_nodes:1:-16``.
        weight_noise: ``kind == "weights"``: the noise the member's weights take.

    """

    kind: str
    arch_op: str | None = None
    weight_noise: WeightNoise | None = None

    def to_json(self) -> dict[str, Any]:
        """As written (``arch_op`` and ``weight_noise`` only when set)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.arch_op is not None:
            out["arch_op"] = self.arch_op
        if self.weight_noise is not None:
            out["weight_noise"] = self.weight_noise.to_dict()
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Mutation:
        """As read."""
        noise = data.get("weight_noise")
        op = data.get("arch_op")
        return Mutation(
            str(data["kind"]), None if op is None else str(op), None if noise is None else WeightNoise.from_dict(noise)
        )


@dataclass
class IntervalFields:
    """What an async row adds: timing, the decision's inputs and the exploit's outcome.

    Attributes:
        wall: Seconds since the rank started when the record was made.
        unix: Epoch seconds when it was made.
        lengths: The lengths of the member's recent episodes.
        delta: Fitness change over the interval (PB2's observation; NaN: none).
        since_exploit: Env steps trained since the member's last exploit (``--ready-after``; None: a row
            written before async mode had it, which counts as ready).
        seen: The interval of every member's record the decision saw (-1: none yet).
        parent_step: The donor's interval whose snapshot was copied (None: no exploit).
        parent_fitness: The donor's fitness in that record (NaN: missing or no exploit).
        fetch_s: Seconds the donor's snapshot took to arrive (None: no exploit).
        new_hparams: The hyperparameters the member trains with next.

    """

    wall: float
    unix: float
    lengths: list[float]
    delta: float
    since_exploit: int | None
    seen: list[int] = field(default_factory=list)
    parent_step: int | None = None
    parent_fitness: float = math.nan
    fetch_s: float | None = None
    new_hparams: dict[str, Any] = field(default_factory=dict)

    def to_json(self, exploited: bool) -> dict[str, Any]:
        """As written (``parent_*`` and ``fetch_s`` null when the member did not exploit)."""
        return {
            "wall": self.wall,
            "unix": self.unix,
            "lengths": list(self.lengths),
            "delta": finite(self.delta),
            "since_exploit": self.since_exploit,
            "seen": list(self.seen),
            "parent_interval": self.parent_step,
            "parent_fitness": finite(self.parent_fitness) if exploited else None,
            "fetch_s": self.fetch_s,
            "new_hparams": self.new_hparams,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> IntervalFields:
        """As read (a row written before a field existed gets its default)."""
        return IntervalFields(
            wall=float(data.get("wall", math.nan)),
            unix=float(data.get("unix", math.nan)),
            lengths=list(data.get("lengths", [])),
            delta=number(data.get("delta")),
            since_exploit=None if data.get("since_exploit") is None else int(data["since_exploit"]),
            seen=[int(s) for s in data.get("seen", [])],
            parent_step=parent_step_of(data),
            parent_fitness=number(data.get("parent_fitness")),
            fetch_s=data.get("fetch_s"),
            new_hparams=dict(data.get("new_hparams", data.get("hparams", {}))),
        )


@dataclass
class HistoryRow:
    """One member's generation (sync) or interval (async): one line of ``history.jsonl``.

    Attributes:
        step: The generation (sync) or the member's interval (async): ``generation`` or ``interval`` on disk.
        member: The member's id.
        rank: The rank that trained it.
        timesteps: Env steps the member had trained at the end.
        fitness: Its fitness (NaN: missing, see ``fitness_missing``).
        hparams: The hyperparameters it trained with.
        returns: Its recent episode returns (the fitness window).
        parent: The donor it copied after this step (None: none).
        fitness_missing: Why fitness is NaN (``no completed episode yet``, ``diverged``, ``failed``).
        objectives: With ``--fitness info:KEY``, the objective's samples beside ``returns``.
        mutation: What its mutation after this step decided, when there was one.
        held: The donor the exploit margin refused: ``{donor, gap, margin}``.
        hparams_from: MF-PBT: whose hyperparameters it took, when not its donor's.
        failure: Its exception in this step.
        target_reached: ``--target-fitness`` was reached with this row.
        async_fields: The async fields (None: a sync row).

    """

    step: int
    member: int
    rank: int
    timesteps: int
    fitness: float
    hparams: dict[str, Any]
    returns: list[float]
    parent: int | None = None
    fitness_missing: str | None = None
    objectives: list[float] | None = None
    mutation: Mutation | None = None
    held: dict[str, Any] | None = None
    hparams_from: int | None = None
    failure: Failure | None = None
    target_reached: bool = False
    async_fields: IntervalFields | None = None

    def to_json(self) -> dict[str, Any]:
        """As written: optional fields only when set; numbers that are not finite as null."""
        out: dict[str, Any] = {
            "generation" if self.async_fields is None else "interval": self.step,
            "member": self.member,
            "rank": self.rank,
            "timesteps": self.timesteps,
            "fitness": finite(self.fitness),
            "hparams": self.hparams,
            "parent": self.parent,
            "returns": finite_list(self.returns),
        }
        optional = {
            "fitness_missing": self.fitness_missing,
            "mutation": None if self.mutation is None else self.mutation.to_json(),
            "held": self.held,
            "hparams_from": self.hparams_from,
            "failure": None if self.failure is None else self.failure.to_json(),
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.objectives is not None:
            out["objectives"] = finite_list(self.objectives)
        if self.target_reached:
            out["target_reached"] = True
        if self.async_fields is not None:
            out.update(self.async_fields.to_json(self.parent is not None))
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> HistoryRow:
        """As read, from a row of any version (async when it has ``wall``)."""
        failure = data.get("failure")
        objectives = data.get("objectives")
        return HistoryRow(
            step=step_of(data),
            member=int(data["member"]),
            rank=int(data.get("rank", 0)),
            timesteps=int(data.get("timesteps", 0)),
            fitness=number(data.get("fitness")),
            hparams=dict(data.get("hparams", {})),
            returns=numbers(data.get("returns", [])),
            parent=data.get("parent"),
            fitness_missing=data.get("fitness_missing"),
            objectives=None if objectives is None else numbers(objectives),
            mutation=_mutation(data.get("mutation")),
            held=data.get("held"),
            hparams_from=data.get("hparams_from"),
            failure=None if failure is None else Failure.from_json(failure),
            target_reached=bool(data.get("target_reached", False)),
            async_fields=IntervalFields.from_json(data) if "wall" in data else None,
        )

    def scores(self) -> list[float]:
        """The fitness's samples: the objective's with ``--fitness info:KEY``, else the returns."""
        return self.returns if self.objectives is None else self.objectives

    def replace(self, **changes: Any) -> HistoryRow:
        """A copy with ``changes`` (the async fields copied too, so changing the copy's leaves this row's)."""
        if "async_fields" not in changes and self.async_fields is not None:
            changes["async_fields"] = dataclasses.replace(self.async_fields)
        return dataclasses.replace(self, **changes)

    @property
    def fields(self) -> IntervalFields:
        """The async fields of an async row."""
        if self.async_fields is None:
            raise ValueError(f"member {self.member}'s row of step {self.step} is a sync row: no interval fields")
        return self.async_fields


@dataclass(frozen=True)
class LineageRow:
    """One exploit: ``loser`` copied ``winner`` after ``step``; one line of ``lineage.jsonl``.

    Attributes:
        step: The loser's generation (sync) or interval (async): ``generation`` or ``interval`` on disk.
        loser: The member that copied.
        winner: The donor it copied.
        timesteps: The loser's env steps at the exploit.
        loser_fitness: The loser's fitness (NaN: missing).
        winner_fitness: The donor's (NaN: missing).
        old_hparams: The loser's hyperparameters before.
        new_hparams: After exploit and explore.
        winner_step: Async: the donor's interval whose snapshot was copied (``winner_interval``).
        mutation: What the loser's mutation decided, when there was one.
        hparams_from: MF-PBT: whose hyperparameters it took, when not the winner's.

    """

    step: int
    loser: int
    winner: int
    timesteps: int
    loser_fitness: float
    winner_fitness: float
    old_hparams: dict[str, Any]
    new_hparams: dict[str, Any]
    winner_step: int | None = None
    mutation: Mutation | None = None
    hparams_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        """As written."""
        out: dict[str, Any] = {
            "generation" if self.winner_step is None else "interval": self.step,
            "loser": self.loser,
            "winner": self.winner,
            "timesteps": self.timesteps,
            "loser_fitness": finite(self.loser_fitness),
            "winner_fitness": finite(self.winner_fitness),
            "old_hparams": self.old_hparams,
            "new_hparams": self.new_hparams,
        }
        mutation = None if self.mutation is None else self.mutation.to_json()
        optional = {"winner_interval": self.winner_step, "mutation": mutation, "hparams_from": self.hparams_from}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> LineageRow:
        """As read."""
        return LineageRow(
            step=step_of(data),
            loser=int(data["loser"]),
            winner=int(data["winner"]),
            timesteps=int(data.get("timesteps", 0)),
            loser_fitness=number(data.get("loser_fitness")),
            winner_fitness=number(data.get("winner_fitness")),
            old_hparams=dict(data.get("old_hparams", {})),
            new_hparams=dict(data.get("new_hparams", {})),
            winner_step=data.get("winner_interval", data.get("winner_generation")),
            mutation=_mutation(data.get("mutation")),
            hparams_from=data.get("hparams_from"),
        )


def _mutation(data: Mapping[str, Any] | None) -> Mutation | None:
    return None if data is None else Mutation.from_json(data)
