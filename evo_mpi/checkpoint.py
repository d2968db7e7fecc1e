"""Atomic, layout-independent checkpoints: the whole population per generation (sync), one member per interval (async).

Layout of ``RUN_DIR/checkpoints``::

    gen_000004/                 state after generation 4 (exploit and explore done)
        member_00.pt            policy + optimizer state dicts (torch.load(weights_only=True))
        member_00.json          step counts and episode statistics
        population.json         written last: generation, hyperparameters, history size
    .tmp-gen_000005/            a checkpoint being written (ignored, removed on the next write)
    async/member_00/interval_000007/   asynchronous mode: one member after its interval 7
        member.pt, member.json  as above (member.json also holds the member's last published
        snapshot.npy            record), plus the state that record's fitness was measured with
        snapshot_aux.npy

A checkpoint is complete when its directory carries its final name: every
file is written and fsynced inside the temporary directory, then rank 0
renames it and fsyncs the parent. Older complete checkpoints are pruned only
after the new one is in place. Nothing is unpickled on load.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .atomic import fsync_dir, write_synced
from .pb2 import Observation
from .records import HistoryRow, finite, finite_list, number, numbers


@dataclass
class PopulationState:
    """``population.json``: the population after one sync generation (written last: it completes the checkpoint).

    Attributes:
        generation: The generation it follows.
        finished: It is the run's last generation.
        population: The number of members.
        hparams: Each member's hyperparameters for the next generation.
        fitness: Each member's fitness in it (NaN: missing).
        history_bytes: ``history.jsonl``'s size then (a resume cuts the log back to it).
        lineage_bytes: ``lineage.jsonl``'s size then.
        start_fitness: Each member's fitness when its next generation starts (PB2's baseline).
        observations: PB2's data so far.
        last_exploit: The generation after which each member last copied a donor (-1: never).
        failures: Member failures in the run so far.
        torch_threads: The torch threads each member trained with (None: written before it was kept).

    """

    generation: int
    finished: bool
    population: int
    hparams: list[dict[str, Any]]
    fitness: list[float]
    history_bytes: int = 0
    lineage_bytes: int = 0
    start_fitness: list[float] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    last_exploit: list[int] = field(default_factory=list)
    failures: int = 0
    torch_threads: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        """As written (NaN as null)."""
        return {
            "generation": self.generation,
            "finished": self.finished,
            "population": self.population,
            "hparams": self.hparams,
            "fitness": finite_list(self.fitness),
            "history_bytes": self.history_bytes,
            "lineage_bytes": self.lineage_bytes,
            "start_fitness": finite_list(self.start_fitness),
            "pb2": [{"time": o.time, "hparams": dict(o.hparams), "delta": o.delta} for o in self.observations],
            "last_exploit": [int(x) for x in self.last_exploit],
            "failures": self.failures,
            "torch_threads": self.torch_threads,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> PopulationState:
        """As read; a checkpoint written before a field existed gets its default (sizes, PB2, exploits: none)."""
        population = int(data["population"])
        start = numbers(data.get("start_fitness", []))
        threads = data.get("torch_threads")
        return PopulationState(
            generation=int(data["generation"]),
            finished=bool(data.get("finished", False)),
            population=population,
            hparams=[dict(h) for h in data["hparams"]],
            fitness=numbers(data["fitness"]),
            history_bytes=int(data.get("history_bytes", 0)),
            lineage_bytes=int(data.get("lineage_bytes", 0)),
            start_fitness=start if len(start) == population else [math.nan] * population,
            observations=[Observation(o["time"], o["hparams"], o["delta"]) for o in data.get("pb2", [])],
            last_exploit=[int(x) for x in data.get("last_exploit", [-1] * population)],
            failures=int(data.get("failures", 0)),
            torch_threads=None if threads is None else [int(t) for t in threads],
        )


@dataclass
class IntervalState:
    """An async member checkpoint's ``member.json``: the member after one of its intervals.

    Attributes:
        member: The member's own metadata (``checkpoint_meta()``: step counts, episodes).
        done: Intervals it has completed.
        start_fitness: Its fitness when its next interval starts (NaN: none).
        exploit_steps: Its step count when it last copied a donor (0: never).
        record: Its last published record, the one its snapshot's fitness was measured with.
        torch_threads: The torch threads it trained with (None: written before it was kept).

    """

    member: dict[str, Any]
    done: int
    start_fitness: float
    exploit_steps: int
    record: HistoryRow
    torch_threads: int | None = None

    def to_json(self) -> dict[str, Any]:
        """As written: the record without what the next reader recomputes (the donor's fitness, fetch time)."""
        record = self.record.to_json()
        for key in ("parent_fitness", "fetch_s", "new_hparams", "target_reached"):
            record.pop(key, None)
        return {
            "member": self.member,
            "done": self.done,
            "start_fitness": finite(self.start_fitness),
            "exploit_steps": self.exploit_steps,
            "torch_threads": self.torch_threads,
            "record": record,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> IntervalState:
        """As read (``torch_threads`` None and ``exploit_steps`` 0 in checkpoints written before they were kept)."""
        threads = data.get("torch_threads")
        return IntervalState(
            member=dict(data["member"]),
            done=int(data["done"]),
            start_fitness=number(data.get("start_fitness")),
            exploit_steps=int(data.get("exploit_steps", 0)),
            record=HistoryRow.from_json(data["record"]),
            torch_threads=None if threads is None else int(threads),
        )


_DIR_RE = re.compile(r"^gen_(\d{6})$")


def checkpoint_root(run_dir: str) -> str:
    """``RUN_DIR/checkpoints``."""
    return os.path.join(run_dir, "checkpoints")


def _tmp_dir(run_dir: str, generation: int) -> str:
    return os.path.join(checkpoint_root(run_dir), f".tmp-gen_{generation:06d}")


def _final_dir(run_dir: str, generation: int) -> str:
    return os.path.join(checkpoint_root(run_dir), f"gen_{generation:06d}")


#: Fault injection for the crash-safety tests: ``EVO_MPI_FAULT=<point>`` makes the
#: process SIGKILL itself at that point (e.g. ``commit:3``). Unset in normal runs.
_FAULT = os.environ.get("EVO_MPI_FAULT", "")


def _crash_point(point: str) -> None:
    if _FAULT == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _write_json(path: str, data: Mapping[str, Any]) -> None:
    # checkpoint internals, read only by evo_mpi: a member's own meta may hold NaN (Python's JSON reads it back)
    write_synced(path, lambda fh: fh.write(json.dumps(data, sort_keys=True).encode("utf-8")))


def begin(run_dir: str, generation: int) -> None:
    """Rank 0: create an empty temporary directory for ``generation``'s checkpoint."""
    tmp = _tmp_dir(run_dir, generation)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)


def write_member(
    run_dir: str, generation: int, member: int, tensors: Mapping[str, Any], meta: Mapping[str, Any]
) -> None:
    """Any rank, after :func:`begin`: write one member's tensors (torch.save) and metadata (JSON)."""
    tmp = _tmp_dir(run_dir, generation)
    import torch  # deferred: run.py imports this module before installing its signal handlers

    from .torchstate import cpu_tensors

    cpu = cpu_tensors(dict(tensors))  # a GPU member's state dicts: the file loads on any machine
    write_synced(os.path.join(tmp, f"member_{member:02d}.pt"), lambda fh: torch.save(cpu, fh))
    _crash_point(f"member:{generation}:{member}")
    _write_json(os.path.join(tmp, f"member_{member:02d}.json"), meta)


def commit(run_dir: str, generation: int, population: PopulationState, keep: int) -> str:
    """Rank 0, after every rank wrote its members: publish the checkpoint, prune old ones."""
    tmp = _tmp_dir(run_dir, generation)
    _write_json(os.path.join(tmp, "population.json"), population.to_json())
    fsync_dir(tmp)
    _crash_point(f"commit:{generation}")
    final = _final_dir(run_dir, generation)
    os.rename(tmp, final)
    fsync_dir(checkpoint_root(run_dir))
    _crash_point(f"prune:{generation}")
    for old in complete(run_dir)[:-keep]:
        shutil.rmtree(_final_dir(run_dir, old), ignore_errors=True)
    for name in os.listdir(checkpoint_root(run_dir)):  # leftovers of crashed writes
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(checkpoint_root(run_dir), name), ignore_errors=True)
    return final


def complete(run_dir: str) -> list[int]:
    """Generations with a complete checkpoint, oldest first."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    gens = []
    for name in os.listdir(root):
        match = _DIR_RE.match(name)
        if match and os.path.isfile(os.path.join(root, name, "population.json")):
            gens.append(int(match.group(1)))
    return sorted(gens)


def load_population(run_dir: str, generation: int) -> PopulationState:
    """The population-level record of a complete checkpoint (ValueError: not such a record)."""
    with open(os.path.join(_final_dir(run_dir, generation), "population.json"), encoding="utf-8") as fh:
        data = json.load(fh)
    try:
        return PopulationState.from_json(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"population.json lacks or mangles {exc}") from exc


def load_member(run_dir: str, generation: int, member: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One member's tensors (``torch.load(weights_only=True)``: no code runs) and metadata."""
    import torch

    base = os.path.join(_final_dir(run_dir, generation), f"member_{member:02d}")
    tensors: dict[str, Any] = torch.load(base + ".pt", weights_only=True, map_location="cpu")
    with open(base + ".json", encoding="utf-8") as fh:
        meta: dict[str, Any] = json.load(fh)
    return tensors, meta


def truncate(path: str, size: int) -> None:
    """Cut a log back to ``size`` bytes (records written after the checkpoint)."""
    if os.path.exists(path) and os.path.getsize(path) > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())


# -- asynchronous mode: each member checkpoints on its own ------------------------------------------

_INTERVAL_RE = re.compile(r"^interval_(\d{6})$")


def member_root(run_dir: str, member: int) -> str:
    """``RUN_DIR/checkpoints/async/member_NN``: one member's own checkpoints (asynchronous mode)."""
    return os.path.join(checkpoint_root(run_dir), "async", f"member_{member:02d}")


def write_interval(
    run_dir: str,
    member: int,
    interval: int,
    tensors: Mapping[str, Any],
    meta: IntervalState,
    arrays: Mapping[str, Any],
    keep: int,
    between: Callable[[], object] | None = None,
) -> None:
    """Write one member's checkpoint after ``interval`` atomically (temporary dir, then rename), prune old ones.

    ``arrays`` are uint8 numpy arrays saved with ``numpy.save`` (loaded without pickle).
    ``between``, if given, is called after each large file (the async engine
    serves its peers there: a large member's files take a while to write).
    """
    import numpy as np
    import torch

    root = member_root(run_dir, member)
    os.makedirs(root, exist_ok=True)
    name = f"interval_{interval:06d}"
    tmp = os.path.join(root, ".tmp-" + name)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    from .torchstate import cpu_tensors

    cpu = cpu_tensors(dict(tensors))  # as write_member: CPU tensors, loadable on any machine
    pause = between or (lambda: None)
    write_synced(os.path.join(tmp, "member.pt"), lambda fh: torch.save(cpu, fh))
    pause()
    for key, array in arrays.items():
        write_synced(os.path.join(tmp, key + ".npy"), functools.partial(np.save, arr=array, allow_pickle=False))
        pause()
    _write_json(os.path.join(tmp, "member.json"), meta.to_json())
    fsync_dir(tmp)
    _crash_point(f"interval:{member}:{interval}")
    os.rename(tmp, os.path.join(root, name))
    fsync_dir(root)
    for old in intervals(run_dir, member)[:-keep]:
        shutil.rmtree(os.path.join(root, f"interval_{old:06d}"), ignore_errors=True)
    for leftover in os.listdir(root):
        if leftover.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, leftover), ignore_errors=True)


def intervals(run_dir: str, member: int) -> list[int]:
    """Intervals of ``member`` with a complete checkpoint, oldest first."""
    root = member_root(run_dir, member)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _INTERVAL_RE.match(name)
        if match and os.path.isfile(os.path.join(root, name, "member.json")):
            found.append(int(match.group(1)))
    return sorted(found)


def load_interval(run_dir: str, member: int, interval: int) -> tuple[dict[str, Any], IntervalState, dict[str, Any]]:
    """(tensors, meta, arrays) of one member's checkpoint; nothing is unpickled."""
    import numpy as np
    import torch

    base = os.path.join(member_root(run_dir, member), f"interval_{interval:06d}")
    tensors: dict[str, Any] = torch.load(os.path.join(base, "member.pt"), weights_only=True, map_location="cpu")
    with open(os.path.join(base, "member.json"), encoding="utf-8") as fh:
        meta = IntervalState.from_json(json.load(fh))
    arrays = {
        name[: -len(".npy")]: np.load(os.path.join(base, name), allow_pickle=False)
        for name in sorted(os.listdir(base))
        if name.endswith(".npy")
    }
    return tensors, meta, arrays
