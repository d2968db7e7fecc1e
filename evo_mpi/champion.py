"""The final pick: the champion, chosen by fresh deterministic evaluation episodes at the end of a run.

Training fitness is noisy and selection has already pushed it upward (it
picked the luckiest members), so ``best.zip`` is not the member with the
best last training fitness but the best of the top ``final_eval_top``
members by that fitness (the candidates) on ``final_eval_episodes``
deterministic episodes of a separate env. Episode ``j`` of every candidate
starts from the same seed ``derive_seed(seed, CHAMPION, j)`` (common random
numbers, a fair comparison), a stream no training or fitness episode uses.

The pure part (candidates, pick, the ``champion.json`` record) imports no
MPI, torch or SB3; :func:`evaluate_sb3` runs the episodes of one SB3 member
and imports SB3 when called.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import seeding
from .records import Failure, finite, finite_list, number, numbers
from .selection import rank_order

#: Longest final evaluation episode: one that has not ended by then counts its return so far (no hang).
MAX_EPISODE_STEPS = 100_000

#: ``champion.json``'s ``pick``: by the final evaluation, or by the last training fitness (no evaluation).
PICK_EVAL, PICK_TRAINING = "final_eval", "training_fitness"


def candidates(fitness: np.ndarray, top: int, exclude: Collection[int] = ()) -> list[int]:
    """The top ``min(top, population)`` members by final fitness, best first (ties: lowest id).

    Members with non-finite fitness are left out unless none is finite (then
    the first ``top`` by id); members in ``exclude`` (failed last) always are.
    """
    fit = np.asarray(fitness, dtype=np.float64)
    order = [int(m) for m in rank_order(fit) if int(m) not in exclude]
    finite = [m for m in order if math.isfinite(fit[m])]
    return (finite or order)[: max(0, top)]


def seeds(seed: int, episodes: int) -> list[int]:
    """The reset seed of each final evaluation episode; every candidate gets the same ones."""
    return [seeding.derive_seed(seed, seeding.CHAMPION, j) for j in range(episodes)]


def mean_sd(returns: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (numpy's, ddof 0, as SB3's ``evaluate_policy``); NaN for no returns."""
    values = np.asarray(returns, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std())


def pick(returns: Mapping[int, Sequence[float]]) -> int:
    """The candidate with the best mean return; ties go to the lowest member id, a NaN mean ranks last."""
    ids = sorted(returns)
    if not ids:
        raise ValueError("no candidates to pick from")
    means = np.array([mean_sd(returns[m])[0] for m in ids])
    return ids[int(rank_order(means)[0])]


@dataclass(frozen=True)
class Candidate:
    """One candidate of the final pick: its training fitness and its evaluation returns."""

    member: int
    final_fitness: float
    returns: list[float]

    def to_json(self) -> dict[str, Any]:
        """As written, with the returns' mean and sd (NaN as null)."""
        mean, sd = mean_sd(self.returns)
        return {
            "member": self.member,
            "final_fitness": finite(self.final_fitness),
            "returns": finite_list(self.returns),
            "mean": finite(mean),
            "sd": finite(sd),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Candidate:
        """As read."""
        return Candidate(int(data["member"]), number(data.get("final_fitness")), numbers(data.get("returns", [])))


@dataclass
class ChampionReport:
    """``champion.json``: the final pick.

    Attributes:
        member: The champion (the member in ``best.zip``).
        pick: ``final_eval``, or ``training_fitness`` (no evaluation, or every candidate's failed).
        seeds: The evaluation episodes' reset seeds (empty: no evaluation).
        top: ``final_eval_top``.
        final_fitness: The champion's last training fitness (NaN: missing).
        candidates: The evaluated candidates, best training fitness first.
        eval_steps: Env steps the evaluation took, all ranks together.
        wall_s: Wall time of the final phase.
        failures: Member failures in the whole run.
        excluded: Members left out because their last generation (interval) failed.
        scored: What the candidates' returns hold: ``return`` or ``info:KEY`` (``--fitness``).
        eval_failures: Candidates whose evaluation raised, and how.

    """

    member: int
    pick: str
    seeds: list[int]
    top: int
    final_fitness: float
    candidates: list[Candidate]
    eval_steps: int
    wall_s: float
    failures: int = 0
    excluded: list[int] = field(default_factory=list)
    scored: str = "return"
    eval_failures: dict[int, Failure] = field(default_factory=dict)

    @property
    def episodes(self) -> int:
        """How many evaluation episodes each candidate had; none without an evaluation."""
        return len(self.seeds)

    def row(self, member: int) -> Candidate | None:
        """``member``'s candidate row (None: not evaluated)."""
        return next((c for c in self.candidates if c.member == member), None)

    def to_json(self) -> dict[str, Any]:
        """As written (strict JSON)."""
        return {
            "member": self.member,
            "pick": self.pick,
            "episodes": self.episodes,
            "seeds": list(self.seeds),
            "top": self.top,
            "final_fitness": finite(self.final_fitness),
            "candidates": [c.to_json() for c in self.candidates],
            "eval_steps": self.eval_steps,
            "wall_s": self.wall_s,
            "failures": self.failures,
            "excluded": list(self.excluded),
            "scored": self.scored,
            "eval_failures": [{"member": m, **f.to_json()} for m, f in sorted(self.eval_failures.items())],
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ChampionReport:
        """As read; a file written before a field existed gets its default."""
        return ChampionReport(
            member=int(data["member"]),
            pick=str(data["pick"]),
            seeds=[int(s) for s in data.get("seeds", [])],
            top=int(data.get("top", 0)),
            final_fitness=number(data.get("final_fitness")),
            candidates=[Candidate.from_json(c) for c in data.get("candidates", [])],
            eval_steps=int(data.get("eval_steps", 0)),
            wall_s=float(data.get("wall_s", math.nan)),
            failures=int(data.get("failures", 0)),
            excluded=[int(m) for m in data.get("excluded", [])],
            scored=str(data.get("scored", "return")),
            eval_failures={int(f["member"]): Failure.from_json(f) for f in data.get("eval_failures", [])},
        )


def record(
    member: int,
    fitness: np.ndarray,
    top: int,
    episode_seeds: Sequence[int],
    returns: Mapping[int, Sequence[float]],
    eval_steps: int,
    wall_s: float,
) -> ChampionReport:
    """The final pick's report (the run-level fields, ``failures`` to ``eval_failures``, at their defaults).

    Args:
        member: The champion.
        fitness: Every member's final training fitness.
        top: ``final_eval_top``.
        episode_seeds: The evaluation seeds (no ``returns``: no evaluation, the pick is by training fitness).
        returns: Each candidate's evaluation returns, in candidate order (empty: no evaluation).
        eval_steps: Env steps the evaluation took, all ranks together.
        wall_s: Wall time of the final phase.

    """
    rows = [Candidate(int(m), float(fitness[m]), [float(r) for r in rets]) for m, rets in returns.items()]
    return ChampionReport(
        member=int(member),
        pick=PICK_EVAL if returns else PICK_TRAINING,
        seeds=[int(s) for s in episode_seeds] if returns else [],
        top=int(top),
        final_fitness=float(fitness[member]),
        candidates=rows,
        eval_steps=int(eval_steps),
        wall_s=float(wall_s),
    )


def estimate_s(candidates_here: int, episodes: int, episode_length: float, step_s: float) -> float:
    """Seconds this rank's share of the final phase should take: candidates x episodes x length x s per step."""
    if candidates_here <= 0 or episodes <= 0 or not math.isfinite(episode_length * step_s):
        return 0.0
    return candidates_here * episodes * max(0.0, episode_length) * max(0.0, step_s)


# -- the SB3 adapter's members (imports SB3 when called) -------------------------------------------


def evaluate_sb3(
    member: Any, episode_seeds: Sequence[int], env_factory: Callable[..., Any] | None = None
) -> tuple[list[float], int]:
    """Deterministic episodes of an SB3 :class:`~evo_mpi.member.Member` on a separate env, one per seed.

    The env is the member's (``make_env(cfg, 1, ...)``, Monitor-wrapped: the
    returns are raw), with a frozen copy of the member's observation
    statistics when normalising; episode ``j`` is reset with
    ``episode_seeds[j]``. The member's own envs, weights and random streams
    are left as they are.

    Returns:
        The episode returns (with ``--fitness info:KEY``: each episode's final ``info[KEY]``) and the env
        steps taken (NaN returns and 0 steps for a diverged member).

    """
    from stable_baselines3.common.vec_env import VecNormalize

    from .episodes import OBJECTIVE
    from .member import make_env

    if getattr(member, "diverged", False) or not episode_seeds:
        return [math.nan] * len(episode_seeds), 0
    cfg = member.cfg
    env = make_env(cfg, 1, int(episode_seeds[0]), env_factory)
    if member.normalize is not None:  # evaluate on raw rewards with the training statistics, frozen
        env = VecNormalize(env, training=False, norm_reward=False)
        env.obs_rms = copy.deepcopy(member.normalize.obs_rms)
    returns: list[float] = []
    steps = 0
    score = "r" if cfg.objective_key is None else OBJECTIVE
    try:
        for s in episode_seeds:
            env.seed(int(s))
            obs = env.reset()
            for _ in range(MAX_EPISODE_STEPS):
                action, _ = member.model.predict(obs, deterministic=True)
                obs, _, dones, infos = env.step(action)
                steps += 1
                if dones[0]:  # Monitor's raw return, or with --fitness info:KEY the final info[KEY]
                    returns.append(float(infos[0]["episode"][score]))
                    break
            else:  # an env without a time limit whose episode never ends: its return so far (no objective)
                returns.append(float(sum(env.get_attr("rewards")[0])) if score == "r" else math.nan)
    finally:
        env.close()
    return returns, steps
