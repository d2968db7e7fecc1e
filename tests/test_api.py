"""The Python API: same history as the CLI, errors listing every problem, factories and callbacks over MPI,
and a plain PyTorch member (examples/custom_trainer.py) that trains, exploits and resumes under mpiexec."""

import json
import math
import signal
import subprocess
import sys

import pytest
from stable_baselines3 import PPO

import evo_mpi
from evo_mpi import ConfigError
from helpers import ROOT, TINY, child_env, history_without_rank, mpiexec, read_history, run_evo, wait_for_line

OPTIONS = {
    "env_id": "CartPole-v1",
    "seed": 7,
    "generations": 3,
    "steps_per_generation": 256,
    "n_envs": 2,
    "n_steps": 64,
    "search_space": {"batch_size": "choice:32,64,128", "n_epochs": "int:1:3"},
    "agents_per_rank": 2,
}


def test_api_run_equals_cli_run_and_returns_the_result(tmp_path):
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    run_evo([*TINY, "--agents-per-rank", "2", "--run-dir", str(cli_dir)], None)
    lines = []
    result = evo_mpi.train(**OPTIONS, run_dir=str(api_dir), echo=lines.append)
    assert history_without_rank(api_dir) == history_without_rank(cli_dir)
    assert result.status == "finished" and result.run_dir == str(api_dir) and result.rank == 0
    assert [{k: v for k, v in r.items() if k != "rank"} for r in result.history] == history_without_rank(cli_dir)
    last = [r for r in result.history if r["generation"] == 2]
    best = next(r for r in last if r["member"] == result.champion["member"])  # best.zip: the final evaluation's pick
    assert (result.best_member, result.best_fitness, result.best_hparams) == (
        best["member"],
        best["fitness"],
        best["hparams"],
    )
    assert isinstance(result.best_model, PPO) and result.best_model.num_timesteps == 3 * 256
    assert any(line.startswith("gen   3/3") for line in lines)
    again = evo_mpi.train(**OPTIONS, run_dir=str(api_dir), echo=None)
    assert again.status == "already" and again.best_member == result.best_member


def test_config_object_and_keywords_combine(tmp_path):
    cfg = evo_mpi.Config(**{**OPTIONS, "generations": 9})
    result = evo_mpi.train(cfg, generations=1, run_dir=str(tmp_path / "r"), echo=None)
    assert result.config.generations == 1 and result.config.seed == 7
    assert len(result.history) == 2


def test_api_raises_one_error_listing_every_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        evo_mpi.train(agents_per_rank=2, generations=0, truncation_fraction=0.9, run_dir=str(tmp_path / "r"))
    assert len(err.value.problems) == 2
    assert "--generations must be > 0, got 0" in str(err.value)
    assert "--truncation-fraction must be in (0, 0.5], got 0.9" in str(err.value)
    with pytest.raises(ConfigError, match="unknown option 'generation'"):
        evo_mpi.train(generation=3)
    with pytest.raises(ConfigError, match="population of 1"):
        evo_mpi.train(run_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_env_factory_and_callback_on_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [mpiexec(), "-n", "2", sys.executable, str(ROOT / "tests" / "api_script.py"), str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=child_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    outs = [json.loads((tmp_path / f"run-rank{r}.json").read_text()) for r in (0, 1)]
    assert [o["rank"] for o in outs] == [0, 1]
    for out in outs:
        assert out["status"] == "callback"
        assert [s[0] for s in out["seen"]] == [0, 1]  # the callback ended the run after generation 1
        assert out["seen"][1][1] == [512] * 4 and out["seen"][0][3] == 4
        assert out["env_id"] == "__main__:short_cartpole"
        assert out["model_steps"] == 512
    assert outs[0]["seen"] == outs[1]["seen"] and outs[0]["history"] == outs[1]["history"]
    history = outs[0]["history"]
    assert [r["generation"] for r in history] == [0] * 4 + [1] * 4
    assert all(r["parent"] is None for r in history if r["generation"] == 1)  # no exploit after the last one
    assert all(0 < ret <= 25 for r in history for ret in r["returns"])  # the factory's 25-step CartPole
    assert [s[2] for s in outs[0]["seen"]] == [[r["fitness"] for r in history if r["generation"] == g] for g in (0, 1)]
    assert (run_dir / "best.zip").is_file()


CUSTOM = [str(ROOT / "examples" / "custom_trainer.py"), "--agents-per-rank", "2", "--generations", "8"]
CUSTOM += ["--steps-per-generation", "4096", "--seed", "5"]


def _custom(run_dir):
    return [mpiexec(), "-n", "2", sys.executable, *CUSTOM, "--run-dir", str(run_dir)]


def test_custom_pytorch_trainer_trains_exploits_and_resumes_under_mpi(tmp_path):
    reference, stopped = tmp_path / "ref", tmp_path / "stopped"
    proc = subprocess.run(_custom(reference), capture_output=True, text=True, timeout=300, env=child_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("validation MSE") == 1  # printed by rank 0 only
    history = history_without_rank(reference)
    assert len(history) == 8 * 4 and {r["rank"] for r in read_history(reference)} == {0, 1}
    assert sum(r["parent"] is not None for r in history) >= 7  # truncation: one exploit per generation
    first = max(r["fitness"] for r in history if r["generation"] == 0)
    final = max(r["fitness"] for r in history if r["generation"] == 7)
    assert math.isfinite(first) and final > first  # the regression improves
    assert {r["hparams"]["batch_size"] for r in history} <= {16, 32, 64, 128}
    # stop after generation 1, resume with the script's --resume: the uninterrupted history, exactly
    env = child_env()
    victim = subprocess.Popen(_custom(stopped), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_line(victim, "gen   1/")
    victim.send_signal(signal.SIGTERM)
    out, err = victim.communicate(timeout=120)
    assert victim.returncode == 75, (out, err)
    assert 0 < len(history_without_rank(stopped)) < len(history)
    resume = [mpiexec(), "-n", "2", sys.executable, CUSTOM[0], "--agents-per-rank", "2", "--resume", str(stopped)]
    proc = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "resuming the run" in proc.stdout
    assert history_without_rank(stopped) == history


def test_member_flag_on_the_command_line(tmp_path):
    """--member module:function plugs the same trainer into the CLI."""
    run_dir = tmp_path / "run"
    args = ["--member", "examples.custom_trainer:make_member", "--agents-per-rank", "2", "--generations", "2"]
    args += ["--steps-per-generation", "2048", "--search-space", "learning_rate=loguniform:1e-3:1e-2"]
    args += ["--search-space", "batch_size=choice:32,64", "--search-space", "weight_decay=const:0.0"]
    run_evo([*args, "--run-dir", str(run_dir)], None)
    history = read_history(run_dir)
    assert len(history) == 4 and all(r["timesteps"] >= 2048 for r in history)
    bad = run_evo(
        [*args, "--member", "examples.custom_trainer:nothing", "--run-dir", str(tmp_path / "b")], None, check=False
    )
    assert bad.returncode == 2 and "--member 'examples.custom_trainer:nothing': cannot import it" in bad.stderr
