"""Exploit planning: which members copy which.

Pure numpy. Given the whole population's fitness and a seeded generator,
every rank computes the same donor map ``{loser: donor}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SELECTIONS = ("truncation", "wta", "tournament", "ttest", "none")


def rank_order(fitness: np.ndarray) -> np.ndarray:
    """Member indices from best to worst.

    Higher fitness is better; NaN and +/-inf rank last; ties go to the lowest
    member index.
    """
    fit = np.asarray(fitness, dtype=np.float64)
    finite = np.isfinite(fit)
    key = np.where(finite, -fit, 0.0)
    index = np.arange(fit.size)
    # np.lexsort sorts by the last key first.
    return np.lexsort((index, key, ~finite))


def quantile_size(population: int, fraction: float) -> int:
    """ceil(fraction * population), immune to float noise like 0.3 * 10."""
    return max(1, math.ceil(round(fraction * population, 9)))


def truncation(fitness: np.ndarray, fraction: float, rng: np.random.Generator) -> dict[int, int]:
    """The bottom ceil(q*P) members each copy one drawn uniformly from the top ceil(q*P).

    Only members with finite fitness can be donors; with none, the map is
    empty. With q = 0.5 and an odd P the median member is in both sets: it
    copies one of the *other* top members (never itself).
    """
    fit = np.asarray(fitness, dtype=np.float64)
    if not 0 < fraction <= 0.5:
        raise ValueError(f"truncation fraction must be in (0, 0.5], got {fraction}")
    order = rank_order(fit)
    n = quantile_size(fit.size, fraction)
    top = [int(m) for m in order[:n] if np.isfinite(fit[m])]
    donors: dict[int, int] = {}
    for loser in sorted(int(m) for m in order[fit.size - n :]):
        choices = [w for w in top if w != loser]
        if choices:
            donors[loser] = choices[int(rng.integers(len(choices)))]
    return donors


def winner_takes_all(fitness: np.ndarray) -> dict[int, int]:
    """Every member except the best copies the best (empty if none is finite)."""
    fit = np.asarray(fitness, dtype=np.float64)
    best = int(rank_order(fit)[0])
    if not np.isfinite(fit[best]):
        return {}
    return {m: best for m in range(fit.size) if m != best}


def tournament(fitness: np.ndarray, size: int, elitism: bool, rng: np.random.Generator) -> dict[int, int]:
    """Replacement by tournament: every member copies the winner of a random tournament.

    For each member ``i`` in index order, ``min(size, P)`` contestants are drawn
    uniformly *without* replacement from all ``P`` members (``i`` itself may be
    drawn, and then it may win and keep its own state), with one
    ``rng.choice`` call per member. The winner is the best contestant by
    :func:`rank_order` (ties to the lowest index, non-finite last). ``i``
    copies the winner when it is another member with finite fitness; a
    tournament of only non-finite contestants changes nothing. With
    ``elitism`` the best member (``rank_order(fitness)[0]``) is skipped, draws
    included, so it is never overwritten. ``size >= P`` makes every member
    copy the best.

    Raises:
        ValueError: if ``size < 2``.

    """
    fit = np.asarray(fitness, dtype=np.float64)
    if size < 2:
        raise ValueError(f"tournament size must be >= 2, got {size}")
    population = fit.size
    k = min(size, population)
    order = rank_order(fit)
    position = np.empty(population, dtype=np.int64)
    position[order] = np.arange(population)
    best = int(order[0])
    donors: dict[int, int] = {}
    for i in range(population):
        if elitism and i == best:
            continue
        contestants = rng.choice(population, size=k, replace=False)
        winner = int(contestants[int(np.argmin(position[contestants]))])
        if winner != i and np.isfinite(fit[winner]):
            donors[i] = winner
    return donors


def welch_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test of mean(a) == mean(b).

    Both samples need at least 2 finite values. A constant sample has variance
    exactly 0; when both are constant the p-value is 1 for equal constants and
    0 for different ones, without warnings.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size < 2 or y.size < 2:
        raise ValueError(f"Welch's t-test needs >= 2 values per sample, got {x.size} and {y.size}")
    means, errors, dofs = [], [], []
    for s in (x, y):
        constant = bool(np.all(s == s[0]))
        means.append(float(s[0]) if constant else float(np.mean(s)))
        errors.append(0.0 if constant else float(np.var(s, ddof=1)) / s.size)
        dofs.append(s.size - 1)
    diff = means[0] - means[1]
    se2 = errors[0] + errors[1]
    if se2 == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    df = se2**2 / (errors[0] ** 2 / dofs[0] + errors[1] ** 2 / dofs[1])
    t = diff / math.sqrt(se2)
    from scipy import special  # imported here: only the t-test needs it, and it slows every rank's start

    return float(min(1.0, 2.0 * special.stdtr(df, -abs(t))))


def ttest(returns: Sequence[np.ndarray], fitness: np.ndarray, alpha: float, rng: np.random.Generator) -> dict[int, int]:
    """PBT's t-test exploit (Jaderberg et al. 2017): copy a random peer that is significantly better.

    For each member ``i`` in index order a partner ``j`` is drawn uniformly from
    the other ``P - 1`` members with exactly one ``rng.integers`` call (always
    made, so the stream never depends on the data). ``i`` copies ``j`` when
    ``fitness[j]`` is finite and either ``fitness[i]`` is not finite, or both
    ``returns[i]`` and ``returns[j]`` hold >= 2 values, all finite, with
    ``mean(returns[j]) > mean(returns[i])`` and a *two-sided* Welch t-test
    p-value below ``alpha`` (:func:`welch_pvalue`). Two-sided at ``alpha`` plus
    the direction check is the one-sided test at ``alpha / 2``: a conservative
    reading of the paper's "statistically significant". Otherwise ``i`` keeps
    its state (fewer than 2 returns never triggers a copy by the test).

    Args:
        returns: ``returns[i]`` is member i's last episode returns (1-D, may be empty).
        fitness: Member fitness; only its finiteness is used.
        alpha: Significance level in (0, 1).
        rng: The shared selection stream.

    Raises:
        ValueError: if ``alpha`` is not in (0, 1) or ``len(returns) != len(fitness)``.

    """
    fit = np.asarray(fitness, dtype=np.float64)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"ttest alpha must be in (0, 1), got {alpha}")
    if len(returns) != fit.size:
        raise ValueError(f"ttest needs one returns array per member: {len(returns)} for {fit.size} members")
    population = fit.size
    donors: dict[int, int] = {}
    if population < 2:
        return donors
    samples = [np.asarray(r, dtype=np.float64).ravel() for r in returns]
    for i in range(population):
        j = int(rng.integers(population - 1))
        j += j >= i
        if not np.isfinite(fit[j]):
            continue
        if not np.isfinite(fit[i]):
            donors[i] = j
            continue
        mine, theirs = samples[i], samples[j]
        if mine.size < 2 or theirs.size < 2 or not (np.all(np.isfinite(mine)) and np.all(np.isfinite(theirs))):
            continue
        if np.mean(theirs) > np.mean(mine) and welch_pvalue(theirs, mine) < alpha:
            donors[i] = j
    return donors


def repair(
    donors: dict[int, int], fitness: np.ndarray, failed: Sequence[int], fraction: float, rng: np.random.Generator
) -> dict[int, int]:
    """``donors`` plus a donor for every failed member the rule left out: a failed member always copies.

    Donors are the top ``ceil(fraction * H)`` of the ``H`` healthy members by
    :func:`rank_order` (a healthy member without finite fitness still beats a
    failed one); each failed member not already in ``donors``, in id order,
    draws one uniformly with one ``rng.integers`` call. With no healthy member
    the map is unchanged. A failed member is never a donor: its fitness is
    NaN, so no rule picks it either.
    """
    broken = set(int(m) for m in failed)
    out = dict(donors)
    healthy = [int(m) for m in rank_order(fitness) if int(m) not in broken]
    if not healthy:
        return out
    top = healthy[: quantile_size(len(healthy), min(max(fraction, 0.0), 1.0))]
    for m in sorted(broken):
        if m not in out:
            out[m] = top[int(rng.integers(len(top)))]
    return out


#: Share of the population, its worst, left out of the spread an exploit margin scales with (DexPBT's 20 %).
MARGIN_DROP = 0.2


def spread(fitness: np.ndarray) -> float:
    """The population's fitness standard deviation (ddof 0) without its worst ``floor(0.2 * n)`` finite members.

    Non-finite fitness is left out first; fewer than 2 finite values give 0.
    """
    fit = np.asarray(fitness, dtype=np.float64)
    finite = np.sort(fit[np.isfinite(fit)])[::-1]
    kept = finite[: finite.size - int(MARGIN_DROP * finite.size + 1e-9)]
    return float(np.std(kept)) if kept.size >= 2 else 0.0


@dataclass(frozen=True)
class Held:
    """A loser the exploit margin kept from copying: its donor, the fitness gap and the margin it had to beat."""

    donor: int
    gap: float
    margin: float


def exploit_margin(
    donors: dict[int, int], fitness: np.ndarray, k: float, a: float
) -> tuple[dict[int, int], dict[int, Held]]:
    """Split ``donors`` into the copies that clear the margin and the losers held back.

    A loser copies its donor only if ``fitness[donor] - fitness[loser] > max(k * sd, a * |fitness[donor]|)``,
    with ``sd`` = :func:`spread` of the whole population: with ``k = a = 0`` any strict improvement, so ties
    never copy. A loser without finite fitness (no measurement) copies as before: there is nothing to
    compare, and the rule already ranks it last.
    """
    fit = np.asarray(fitness, dtype=np.float64)
    sd = spread(fit) if k > 0 else 0.0
    kept: dict[int, int] = {}
    held: dict[int, Held] = {}
    for loser, donor in donors.items():
        if not math.isfinite(fit[loser]):
            kept[loser] = donor
            continue
        gap = float(fit[donor] - fit[loser])
        margin = max(k * sd, a * abs(float(fit[donor])))
        if gap > margin:
            kept[loser] = donor
        else:
            held[loser] = Held(donor, gap if math.isfinite(gap) else math.nan, margin)
    return kept, held


def select(
    name: str,
    fitness: np.ndarray,
    rng: np.random.Generator,
    *,
    fraction: float = 0.25,
    tournament_size: int = 3,
    elitism: bool = False,
    returns: Sequence[np.ndarray] | None = None,
    alpha: float = 0.05,
    ready: np.ndarray | None = None,
) -> dict[int, int]:
    """Dispatch to a selection rule by name (one of :data:`SELECTIONS`).

    ``none`` is no exploit at all (random search): always the empty map.
    ``ready`` (a bool per member; None: all ready) restricts the rule to the
    ready members, as if the others were not in the population: they neither
    copy nor are copied (``--ready-after``). Fewer than 2 ready: no exploit.

    Raises:
        ValueError: for an unknown name, bad rule parameters, or ``ttest`` without ``returns``.

    """
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection {name!r} (expected one of {', '.join(SELECTIONS)})")
    if ready is not None and not bool(np.all(ready)):
        ids = np.flatnonzero(np.asarray(ready, dtype=bool))
        if ids.size < 2:
            return {}
        sub = select(
            name,
            np.asarray(fitness, dtype=np.float64)[ids],
            rng,
            fraction=fraction,
            tournament_size=tournament_size,
            elitism=elitism,
            returns=None if returns is None else [returns[int(i)] for i in ids],
            alpha=alpha,
        )
        return {int(ids[loser]): int(ids[winner]) for loser, winner in sub.items()}
    if name == "truncation":
        return truncation(fitness, fraction, rng)
    if name == "wta":
        return winner_takes_all(fitness)
    if name == "tournament":
        return tournament(fitness, tournament_size, elitism, rng)
    if name == "ttest":
        if returns is None:
            raise ValueError("selection 'ttest' needs the members' episode returns")
        return ttest(returns, fitness, alpha, rng)
    return {}  # "none"
