"""The end of a run, for both schedulers: final models, the final pick of ``best.zip``, or the stop after failures.

:class:`FinalModels` is a part of :class:`~evo_mpi.scheduler.EngineBase`: every rank saves its
members' final models, evaluates its own candidates (failure isolated: a candidate whose evaluation
raises is skipped and recorded), and all ranks agree on the champion; rank 0 writes
``champion.json``, then the champion's rank writes ``best.zip``, which marks the run finished.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import champion, failures
from .atomic import save_atomic, write_json_atomic
from .comm import Comm
from .config import Config
from .member import Member
from .outputs import member_tag
from .protocol import EvaluatesFinal, PBTMember
from .records import Failure
from .run_log import NullLog
from .selection import rank_order


class FinalModels:
    """Final models and the final pick (a part of :class:`~evo_mpi.scheduler.EngineBase`, which sets these)."""

    cfg: Config
    comm: Comm
    run_dir: str
    echo: Callable[[str], None]
    population: int
    members: dict[int, PBTMember]
    local_ids: list[int]
    env_factory: Callable[..., Any] | None
    activity: str
    log: NullLog
    #: Every member's last fitness (the final pick's candidates are the best by it).
    last_fitness: np.ndarray
    #: Members whose latest generation (interval) failed: no final model, never the champion.
    broken: set[int]
    failure_total: int

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
        best = report.member
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

    def _final_pick(self) -> champion.ChampionReport:
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
        report.failures = self.failure_total
        report.excluded = sorted(self.broken)
        report.scored = cfg.fitness  # what the candidates' returns hold: the return or info:KEY
        report.eval_failures = {m: Failure.from_json(eval_failures[m]) for m in sorted(eval_failures)}
        if self.comm.rank == 0:
            write_json_atomic(os.path.join(self.run_dir, "champion.json"), report.to_json())
        self.log.log_champion(max(int(t) for p in gathered for t in p["timesteps"].values()), report)
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


def _pick_summary(report: champion.ChampionReport) -> str:
    """The ``done:`` line's account of the final pick."""
    m, fit = report.member, report.final_fitness
    failed = sorted(report.eval_failures)
    skipped = f"; the evaluation of member(s) {failed} failed (errors.log), skipped" if failed else ""
    row = report.row(m)
    if report.pick == champion.PICK_TRAINING or row is None:
        why = "every candidate's evaluation failed" if failed else "no final evaluation"
        return f"best member {m} fitness {fit:.2f} (last training fitness; {why}{skipped})"
    mean, sd = champion.mean_sd(row.returns)
    order = ", ".join(str(c.member) for c in report.candidates)
    return (
        f"champion member {m}, eval {mean:.2f} +- {sd:.2f} over {report.episodes} episodes "
        f"(training fitness {fit:.1f}; candidates {order}{skipped})"
    )
