"""The batch scripts in slurm/ under a real single-node SLURM (see slurm_cluster.py).

Every job is submitted with the real ``sbatch`` and polled with ``scontrol show
job`` under hard timeouts; nothing is mocked. Skipped only when SLURM/MUNGE are
not installed (``.ci/install-slurm.sh``) or the daemons cannot start.
``slurm/multi_node.sbatch`` and the requeue after a time-limit signal are
tested across two hosts in ``test_two_nodes.py``.
"""

from __future__ import annotations

import time

import pytest

from helpers import mpi_flavor
from slurm_cluster import SlurmCluster
from slurm_jobs import (
    REQUEUE_TOML,
    SLURM_DIR,
    TINY_TOML,
    assert_complete_history,
    job_env,
    job_log,
    started,
)


@pytest.fixture(scope="module")
def slurm():
    with started(SlurmCluster, "evo-slurm-") as cluster:
        yield cluster


CASES = {
    # script, launcher env, sbatch options, ranks x agents per rank
    "single-mpiexec-config": ("single_node.sbatch", {}, ["--ntasks=2"], 2, 1),
    "single-srun-pmi2-args": (
        "single_node.sbatch",
        {"EVO_LAUNCHER": "srun", "EVO_LAUNCHER_ARGS": "--mpi=pmi2", "EVO_ARGS": "--agents-per-rank 2"},
        ["--ntasks=2"],
        2,
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_script_runs_to_completion(slurm, tmp_path, case):
    run_batch_script(slurm, tmp_path, *CASES[case])


@pytest.mark.openmpi
def test_srun_pmix_with_open_mpi(slurm, tmp_path):
    """single_node.sbatch under ``srun --mpi=pmix`` with Open MPI (the pip MPICH speaks PMI-1/2 only)."""
    if mpi_flavor() != "openmpi":
        pytest.skip("needs Open MPI: .ci/run's second step (pytest -m openmpi in .venv-ompi)")
    probe = slurm.cmd("srun", "--mpi=pmix", "-n", "1", "-t", "1", "true", timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"Slurm's mpi/pmix cannot start (apt-get install libpmix-dev): {probe.stderr.strip()[-200:]}")
    launcher = {"EVO_LAUNCHER": "srun", "EVO_LAUNCHER_ARGS": "--mpi=pmix", "EVO_ARGS": "--agents-per-rank 2"}
    run_batch_script(slurm, tmp_path, "single_node.sbatch", launcher, ["--ntasks=2"], 2, 2)


def run_batch_script(slurm, tmp_path, script, launcher, options, ranks, per_rank) -> None:
    """sbatch ``script`` with the tiny config; it completes with the whole history, models and log lines."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    run_dir = tmp_path / "run"
    env = job_env(EVO_CONFIG="tiny.toml", EVO_RUN_DIR=str(run_dir), **launcher)
    job_id = slurm.sbatch(
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/job-%j.out",
        "--time=5",
        *options,
        str(SLURM_DIR / script),
        env=env,
    )
    info = slurm.wait(job_id, timeout=240)
    log = job_log(tmp_path, job_id)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log}"
    population = ranks * per_rank
    assert f"{population} members on {ranks} rank(s)" in log, log
    assert_complete_history(run_dir, generations=3, population=population, steps=256)
    assert (run_dir / "best.zip").is_file()
    assert sorted(p.name for p in (run_dir / "final").iterdir()) == [f"member_{m:02d}.zip" for m in range(population)]
    assert "evo_mpi finished" in log, log


def submit_requeue(slurm, tmp_path, run_dir, *sbatch_args: str) -> str:
    """sbatch slurm/requeue.sbatch on 2 tasks with the slow REQUEUE_TOML config into ``run_dir``."""
    (tmp_path / "slow.toml").write_text(REQUEUE_TOML)
    return slurm.sbatch(
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/job-%j.out",
        "--ntasks=2",
        *sbatch_args,
        str(SLURM_DIR / "requeue.sbatch"),
        env=job_env(EVO_CONFIG="slow.toml", EVO_RUN_DIR=str(run_dir)),
    )


def test_requeue_script_does_not_requeue_on_scancel(slurm, tmp_path):
    """scancel sends SIGTERM: evo_mpi checkpoints and exits 75, the job ends CANCELLED, not requeued."""
    run_dir = tmp_path / "run"
    job_id = submit_requeue(slurm, tmp_path, run_dir, "--time=10")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run_dir / "checkpoints").is_dir():
        time.sleep(0.5)
    assert slurm.job(job_id).get("JobState") == "RUNNING", job_log(tmp_path, job_id)
    time.sleep(3)
    slurm.cmd("scancel", job_id)
    deadline = time.monotonic() + 60
    log = ""
    while time.monotonic() < deadline:
        log = job_log(tmp_path, job_id)
        if "not requeueing" in log:
            break
        time.sleep(0.5)
    time.sleep(3)  # a (wrong) requeue would show up by now
    info = slurm.job(job_id)
    assert info.get("JobState") == "CANCELLED" and info.get("Restarts") == "0", f"{info}\n{log}"
    assert "received SIGTERM" in log and "not requeueing" in log, log
    assert "interrupted by a stop signal" in log, log
    assert (run_dir / "config.json").is_file()
