"""Harder environments from the extras: LunarLander (box2d, in the test extra) runs; a missing extra is named."""

from __future__ import annotations

import importlib.util

import pytest

from evo_mpi.run import main
from helpers import read_history, run_evo


def test_lunarlander_runs_after_the_box2d_extra(tmp_path):
    if importlib.util.find_spec("Box2D") is None:
        pytest.fail("Box2D missing: the test extra installs evo-mpi[box2d]'s packages")
    run_dir = tmp_path / "run"
    run_evo(["--env-id", "LunarLander-v3", "--agents-per-rank", "2", "--generations", "2", "--steps-per-generation",
             "512", "--n-envs", "2", "--n-steps", "128", "--run-dir", str(run_dir)], None)  # fmt: skip
    history = read_history(run_dir)
    assert len(history) == 4 and all(r["timesteps"] == 512 * (r["generation"] + 1) for r in history)
    assert (run_dir / "best.zip").is_file()


def test_missing_mujoco_extra_is_named_with_its_install_command(tmp_path, capsys):
    if importlib.util.find_spec("mujoco") is not None:
        pytest.skip("mujoco is installed here; the message is for machines without evo-mpi[mujoco]")
    code = main(["--env-id", "HalfCheetah-v5", "--agents-per-rank", "2", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr()
    assert code == 2
    assert (
        "--env-id 'HalfCheetah-v5' needs the mujoco extra, which is not installed: pip install 'evo-mpi[mujoco]'"
        in (err.out + err.err)
    )
    assert not (tmp_path / "run").exists()
