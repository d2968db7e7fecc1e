"""Asynchronous PBT (``--mode async``): no generation barrier; the population's budget goes to whoever is free.

Each rank loops: claim an interval of the budget (a ticket), train its member
with the fewest steps for ``steps_per_generation`` steps, measure fitness,
keep a snapshot of the state that fitness was measured with, decide with the
newest published record of every member (the sync rules, applied to what this
rank has seen), exploit by fetching the donor's snapshot from its owner, which
serves it from inside its own training loop, explore, publish the record to
every rank, checkpoint the member. Between start-up and the end nothing waits
for all ranks: tickets come from rank 0's counter, records and snapshots move
point to point (:class:`~evo_mpi.comm.Mailbox`). At the end every rank keeps
serving until all have stopped (``Ibarrier``), then final models are written
from each member's last snapshot.

One process with several members runs the same loop without MPI and is
bit-reproducible; with several ranks the order of events depends on timing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from . import checkpoint, failures, target
from .async_mail import AsyncMail, Snapshot
from .comm import Comm
from .config import Config
from .decision import Held, held_record, observe
from .fitness import fitness_call, mean_finite, missing_fitness_lines, missing_reason
from .lineage import read_history
from .outputs import async_progress_line
from .pb2 import MAX_OBSERVATIONS, Observation
from .records import Failure, HistoryRow, IntervalFields, LineageRow
from .run_log import trim_to_steps
from .scheduler import torch_threads
from .space import Value
from .status import RunContext, Status
from .step import Seen


class AsyncEngine(AsyncMail):
    """Runs asynchronous PBT for one rank's members."""

    def __init__(
        self, cfg: Config, comm: Comm, run_dir: str, ctx: RunContext | None = None, resuming: bool = False
    ) -> None:
        """``resuming``: every member continues from its own last checkpoint (if it has one)."""
        no_callback = dataclasses.replace(ctx or RunContext(), callback=None)  # no generations to call back
        super().__init__(cfg, comm, run_dir, no_callback)
        #: The budget in intervals of ``steps_per_generation`` steps: the same total as sync mode.
        self.budget = self.population * cfg.generations
        #: The newest record of every member this rank knows: what it decides with (its own members' are
        #: current, even before publication).
        self.known: dict[int, HistoryRow] = {}
        #: The newest *published* record of every member: what the reports show. An own member's new record
        #: is in ``known`` while it decides (and waits for a donor), before it is published and counted.
        self.published: dict[int, HistoryRow] = {}
        #: Intervals each local member has completed (its next interval's index).
        self.done: dict[int, int] = {m: 0 for m in self.local_ids}
        self.start_fitness: dict[int, float] = {m: math.nan for m in self.local_ids}
        #: Each local member's step count when it last copied a donor (0: never); --ready-after counts from it.
        self.exploit_steps: dict[int, int] = {m: 0 for m in self.local_ids}
        self.snapshots: dict[int, Snapshot] = {}
        #: Records of each member this rank took in this launch, its own included (to drain every one at the end).
        self.receive_count = np.zeros(self.population, dtype=np.int64)
        #: Records each local member published in this launch.
        self.publish_count = {m: 0 for m in self.local_ids}
        self.observations: list[Observation] = []
        self.target_hit = False  # rank 0: --target-fitness reached
        self.failure_stop: str | None = None  # rank 0: why member failures end the run (no more intervals)
        self.last_interval_s: dict[int, float] = {}
        self._init_mail()
        self.train_cpu_s = 0.0
        self.started = time.time()
        #: Torch threads each local member trained with, from its checkpoint (a resume warns when they change).
        self.saved_threads: dict[int, int] = {}
        self._start(resuming)

    def _start(self, resuming: bool) -> None:
        """Restore the local members (a resume), check layouts, learn every member's latest record, open logs."""
        if resuming:
            for m in self.local_ids:
                self._restore(m)
            self._log_rebuilds()
        local = {m: (self.done[m], self.known.get(m)) for m in self.local_ids}
        self._check_layouts(None, self.saved_threads)
        # start-up collective: every member's latest record and interval count (all tickets already used)
        everyone = {m: v for part in self.comm.allgather_obj(local) for m, v in part.items()}
        self.known = {m: rec for m, (_, rec) in everyone.items() if rec is not None}
        self.published = dict(self.known)
        self.tickets = sum(done for done, _ in everyone.values())
        #: Records published before this launch (a resume): the report's count, and W&B's step, go on from them.
        self.records_before = self.tickets
        if resuming and self.comm.rank == 0:
            trim_to_steps(self.run_dir, {m: done for m, (done, _) in everyone.items()})
        self._open_logs()
        if resuming and self.comm.rank == 0:  # the failures of the intervals the checkpoints hold
            self.failure_total = sum(1 for r in read_history(self.run_dir) if r.get("failure"))
        if resuming and self.cfg.explore == "pb2":
            rows = [HistoryRow.from_json(r) for r in read_history(self.run_dir)]
            self.observations = [
                Observation(float(r.step), dict(r.hparams), r.fields.delta)
                for r in rows
                if math.isfinite(r.fields.delta) and r.step < everyone[r.member][0]
            ][-MAX_OBSERVATIONS:]

    # -- resume --------------------------------------------------------------------------------------
    def _restore(self, m: int) -> None:
        done = checkpoint.intervals(self.run_dir, m)
        if not done:
            return  # the member never finished an interval: it starts afresh
        self.activity = f"loading member {m}'s checkpoint of interval {done[-1]}"
        tensors, meta, arrays = checkpoint.load_interval(self.run_dir, m, done[-1])
        self.members[m].restore(tensors, meta.member)
        self.done[m], self.start_fitness[m], self.exploit_steps[m] = meta.done, meta.start_fitness, meta.exploit_steps
        if meta.torch_threads is not None:  # written since the resume warning covers async mode
            self.saved_threads[m] = meta.torch_threads
        self.known[m] = meta.record
        self.snapshots[m] = Snapshot(meta.record, arrays["snapshot"], arrays["snapshot_aux"])

    # -- records -------------------------------------------------------------------------------------
    def _take_record(self, record: HistoryRow) -> None:
        """A published record (own or received): update the board; rank 0 writes history and lineage."""
        m = record.member
        self.receive_count[m] += 1
        current = self.known.get(m)
        if current is None or record.step >= current.step:
            self.known[m] = record
        shown = self.published.get(m)
        if shown is None or record.step >= shown.step:
            self.published[m] = record
        if self.cfg.explore == "pb2":
            observe(self.observations, record.step, record.hparams, record.fields.delta)
        if self.comm.rank == 0:  # rank 0 writes the logs and watches the target and the failures
            fitness = (
                [_fit(self.published.get(i)) for i in range(self.population)] if self.cfg.target is not None else []
            )
            if not self.target_hit and target.reached(fitness, self.cfg.target, self.cfg.target_metric):
                self.target_hit = True  # rank 0 hands out no more intervals: every rank stops at its next claim
                record = record.replace(target_reached=True)
                where = f"(member {m}, interval {record.step}); ranks stop at their next interval end"
                self.echo(target.reached_line(fitness, self.cfg.target_metric, self.cfg.target_fitness, where))
            self.log.write_history([record])
            if record.failure is not None:
                self._count_failure(m, record)
            for line in missing_fitness_lines(f"member {m} interval {record.step}", {m: record.fitness_missing}):
                self.echo(line)
            if record.parent is not None:
                self.log.write_lineage([_lineage_row(record)])
            total = self.records_before + int(self.receive_count.sum())
            if total % self.population == 0:
                self._report(total)

    def _count_failure(self, m: int, record: HistoryRow) -> None:
        """Rank 0: a published failure; stop handing out intervals once failures end the run."""
        self.failure_total += 1
        assert record.failure is not None
        self.echo(failures.failure_line(f"interval {record.step}", m, record.failure.to_json()))
        if self.failure_stop is None:
            latest = self.published
            broken = sum(1 for i in range(self.population) if i in latest and latest[i].failure is not None)
            total, tolerated = self.failure_total, self.tolerated
            why = failures.stop_reason(broken, self.population, total, tolerated, "its latest interval")
            if why is not None:
                self.failure_stop = why
                self.echo(f"evo-mpi: {why}: ranks stop at their next interval end")

    def _report(self, total: int) -> None:
        """Rank 0, every ``population`` records: TensorBoard and a progress line, from the published records."""
        latest = self.published
        fitness = np.array([_fit(latest.get(m)) for m in range(self.population)])
        steps = sum(r.timesteps for r in latest.values())
        exploits = sum(1 for r in latest.values() if r.parent is not None)
        line = async_progress_line(total, self.budget, steps, fitness, time.time() - self.started, self.failure_total)
        timesteps = [latest[m].timesteps if m in latest else 0 for m in range(self.population)]
        hparams = [dict(latest[m].hparams) if m in latest else {} for m in range(self.population)]
        extra = {"population/failures_total": float(self.failure_total)}
        returns = None
        if self.cfg.objective_key is not None:
            returns = [mean_finite(latest[m].returns) if m in latest else math.nan for m in range(self.population)]
        self.log.report(
            total // self.population - 1, steps, timesteps, fitness, hparams, exploits, extra, line, returns
        )

    # -- one interval --------------------------------------------------------------------------------
    def _next_member(self) -> int:
        """The local member with the fewest steps (ties: lowest id).

        Each completed interval counts as at least ``steps_per_generation`` steps, so a member that
        cannot train (diverged) is not picked forever.
        """
        spg = self.cfg.steps_per_generation
        return min(self.local_ids, key=lambda m: (max(self.members[m].timesteps, self.done[m] * spg), m))

    def interval(self, m: int) -> bool:
        """Train member ``m`` one interval, publish, decide, exploit and explore; False if a stop cut it short."""
        cfg, member, k = self.cfg, self.members[m], self.done[m]
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.activity = f"training member {m} (interval {k})"
        if cfg.share_experience:
            self._apply_experience()
            self.sharers[m].mark_experience()
        failure = self._train(m, k, self._poll)
        train_cpu = time.process_time() - cpu0
        self.train_cpu_s += train_cpu
        if self._stopping():
            return False  # the interval is abandoned: the member resumes from its last checkpoint
        record, fitness = self._measure(m, k, failure)
        if cfg.share_experience:
            self._share_experience(m)
        self.snapshots[m] = Snapshot(record.replace(), member.pack().copy(), member.pack_aux(False).copy())
        self.known[m] = record
        self.activity = f"deciding for member {m} (interval {k})"
        donor, held, seen = self._decide(m, k)
        record.fields.seen = seen
        if held is not None:
            record.held = held_record(held)
        used = record.hparams
        record.fields.new_hparams = used
        self.start_fitness[m] = fitness
        if donor is not None:
            self._exploit(m, k, donor, record)
        elif cfg.mutate == "all":
            new = self._explore(m, k, used, record)
            self._take_hparams(m, new, record.mutation)
            record.fields.new_hparams = new
        member.log(fitness, used, record.parent)
        self.done[m] = k + 1
        self.publish_count[m] += 1
        self._publish(record)
        self._checkpoint(m, k, record)
        wall = time.perf_counter() - t0
        self.last_interval_s[m] = wall
        self.timings.write(
            [
                {
                    "interval": k,
                    "member": m,
                    "rank": self.comm.rank,
                    "train_cpu": train_cpu,
                    "total_wall": wall,
                    "fetch_s": record.fields.fetch_s,
                    "unix": time.time(),
                }
            ]
        )
        return True

    def _measure(self, m: int, k: int, failure: dict[str, Any] | None) -> tuple[HistoryRow, float]:
        """Member ``m``'s record after interval ``k`` so far, and its fitness (NaN when training failed)."""
        member = self.members[m]
        self.activity = f"computing fitness of member {m} (interval {k})"
        fitness = math.nan
        if failure is None:
            fit, failure = self._attempt(m, k, "measuring fitness", fitness_call(member, k))
            fitness = math.nan if fit is None else float(fit)
        scores, lengths = member.episode_stats()
        key = self.cfg.objective_key
        returns = scores if key is None else member.episode_returns()  # type: ignore[attr-defined]
        missing = failures.FAILED if failure is not None else None
        if missing is None and not math.isfinite(fitness):
            missing = missing_reason(fitness, len(returns), bool(getattr(member, "diverged", False)))
        record = HistoryRow(
            step=k,
            member=m,
            rank=self.comm.rank,
            timesteps=int(member.timesteps),
            fitness=fitness,
            fitness_missing=missing,
            failure=None if failure is None else Failure.from_json(failure),
            returns=list(returns),
            objectives=list(scores) if key is not None else None,
            hparams=dict(member.hparams),
            async_fields=IntervalFields(
                wall=time.time() - self.started,
                unix=time.time(),
                lengths=list(lengths),
                delta=fitness - self.start_fitness[m],
                since_exploit=int(member.timesteps) - self.exploit_steps[m],
            ),
        )
        return record, fitness

    def _exploit(self, m: int, k: int, donor: int, record: HistoryRow) -> None:
        """Member ``m`` takes ``donor``'s latest snapshot (from its owner), then explores; noted in ``record``."""
        member = self.members[m]
        t1 = time.perf_counter()
        snap = self.snapshots[donor] if donor in self.members else self._fetch(donor)
        fetch_s = time.perf_counter() - t1
        given = snap.record
        if given is None:  # a member with no record yet has no snapshot (cannot happen once it was seen)
            return
        member.match_layout(given.hparams)  # the donor's architecture, to load its state
        if self.cfg.objective_key is None:
            self._adopt(m, snap.state, snap.aux, given.returns, given.fields.lengths)
        else:
            assert given.objectives is not None
            self._adopt(m, snap.state, snap.aux, given.objectives, given.fields.lengths, given.returns)
        new = self._explore(m, k, given.hparams, record)
        self._take_hparams(m, new, record.mutation)
        self.start_fitness[m] = given.fitness
        self.exploit_steps[m] = int(member.timesteps)
        record.parent = donor
        fields = record.fields
        fields.parent_step, fields.parent_fitness = given.step, given.fitness
        fields.fetch_s = fetch_s if donor not in self.members else 0.0
        fields.new_hparams = new

    def _checkpoint(self, m: int, k: int, record: HistoryRow) -> None:
        """Member ``m`` after interval ``k``, with the snapshot its published record was measured with."""
        self.activity = f"writing member {m}'s checkpoint (interval {k})"
        member, snap = self.members[m], self.snapshots[m]
        assert snap.record is not None
        kept = snap.record.replace(parent=record.parent)  # the snapshot's row with the decision's outcome
        kept.fields.parent_step, kept.fields.seen = record.fields.parent_step, record.fields.seen
        state = checkpoint.IntervalState(
            member.checkpoint_meta(), k + 1, self.start_fitness[m], self.exploit_steps[m], kept, torch_threads()
        )
        checkpoint.write_interval(
            self.run_dir, m, k, member.checkpoint_tensors(), state, {"snapshot": snap.state, "snapshot_aux": snap.aux},
            keep=self.cfg.keep_checkpoints, between=self.serve,
        )  # fmt: skip

    def _decide(self, m: int, k: int) -> tuple[int | None, Held | None, list[int]]:
        """The donor ``m`` copies after interval ``k`` (None: keep going), the margin's refusal, the records seen."""
        ids = sorted(self.known)
        seen = [self.known[i].step if i in self.known else -1 for i in range(self.population)]
        if len(ids) < 2:
            return None, None, seen
        rows = [self.known[i] for i in ids]
        view = [Seen(r.member, r.fitness, r.scores(), r.fields.since_exploit, r.failure is not None) for r in rows]
        choice = self.pbt.choose(k, view, deciding=m)
        return choice.donors.get(m), choice.held.get(m), seen

    def _explore(self, m: int, k: int, donor_hparams: dict[str, Value], record: HistoryRow) -> dict[str, Value]:
        """Member ``m``'s hyperparameters after interval ``k``, mutated from ``donor_hparams``; notes the mutation."""
        new, mutation = self.pbt.explore(k, m, donor_hparams, self.observations)
        if mutation is not None:
            record.mutation = mutation
        assert new is not None
        return new

    # -- whole run -----------------------------------------------------------------------------------
    def run(self) -> Status:
        """Spend the budget, then stop together; ``finished``, ``time_limit`` or ``interrupted`` (like sync mode)."""
        self.first_train_unix = time.time()
        status = Status.FINISHED
        while True:
            self.serve()
            if self._stopping():
                status = Status.INTERRUPTED
                break
            m = self._next_member()
            last_s = self.last_interval_s.get(m, 0.0)  # --time-limit: another interval, then the final evaluation
            if self.deadline is not None and time.monotonic() + last_s + self._final_phase_estimate(last_s) > (
                self.deadline
            ):
                status = Status.TIME_LIMIT
                break
            if not self._claim():
                break
            if not self.interval(m):
                status = Status.INTERRUPTED
                break
        status, failed_why = self._stop_together(status)
        if status == Status.INTERRUPTED:
            return status
        if status == Status.TIME_LIMIT:
            self.echo(f"evo-mpi: --time-limit {self.cfg.time_limit}: the run ends before its budget is spent")
        for m in self.local_ids:  # final models are the states the last published fitness was measured with
            snap = self.snapshots.get(m)
            if snap is not None and snap.record is not None:
                self.members[m].match_layout(snap.record.hparams)
                self.members[m].unpack(snap.state)
                if snap.aux.nbytes:
                    self.members[m].unpack_aux(snap.aux, False)
                self.members[m].apply_hparams(snap.record.hparams)
        if status == Status.FAILED:
            assert failed_why is not None
            self._finish_failed(failed_why)
            return status
        self.finish()
        return status

    def _stop_together(self, status: Status) -> tuple[Status, str | None]:
        """Serve until every rank stopped, then agree on how the run ended (and why failures ended it)."""
        self.activity = "serving snapshots until every rank has stopped"
        t_end = time.time()
        t0 = time.perf_counter()
        self.box.barrier(self.serve)
        drain_s = time.perf_counter() - t0
        # the end: collectives are allowed again
        ends = self.comm.allgather_obj(
            {
                "status": status,
                "target": self.target_hit,
                "experience": self.experience_sent,
                "published": self.publish_count,
                "stops": self.stops_sent,
                "known": self._own_known(),
                "failed": self.failure_stop,
            }
        )
        self._drain(ends)
        self.box.close()
        statuses = {e["status"] for e in ends}
        if Status.INTERRUPTED not in statuses and any(e["target"] for e in ends):
            statuses.add(Status.TARGET_REACHED)
        failed_why = next((e["failed"] for e in ends if e["failed"] is not None), None)
        if failed_why is not None:
            statuses.add(Status.FAILED)
        status = next(
            (s for s in (Status.INTERRUPTED, Status.FAILED, Status.TARGET_REACHED, Status.TIME_LIMIT) if s in statuses),
            Status.FINISHED,
        )
        for e in ends:
            self.known.update(e["known"])
        self.broken = {m for m, rec in self.known.items() if rec.failure is not None}
        self.last_fitness = np.array([_fit(self.known.get(m)) for m in range(self.population)])
        self._write_summary(status, t_end, drain_s)
        return status, failed_why

    def _final_candidates_here(self) -> list[int]:
        """Local members the final evaluation may take: fitness still changes, so as many as could be candidates."""
        return self.local_ids[: min(self.cfg.final_eval_top, len(self.local_ids))]

    def _own_known(self) -> dict[int, HistoryRow]:
        return {m: self.known[m] for m in self.local_ids if m in self.known}


def _fit(record: HistoryRow | None) -> float:
    """A record's fitness (NaN when there is no record or its fitness is missing)."""
    return math.nan if record is None else record.fitness


def _lineage_row(record: HistoryRow) -> LineageRow:
    """The exploit an async row records (it has a parent)."""
    assert record.parent is not None
    fields = record.fields
    return LineageRow(
        step=record.step,
        loser=record.member,
        winner=record.parent,
        winner_step=fields.parent_step,
        timesteps=record.timesteps,
        loser_fitness=record.fitness,
        winner_fitness=fields.parent_fitness,
        old_hparams=record.hparams,
        new_hparams=fields.new_hparams,
    )
