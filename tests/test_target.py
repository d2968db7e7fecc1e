"""--target-fitness: the run ends once the population reaches a score, in both modes (real SB3 runs)."""

from __future__ import annotations

import math

import pytest

from evo_mpi.target import reached, target_value
from helpers import TINY, read_history, run_evo

#: 4 members, 6 generations of 256 steps: CartPole's random-policy returns are about 20, so a target
#: of 20 is met within the first generations and one of 1e6 never is.
RUN = [*TINY[: TINY.index("--generations")], "--generations", "6", *TINY[TINY.index("--generations") + 2 :]]


def test_best_ignores_nan_and_mean_needs_every_member():
    assert target_value([1.0, math.nan, 3.0], "best") == 3.0
    assert math.isnan(target_value([1.0, math.nan, 3.0], "mean"))
    assert target_value([1.0, 2.0, 3.0], "mean") == 2.0
    assert reached([1.0, 5.0], 5.0, "best") and not reached([1.0, 5.0], 5.0, "mean")
    assert not reached([math.nan, math.nan], -1e9, "best")
    assert not reached([1.0, 5.0], None, "best")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_target_reached_ends_the_run_early(tmp_path, mode):
    run_dir = tmp_path / "run"
    proc = run_evo([*RUN, "--agents-per-rank", "4", "--mode", mode, "--target-fitness", "20",
                    "--run-dir", str(run_dir)], None)  # fmt: skip
    history = read_history(run_dir)
    marked = [r for r in history if r.get("target_reached")]
    assert "evo-mpi: target reached: best fitness" in proc.stdout, proc.stdout
    assert marked, "no history record says that the target was reached"
    if mode == "sync":
        # the run ends with the generation in which the best fitness first reached 20, all of it marked
        last = max(r["generation"] for r in history)
        best = {g: max(r["fitness"] for r in history if r["generation"] == g) for g in range(last + 1)}
        assert best[last] >= 20 and all(best[g] < 20 for g in range(last)), best
        assert len(marked) == 4 and last < 5
    else:
        # the marked record is the first after which the best of every member's latest record is >= 20
        (hit,) = marked
        at = history.index(hit)

        def best_latest(records):
            latest = {}
            for r in records:
                latest[r["member"]] = r["fitness"]
            return max(latest.values(), default=-math.inf)

        assert best_latest(history[: at + 1]) >= 20 and best_latest(history[:at]) < 20
        assert len(history) < 4 * 6  # the budget was not spent
    assert sorted(p.name for p in (run_dir / "final").iterdir()) == [f"member_{m:02d}.zip" for m in range(4)]
    assert (run_dir / "best.zip").is_file()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_target_not_reached_spends_the_budget(tmp_path, mode):
    run_dir = tmp_path / "run"
    proc = run_evo([*RUN, "--mode", mode, "--target-fitness", "1e6", "--target-metric", "mean",
                    "--run-dir", str(run_dir)], 2)  # fmt: skip
    history = read_history(run_dir)
    assert len(history) == 2 * 6 and not any(r.get("target_reached") for r in history)
    assert "target reached" not in proc.stdout


def test_target_mean_across_ranks_stops_sync_run(tmp_path):
    """-n 2: every rank decides from the same gathered fitness, so both stop after the same generation."""
    run_dir = tmp_path / "run"
    run_evo([*RUN, "--target-fitness", "15", "--target-metric", "mean", "--run-dir", str(run_dir)], 2)
    history = read_history(run_dir)
    last = max(r["generation"] for r in history)
    means = {g: sum(r["fitness"] for r in history if r["generation"] == g) / 2 for g in range(last + 1)}
    assert means[last] >= 15 and all(means[g] < 15 for g in range(last))
    assert all(r.get("target_reached") for r in history if r["generation"] == last)
