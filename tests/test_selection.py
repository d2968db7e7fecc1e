import math

import numpy as np
import pytest

from evo_mpi.selection import quantile_size, rank_order, select, truncation, winner_takes_all


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
    top = counts[48:]
    assert counts[:48].sum() == 0
    # 300 * 16 draws over 16 winners: each ~300; uniform within 25 %.
    assert top.min() > 225 and top.max() < 375


def test_select_dispatch_and_bad_input():
    f = np.array([0.0, 1.0, 2.0, 3.0])
    assert select("wta", f, np.random.default_rng(0)) == {0: 3, 1: 3, 2: 3}
    assert select("truncation", f, np.random.default_rng(0), fraction=0.25) == {0: 3}
    with pytest.raises(ValueError, match="unknown selection 'nope'"):
        select("nope", f, np.random.default_rng(0))
    with pytest.raises(ValueError, match="got 0.75"):
        truncation(f, 0.75, np.random.default_rng(0))
