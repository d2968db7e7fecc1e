"""The true objective: --fitness info:KEY and the API's objective=, in history, the t-test and the final pick."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from evo_mpi import train
from helpers import cartpole_args, read_history, run_evo

SCORED = ["--env-id", "tests.user_envs:ScoredCartPole"]


def _scored_args(run_dir, seed: int = 2) -> list[str]:
    args = [*cartpole_args(seed=seed, generations=4, steps=256), *SCORED, "--fitness", "info:score"]
    return [*args, "--agents-per-rank", "4", "--run-dir", str(run_dir)]


def _check_objective_rows(history: list[dict]) -> None:
    """Each episode's sample is its length mod 7 (the env's rule; a CartPole return is its length), the fitness
    their mean, and the returns are kept beside them."""
    for r in history:
        returns = r["returns"]
        assert r["objectives"] == [float(ret % 7) for ret in returns]
        if returns:
            assert r["fitness"] == pytest.approx(np.mean([ret % 7 for ret in returns]))


def test_info_fitness_is_the_mean_of_the_recorded_infos_and_the_pick_scores_it(tmp_path):
    run_evo(_scored_args(tmp_path / "run"), 2)
    history = read_history(tmp_path / "run")
    assert sum(len(r["returns"]) for r in history) > 20
    assert any(r["fitness"] != np.mean(r["returns"]) for r in history)
    _check_objective_rows(history)
    assert any(r["parent"] is not None for r in history)  # exploits moved the samples with the weights
    champion = json.loads((tmp_path / "run" / "champion.json").read_text())
    assert champion["scored"] == "info:score"
    scores = [s for c in champion["candidates"] for s in c["returns"]]
    assert scores and all(s in {float(k) for k in range(7)} for s in scores)  # length mod 7, not returns


def test_the_ttest_tests_the_objective_samples(tmp_path):
    args = [*_scored_args(tmp_path / "t", seed=3), "--selection", "ttest", "--ttest-alpha", "0.3"]
    run_evo(args, None)
    history = read_history(tmp_path / "t")
    rows = {(r["generation"], r["member"]): r for r in history}
    copies = 0
    for r in history:
        if r["parent"] is None or r["fitness"] is None:
            continue
        mine, theirs = r["objectives"], rows[(r["generation"], r["parent"])]["objectives"]
        assert np.mean(theirs) > np.mean(mine)
        assert stats.ttest_ind(theirs, mine, equal_var=False).pvalue < 0.3
        copies += 1
    assert copies > 0


def test_an_api_objective_is_the_fitness_and_history_keeps_the_return(tmp_path):
    result = train(
        env="CartPole-v1",
        objective=lambda episode: float(episode.length % 5),
        agents_per_rank=2,
        generations=2,
        steps_per_generation=256,
        n_envs=2,
        n_steps=64,
        final_eval_episodes=2,
        run_dir=str(tmp_path / "api"),
        echo=None,
    )
    history = read_history(tmp_path / "api")
    assert sum(len(r["returns"]) for r in history) > 5
    for r in history:
        assert r["objectives"] == [float(ret % 5) for ret in r["returns"]]
    assert result.status.value == "finished"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--fitness", "info:"], "--fitness 'info:': an empty key"),
        (["--fitness", "info:scor"], "--fitness info:scor: the env's info at an episode's end has no 'scor'"),
        (["--fitness", "info:score", "--eval-episodes", "3"], "evaluation episodes score returns only"),
    ],
)
def test_bad_objectives_exit_2_naming_the_value(tmp_path, args, named):
    proc = run_evo([*SCORED, *args, "--agents-per-rank", "2", "--run-dir", str(tmp_path / "b")], None, check=False)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr


def test_a_key_that_never_appears_in_training_stops_every_rank_with_exit_2(tmp_path):
    args = [*cartpole_args(seed=1, generations=3, steps=256), "--env-id", "tests.user_envs:ScoredCartPole"]
    args += ["--env-kwargs", '{"only_seed0": true}', "--fitness", "info:score", "--run-dir", str(tmp_path / "r")]
    proc = run_evo(args, 2, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--fitness info:score: episodes ended" in proc.stderr and "no final info had 'score'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wandb_and_tensorboard_keep_the_objective_and_the_return(tmp_path):
    pytest.importorskip("wandb")
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_wandb import _history

    from helpers import ROOT, child_env, mpiexec

    run_dir = tmp_path / "w"
    env = {**child_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "evo_mpi.run", *_scored_args(run_dir)]
    cmd += ["--generations", "2", "--wandb-project", "evo-test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    history = read_history(run_dir)
    logged = _history(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    for g, items in logged.items():
        for r in (r for r in history if r["generation"] == g):
            assert items[f"member_{r['member']:02d}/fitness"] == pytest.approx(r["fitness"])
            assert items[f"member_{r['member']:02d}/episode_return"] == pytest.approx(np.mean(r["returns"]))
    board = EventAccumulator(str(run_dir / "tb" / "member_00"))
    board.Reload()
    mine = [r for r in history if r["member"] == 0]
    objective = [e.value for e in board.Scalars("pbt/objective/score")]
    returns = [e.value for e in board.Scalars("pbt/episode_return")]
    assert objective == pytest.approx([r["fitness"] for r in mine], rel=1e-6)
    assert returns == pytest.approx([np.mean(r["returns"]) for r in mine], rel=1e-6)
