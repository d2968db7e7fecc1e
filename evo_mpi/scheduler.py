"""What both schedulers share (:class:`EngineBase`): the rank's members, the start-up layout check,
failure isolation, adopting a donor's state, the final models and the final pick.

The synchronous scheduler is :class:`evo_mpi.engine.Engine`, the asynchronous one
:class:`evo_mpi.async_engine.AsyncEngine`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from . import algorithms, failures, seeding
from .comm import Comm, ExchangeError
from .config import Config
from .decision import Choice
from .final import FinalModels
from .member import Member
from .outputs import JsonlWriter, PhaseTimer, member_tag
from .protocol import MemberFactory, PBTMember, Recovers, SharesExperience
from .records import Mutation
from .resolvers import resolve_member
from .run_log import NullLog, RunLog
from .space import Prior, Value, format_arch, parse_space, sample_hparams
from .status import RunContext, Status
from .step import PBTStep

T = TypeVar("T")


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


class EngineBase(FinalModels):
    """What both modes share: the rank's members, the start-up layout check, output files, final models."""

    def __init__(self, cfg: Config, comm: Comm, run_dir: str, ctx: RunContext | None = None) -> None:
        ctx = ctx or RunContext()
        self.cfg = cfg
        #: The torch device of this rank's SB3 members (``--device`` resolved for this rank).
        self.device = ctx.device
        #: ``time.monotonic()`` by which this launch must have written its final models (``--time-limit``).
        self.deadline = ctx.deadline
        self.callback = ctx.callback
        self.should_stop = ctx.should_stop
        self.comm = comm
        self.run_dir = run_dir
        self.echo = ctx.echo if comm.rank == 0 else (lambda _line: None)
        self.population = comm.size * cfg.agents_per_rank
        self.space = parse_space(cfg.space_specs)
        self.hparams = initial_hparams(cfg, self.space, self.population)
        self.local_ids = list(range(comm.rank * cfg.agents_per_rank, (comm.rank + 1) * cfg.agents_per_rank))
        #: The user's env factory (None: ``cfg.env_id``); the final evaluation builds its env with it.
        self.env_factory = ctx.env_factory
        self.activity = "creating members"
        self.members: dict[int, PBTMember] = {}
        self._build_members(ctx.member_factory)
        self._note_episode_length()
        #: --share-experience: the local members as sharers (checked once, here, not at every use).
        self.sharers = self._sharers() if cfg.share_experience else {}
        #: The PBT step (:mod:`evo_mpi.step`): who copies whom and what members try next, for both modes.
        self.pbt = PBTStep(cfg, self.space, "relu" if cfg.member else algorithms.get(cfg.algo).activation)
        #: What each member's mutation after the last generation (async: interval) decided, by member.
        self.mutations: dict[int, Mutation] = {}
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
        #: Rank 0's outputs (history, lineage, TensorBoard, W&B, reports); a log that writes nothing elsewhere.
        self.log: NullLog = NullLog()

    def _sharers(self) -> dict[int, SharesExperience]:
        """The local members as members that share experience (TypeError naming one that cannot)."""
        sharers: dict[int, SharesExperience] = {}
        for m in self.local_ids:
            member = self.members[m]
            if not isinstance(member, SharesExperience):
                raise TypeError(f"member {m} ({type(member).__name__}) cannot share experience")
            sharers[m] = member
        return sharers

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

    def _open_logs(self, cut_to: tuple[int, int] | None = None) -> None:
        """Open the run's log (rank 0; the other ranks keep the :class:`NullLog`), cut back to ``cut_to`` bytes."""
        if self.comm.rank == 0:
            self.log = RunLog(self.run_dir, self.cfg, self.echo, cut_to)

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
        if phase != failures.REBUILDING:
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
            _, failure = self._attempt(m, step, failures.REBUILDING, lambda _poll: member.recover(step))
            if failure is not None:
                return failure
            self.unrecovered.discard(m)
        train = functools.partial(member.train, self.cfg.steps_per_generation, step)
        return self._attempt(m, step, "training", train, should_stop)[1]

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

    def _take_hparams(self, m: int, hparams: dict[str, Value], mutation: Mutation | None) -> None:
        """Local member ``m`` takes its new hyperparameters, then any weight noise its mutation decided."""
        self.members[m].apply_hparams(hparams)
        if mutation is not None and mutation.weight_noise is not None:
            self.members[m].mutate_weights(mutation.weight_noise)  # type: ignore[attr-defined]

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

    def run(self) -> Status:
        """Run to the end (or a stop) and return how it ended (``finished``, ``interrupted``, ...)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close files and envs."""
        for member in self.members.values():
            member.close()
        self.timings.close()
        self.log.close()


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
