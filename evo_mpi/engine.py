"""The synchronous scheduler (:class:`Engine`, ``--mode sync``) over :class:`~evo_mpi.scheduler.EngineBase`.

A generation: train every local member -> measure fitness -> gather the
table (every rank) -> decide (:mod:`evo_mpi.decision`: donors, mutation,
explore) -> log -> move states (:mod:`evo_mpi.comm`) -> checkpoint. Every rank
holds the whole population's hyperparameters and repeats every decision from
seeded streams, so no hyperparameters travel (PB2's choices, computed on rank
0, are broadcast).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import checkpoint, failures, target
from .comm import Comm
from .config import Config, ConfigError
from .decision import Choice, held_record, observe
from .fitness import fitness_call, mean_finite, missing_fitness_lines
from .outputs import progress_line
from .pb2 import MAX_OBSERVATIONS, Observation
from .records import Failure, HistoryRow, LineageRow, Mutation
from .scheduler import torch_threads
from .space import Value
from .status import GenerationSummary, RunContext, Status
from .step import Seen, start_fitness
from .sync_exchange import SyncExchange
from .table import FitnessTable

#: Most recent observations PB2 keeps: the ones its GP uses (one constant, in pb2.py).
PB2_MAX_OBSERVATIONS = MAX_OBSERVATIONS


@dataclass(frozen=True)
class Generation:
    """What one sync generation did, for the run loop and its report (rank 0 reports, every rank decides alike).

    Attributes:
        generation: Its index (0-based).
        table: The gathered fitness table (one row per member).
        donors: Loser -> donor after it.
        wall: Its wall seconds on this rank.
        timings: This rank's seconds per phase.
        hparams: Each member's hyperparameters during it.
        stop: A stop signal arrived (or failures end the run).
        early: The callback ended the run.
        target: ``--target-fitness`` was reached before the last generation.
        out_of_time: ``--time-limit`` ends the run before the last generation.
        failed: Why member failures end the run (None: they do not).

    """

    generation: int
    table: FitnessTable
    donors: dict[int, int]
    wall: float
    timings: dict[str, Any]
    hparams: list[dict[str, Value]]
    stop: bool = False
    early: bool = False
    target: bool = False
    out_of_time: bool = False
    failed: str | None = None


class Engine(SyncExchange):
    """Runs PBT for one rank's members, in lockstep with the other ranks (``--mode sync``)."""

    def __init__(
        self, cfg: Config, comm: Comm, run_dir: str, ctx: RunContext | None = None, resume_from: int | None = None
    ) -> None:
        """``resume_from``: the generation whose checkpoint the run continues from (None: a fresh start)."""
        super().__init__(cfg, comm, run_dir, ctx)
        #: Each member's fitness when its current generation started (the donor's after an exploit).
        self.start_fitness = np.full(self.population, math.nan)
        #: PB2's data: (generation, hparams, fitness change) of every member interval with finite ends.
        self.observations: list[Observation] = []
        #: The generation after which each member last copied a donor (-1: never); --ready-after counts from it.
        self.last_exploit = np.full(self.population, -1, dtype=np.int64)
        #: First generation this process runs (> 0 after a resume).
        self.start = 0
        saved: checkpoint.PopulationState | None = None
        if resume_from is not None:
            saved = self._resume(resume_from)
        self._check_layouts(None if saved is None else saved.torch_threads)
        self._open_logs((0, 0) if saved is None else (saved.history_bytes, saved.lineage_bytes))  # a fresh start: empty

    def _resume(self, generation: int) -> checkpoint.PopulationState:
        """Take the population's state after ``generation`` from its checkpoint; returns the saved population."""
        self.activity = f"loading checkpoint of generation {generation}"
        saved = checkpoint.load_population(self.run_dir, generation)
        self.hparams = saved.hparams
        self.last_fitness = np.array(saved.fitness)
        self.start = saved.generation + 1
        self.start_fitness = np.array(saved.start_fitness)
        self.observations = list(saved.observations)
        self.last_exploit = np.array(saved.last_exploit, dtype=np.int64)
        self.failure_total = saved.failures
        for m in self.local_ids:
            self.members[m].restore(*checkpoint.load_member(self.run_dir, generation, m))
        self._log_rebuilds()
        return saved

    # -- one generation ----------------------------------------------------------
    def _local_rows(self, generation: int) -> np.ndarray:
        """The rank's rows of the fitness table (:class:`~evo_mpi.table.FitnessTable`) after ``generation``."""
        rows = FitnessTable.local(len(self.local_ids), self.cfg.fitness_window)
        for i, m in enumerate(self.local_ids):
            self.activity = f"computing fitness of member {m} (generation {generation})"
            member = self.members[m]
            fit, no_key = math.nan, False
            if m not in self.local_failures:
                missing: list[Exception] = []  # a configuration error: every rank stops on the gathered table
                got, failure = self._attempt(
                    m, generation, "measuring fitness", fitness_call(member, generation, missing)
                )
                if missing:
                    self.echo(f"evo-mpi: member {m}: {missing[0]}")
                    no_key = True
                if failure is not None:
                    self.local_failures[m] = failure
                elif got is not None:
                    fit = got
            scores, lengths = member.episode_stats()
            returns = member.episode_returns() if self.cfg.objective_key is not None else None  # type: ignore[attr-defined]
            diverged = bool(getattr(member, "diverged", False))
            FitnessTable.fill(
                rows, i, fit, member.timesteps, scores, lengths, returns, diverged, m in self.local_failures, no_key
            )
        return rows

    def generation(self, g: int) -> Generation | None:
        """Run generation ``g`` (0-based) and return what happened, or None if a stop was requested."""
        cfg, timer = self.cfg, self.timer
        t0 = time.perf_counter()
        self.choice = Choice({})
        if self.first_train_unix is None:
            self.first_train_unix = time.time()
        rows = self._train_and_measure(g)
        timer.start("wait")
        self.activity = f"waiting for other ranks (generation {g})"
        if self.comm.any(rows is None):
            timer.stop()
            return None  # generation g is abandoned; the last checkpoint is g - 1
        assert rows is not None
        if cfg.share_experience:
            timer.start("share")
            self.activity = f"sharing experience (generation {g})"
            self.shared_bytes = self._share_experience()
        timer.start("exchange")
        self.activity = f"gathering fitness (generation {g})"
        table = FitnessTable(self.comm.allgather(rows), cfg.fitness_window, cfg.objective_key is not None)
        fitness = table.fitness
        self.last_fitness = fitness
        _check_objective_key(table, cfg.objective_key, g)
        failed, why = self._gather_failures(g, table)
        if why is not None:
            return self._failed_generation(g, table, failed, why, t0)

        timer.start("explore")
        early, hit, out_of_time = self._ending(g, table, t0)
        last = g == cfg.generations - 1 or early or out_of_time or hit
        donors = {} if last else self._choose_donors(g, table, list(failed))
        for loser in donors:
            self.last_exploit[loser] = g
        new_hparams = self._explore(g, donors, fitness, last)

        timer.start("log")
        self.activity = f"logging (generation {g})"
        self._log_generation(g, table, donors, failed, hit, new_hparams)

        timer.start("exchange")
        self.activity = f"exchanging weights (generation {g}, backend {cfg.backend})"
        self._exploit(donors, table, new_hparams)
        used_hparams, self.hparams = self.hparams, new_hparams

        stop = self.comm.any(self.should_stop())
        if stop or last or (g + 1) % cfg.checkpoint_every == 0:
            timer.start("checkpoint")
            self.activity = f"writing the checkpoint of generation {g}"
            self.save_checkpoint(g, finished=last)
        more = g < cfg.generations - 1
        return Generation(
            g, table, donors, time.perf_counter() - t0, timer.stop(), used_hparams, stop, early, hit and more,
            out_of_time and more,
        )  # fmt: skip

    def _train_and_measure(self, g: int) -> np.ndarray | None:
        """Train every local member, then measure their fitness: this rank's rows (None: a stop came first)."""
        cfg, timer = self.cfg, self.timer
        self.local_failures = {}
        for m in self.local_ids:
            timer.start("train")
            self.activity = f"training member {m} (generation {g})"
            if self.should_stop():
                break
            if cfg.share_experience:
                self.sharers[m].mark_experience()
            failure = self._train(m, g, self.should_stop)
            if failure is not None:
                self.local_failures[m] = failure
        if self.should_stop():
            return None
        timer.start("fitness")
        return self._local_rows(g)

    def _ending(self, g: int, table: FitnessTable, t0: float) -> tuple[bool, bool, bool]:
        """Whether the run ends after generation ``g``: (the callback, the target, the time limit); every rank alike."""
        cfg = self.cfg
        early = self._ask_callback(g, table)
        hit = target.reached(table.fitness, cfg.target, cfg.target_metric) and not early  # same table everywhere
        # --time-limit: end now if another generation as long as this one, then the final evaluation, would not fit
        spent = time.perf_counter() - t0
        out_of_time = (
            self.deadline is not None
            and time.monotonic() + spent + self._final_phase_estimate(spent, len(self.local_ids)) > self.deadline
        )
        return early, hit, self.comm.any(out_of_time) and not early and not hit

    def _log_generation(
        self,
        g: int,
        table: FitnessTable,
        donors: dict[int, int],
        failed: dict[int, dict[str, Any]],
        hit: bool,
        new_hparams: list[dict[str, Value]],
    ) -> None:
        """Each member's TensorBoard log; on rank 0 the history and lineage records; missing-fitness warnings."""
        for m in self.local_ids:
            self.members[m].log(float(table.fitness[m]), self.hparams[m], donors.get(m))
        if self.comm.rank == 0:  # every rank could build the rows; only rank 0 writes them
            self.log.write_history(self._history_rows(g, table, donors, failed, hit))
            self.log.write_lineage(self._lineage_rows(g, table, donors, new_hparams))
        self._echo_missing(g, table, failed)

    def _gather_failures(self, g: int, table: FitnessTable) -> tuple[dict[int, dict[str, Any]], str | None]:
        """Every member's failure in generation ``g`` (all ranks see all), and why they end the run (None: not)."""
        ids = table.failed
        self.broken = set(ids)
        if not ids:
            return {}, None
        failed: dict[int, dict[str, Any]] = {}
        for part in self.comm.allgather_obj(self.local_failures):
            failed.update(part)
        self.failure_total += len(ids)
        why = failures.stop_reason(len(ids), self.population, self.failure_total, self.tolerated, f"generation {g}")
        return failed, why

    def _echo_missing(self, g: int, table: FitnessTable, failed: dict[int, dict[str, Any]]) -> None:
        """Rank 0: one warning per failed member, and which members have no fitness and why."""
        if self.comm.rank != 0:
            return
        for m in sorted(failed):
            self.echo(failures.failure_line(f"generation {g}", m, failed[m]))
        for line in missing_fitness_lines(f"generation {g}", {m: table.missing(m) for m in range(self.population)}):
            self.echo(line)

    def _failed_generation(
        self, g: int, table: FitnessTable, failed: dict[int, dict[str, Any]], why: str, t0: float
    ) -> Generation:
        """Failures end the run after generation ``g``: its records; no exploit, no checkpoint."""
        self.mutations = {}
        if self.comm.rank == 0:
            self.log.write_history(self._history_rows(g, table, {}, failed))
        self._echo_missing(g, table, failed)
        wall = time.perf_counter() - t0
        return Generation(g, table, {}, wall, self.timer.stop(), self.hparams, stop=True, failed=why)

    def _ask_callback(self, g: int, table: FitnessTable) -> bool:
        """Whether the user's callback (run on every rank) asks any rank to end the run after generation ``g``."""
        if self.callback is None:
            return False
        self.activity = f"running the callback (generation {g})"
        summary = GenerationSummary(
            generation=g,
            generations=self.cfg.generations,
            timesteps=table.timesteps,
            fitness=[float(f) for f in table.fitness],
            hparams=[dict(h) for h in self.hparams],
        )
        return self.comm.any(bool(self.callback(summary)))

    def save_checkpoint(self, g: int, finished: bool) -> None:
        """Write every member and the population state after generation ``g``, atomically."""
        if self.comm.rank == 0:
            checkpoint.begin(self.run_dir, g)
        self.comm.barrier()
        for m in self.local_ids:
            member = self.members[m]
            checkpoint.write_member(self.run_dir, g, m, member.checkpoint_tensors(), member.checkpoint_meta())
        self.comm.barrier()
        if self.comm.rank == 0:
            history_bytes, lineage_bytes = self.log.sizes()
            state = checkpoint.PopulationState(
                g, finished, self.population, self.hparams, list(self.last_fitness), history_bytes, lineage_bytes,
                list(self.start_fitness), self.observations, list(self.last_exploit), self.failure_total,
                self.member_threads,
            )  # fmt: skip
            checkpoint.commit(self.run_dir, g, state, keep=self.cfg.keep_checkpoints)
        self.comm.barrier()

    def _choose_donors(self, g: int, table: FitnessTable, failed: list[int]) -> dict[int, int]:
        """Who copies whom after generation ``g`` (the same on every rank); a failed member always copies."""
        spg = self.cfg.steps_per_generation
        seen = [
            Seen(m, float(table.fitness[m]), table.scores(m), int(g - self.last_exploit[m]) * spg, m in failed)
            for m in range(self.population)
        ]  # fmt: skip
        self.choice = self.pbt.choose(g, seen)
        return self.choice.donors

    def _explore(self, g: int, donors: dict[int, int], fitness: np.ndarray, last: bool) -> list[dict[str, Value]]:
        """New hyperparameters for every member: losers mutate from their donor's, the rest keep theirs.

        With ``--mutate all`` every member mutates (from its own, unless it
        copied a donor); :attr:`mutations` keeps what each mutation decided.
        """
        cfg = self.cfg
        if cfg.explore == "pb2":
            for m in range(self.population):
                observe(self.observations, g, self.hparams[m], float(fitness[m] - self.start_fitness[m]))
        new_hparams = [dict(h) for h in self.hparams]
        self.mutations = {}
        chosen: list[dict[str, Value]] = []
        # PB2's kernel depends only on the observations: fit it once for all of this generation's losers
        pb2_rank0 = cfg.explore == "pb2" and bool(donors) and self.comm.rank == 0
        kernel = self.pbt.kernel(self.observations) if pb2_rank0 else None
        mutating = sorted(donors) if cfg.mutate == "exploited" or last else range(self.population)
        # PB2: rank 0 decides and broadcasts, GP linear algebra may round differently elsewhere
        here = cfg.explore != "pb2" or self.comm.rank == 0
        for loser in mutating:
            origin = self.hparams[self.choice.hparams_source(loser)]
            if loser in self.choice.unexplored:  # MF-PBT's migrants keep what they take
                new_hparams[loser] = dict(origin)
                continue
            new, mutation = self.pbt.explore(g, loser, origin, self.observations, kernel, chosen, here)
            if mutation is not None:
                self.mutations[loser] = mutation
            if new is not None:
                new_hparams[loser] = new
        if cfg.explore == "pb2" and donors:
            new_hparams = self.comm.bcast_obj(new_hparams)
        self.start_fitness = start_fitness(fitness, donors)
        return new_hparams

    def _history_rows(
        self, g: int, table: FitnessTable, donors: dict[int, int], failed: dict[int, dict[str, Any]], hit: bool = False
    ) -> list[HistoryRow]:
        return history_rows(g, table, self.hparams, self.owner, donors, failed, self.mutations, self.choice, hit)

    def _lineage_rows(
        self, g: int, table: FitnessTable, donors: dict[int, int], new_hparams: list[dict[str, Value]]
    ) -> list[LineageRow]:
        return lineage_rows(g, table, self.hparams, new_hparams, donors, self.mutations, self.choice)

    # -- whole run ---------------------------------------------------------------
    def run(self) -> Status:
        """Run the remaining generations and save the final models.

        Returns:
            ``finished``; ``callback`` when the callback ended the run early, ``target`` when
            ``--target-fitness`` was reached,
            ``time_limit`` when ``--time-limit`` did (final models written); ``interrupted`` when a stop was requested
            (the last complete checkpoint then holds every finished generation).
        """
        cfg = self.cfg
        t_start = time.perf_counter()
        for g in range(self.start, cfg.generations):
            summary = self.generation(g)
            if summary is None:
                return Status.INTERRUPTED
            self._report(summary, time.perf_counter() - t_start, g - self.start + 1)
            if summary.failed is not None:
                self._finish_failed(summary.failed)
                return Status.FAILED
            if summary.early:
                self.echo(f"evo-mpi: the callback ended the run after generation {g + 1}/{cfg.generations}")
                self.finish()
                return Status.STOPPED_BY_CALLBACK
            if summary.target:
                where = f"after generation {g + 1}/{cfg.generations}; the run ends"
                self.echo(target.reached_line(self.last_fitness, cfg.target_metric, cfg.target_fitness, where))
                self.finish()
                return Status.TARGET_REACHED
            if summary.out_of_time:
                self.echo(
                    f"evo-mpi: --time-limit {cfg.time_limit}: another generation would not fit; the run ends after "
                    f"generation {g + 1}/{cfg.generations}"
                )
                self.finish()
                return Status.TIME_LIMIT
            if summary.stop and g < cfg.generations - 1:
                return Status.INTERRUPTED
        self.finish()
        return Status.FINISHED

    def _report(self, summary: Generation, elapsed: float, done: int) -> None:
        g, table, donors, wall, timings = (
            summary.generation,
            summary.table,
            summary.donors,
            summary.wall,
            summary.timings,
        )
        overhead_s = sum(v for k, v in timings["wall"].items() if k not in ("train", "wait"))
        member = self.members[self.local_ids[0]]
        record = {"generation": g, "rank": self.comm.rank, "total_wall": wall, **timings, **_process_stats()}
        record["first_train_unix"] = self.first_train_unix
        record["state_bytes"] = member.state_nbytes + member.aux_nbytes(self.cfg.copy_replay_buffer)
        if self.cfg.share_experience:
            record["shared_bytes"] = self.shared_bytes  # transitions of every member, gathered by every rank
        self.timings.write([record])
        if self.comm.rank != 0:
            return
        fitness = table.fitness
        steps = self.population * self.cfg.steps_per_generation
        remaining = self.cfg.generations - g - 1
        failed_now = len(table.failed)
        line = progress_line(
            g,
            self.cfg.generations,
            max(table.timesteps),
            fitness,
            steps / wall if wall > 0 else 0.0,
            len(donors),
            elapsed,
            elapsed / done * remaining,
            overhead_s / wall if wall > 0 else None,
            failures=(failed_now, self.failure_total),
        )
        extra = {
            "timing/overhead_fraction": overhead_s / wall if wall > 0 else 0.0,
            "population/failures": float(failed_now),
            "population/failures_total": float(self.failure_total),
        }
        timesteps = table.timesteps
        returns = None
        if self.cfg.objective_key is not None:
            returns = [mean_finite(table.returns(m)) for m in range(self.population)]
        self.log.report(g, max(timesteps), timesteps, fitness, summary.hparams, len(donors), extra, line, returns)


def history_rows(
    g: int,
    table: FitnessTable,
    hparams: list[dict[str, Value]],
    owner: Callable[[int], int],
    donors: dict[int, int],
    failed: dict[int, dict[str, Any]],
    mutations: dict[int, Mutation],
    choice: Choice,
    hit: bool = False,
) -> list[HistoryRow]:
    """Every member's history row of generation ``g`` (``hparams``: what each trained with)."""
    return [
        HistoryRow(
            step=g,
            member=m,
            rank=owner(m),
            timesteps=table.timesteps[m],
            fitness=float(table.fitness[m]),
            fitness_missing=table.missing(m),
            hparams=hparams[m],
            parent=donors.get(m),
            returns=table.returns(m),
            objectives=table.scores(m) if table.objective else None,
            mutation=mutations.get(m),
            held=held_record(choice.held[m]) if m in choice.held else None,
            hparams_from=choice.hparams_from.get(m),
            failure=Failure.from_json(failed[m]) if m in failed else None,
            target_reached=hit,
        )
        for m in range(len(hparams))
    ]


def lineage_rows(
    g: int,
    table: FitnessTable,
    hparams: list[dict[str, Value]],
    new_hparams: list[dict[str, Value]],
    donors: dict[int, int],
    mutations: dict[int, Mutation],
    choice: Choice,
) -> list[LineageRow]:
    """The exploits after generation ``g``, loser by loser."""
    return [
        LineageRow(
            step=g,
            loser=loser,
            winner=donor,
            timesteps=table.timesteps[loser],
            loser_fitness=float(table.fitness[loser]),
            winner_fitness=float(table.fitness[donor]),
            old_hparams=hparams[loser],
            new_hparams=new_hparams[loser],
            mutation=mutations.get(loser),
            hparams_from=choice.hparams_from.get(loser),
        )
        for loser, donor in sorted(donors.items())
    ]


def _check_objective_key(table: FitnessTable, key: str | None, g: int) -> None:
    """Every rank alike: a ConfigError when episodes ended and none had ``--fitness info:KEY``'s key."""
    if table.no_key:
        raise ConfigError(
            [
                f"--fitness info:{key}: episodes ended (member(s) {table.no_key}, generation {g}) and no final info "
                f"had {key!r}; check the key (e.g. info:is_success) or use --fitness return"
            ]
        )


def _process_stats() -> dict[str, Any]:
    """The process now: peak memory (MB), the time, torch's threads (a timings row's)."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"peak_rss_mb": peak_mb, "unix": time.time(), "torch_threads": torch_threads()}
