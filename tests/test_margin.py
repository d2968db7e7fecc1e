"""The exploit margin: a loser copies only a donor that beats it by more than max(k * sd, a * |donor|)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evo_mpi.config import Config
from evo_mpi.decision import View, donors
from evo_mpi.records import step_of
from evo_mpi.selection import Held, exploit_margin, spread
from helpers import cartpole_args, read_history, run_evo

STEPS = 256
K, A = 0.5, 0.05


def _sd(fitness: list[float]) -> float:
    """The issue's definition, written out: population sd (ddof 0) of the finite fitness without the worst 20 %."""
    finite = sorted((f for f in fitness if f is not None and math.isfinite(f)), reverse=True)
    kept = finite[: len(finite) - math.floor(0.2 * len(finite))]
    if len(kept) < 2:
        return 0.0
    mean = sum(kept) / len(kept)
    return math.sqrt(sum((f - mean) ** 2 for f in kept) / len(kept))


def test_spread_drops_the_worst_fifth():
    # 10, 8, 6, 4, 2: the worst one (2) dropped; mean 7, squared deviations 9 + 1 + 1 + 9 = 20 over 4 -> sqrt(5)
    assert spread(np.array([2.0, 10.0, 6.0, 8.0, 4.0])) == pytest.approx(math.sqrt(5))
    # four members: floor(0.8) = 0 dropped; NaN left out first
    assert spread(np.array([1.0, 3.0, math.nan, 5.0, 7.0])) == pytest.approx(math.sqrt(5))
    assert spread(np.array([4.0, math.nan])) == 0.0


def test_the_margin_keeps_clear_wins_and_holds_the_rest():
    fitness = np.array([10.0, 8.0, 6.0, 4.0, 2.0])  # sd sqrt(5) = 2.236: k * sd = 1.118
    kept, held = exploit_margin({4: 0, 3: 2, 2: 1}, fitness, K, A)
    # 4 <- 0: gap 8 > max(1.118, 0.5); 3 <- 2: gap 2 > max(1.118, 0.3); 2 <- 1: gap 2 > max(1.118, 0.4)
    assert kept == {4: 0, 3: 2, 2: 1} and held == {}
    kept, held = exploit_margin({4: 3}, fitness, K, A)  # gap 2 > 1.118: copies
    assert kept == {4: 3}
    kept, held = exploit_margin({4: 3}, fitness, 1.0, 0.0)  # gap 2 <= 1 * 2.236: held
    assert kept == {} and held == {4: Held(donor=3, gap=2.0, margin=pytest.approx(math.sqrt(5)))}
    # the relative part: donor -100, loser -104: gap 4 <= 0.05 * 100 = 5
    kept, held = exploit_margin({1: 0}, np.array([-100.0, -104.0]), 0.0, 0.05)
    assert kept == {} and held[1].margin == pytest.approx(5.0) and held[1].gap == pytest.approx(4.0)


def test_ties_never_copy_and_a_loser_without_fitness_still_does():
    kept, held = exploit_margin({3: 0, 2: 1}, np.array([500.0, 500.0, 500.0, 500.0]), 0.0, 0.0)
    assert kept == {} and set(held) == {3, 2} and held[3].gap == 0.0
    kept, held = exploit_margin({3: 0}, np.array([5.0, 4.0, 3.0, math.nan]), K, A)
    assert kept == {3: 0} and held == {}


def test_the_default_config_never_copies_on_a_tie():
    """The quick start's churn: four members at 500 on CartPole; truncation names a loser, nobody copies."""
    cfg = Config(agents_per_rank=4)
    rng = np.random.default_rng(0)
    choice = donors(cfg, View(range(4), np.full(4, 500.0)), rng, rng)
    assert choice.donors == {}
    assert set(choice.held) == {3} and choice.held[3].donor in (0, 1, 2) and choice.held[3].gap == 0.0


def test_a_failed_member_copies_whatever_the_margin():
    cfg = Config(agents_per_rank=4, exploit_margin_std=100.0)
    fitness = np.array([5.0, 4.9, 4.8, math.nan])
    choice = donors(cfg, View(range(4), fitness, failed=(3,)), np.random.default_rng(1), np.random.default_rng(2))
    assert choice.donors == {3: 0} and choice.held == {}


def _check_sync_history(history: list[dict]) -> tuple[int, int]:
    """Every copy clears the margin, every held loser does not, by the generation's own fitness; (copies, held)."""
    copies = held = 0
    for g in sorted({step_of(r) for r in history}):
        rows = {r["member"]: r for r in history if step_of(r) == g}
        fit = [rows[m]["fitness"] for m in sorted(rows)]
        sd = _sd(fit)
        for m, r in rows.items():
            if r["parent"] is not None:
                donor = fit[r["parent"]]
                assert donor - fit[m] > max(K * sd, A * abs(donor)), (g, m, r["parent"])
                copies += 1
            if "held" in r:
                donor = fit[r["held"]["donor"]]
                margin = max(K * sd, A * abs(donor))
                assert donor - fit[m] <= margin and r["parent"] is None
                assert r["held"]["margin"] == pytest.approx(margin)
                assert r["held"]["gap"] == pytest.approx(donor - fit[m])
                held += 1
    return copies, held


def test_the_margin_holds_in_every_sync_history_row(tmp_path):
    args = [*cartpole_args(seed=5, generations=8, steps=STEPS), "--agents-per-rank", "4"]
    args += ["--truncation-fraction", "0.5"]
    args += ["--exploit-margin-std", str(K), "--exploit-margin-abs", str(A)]
    run_evo([*args, "--run-dir", str(tmp_path / "m")], 2)
    copies, held = _check_sync_history(read_history(tmp_path / "m"))
    assert copies > 0 and held > 0, (copies, held)  # both branches happened, else the check proves nothing


def test_the_margin_holds_in_every_async_history_row(tmp_path):
    args = [*cartpole_args(seed=5, generations=8, steps=STEPS), "--agents-per-rank", "4"]
    args += ["--truncation-fraction", "0.5"]
    args += ["--mode", "async", "--exploit-margin-std", str(K), "--exploit-margin-abs", str(A)]
    run_evo([*args, "--run-dir", str(tmp_path / "a")], None)
    history = read_history(tmp_path / "a")
    by_key = {(r["member"], step_of(r)): r for r in history}
    copies = held = 0
    for r in history:
        # the decision saw each member's record at interval seen[i] (-1: none yet)
        seen = {i: by_key[(i, k)]["fitness"] for i, k in enumerate(r["seen"]) if k >= 0}
        sd = _sd(list(seen.values()))
        if r["parent"] is not None:
            donor = seen[r["parent"]]
            assert donor - r["fitness"] > max(K * sd, A * abs(donor))
            copies += 1
        if "held" in r:
            donor = seen[r["held"]["donor"]]
            assert donor - r["fitness"] <= max(K * sd, A * abs(donor)) and r["parent"] is None
            held += 1
    assert copies > 0 and held > 0, (copies, held)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--exploit-margin-std", "-0.5"], "--exploit-margin-std must be finite and >= 0, got -0.5"),
        (["--exploit-margin-abs", "nan"], "--exploit-margin-abs must be finite and >= 0, got nan"),
        (["--exploit-margin-abs", "0.1", "--selection", "ttest"], "--selection ttest: the t-test is its own margin"),
    ],
)
def test_bad_margins_exit_2_naming_the_value(tmp_path, args, named):
    proc = run_evo([*args, "--agents-per-rank", "2", "--run-dir", str(tmp_path / "bad")], None, check=False)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()
