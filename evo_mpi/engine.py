"""What both modes share (:class:`EngineBase`) and the synchronous scheduler (:class:`Engine`).

A generation: train every local member -> measure fitness -> gather the
table (every rank) -> decide (:mod:`evo_mpi.decision`: donors, mutation,
explore) -> log -> move states (:mod:`evo_mpi.comm`) -> checkpoint. Every rank
holds the whole population's hyperparameters and repeats every decision from
seeded streams, so no hyperparameters travel (PB2's choices, computed on rank
0, are broadcast). :class:`EngineBase` holds the members, the start-up layout
check, adopting a donor's state, failures and the final pick.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import algorithms, champion, checkpoint, decision, failures, seeding, target
from .arch import WeightNoise
from .atomic import save_atomic, write_json_atomic, write_text_atomic
from .comm import Comm, ExchangeError
from .config import Config, ConfigError
from .decision import Choice, Explorer, View, held_record, observe
from .member import Member, ObjectiveMissing
from .outputs import JsonlWriter, PhaseTimer, PopulationBoard, Reporter, member_tag, progress_line
from .pb2 import MAX_OBSERVATIONS, Observation, fit_observations
from .protocol import EvaluatesFinal, MemberFactory, PBTMember, Recovers, SharesExperience
from .resolvers import resolve_member
from .selection import rank_order
from .space import Prior, Value, format_arch, parse_space, sample_hparams
from .status import Callback, GenerationSummary, Status

#: Most recent observations PB2 keeps: the ones its GP uses (one constant, in pb2.py).
PB2_MAX_OBSERVATIONS = MAX_OBSERVATIONS
#: The auxiliary state of a member that has none to move.
_NO_AUX = np.zeros(0, dtype=np.uint8)

#: Columns of the gathered table before the per-episode returns and lengths (``_DIV``: 1 if diverged,
#: ``_FAIL``: 1 if the member's training or fitness raised in this generation).
_FIT, _STEPS, _NEP, _DIV, _FAIL, _NOKEY = 0, 1, 2, 3, 4, 5
_COLS = 6

T = TypeVar("T")

#: Why a fitness is missing, as ``history.jsonl``'s ``fitness_missing`` and the warning say.
NO_EPISODE, DIVERGED = "no completed episode yet", "diverged"
#: The failure phase of a member whose envs could not be rebuilt before it trains again.
REBUILDING = "rebuilding envs"


def missing_reason(fitness: float, episodes: int, diverged: bool) -> str | None:
    """Why ``fitness`` is not finite: the member diverged, or it has no completed episode yet (None: it is finite)."""
    if math.isfinite(fitness):
        return None
    if diverged:
        return DIVERGED
    return NO_EPISODE if episodes == 0 else "non-finite"


def initial_hparams(cfg: Config, space: Mapping[str, Prior], population: int) -> list[dict[str, Value]]:
    """Every member's first hyperparameters: drawn from the priors by (seed, member), the architecture at
    ``--net-arch`` (mutation grows and shrinks it), member 0 at ``--start-hparams`` (``--zoo``: the zoo's).
    """
    hparams = [sample_hparams(space, seeding.stream(cfg.seed, seeding.INIT, m)) for m in range(population)]
    if "net_arch" in space and space["net_arch"].kind == "arch":
        for h in hparams:
            h["net_arch"] = format_arch(cfg.net_arch)
    hparams[0].update(cfg.start_hparams)  # the draws of the other members stay the same
    return hparams


class EngineBase:
    """What both modes share: the rank's members, the start-up layout check, output files, final models."""

    def __init__(
        self,
        cfg: Config,
        comm: Comm,
        run_dir: str,
        echo: Callable[[str], None] = print,
        should_stop: Callable[[], bool] = lambda: False,
        env_factory: Callable[..., Any] | None = None,
        callback: Callback | None = None,
        member_factory: MemberFactory | None = None,
        deadline: float | None = None,
        device: str = "cpu",
    ) -> None:
        self.cfg = cfg
        #: The torch device of this rank's SB3 members (``--device`` resolved for this rank).
        self.device = device
        #: ``time.monotonic()`` by which this launch must have written its final models (``--time-limit``).
        self.deadline = deadline
        self.callback = callback
        self.should_stop = should_stop
        self.comm = comm
        self.run_dir = run_dir
        self.echo = echo if comm.rank == 0 else (lambda _line: None)
        self.population = comm.size * cfg.agents_per_rank
        self.space = parse_space(cfg.space_specs)
        self.hparams = initial_hparams(cfg, self.space, self.population)
        self.local_ids = list(range(comm.rank * cfg.agents_per_rank, (comm.rank + 1) * cfg.agents_per_rank))
        #: The user's env factory (None: ``cfg.env_id``); the final evaluation builds its env with it.
        self.env_factory = env_factory
        self.activity = "creating members"
        self.members: dict[int, PBTMember] = {}
        self._build_members(member_factory)
        self._note_episode_length()
        #: --share-experience: the local members as sharers (checked once, here, not at every use).
        self.sharers: dict[int, SharesExperience] = {}
        if cfg.share_experience:
            for m in self.local_ids:
                member = self.members[m]
                if not isinstance(member, SharesExperience):
                    raise TypeError(f"member {m} ({type(member).__name__}) cannot share experience")
                self.sharers[m] = member
        #: The mutation and explore rules (:mod:`evo_mpi.decision`), shared by both modes.
        self.explorer = Explorer(cfg, self.space, "relu" if cfg.member else algorithms.get(cfg.algo).activation)
        #: What each member's mutation after the last generation (async: interval) decided, by member.
        self.mutations: dict[int, dict[str, Any]] = {}
        #: The last decision: donors, losers the exploit margin held, MF-PBT's hyperparameter sources.
        self.choice = Choice({})
        self.last_fitness = np.full(self.population, math.nan)
        #: Member failures in this run so far (sync: all ranks'; async: rank 0's count of published ones).
        self.failure_total = 0
        #: Failures the run tolerates (``--max-failures``; -1: the population size).
        self.tolerated = failures.limit(cfg.max_failures, self.population)
        #: Local members' failures in the current generation (sync) or interval (async): ``history``'s ``failure``.
        self.local_failures: dict[int, dict[str, Any]] = {}
        #: Members whose latest generation (interval) failed: no final model, never the champion.
        self.broken: set[int] = set()
        #: Local members whose envs could not be rebuilt after a failure: they try again before they next train.
        self.unrecovered: set[int] = set()
        #: Wall-clock time (epoch seconds) when this process started its first training step.
        self.first_train_unix: float | None = None
        self.shared_bytes = 0  # --share-experience: transitions gathered by this rank in the last generation
        self.member_threads: list[int] = []
        self.timer = PhaseTimer()
        self.timings = JsonlWriter(os.path.join(run_dir, "timings", f"rank_{comm.rank:03d}.jsonl"))
        self.history: JsonlWriter | None = None
        self.lineage: JsonlWriter | None = None
        self.board: PopulationBoard | None = None
        self.reporter: Reporter | None = None  # rank 0's population reports
        self.wandb: Any = None

    def _build_members(self, member_factory: MemberFactory | None) -> None:
        """Build the rank's members: the SB3 adapter, or the user's factory (``--member``)."""
        cfg = self.cfg
        if member_factory is None and cfg.member:
            member_factory = resolve_member(cfg.member)
        for m in self.local_ids:
            self.activity = f"creating member {m}"
            tb_dir = os.path.join(self.run_dir, "tb", member_tag(m))
            if member_factory is not None:
                self.members[m] = member_factory(m, cfg, self.hparams[m], tb_dir)
            else:
                self.members[m] = Member(
                    m, cfg, self.hparams[m], tb_dir, env_factory=self.env_factory, device=self.device
                )

    def _log_rebuilds(self) -> None:
        """After a resume: each local member's running-episode rebuild (envs, steps replayed, ms) to the timings."""
        stats = [getattr(self.members[m], "rebuild_stats", None) for m in self.local_ids]
        self.timings.write([{"rank": self.comm.rank, "rebuild": s} for s in stats if s is not None])

    def _note_episode_length(self) -> None:
        """Rank 0: say when episodes outlast a generation, so NaN fitness early on is expected, not divergence."""
        if self.comm.rank != 0 or self.cfg.eval_episodes > 0:
            return
        limit = getattr(self.members[self.local_ids[0]], "max_episode_steps", None)
        per_env = self.cfg.steps_per_generation / self.cfg.n_envs
        if isinstance(limit, int) and per_env < limit:
            unit = "interval" if self.cfg.mode == "async" else "generation"
            self.echo(
                f"evo-mpi: episodes of {self.cfg.env_id} last up to {limit} steps and each env steps {per_env:g} per "
                f"{unit} (--steps-per-generation / --n-envs), so fitness may first appear after about "
                f"{math.ceil(limit / per_env)} {unit}s; episodes continue across {unit}s"
            )

    def _check_layouts(self, saved_threads: list[int] | None, saved_here: dict[int, int] | None = None) -> None:
        """Start-up collective: members of one architecture must have one state layout; warn when threads changed.

        ``saved_threads``: every member's thread count from a sync checkpoint; ``saved_here``: this rank's
        members' from their own checkpoints (async mode), gathered here.
        """
        self.activity = "checking that all ranks agree on the member state layout"
        gathered = self.comm.allgather_obj(
            {
                "threads": torch_threads(),
                "layouts": {m: self.members[m].state_layout() for m in self.local_ids},
                "archs": {m: str(self.members[m].hparams.get("net_arch", "")) for m in self.local_ids},
                "saved": saved_here or {},
            }
        )
        groups: dict[str, dict[int, tuple[int, int, str]]] = {}
        for rank in gathered:  # members of another architecture have another layout, rightly
            for m, layout in rank["layouts"].items():
                groups.setdefault(rank["archs"][m], {})[m] = layout
        for group in groups.values():
            check_layouts(group, self.owner)
        #: Torch threads each member trains with (its rank's); a change on resume can change float sums.
        self.member_threads = [int(gathered[self.owner(m)]["threads"]) for m in range(self.population)]
        saved = {int(m): int(t) for rank in gathered for m, t in rank["saved"].items()}
        if saved_threads is None and saved:  # async: members never checkpointed count as unchanged
            saved_threads = [saved.get(m, self.member_threads[m]) for m in range(self.population)]
        self._warn_threads(saved_threads)

    def _open_logs(self, history_bytes: int | None = None, lineage_bytes: int | None = None) -> None:
        """Rank 0: open history, lineage, TensorBoard and W&B; cut the logs back to a checkpoint's sizes if given."""
        if self.comm.rank != 0:
            return
        history_path = os.path.join(self.run_dir, "history.jsonl")
        lineage_path = os.path.join(self.run_dir, "lineage.jsonl")
        if history_bytes is not None:
            checkpoint.truncate(history_path, history_bytes)  # drop records newer than the checkpoint
        if lineage_bytes is not None:
            checkpoint.truncate(lineage_path, lineage_bytes)
        self.history = JsonlWriter(history_path)
        self.board = PopulationBoard(os.path.join(self.run_dir, "tb", "population"))
        self.lineage = JsonlWriter(lineage_path, on_write=self.board.log_exploits)
        if self.cfg.wandb_project:
            from .wandb_log import WandbLogger

            self.wandb = WandbLogger(self.cfg.wandb_project, self.cfg.wandb_entity, self.run_dir, self.cfg.to_dict())
        self.reporter = Reporter(self.board, self.wandb, self.echo)

    def owner(self, member: int) -> int:
        """Rank holding ``member``."""
        return member // self.cfg.agents_per_rank

    def _attempt(
        self,
        m: int,
        step: int,
        phase: str,
        call: Callable[[Callable[[], bool]], T],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> tuple[T | None, dict[str, Any] | None]:
        """Run local member ``m``'s ``call``; if it raises, log the traceback, rebuild its envs, return the failure.

        ``call`` receives the poll to hand the member as its ``should_stop``;
        an error raised by the poll itself (the engine's, not the member's) propagates.
        """
        value, exc = failures.attempt(call, should_stop)
        if exc is None:
            return value, None
        failure = failures.describe(exc, phase)
        unit = "interval" if self.cfg.mode == "async" else "generation"
        failures.log_traceback(
            self.run_dir,
            f"evo-mpi: member {m} on rank {self.comm.rank} failed in {unit} {step} while {phase}: "
            f"{failure['type']}: {failure['message']}",
            exc,
        )
        if phase != REBUILDING:
            self._recover(m, step)
        return None, failure

    def _recover(self, m: int, step: int) -> None:
        """After a failure, local member ``m`` rebuilds its envs; if that raises too, it tries again before it
        next trains (:attr:`unrecovered`), and each such try that fails is a failure of that generation (interval).
        """
        member = self.members[m]
        if not isinstance(member, Recovers):
            return
        unit = "interval" if self.cfg.mode == "async" else "generation"
        self.activity = f"rebuilding member {m}'s envs after its failure ({unit} {step})"
        _, exc = failures.attempt(lambda _poll: member.recover(step))
        if exc is None:
            self.unrecovered.discard(m)
            return
        self.unrecovered.add(m)
        failures.log_traceback(
            self.run_dir,
            f"evo-mpi: member {m} on rank {self.comm.rank} could not rebuild its envs after its failure in {unit} "
            f"{step} (it tries again before it trains next): {type(exc).__name__}: {exc}",
            exc,
        )

    def _train(self, m: int, step: int, should_stop: Callable[[], bool]) -> dict[str, Any] | None:
        """Train local member ``m`` one generation (interval) with failure isolation; its failure, or None.

        A member whose envs could not be rebuilt after an earlier failure rebuilds them first; if that fails
        again, the failure (phase ``rebuilding envs``) is this generation's and it does not train.
        """
        member = self.members[m]
        if m in self.unrecovered and isinstance(member, Recovers):
            _, failure = self._attempt(m, step, REBUILDING, lambda _poll: member.recover(step))
            if failure is not None:
                return failure
            self.unrecovered.discard(m)
        train = functools.partial(member.train, self.cfg.steps_per_generation, step)
        return self._attempt(m, step, "training", train, should_stop)[1]

    def _finish_failed(self, reason: str) -> None:
        """Failures end the run: save the final models of the members not broken now, say why; no champion."""
        self.activity = "saving the final models of the healthy members"
        for m in self.local_ids:
            if m not in self.broken:
                self.members[m].save(os.path.join(self.run_dir, "final", member_tag(m) + ".zip"))
                path = os.path.join(self.run_dir, "final", member_tag(m) + ".vecnormalize.pkl")
                self.members[m].save_normalization(path)
        self.comm.barrier()
        healthy = self.population - len(self.broken)
        resume = (
            "every member continues from its last checkpointed interval"
            if self.cfg.mode == "async"
            else "it continues from the last checkpoint, before these failures"
        )
        models = f"final models of the {healthy} healthy member(s) in {os.path.join(self.run_dir, 'final')}"
        self.echo(
            f"evo-mpi: {reason}: the run stops ({models if healthy else 'no healthy member: no final model'}; "
            f"no best.zip; tracebacks in errors.log). Fix the cause and --resume ({resume}), or resume with a "
            "higher --max-failures"
        )

    def _adopt(
        self,
        m: int,
        state: np.ndarray,
        aux: np.ndarray,
        returns: list[float],
        lengths: list[float],
        episode_returns: list[float] | None = None,
    ) -> None:
        """Local member ``m`` takes a donor's state, its auxiliary state (VecNormalize, replay) and recent episodes.

        ``returns`` are the donor's scores (the objective's samples with ``--fitness info:KEY``, whose
        ``episode_returns`` come beside them). ``m`` already has the donor's architecture (:meth:`match_layout`).
        """
        member = self.members[m]
        member.unpack(state)
        if aux.nbytes:
            member.unpack_aux(aux, self.cfg.copy_replay_buffer)
        if episode_returns is None:
            member.set_episode_stats(returns, lengths)
        else:
            member.set_episode_stats(returns, lengths, episode_returns)  # type: ignore[call-arg]

    def _take_hparams(self, m: int, hparams: dict[str, Value], mutation: dict[str, Any]) -> None:
        """Local member ``m`` takes its new hyperparameters, then any weight noise its mutation decided."""
        self.members[m].apply_hparams(hparams)
        self._mutate_weights(m, mutation)

    def _mutate_weights(self, m: int, record: dict[str, Any]) -> None:
        """Apply a decided weight mutation to local member ``m`` (SB3 adapter)."""
        noise = record.get("weight_noise")
        if noise is not None:
            self.members[m].mutate_weights(WeightNoise(**noise))  # type: ignore[attr-defined]

    def _warn_threads(self, saved: list[int] | None) -> None:
        """Say so when members resume with other torch thread counts than they trained with."""
        if saved is None or len(saved) != self.population:
            return
        changed = [m for m in range(self.population) if saved[m] != self.member_threads[m]]
        if changed:
            self.echo(
                f"warning: member(s) {changed} trained with {sorted({saved[m] for m in changed})} torch thread(s) "
                f"per rank and resume with {sorted({self.member_threads[m] for m in changed})}: float sums may "
                "round differently, so the history may not match an uninterrupted run bit for bit; pass "
                "--torch-threads N with the run's thread count to keep it exact"
            )

    def finish(self) -> int:
        """Save every member's final model, pick the champion, write ``champion.json``, then ``best.zip``.

        ``best.zip``'s presence marks a finished run, so it comes last.
        Returns the champion.
        """
        self.activity = "saving final models"
        for m in self.local_ids:
            if m in self.broken:
                continue  # its last generation (interval) failed: no model to keep
            self.members[m].save(os.path.join(self.run_dir, "final", member_tag(m) + ".zip"))
            self.members[m].save_normalization(os.path.join(self.run_dir, "final", member_tag(m) + ".vecnormalize.pkl"))
        self.comm.barrier()
        report = self._final_pick()
        best = int(report["member"])
        self.comm.barrier()  # champion.json is on disk before best.zip
        if best in self.members:  # best.zip last: it marks the run finished
            self.members[best].save_normalization(os.path.join(self.run_dir, "best.vecnormalize.pkl"))
            tmp = os.path.join(self.run_dir, "best.tmp.zip")
            save_atomic(os.path.join(self.run_dir, "best.zip"), self.members[best].save, tmp)
        self.comm.barrier()
        if self.comm.rank == 0:
            final, best_zip = os.path.join(self.run_dir, "final"), os.path.join(self.run_dir, "best.zip")
            broken = f" (none for member(s) {sorted(self.broken)}: they failed last)" if self.broken else ""
            self.echo(f"done: {_pick_summary(report)}; models in {final}{broken}, best in {best_zip}")
        return best

    # -- the final pick ------------------------------------------------------------
    def _evaluable(self, m: int) -> bool:
        """Whether local member ``m`` can be evaluated for the final pick (SB3 adapter, or ``evaluate_final``)."""
        return isinstance(self.members[m], (Member, EvaluatesFinal))

    def _evaluate_final(self, m: int, seeds: list[int]) -> tuple[list[float], int]:
        """Local member ``m``'s final evaluation returns (one per seed) and the env steps taken."""
        member = self.members[m]
        if isinstance(member, Member):
            return champion.evaluate_sb3(member, seeds, self.env_factory)
        assert isinstance(member, EvaluatesFinal)
        return [float(r) for r in member.evaluate_final(seeds)], 0

    def _evaluate_isolated(
        self, m: int, seeds: list[int]
    ) -> tuple[tuple[list[float], int] | None, dict[str, Any] | None]:
        """:meth:`_evaluate_final` with failure isolation: an exception is logged and returned as a failure."""
        got, exc = failures.attempt(lambda _poll: self._evaluate_final(m, seeds))
        if exc is None:
            return got, None
        failure = failures.describe(exc, "final evaluation")
        failures.log_traceback(
            self.run_dir,
            f"evo-mpi: member {m} on rank {self.comm.rank} failed in the final evaluation: "
            f"{failure['type']}: {failure['message']}",
            exc,
        )
        return None, failure

    def _final_pick(self) -> dict[str, Any]:
        """Collective: every rank evaluates its own candidates, all pick the same champion; rank 0 writes champion.json.

        Without an evaluation (``--final-eval-episodes 0``, or a custom member
        without ``evaluate_final``) the champion is the best last training fitness.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        fitness = np.asarray(self.last_fitness, dtype=np.float64)
        episodes = cfg.final_eval_episodes
        if self.comm.any(not all(self._evaluable(m) for m in self.local_ids)):
            episodes = 0
        seeds = champion.seeds(cfg.seed, episodes)
        chosen = champion.candidates(fitness, cfg.final_eval_top, self.broken) if episodes else []
        local: dict[int, list[float]] = {}
        local_failed: dict[int, dict[str, Any]] = {}
        steps = 0
        for m in chosen:
            if m in self.members:
                self.activity = f"evaluating member {m} on {episodes} episode(s) for the final pick"
                got, failure = self._evaluate_isolated(m, seeds)
                if got is not None:
                    local[m], n = got
                    steps += n
                elif failure is not None:
                    local_failed[m] = failure
        self.activity = "gathering the final evaluation"
        gathered = self.comm.allgather_obj(
            {
                "returns": local,
                "failed": local_failed,
                "steps": steps,
                "timesteps": {m: self.members[m].timesteps for m in self.local_ids},
            }
        )
        returns: dict[int, list[float]] = {}
        eval_failures: dict[int, dict[str, Any]] = {}
        for part in gathered:
            returns.update(part["returns"])
            eval_failures.update(part["failed"])
        # candidate order: best training fitness first; a candidate whose evaluation failed is skipped
        returns = {m: returns[m] for m in chosen if m not in eval_failures}
        best = champion.pick(returns) if returns else next(int(m) for m in rank_order(fitness) if m not in self.broken)
        report = champion.record(
            best,
            fitness,
            cfg.final_eval_top,
            seeds,
            returns,
            sum(int(p["steps"]) for p in gathered),
            time.perf_counter() - t0,
        )
        report["failures"] = self.failure_total
        report["excluded"] = sorted(self.broken)
        report["scored"] = cfg.fitness  # what the candidates' "returns" hold: the return or info:KEY
        report["eval_failures"] = [{"member": m, **eval_failures[m]} for m in sorted(eval_failures)]
        if self.comm.rank == 0:
            write_json_atomic(os.path.join(self.run_dir, "champion.json"), report, allow_nan=False)
            if self.board is not None:
                timesteps = max(int(t) for p in gathered for t in p["timesteps"].values())
                self.board.log_champion(timesteps, report)
        return report

    def _final_phase_estimate(self, wall_s: float, members: int = 1) -> float:
        """Seconds this rank's final evaluation would take if the run ended now (``--time-limit`` counts it).

        Local candidates x ``final_eval_episodes`` x expected episode length
        (the mean length of their recent training episodes, else the env's
        ``max_episode_steps``, else a generation's steps per env) x seconds per
        training env step (``wall_s`` spent on ``members`` x
        ``steps_per_generation`` steps). Custom members are not estimated.
        """
        cfg = self.cfg
        if cfg.final_eval_episodes <= 0 or wall_s <= 0 or members <= 0:
            return 0.0
        here = [m for m in self._final_candidates_here() if isinstance(self.members[m], Member)]
        if not here:
            return 0.0
        lengths = [float(n) for m in here for n in self.members[m].episode_stats()[1] if math.isfinite(n)]
        if lengths:
            length = float(np.mean(lengths))
        else:
            limit = getattr(self.members[here[0]], "max_episode_steps", None)
            length = float(limit) if limit is not None else cfg.steps_per_generation / max(1, cfg.n_envs)
        step_s = wall_s / (members * cfg.steps_per_generation)
        return champion.estimate_s(len(here), cfg.final_eval_episodes, length, step_s)

    def _final_candidates_here(self) -> list[int]:
        """The local members the final evaluation would take if the run ended now (by :attr:`last_fitness`)."""
        chosen = champion.candidates(self.last_fitness, self.cfg.final_eval_top, self.broken)
        return [m for m in chosen if m in self.members]

    def run(self) -> Status:
        """Run to the end (or a stop) and return how it ended (``finished``, ``interrupted``, ...)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close files and envs."""
        for member in self.members.values():
            member.close()
        self.timings.close()
        if self.history is not None:
            self.history.close()
        if self.lineage is not None:
            self.lineage.close()
        if self.board is not None:
            self.board.close()
        if self.wandb is not None:
            self.wandb.close()


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
    table: np.ndarray
    donors: dict[int, int]
    wall: float
    timings: dict[str, Any]
    hparams: list[dict[str, Value]]
    stop: bool = False
    early: bool = False
    target: bool = False
    out_of_time: bool = False
    failed: str | None = None


class Engine(EngineBase):
    """Runs PBT for one rank's members, in lockstep with the other ranks (``--mode sync``)."""

    def __init__(
        self,
        cfg: Config,
        comm: Comm,
        run_dir: str,
        echo: Callable[[str], None] = print,
        should_stop: Callable[[], bool] = lambda: False,
        resume_from: int | None = None,
        env_factory: Callable[..., Any] | None = None,
        callback: Callback | None = None,
        member_factory: MemberFactory | None = None,
        deadline: float | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(cfg, comm, run_dir, echo, should_stop, env_factory, callback, member_factory, deadline, device)
        #: Each member's fitness when its current generation started (the winner's after an exploit).
        self.start_fitness = np.full(self.population, math.nan)
        #: PB2's data: (generation, hparams, fitness change) of every member interval with finite ends.
        self.observations: list[Observation] = []
        #: The generation after which each member last copied a donor (-1: never); --ready-after counts from it.
        self.last_exploit = np.full(self.population, -1, dtype=np.int64)
        #: First generation this process runs (> 0 after a resume).
        self.start = 0
        saved: dict[str, Any] = {}
        if resume_from is not None:
            saved = self._resume(resume_from)
        self._check_layouts(saved.get("torch_threads"))
        self._open_logs(int(saved.get("history_bytes", 0)), int(saved.get("lineage_bytes", 0)))

    def _resume(self, generation: int) -> dict[str, Any]:
        """Take the population's state after ``generation`` from its checkpoint; returns the saved population."""
        self.activity = f"loading checkpoint of generation {generation}"
        saved: dict[str, Any] = checkpoint.load_population(self.run_dir, generation)
        self.hparams = saved["hparams"]
        self.last_fitness = np.array([math.nan if f is None else f for f in saved["fitness"]])
        self.start = int(saved["generation"]) + 1
        self.start_fitness = np.array([math.nan if f is None else f for f in saved.get("start_fitness", [])])
        if self.start_fitness.size != self.population:
            self.start_fitness = np.full(self.population, math.nan)
        self.observations = [Observation(o["time"], o["hparams"], o["delta"]) for o in saved.get("pb2", [])]
        self.last_exploit = np.array(saved.get("last_exploit", [-1] * self.population), dtype=np.int64)
        self.failure_total = int(saved.get("failures", 0))
        for m in self.local_ids:
            self.members[m].restore(*checkpoint.load_member(self.run_dir, generation, m))
        self._log_rebuilds()
        return saved

    # -- one generation ----------------------------------------------------------
    def _local_rows(self, generation: int) -> np.ndarray:
        width = self.cfg.fitness_window
        rows = np.full((len(self.local_ids), _COLS + 3 * width), math.nan)
        for i, m in enumerate(self.local_ids):
            self.activity = f"computing fitness of member {m} (generation {generation})"
            member = self.members[m]
            rows[i, _NOKEY] = 0.0
            if m not in self.local_failures:
                missing: list[Exception] = []  # a configuration error: every rank stops on the gathered table
                fit, failure = self._attempt(
                    m, generation, "measuring fitness", fitness_call(member, generation, missing)
                )
                if missing:
                    self.echo(f"evo-mpi: member {m}: {missing[0]}")
                    rows[i, _NOKEY] = 1.0
                rows[i, _FIT] = math.nan if failure is not None else fit
                if failure is not None:
                    self.local_failures[m] = failure
            if self.cfg.objective_key is not None:
                episode_returns = member.episode_returns()  # type: ignore[attr-defined]
                rows[i, _COLS + 2 * width : _COLS + 2 * width + len(episode_returns)] = episode_returns
            returns, lengths = member.episode_stats()
            rows[i, _FAIL] = float(m in self.local_failures)
            rows[i, _STEPS] = member.timesteps
            rows[i, _NEP] = len(returns)
            rows[i, _DIV] = float(bool(getattr(member, "diverged", False)))
            rows[i, _COLS : _COLS + len(returns)] = returns
            rows[i, _COLS + width : _COLS + width + len(lengths)] = lengths
        return rows

    def _episode_stats(self, table: np.ndarray, member: int) -> tuple[list[float], list[float]]:
        """A member's gathered scores (the fitness's samples) and episode lengths."""
        width = self.cfg.fitness_window
        n = int(table[member, _NEP])
        return list(table[member, _COLS : _COLS + n]), list(table[member, _COLS + width : _COLS + width + n])

    def _episode_returns(self, table: np.ndarray, member: int) -> list[float]:
        """A member's gathered episode returns (the scores themselves unless fitness is ``info:KEY``)."""
        if self.cfg.objective_key is None:
            return self._episode_stats(table, member)[0]
        start = _COLS + 2 * self.cfg.fitness_window
        return list(table[member, start : start + int(table[member, _NEP])])

    def _missing(self, table: np.ndarray, member: int) -> str | None:
        if table[member, _FAIL]:
            return failures.FAILED
        return missing_reason(float(table[member, _FIT]), int(table[member, _NEP]), bool(table[member, _DIV]))

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
        table = self.comm.allgather(rows)
        fitness = table[:, _FIT]
        self.last_fitness = fitness
        if table[:, _NOKEY].any():
            key, ids = cfg.objective_key, [int(m) for m in np.flatnonzero(table[:, _NOKEY])]
            raise ConfigError(
                [
                    f"--fitness info:{key}: episodes ended (member(s) {ids}, generation {g}) and no final info had "
                    f"{key!r}; check the key (e.g. info:is_success) or use --fitness return"
                ]  # fmt: skip
            )
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

    def _ending(self, g: int, table: np.ndarray, t0: float) -> tuple[bool, bool, bool]:
        """Whether the run ends after generation ``g``: (the callback, the target, the time limit); every rank alike."""
        cfg = self.cfg
        early = self._ask_callback(g, table)
        hit = target.reached(table[:, _FIT], cfg.target, cfg.target_metric) and not early  # same table everywhere
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
        table: np.ndarray,
        donors: dict[int, int],
        failed: dict[int, dict[str, Any]],
        hit: bool,
        new_hparams: list[dict[str, Value]],
    ) -> None:
        """Each member's TensorBoard log; on rank 0 the history and lineage records; missing-fitness warnings."""
        for m in self.local_ids:
            self.members[m].log(float(table[m, _FIT]), self.hparams[m], donors.get(m))
        if self.history is not None:
            records = self._history_records(g, table, donors, failed)
            if hit:
                for rec in records:
                    rec["target_reached"] = True
            self.history.write(records)
        if self.lineage is not None and donors:
            self.lineage.write(self._lineage_records(g, table, donors, new_hparams))
        self._echo_missing(g, table, failed)

    def _gather_failures(self, g: int, table: np.ndarray) -> tuple[dict[int, dict[str, Any]], str | None]:
        """Every member's failure in generation ``g`` (all ranks see all), and why they end the run (None: not)."""
        ids = [int(m) for m in np.flatnonzero(table[:, _FAIL])]
        self.broken = set(ids)
        if not ids:
            return {}, None
        failed: dict[int, dict[str, Any]] = {}
        for part in self.comm.allgather_obj(self.local_failures):
            failed.update(part)
        self.failure_total += len(ids)
        why = failures.stop_reason(len(ids), self.population, self.failure_total, self.tolerated, f"generation {g}")
        return failed, why

    def _echo_missing(self, g: int, table: np.ndarray, failed: dict[int, dict[str, Any]]) -> None:
        """Rank 0: one warning per failed member, and which members have no fitness and why."""
        if self.comm.rank != 0:
            return
        for m in sorted(failed):
            self.echo(failures.failure_line(f"generation {g}", m, failed[m]))
        for line in missing_fitness_lines(
            f"generation {g}", {m: self._missing(table, m) for m in range(self.population)}
        ):
            self.echo(line)

    def _failed_generation(
        self, g: int, table: np.ndarray, failed: dict[int, dict[str, Any]], why: str, t0: float
    ) -> Generation:
        """Failures end the run after generation ``g``: its records; no exploit, no checkpoint."""
        self.mutations = {}
        if self.history is not None:
            self.history.write(self._history_records(g, table, {}, failed))
        self._echo_missing(g, table, failed)
        wall = time.perf_counter() - t0
        return Generation(g, table, {}, wall, self.timer.stop(), self.hparams, stop=True, failed=why)

    def _share_experience(self) -> int:
        """Every member's new transitions into every other member's replay buffer; returns the bytes gathered.

        One ``Allgatherv`` of contiguous buffers; each member then appends the
        others' rows in member order, whatever the rank layout, so the buffers
        (and the run) are the same on any layout and after a resume.
        """
        parts = self.comm.allgather_parts([self.sharers[m].new_experience() for m in self.local_ids])
        for m in self.local_ids:
            for k, part in enumerate(parts):
                if k != m:
                    self.sharers[m].add_experience(part)
        return int(sum(p.nbytes for p in parts))

    def _ask_callback(self, g: int, table: np.ndarray) -> bool:
        """Whether the user's callback (run on every rank) asks any rank to end the run after generation ``g``."""
        if self.callback is None:
            return False
        self.activity = f"running the callback (generation {g})"
        summary = GenerationSummary(
            generation=g,
            generations=self.cfg.generations,
            timesteps=[int(t) for t in table[:, _STEPS]],
            fitness=[float(f) for f in table[:, _FIT]],
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
            assert self.history is not None
            fitness = [float(f) if np.isfinite(f) else None for f in self.last_fitness]
            checkpoint.commit(
                self.run_dir,
                g,
                {
                    "generation": g,
                    "finished": finished,
                    "population": self.population,
                    "hparams": self.hparams,
                    "fitness": fitness,
                    "history_bytes": self.history.tell(),
                    "lineage_bytes": self.lineage.tell() if self.lineage is not None else 0,
                    "start_fitness": [float(f) if np.isfinite(f) else None for f in self.start_fitness],
                    "pb2": [{"time": o.time, "hparams": o.hparams, "delta": o.delta} for o in self.observations],
                    "last_exploit": [int(x) for x in self.last_exploit],
                    "failures": self.failure_total,
                    "torch_threads": self.member_threads,
                },
                keep=self.cfg.keep_checkpoints,
            )
        self.comm.barrier()

    def _exploit(self, donors: dict[int, int], table: np.ndarray, new_hparams: list[dict[str, Value]]) -> None:
        """Losers take their winner's state; then every local member that mutates takes its new hyperparameters.

        A loser first takes its winner's architecture (:meth:`match_layout`), so
        the state arrives in a buffer of the winner's size; winners that also
        lose are packed before that. Mutations (a new architecture grown from
        the received weights, weight noise) come only after every local loser
        has its copy, so no loser copies another's mutation.
        """
        me = self.comm.rank
        changed = [m for m in self.local_ids if m in donors or m in self.mutations or new_hparams[m] != self.hparams[m]]
        if donors:  # every rank takes part: a rank with no loser may hold a winner
            losers = [loser for loser in sorted(donors) if self.owner(loser) == me]
            held = {
                w: self.members[w].pack().copy() for w in set(donors.values()) if self.owner(w) == me and w in donors
            }
            for loser in losers:
                self.members[loser].match_layout(self.hparams[donors[loser]])
            first_loser: dict[int, int] = {}  # winner -> the local loser that receives its state in place
            for loser in losers:
                first_loser.setdefault(donors[loser], loser)

            def pack(w: int) -> np.ndarray:
                return held[w] if w in held else self.members[w].pack()

            def size_of(w: int) -> int:
                return pack(w).nbytes if self.owner(w) == me else self.members[first_loser[w]].state_nbytes

            buffers = self.comm.move(
                donors,
                self.owner,
                pack,
                size_of,
                self.cfg.backend,
                receive_into=lambda w: self.members[first_loser[w]].receive_buffer() if w in first_loser else None,
            )
            # VecNormalize statistics and (optionally) replay buffers move in a second, separate exchange.
            replay = self.cfg.copy_replay_buffer
            aux_nbytes = self.members[self.local_ids[0]].aux_nbytes(replay)
            aux: dict[int, np.ndarray] = {}
            if aux_nbytes:
                aux = self.comm.move(
                    donors, self.owner, lambda w: self.members[w].pack_aux(replay), aux_nbytes, self.cfg.backend
                )
            for loser in losers:
                winner = donors[loser]
                self._adopt(
                    loser,
                    buffers[winner],
                    aux.get(winner, _NO_AUX),
                    *self._episode_stats(table, winner),
                    self._episode_returns(table, winner) if self.cfg.objective_key is not None else None,
                )
        for m in changed:
            self._take_hparams(m, new_hparams[m], self.mutations.get(m, {}))

    def _choose_donors(self, g: int, table: np.ndarray, failed: list[int]) -> dict[int, int]:
        """Who copies whom after generation ``g`` (the same on every rank); a failed member always copies."""
        cfg = self.cfg
        returns = None
        if cfg.selection == "ttest":  # the t-test's samples: recent scores (info:KEY's with --fitness)
            returns = [np.array(self._episode_stats(table, m)[0]) for m in range(self.population)]
        view = View(range(self.population), table[:, _FIT], returns, self._ready(g), failed)
        self.choice = decision.donors(
            cfg, view, seeding.stream(cfg.seed, seeding.SELECT, g), seeding.stream(cfg.seed, seeding.REPAIR, g), g
        )
        return self.choice.donors

    def _ready(self, g: int) -> np.ndarray | None:
        """--ready-after: the members that trained enough env steps since their last exploit (None: all ready)."""
        if self.cfg.ready_after <= 0:
            return None
        return (g - self.last_exploit) * self.cfg.steps_per_generation >= self.cfg.ready_after

    def _explore(self, g: int, donors: dict[int, int], fitness: np.ndarray, last: bool) -> list[dict[str, Value]]:
        """New hyperparameters for every member: losers mutate from their winner's, the rest keep theirs.

        With ``--mutate all`` every member mutates (from its own, unless it
        copied a winner); :attr:`mutations` keeps what each mutation decided.
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
        kernel = fit_observations(self.observations, self.space) if pb2_rank0 else None
        mutating = sorted(donors) if cfg.mutate == "exploited" or last else range(self.population)
        for loser in mutating:
            winner = self.hparams[self.choice.hparams_source(loser)]
            if loser in self.choice.unexplored:  # MF-PBT's migrants keep what they take
                new_hparams[loser] = dict(winner)
                continue
            kind, mutated, record = self.explorer.mutation(g, loser, winner)
            if record:
                self.mutations[loser] = record
            if kind != "hparams":
                new_hparams[loser] = mutated
            elif cfg.explore != "pb2" or self.comm.rank == 0:
                # PB2: rank 0 decides and broadcasts, GP linear algebra may round differently elsewhere
                new_hparams[loser] = self.explorer.explore(g, loser, winner, self.observations, kernel, chosen)
                chosen.append(new_hparams[loser])
        if cfg.explore == "pb2" and donors:
            new_hparams = self.comm.bcast_obj(new_hparams)
        self.start_fitness = np.array(fitness, dtype=np.float64)
        for loser, source in donors.items():
            self.start_fitness[loser] = fitness[source]
        return new_hparams

    def _lineage_records(
        self, g: int, table: np.ndarray, donors: dict[int, int], new_hparams: list[dict[str, Value]]
    ) -> list[dict[str, Any]]:
        def fit(m: int) -> float | None:
            f = float(table[m, _FIT])
            return f if math.isfinite(f) else None

        return [
            {
                "generation": g,
                "loser": loser,
                "winner": winner,
                "timesteps": int(table[loser, _STEPS]),
                "loser_fitness": fit(loser),
                "winner_fitness": fit(winner),
                "old_hparams": self.hparams[loser],
                "new_hparams": new_hparams[loser],
                **({"mutation": self.mutations[loser]} if loser in self.mutations else {}),
                **({"hparams_from": self.choice.hparams_from[loser]} if loser in self.choice.hparams_from else {}),
            }
            for loser, winner in sorted(donors.items())
        ]

    def _history_records(
        self, g: int, table: np.ndarray, donors: dict[int, int], failed: dict[int, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        records = []
        for m in range(self.population):
            fit = float(table[m, _FIT])
            records.append(
                {
                    "generation": g,
                    "member": m,
                    "rank": self.owner(m),
                    "timesteps": int(table[m, _STEPS]),
                    "fitness": fit if math.isfinite(fit) else None,
                    **({"fitness_missing": self._missing(table, m)} if not math.isfinite(fit) else {}),
                    "hparams": self.hparams[m],
                    "parent": donors.get(m),
                    "returns": [r if math.isfinite(r) else None for r in self._episode_returns(table, m)],
                    **(
                        {"objectives": [o if math.isfinite(o) else None for o in self._episode_stats(table, m)[0]]}
                        if self.cfg.objective_key is not None
                        else {}
                    ),
                    **({"mutation": self.mutations[m]} if m in self.mutations else {}),
                    **({"held": held_record(self.choice.held[m])} if m in self.choice.held else {}),
                    **({"hparams_from": self.choice.hparams_from[m]} if m in self.choice.hparams_from else {}),
                    **({"failure": failed[m]} if m in failed else {}),
                }
            )
        return records

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
        record = {"generation": g, "rank": self.comm.rank, "total_wall": wall, **timings}
        record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        record["first_train_unix"] = self.first_train_unix
        record["unix"] = time.time()
        record["torch_threads"] = torch_threads()
        member = self.members[self.local_ids[0]]
        record["state_bytes"] = member.state_nbytes + member.aux_nbytes(self.cfg.copy_replay_buffer)
        if self.cfg.share_experience:
            record["shared_bytes"] = self.shared_bytes  # transitions of every member, gathered by every rank
        self.timings.write([record])
        if self.comm.rank != 0:
            return
        fitness = table[:, _FIT]
        steps = self.population * self.cfg.steps_per_generation
        remaining = self.cfg.generations - g - 1
        failed_now = int(table[:, _FAIL].sum())
        line = progress_line(
            g,
            self.cfg.generations,
            int(table[:, _STEPS].max()),
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
        assert self.reporter is not None
        timesteps = [int(t) for t in table[:, _STEPS]]
        returns = None
        if self.cfg.objective_key is not None:
            returns = [mean_finite(self._episode_returns(table, m)) for m in range(self.population)]
        self.reporter.report(g, max(timesteps), timesteps, fitness, summary.hparams, len(donors), extra, line, returns)


def mean_finite(values: list[float]) -> float:
    """The mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def fitness_call(
    member: PBTMember, step: int, missing: list[Exception] | None = None
) -> Callable[[Callable[[], bool]], float]:
    """``member.fitness(step)`` as a call for :meth:`EngineBase._attempt` (fitness takes no poll).

    With ``missing``, an :class:`~evo_mpi.member.ObjectiveMissing` is noted there (fitness NaN) instead of
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


def _pick_summary(report: dict[str, Any]) -> str:
    """The ``done:`` line's account of the final pick."""
    m = report["member"]
    fit = math.nan if report["final_fitness"] is None else report["final_fitness"]
    failed = [int(f["member"]) for f in report.get("eval_failures", [])]
    skipped = f"; the evaluation of member(s) {failed} failed (errors.log), skipped" if failed else ""
    if report["pick"] == champion.PICK_TRAINING:
        why = "every candidate's evaluation failed" if failed else "no final evaluation"
        return f"best member {m} fitness {fit:.2f} (last training fitness; {why}{skipped})"
    row = next(c for c in report["candidates"] if c["member"] == m)
    mean = math.nan if row["mean"] is None else row["mean"]
    sd = math.nan if row["sd"] is None else row["sd"]
    order = ", ".join(str(c["member"]) for c in report["candidates"])
    return (
        f"champion member {m}, eval {mean:.2f} +- {sd:.2f} over {report['episodes']} episodes "
        f"(training fitness {fit:.1f}; candidates {order}{skipped})"
    )


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


class LayoutMismatch(ExchangeError):
    """Members' states differ in layout; raised alike on every rank, before any training."""


def check_layouts(layouts: dict[int, tuple[int, int, str]], owner: Callable[[int], int]) -> None:
    """Raise :class:`LayoutMismatch` naming both sides unless every member's state layout equals member 0's."""
    reference = layouts[min(layouts)]
    for m in sorted(layouts):
        if layouts[m] != reference:
            ref_m = min(layouts)
            raise LayoutMismatch(
                f"member {m} on rank {owner(m)} has a state layout of {layouts[m][0]} + {layouts[m][1]} bytes "
                f"(hash {layouts[m][2]}), member {ref_m} on rank {owner(ref_m)} has {reference[0]} + "
                f"{reference[1]} bytes (hash {reference[2]}): members must have the same networks, optimizers "
                "and spaces to exchange state (does the env's observation or action space differ between ranks?)"
            )


def torch_threads() -> int:
    """Torch's intra-op thread count in this process."""
    import torch

    return int(torch.get_num_threads())


def write_config(run_dir: str, data: dict[str, Any], toml_text: str) -> None:
    """Write ``config.toml`` (feeds back with ``--config``), then ``config.json`` (marks a run dir), atomically."""
    write_text_atomic(os.path.join(run_dir, "config.toml"), toml_text)
    write_json_atomic(os.path.join(run_dir, "config.json"), data)
