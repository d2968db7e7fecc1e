"""MF-PBT: who may evolve when, what migrates where and whose hyperparameters travel; real runs on any layout."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from evo_mpi.config import Config
from evo_mpi.decision import View, donors
from evo_mpi.mfpbt import check, evolving, moves
from evo_mpi.records import step_of
from helpers import (
    cartpole_args,
    check_pngs,
    history_without_rank,
    launch,
    read_history,
    run_evo,
    run_module,
    wait_for_line,
)


def test_sub_populations_evolve_at_their_periods():
    periods = (1, 10, 25, 50)
    assert evolving(0, periods) == [True, False, False, False]
    assert evolving(9, periods) == [True, True, False, False]
    assert evolving(24, periods) == [True, False, True, False]
    assert evolving(49, periods) == [True, True, True, True]


def test_only_the_fast_sub_population_evolves_and_imports_a_slow_migrant_whole():
    # sub-population 0 = ids 0-3 (period 1), 1 = ids 4-7 (period 10); brackets of q = 1
    fitness = np.array([1.0, 4.0, 3.0, 2.0, 10.0, 9.0, 8.0, 7.0])
    got = moves(fitness, (1, 10), 0)
    # inside 0: ranked 1, 2, 3, 0: the loser 0 copies the winner 1 and explores;
    # the open member 3 (rank 2, fitness 2) meets the best outsider 4 (10): it comes in with its hyperparameters
    assert got.weights == {0: 1, 3: 4} and got.hparams == {0: 1, 3: 4} and got.explore == {0}


def test_a_migrant_from_a_faster_sub_population_brings_weights_only():
    fitness = np.array([10.0, 9.0, 8.0, 7.0, 1.0, 4.0, 3.0, 2.0])
    got = moves(fitness, (1, 10), 9)  # both evolve
    # 0: the loser 3 copies 0; its open member 2 (8) meets 5 (4): no migration
    # 1: ranked 5, 6, 7, 4: the loser 4 copies 5; the open member 7 (2) takes 0's weights (10 > 2) with the
    #    hyperparameters of its own sub-population's best, 5; it does not explore
    assert got.weights == {3: 0, 4: 5, 7: 0}
    assert got.hparams == {3: 0, 4: 5, 7: 5}
    assert got.explore == {3, 4}


def test_the_next_migrant_comes_up_only_after_one_came_in():
    # 16 members, 2 sub-populations of 8 (q = 2): 0's open members are ranks 4-5 (ids 4, 5)
    group1 = [4.5, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    got = moves(np.array([8.0, 7, 6, 4, 4.0, 3.0, 2, 1, *group1]), (1, 2), 0)
    assert got.weights == {6: 0, 7: 1, 4: 8}  # 4 (4.0) takes 8 (4.5); 5 (3.0) does not beat 9 (2.5)
    got = moves(np.array([8.0, 7, 6, 5, 4.6, 3.0, 2, 1, *group1]), (1, 2), 0)
    assert got.weights == {6: 0, 7: 1, 5: 8}  # 4 (4.6) beats 8; 5 (3.0) still meets 8, not 9


def test_a_tie_never_migrates():
    got = moves(np.array([5.0, 4.0, 3.0, 2.0, 3.0, 0.0, 0.0, 0.0]), (1, 10), 0)
    assert got.weights == {3: 0}  # open member 2 (3.0) and the best outsider 4 (3.0) tie


def test_the_decision_core_reports_migrants_and_their_hyperparameter_source():
    cfg = Config(selection="mfpbt", mfpbt_periods=(1, 10), agents_per_rank=8)
    rng = np.random.default_rng(0)
    fitness = np.array([10.0, 9.0, 8.0, 7.0, 1.0, 4.0, 3.0, 2.0])
    choice = donors(cfg, View(range(8), fitness), rng, rng, step=9)
    assert choice.donors == {3: 0, 4: 5, 7: 0}
    assert choice.hparams_from == {7: 5} and choice.unexplored == {7}
    assert [choice.hparams_source(m) for m in (3, 7, 1)] == [0, 5, 1]


def test_periods_and_population_are_checked():
    assert check(8, (1, 10)) == []
    assert any("does not divide into 3" in p for p in check(8, (1, 2, 3)))
    assert any("too small" in p for p in check(8, (1, 10, 25, 50)))
    assert any(">= 1" in p for p in check(8, (0, 10)))
    assert any("increasing" in p for p in check(8, (10, 1)))


PERIODS = "1,3"
STEPS = 256


def _args(run_dir, per_rank: int) -> list[str]:
    args = [*cartpole_args(seed=4, generations=7, steps=STEPS), "--selection", "mfpbt", "--mfpbt-periods", PERIODS]
    return [*args, "--agents-per-rank", str(per_rank), "--run-dir", str(run_dir)]


def test_mfpbt_runs_the_same_on_any_layout_and_after_a_resume(tmp_path):
    run_evo(_args(tmp_path / "one", 8), None)
    reference = history_without_rank(tmp_path / "one")
    run_evo(_args(tmp_path / "n4", 2), 4)  # a sub-population spread over two ranks
    assert history_without_rank(tmp_path / "n4") == reference, "-n 4 differs"
    stopped = tmp_path / "stopped"  # -n 2: one sub-population per rank, stopped and resumed
    proc = launch(_args(stopped, 4), 2)
    wait_for_line(proc, "gen   4/")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode in (0, 75)
    run_evo(["--resume", str(stopped)], 2)
    assert history_without_rank(stopped) == reference
    _check_the_rule(read_history(tmp_path / "one"))
    _check_plot_colours(tmp_path / "one")


def _check_plot_colours(run_dir) -> None:
    """The fitness plot draws the fast sub-population in blues and the slow one in oranges."""
    from matplotlib import colormaps
    from matplotlib.image import imread

    check_pngs(run_module("evo_mpi.plot", str(run_dir)), run_dir / "plots")
    pixels = imread(run_dir / "plots" / "fitness.png")[..., :3].reshape(-1, 3)
    for cmap in ("Blues", "Oranges"):
        shade = np.array(colormaps[cmap](0.9)[:3])  # the darkest member of each sub-population
        assert np.sum(np.abs(pixels - shade).max(axis=1) < 0.02) > 50, cmap
    other = np.array(colormaps["tab10"](2)[:3])  # member 2's colour in a run without sub-populations
    assert np.sum(np.abs(pixels - other).max(axis=1) < 0.02) < 5


def _check_the_rule(history: list[dict]) -> None:
    """What the history shows: who evolved when, and which hyperparameters each copy continued with."""
    rows = {(step_of(r), r["member"]): r for r in history}
    generations = sorted({step_of(r) for r in history})
    migrants = 0
    for g in generations[:-1]:
        slow_due = (g + 1) % 3 == 0
        for m in range(8):
            r, after = rows[(g, m)], rows[(g + 1, m)]
            if r["parent"] is None:
                assert after["hparams"] == r["hparams"]  # nobody copied: hyperparameters unchanged
                continue
            assert m < 4 or slow_due, f"member {m} of the slow sub-population copied at generation {g}"
            if (m < 4) != (r["parent"] < 4):  # a migrant: it keeps what it takes, unexplored
                migrants += 1
                source = r.get("hparams_from", r["parent"])
                assert after["hparams"] == rows[(g, source)]["hparams"]
                if m >= 4:  # into the slow sub-population from the fast one: its own best's hyperparameters
                    assert source // 4 == 1 and "hparams_from" in r
            else:  # a loser inside its sub-population explores from its winner's hyperparameters
                assert after["hparams"] != rows[(g, r["parent"])]["hparams"]
    assert migrants > 0, "no migration happened: the run checks too little"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--mfpbt-periods", "1,10,25", "--agents-per-rank", "8"], "a population of 8 does not divide into 3"),
        (["--mfpbt-periods", "0,10", "--agents-per-rank", "8"], "--mfpbt-periods 0,10: every period must be >= 1"),
        (["--mfpbt-periods", "1,10", "--agents-per-rank", "8", "--mode", "async"], "--selection mfpbt with --mode"),
    ],
)
def test_bad_mfpbt_settings_exit_2_naming_the_value(tmp_path, args, named):
    proc = run_evo(["--selection", "mfpbt", *args, "--run-dir", str(tmp_path / "bad")], None, check=False)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr
