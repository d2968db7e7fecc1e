import math

import numpy as np
import pytest
from scipy import stats

from evo_mpi.selection import (
    SELECTIONS,
    quantile_size,
    rank_order,
    select,
    tournament,
    truncation,
    ttest,
    welch_pvalue,
    winner_takes_all,
)


def _assert_distribution(counts, probs, pmin=1e-4):
    """Observed counts fit the exact probabilities: impossible outcomes never occur, the rest pass chi-square."""
    counts, probs = np.asarray(counts, dtype=float), np.asarray(probs, dtype=float)
    assert counts[probs == 0].sum() == 0, (counts, probs)
    live = probs > 0
    if live.sum() > 1:  # one possible outcome: nothing left to test
        pvalue = stats.chisquare(counts[live], counts.sum() * probs[live] / probs[live].sum()).pvalue
        assert pvalue > pmin, (pvalue, counts, probs)


def _best_of_k_probability(population, k):
    """P(rank r is the best of k members drawn uniformly without replacement) = C(P-1-r, k-1) / C(P, k)."""
    return np.array([math.comb(population - 1 - r, k - 1) / math.comb(population, k) for r in range(population)])


@pytest.mark.parametrize("population", range(2, 65))
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.3, 0.5])
def test_truncation_quantile_sizes(population, fraction):
    rng = np.random.default_rng(population)
    fitness = rng.normal(size=population)
    n = math.ceil(round(fraction * population, 9))
    assert quantile_size(population, fraction) == n
    plan = truncation(fitness, fraction, np.random.default_rng(0))
    order = np.argsort(-fitness, kind="stable")
    assert sorted(plan) == sorted(order[population - n :].tolist())
    assert set(plan.values()) <= set(order[:n].tolist())
    assert all(loser != winner for loser, winner in plan.items())
    if 2 * n <= population:
        assert not set(plan) & set(plan.values())


def test_quantile_size_float_noise():
    # 0.3 * 10 == 3.0000000000000004 in floating point; the quantile is still 3.
    assert quantile_size(10, 0.3) == 3
    assert quantile_size(4, 0.25) == 1
    assert quantile_size(5, 0.25) == 2


def test_rank_order_ties_by_lowest_index_and_nonfinite_last():
    fitness = np.array([1.0, np.nan, 3.0, 3.0, np.inf, -1.0, -np.inf, 3.0])
    assert rank_order(fitness).tolist() == [2, 3, 7, 0, 5, 1, 4, 6]


def test_nan_members_are_replaced_and_never_copied():
    fitness = np.array([np.nan, 5.0, 4.0, np.nan, 1.0, 2.0, 3.0, 0.5])
    plan = truncation(fitness, 0.25, np.random.default_rng(1))
    assert sorted(plan) == [0, 3]
    assert set(plan.values()) <= {1, 2}


def test_all_nonfinite_gives_empty_plan():
    assert truncation(np.full(4, np.nan), 0.5, np.random.default_rng(0)) == {}
    assert winner_takes_all(np.array([np.nan, np.inf])) == {}


def test_wta_everyone_copies_best_with_ties_to_lowest():
    fitness = np.array([1.0, 9.0, 9.0, np.nan, 2.0])
    assert winner_takes_all(fitness) == {0: 1, 2: 1, 3: 1, 4: 1}


def test_truncation_is_seeded_and_draws_uniformly():
    fitness = np.arange(64, dtype=float)
    a = truncation(fitness, 0.25, np.random.default_rng(3))
    b = truncation(fitness, 0.25, np.random.default_rng(3))
    assert a == b
    counts = np.zeros(64)
    rng = np.random.default_rng(0)
    for _ in range(300):
        for w in truncation(fitness, 0.25, rng).values():
            counts[w] += 1
    # only the top 16 (members 48..63) are ever drawn, each with probability 1/16
    _assert_distribution(counts, np.r_[np.zeros(48), np.full(16, 1 / 16)])


def test_select_dispatch_and_bad_input():
    f = np.array([0.0, 1.0, 2.0, 3.0])
    assert select("wta", f, np.random.default_rng(0)) == {0: 3, 1: 3, 2: 3}
    assert select("truncation", f, np.random.default_rng(0), fraction=0.25) == {0: 3}
    with pytest.raises(ValueError, match="unknown selection 'nope'"):
        select("nope", f, np.random.default_rng(0))
    with pytest.raises(ValueError, match="got 0.75"):
        truncation(f, 0.75, np.random.default_rng(0))


# --- tournament ---------------------------------------------------------------------------------


def _check_plan(plan, population):
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in plan.items())
    assert all(0 <= k < population and 0 <= v < population and k != v for k, v in plan.items())


@pytest.mark.parametrize("population", range(2, 17))
@pytest.mark.parametrize("size", [2, 3, 5])
@pytest.mark.parametrize("elitism", [False, True])
def test_tournament_valid_plan_and_elitism(population, size, elitism):
    fitness = np.random.default_rng(population).normal(size=population)
    best = int(np.argmax(fitness))
    position = {int(m): r for r, m in enumerate(np.argsort(-fitness, kind="stable"))}
    k = min(size, population)
    for seed in range(20):
        plan = tournament(fitness, size, elitism, np.random.default_rng(seed))
        _check_plan(plan, population)
        for loser, winner in plan.items():
            # the best of k distinct contestants has at least k - 1 members below it
            assert position[winner] <= population - k, (loser, winner)
        if elitism:
            assert best not in plan


@pytest.mark.parametrize("population", range(2, 17))
def test_tournament_full_size_everyone_copies_best(population):
    fitness = np.random.default_rng(population).normal(size=population)
    best = int(np.argmax(fitness))
    expected = {m: best for m in range(population) if m != best}
    for size in (population, population + 3):
        assert tournament(fitness, size, False, np.random.default_rng(0)) == expected
        assert tournament(fitness, size, True, np.random.default_rng(0)) == expected


def test_tournament_ties_go_to_lowest_index():
    fitness = np.array([1.0, 5.0, 5.0, 5.0])
    assert tournament(fitness, 4, False, np.random.default_rng(0)) == {0: 1, 2: 1, 3: 1}


@pytest.mark.parametrize("population", range(2, 17))
def test_tournament_nan_never_wins_and_is_replaced(population):
    fitness = np.random.default_rng(population).normal(size=population)
    fitness[::2] = np.nan
    fitness[1] = np.inf if population > 2 else fitness[1]
    finite = np.isfinite(fitness)
    for seed in range(200):
        plan = tournament(fitness, 2, False, np.random.default_rng(seed))
        assert all(finite[w] for w in plan.values())
    if finite.any():
        # with size = P a finite contestant always exists: every non-finite member is replaced
        plan = tournament(fitness, population, False, np.random.default_rng(0))
        assert set(np.flatnonzero(~finite).tolist()) <= set(plan)


def test_tournament_nan_member_replaced_as_often_as_a_finite_contestant_is_drawn():
    """Member 0 (NaN) is replaced exactly when one of its 2 contestants is finite: 1 - C(3,2)/C(6,2) = 0.8."""
    fitness = np.array([np.nan, 1.0, np.nan, 2.0, -np.inf, 0.5])
    seeds = 2000
    replaced = 0
    for seed in range(seeds):
        plan = tournament(fitness, 2, False, np.random.default_rng(seed))
        if 0 in plan:
            assert np.isfinite(fitness[plan[0]])
            replaced += 1
    expected, sd = 0.8 * seeds, math.sqrt(seeds * 0.8 * 0.2)
    assert abs(replaced - expected) < 5 * sd


def test_tournament_all_nonfinite_is_empty():
    assert tournament(np.array([np.nan, np.inf, -np.inf]), 3, False, np.random.default_rng(0)) == {}


def test_tournament_seeded_determinism():
    fitness = np.random.default_rng(0).normal(size=12)
    for seed in range(5):
        a = tournament(fitness, 3, True, np.random.default_rng(seed))
        b = tournament(fitness, 3, True, np.random.default_rng(seed))
        assert a == b
    plans = {tuple(sorted(tournament(fitness, 3, False, np.random.default_rng(s)).items())) for s in range(20)}
    assert len(plans) > 10


@pytest.mark.parametrize("tied", [False, True])
def test_tournament_contestants_are_uniform(tied):
    """Size 2: every member's tournament is won by rank r with probability 2 (P-1-r) / (P (P-1)).

    With all fitness tied the rank is the member index (ties go to the lowest index).
    """
    population, seeds = 8, 3000
    # member r has rank r: strictly decreasing fitness, or all equal
    fitness = np.zeros(population) if tied else np.arange(population, dtype=float)[::-1].copy()
    counts = np.zeros((population, population))
    rng = np.random.default_rng(0)
    for _ in range(seeds):
        plan = tournament(fitness, 2, False, rng)
        for m in range(population):
            counts[m, plan.get(m, m)] += 1  # member m keeps itself exactly when it wins its own tournament
    expected = _best_of_k_probability(population, 2)
    for m in range(population):
        _assert_distribution(counts[m], expected, pmin=1e-4 / population)


def test_tournament_of_three_winner_distribution():
    """Size 3: rank r wins member i's tournament with probability C(P-1-r, 2) / C(P, 3)."""
    population, seeds = 8, 3000
    fitness = np.arange(population, dtype=float)[::-1].copy()  # member r has rank r
    wins = np.zeros(population)
    rng = np.random.default_rng(1)
    for _ in range(seeds):
        plan = tournament(fitness, 3, False, rng)
        wins[plan.get(3, 3)] += 1  # member 3's tournament (it keeps itself when it wins)
    # the two worst can never win a 3-tournament; the rest in proportion to C(P-1-r, 2)
    _assert_distribution(wins, _best_of_k_probability(population, 3))


def test_tournament_bad_size():
    with pytest.raises(ValueError, match="got 1"):
        tournament(np.zeros(4), 1, False, np.random.default_rng(0))


# --- t-test -------------------------------------------------------------------------------------


def test_welch_pvalue_matches_scipy_and_handles_constants():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(size=int(rng.integers(2, 12)))
        b = rng.normal(0.5, 2.0, size=int(rng.integers(2, 12)))
        expected = stats.ttest_ind(a, b, equal_var=False).pvalue
        assert welch_pvalue(a, b) == pytest.approx(expected, rel=1e-9)
    assert welch_pvalue(np.full(5, 0.1), np.full(3, 0.1)) == 1.0
    assert welch_pvalue(np.full(5, 0.1), np.full(3, 0.2)) == 0.0
    assert 0.0 < welch_pvalue(np.full(5, 1.0), np.array([0.0, 1.0, 3.0])) < 1.0
    with pytest.raises(ValueError):
        welch_pvalue(np.ones(1), np.ones(3))


@pytest.mark.parametrize("population", range(2, 17))
def test_ttest_copies_clearly_better_partner(population):
    # member m's returns are centred on 10 * m: every better partner is significant
    rng = np.random.default_rng(population)
    returns = [10.0 * m + rng.normal(size=8) for m in range(population)]
    fitness = np.array([r.mean() for r in returns])
    seeds = 400
    copies = np.zeros(population)
    for seed in range(seeds):
        plan = ttest(returns, fitness, 0.05, np.random.default_rng(seed))
        assert all(j > i for i, j in plan.items())  # only ever a better member
        for i in plan:
            copies[i] += 1
    # member i's partner is better (and clearly so) with probability (P - 1 - i) / (P - 1)
    for i in range(population):
        p = (population - 1 - i) / (population - 1)
        # exact binomial test; p = 0 or 1 (worst or best member) demands exactly 0 or `seeds` copies
        assert stats.binomtest(int(copies[i]), seeds, p).pvalue > 1e-6, (i, copies[i], seeds * p)


@pytest.mark.parametrize("population", range(2, 17))
def test_ttest_equal_samples_never_copied(population):
    same = np.array([1.0, 2.0, 3.0, 4.0])
    returns = [same.copy() for _ in range(population)]
    constant = [np.full(5, 0.1) for _ in range(population)]
    fitness = np.zeros(population)
    for seed in range(10):
        assert ttest(returns, fitness, 0.5, np.random.default_rng(seed)) == {}
        assert ttest(constant, fitness, 0.9, np.random.default_rng(seed)) == {}


def test_ttest_different_constants_are_different():
    returns = [np.full(3, 1.0), np.full(4, 2.0)]
    assert ttest(returns, np.array([1.0, 2.0]), 0.05, np.random.default_rng(0)) == {0: 1}


def test_ttest_too_few_returns_copies_only_nonfinite():
    returns = [np.array([1.0]), np.array([]), np.array([100.0, 101.0, 102.0]), np.array([])]
    fitness = np.array([1.0, np.nan, 101.0, 5.0])
    donors = set()
    for seed in range(60):
        plan = ttest(returns, fitness, 0.5, np.random.default_rng(seed))
        # members with fewer than 2 returns are never compared; member 1 (NaN) copies whoever it draws
        assert set(plan) == {1}
        donors.add(plan[1])
    assert donors == {0, 2, 3}


def test_ttest_nan_partner_never_copied_nonfinite_member_replaced():
    returns = [np.array([0.0, 1.0])] * 3 + [np.array([1e6, 1e6 + 1])]
    fitness = np.array([np.nan, np.inf, 0.5, np.nan])
    seeds = 1500
    copies = np.zeros(4)
    for seed in range(seeds):
        plan = ttest(returns, fitness, 0.05, np.random.default_rng(seed))
        assert set(plan.values()) <= {2} and 2 not in plan  # only the finite member is copied; it copies nobody
        for i in plan:
            copies[i] += 1
    for i in (0, 1, 3):  # a non-finite member draws member 2 with probability 1/3
        assert abs(copies[i] - seeds / 3) < 5 * math.sqrt(seeds * (1 / 3) * (2 / 3))


@pytest.mark.parametrize("population", [2, 3, 5, 8])
def test_ttest_partner_uniform_over_others(population):
    seeds = 4000
    counts = np.zeros((population, population))
    rng = np.random.default_rng(0)
    returns = [np.array([0.0, 0.0])] * population
    fitness = np.zeros(population)
    fitness[0] = np.nan  # member 0 copies whoever it draws
    for _ in range(seeds):
        plan = ttest(returns, fitness, 0.05, rng)
        counts[0, plan[0]] += 1
    # never itself, each of the other P - 1 with probability 1 / (P - 1)
    _assert_distribution(counts[0], np.r_[0.0, np.full(population - 1, 1 / (population - 1))])


def test_ttest_alpha_effect():
    worse = np.array([0.0, 1.0, 2.0, 3.0])
    better = np.array([0.5, 1.5, 2.5, 3.5])  # p ~ 0.63 two-sided
    p = welch_pvalue(better, worse)
    assert 0.001 < p < 0.9
    returns, fitness = [worse, better], np.array([worse.mean(), better.mean()])
    assert ttest(returns, fitness, 0.9, np.random.default_rng(0)) == {0: 1}
    assert ttest(returns, fitness, 0.001, np.random.default_rng(0)) == {}
    borderline = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.6, 2.6, 3.6, 4.6])]
    p = welch_pvalue(borderline[1], borderline[0])
    assert 0.001 < p < 0.5
    fit = np.array([1.5, 3.1])
    assert ttest(borderline, fit, 0.5, np.random.default_rng(0)) == {0: 1}
    assert ttest(borderline, fit, 0.001, np.random.default_rng(0)) == {}


def test_ttest_seeded_determinism_and_bad_input():
    rng = np.random.default_rng(1)
    returns = [rng.normal(m, 1.0, size=5) for m in range(10)]
    fitness = np.array([r.mean() for r in returns])
    assert ttest(returns, fitness, 0.1, np.random.default_rng(7)) == ttest(
        returns, fitness, 0.1, np.random.default_rng(7)
    )
    assert ttest([np.ones(3)], np.ones(1), 0.05, np.random.default_rng(0)) == {}
    for alpha in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="alpha"):
            ttest(returns, fitness, alpha, np.random.default_rng(0))
    with pytest.raises(ValueError, match="one returns array per member"):
        ttest(returns[:3], fitness, 0.05, np.random.default_rng(0))


# --- dispatch -----------------------------------------------------------------------------------


def test_select_new_rules():
    assert SELECTIONS == ("truncation", "wta", "tournament", "ttest", "none")
    f = np.array([0.0, 1.0, 2.0, 3.0])
    assert select("none", f, np.random.default_rng(0)) == {}
    assert select("tournament", f, np.random.default_rng(0), tournament_size=4) == {0: 3, 1: 3, 2: 3}
    assert select("tournament", f, np.random.default_rng(5), tournament_size=2, elitism=True) == tournament(
        f, 2, True, np.random.default_rng(5)
    )
    returns = [np.array([10.0 * m, 10.0 * m + 1]) for m in range(4)]
    assert select("ttest", f, np.random.default_rng(3), returns=returns, alpha=0.2) == ttest(
        returns, f, 0.2, np.random.default_rng(3)
    )
    with pytest.raises(ValueError, match="returns"):
        select("ttest", f, np.random.default_rng(0))
    with pytest.raises(ValueError, match="tournament size"):
        select("tournament", f, np.random.default_rng(0), tournament_size=1)


def test_ttest_copies_only_what_scipy_calls_significant():
    """Independent oracle: every copy is to a partner with a higher mean and Welch p < alpha (scipy)."""
    rng = np.random.default_rng(3)
    copied = forced = 0
    for trial in range(200):
        population = int(rng.integers(2, 9))
        returns = [
            rng.normal(rng.normal(0, 1), rng.uniform(0.2, 2), size=int(rng.integers(2, 10))) for _ in range(population)
        ]
        fitness = np.array([r.mean() for r in returns])
        alpha = float(rng.choice([0.01, 0.05, 0.3]))
        plan = ttest(returns, fitness, alpha, np.random.default_rng(trial))
        better = [
            {
                j
                for j in range(population)
                if j != i
                and returns[j].mean() > returns[i].mean()
                and stats.ttest_ind(returns[j], returns[i], equal_var=False).pvalue < alpha
            }
            for i in range(population)
        ]
        for i, j in plan.items():
            assert j in better[i], (i, j)
        for i in range(population):
            if not better[i]:
                assert i not in plan  # nobody is significantly better: whoever i draws, it keeps its state
            elif len(better[i]) == population - 1:
                assert i in plan  # everybody is: whoever i draws, it copies
                forced += 1
        copied += len(plan)
    assert copied > 50 and forced > 10  # the checks above ran on many copies
