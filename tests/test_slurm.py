"""The batch scripts in slurm/ under a real single-node SLURM (see slurm_cluster.py).

Every job is submitted with the real ``sbatch`` and polled with ``scontrol show
job`` under hard timeouts; nothing is mocked. Skipped only when SLURM/MUNGE are
not installed (``.ci/install-slurm.sh``) or the daemons cannot start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import ROOT
from slurm_cluster import ClusterUnavailable, SlurmCluster

SLURM_DIR = ROOT / "slurm"

#: The tiny run of helpers.TINY as a config file (EVO_CONFIG).
TINY_TOML = """\
env_id = "CartPole-v1"
seed = 7
generations = 3
steps_per_generation = 256
n_envs = 2
n_steps = 64

[search_space]
batch_size = "choice:32,64,128"
n_epochs = "int:1:3"
"""

#: Environment variables of an enclosing SLURM job or MPI launcher must not leak into our jobs.
_FOREIGN_ENV = re.compile(r"^(SLURM_|SBATCH_|SRUN_|SALLOC_|PMI_|PMIX_|HYDRA_|HYDI_|MPIR_|OMPI_|I_MPI_)")


@pytest.fixture(scope="module")
def slurm():
    # A short path: the MUNGE socket path must stay under the 108-byte limit of AF_UNIX.
    directory = tempfile.mkdtemp(prefix="evo-slurm-")
    cluster = SlurmCluster(directory, cpus=2)
    try:
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            pytest.skip(f"no SLURM cluster: {exc}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def job_env(**evo: str) -> dict[str, str]:
    """The submitting environment: this python, the repo (and tests/, for SlowCartPole) importable."""
    env = {k: v for k, v in os.environ.items() if not _FOREIGN_ENV.match(k)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore"
    env["EVO_PYTHON"] = sys.executable
    for key in [k for k in env if k.startswith("EVO_")]:
        if key != "EVO_PYTHON":
            del env[key]
    env.update(evo)
    return env


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def assert_complete_history(run_dir: Path, generations: int, population: int, steps: int) -> None:
    """Exactly one record per member per generation 0..G-1, no gaps, no duplicates."""
    history = read_history(run_dir)
    counts = Counter((rec["generation"], rec["member"]) for rec in history)
    expected = {(g, m) for g in range(generations) for m in range(population)}
    assert set(counts) == expected, f"missing {sorted(expected - set(counts))}, extra {sorted(set(counts) - expected)}"
    duplicates = {key: n for key, n in counts.items() if n != 1}
    assert not duplicates, f"duplicated records: {duplicates}"
    assert len(history) == generations * population
    for rec in history:
        assert rec["timesteps"] == (rec["generation"] + 1) * steps, rec


def job_log(cluster_dir: Path, job_id: str) -> str:
    path = cluster_dir / f"job-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no output file)"


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
    "multi-mpiexec-one-node": ("multi_node.sbatch", {}, ["--nodes=1", "--ntasks-per-node=2"], 2, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_script_runs_to_completion(slurm, tmp_path, case):
    script, launcher, options, ranks, per_rank = CASES[case]
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


#: A run longer than the 1-minute time limit whatever the machine: SlowCartPole sleeps 5 ms per
#: env step, so 32 generations x 256 steps take at least 41 s of sleep per rank, plus training.
REQUEUE_GENERATIONS = 32
REQUEUE_TOML = TINY_TOML.replace('"CartPole-v1"', '"slurm_cluster:SlowCartPole-v1"').replace(
    "generations = 3", f"generations = {REQUEUE_GENERATIONS}"
)


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


def test_requeue_script_resumes_after_time_limit_signal(slurm, tmp_path):
    """--time=1 with --signal=B:USR1@20: SLURM signals the batch shell 10-40 s in (its time-limit
    check runs every 30 s), the script forwards it, evo_mpi checkpoints and exits 75, the script
    requeues the job, and the requeued job resumes the same run dir, until the run is complete.
    After the second restart the test lifts the time limit so that it ends in bounded time.
    """
    run_dir = tmp_path / "run"
    job_id = submit_requeue(slurm, tmp_path, run_dir, "--time=1", "--signal=B:USR1@20")
    deadline = time.monotonic() + 300
    lifted = False
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = slurm.job(job_id)
        state = info.get("JobState", "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        if not lifted and state == "PENDING" and int(info.get("Restarts", "0")) >= 2:
            slurm.cmd("scontrol", "update", f"JobId={job_id}", "TimeLimit=10")
            lifted = True
        time.sleep(1)
    else:
        slurm.cmd("scancel", job_id, check=False)
        pytest.fail(f"requeue job not finished after 300 s: {info}\n{job_log(tmp_path, job_id)}")
    log = job_log(tmp_path, job_id)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log}"
    restarts = int(info["Restarts"])
    assert restarts >= 1, f"never requeued: {info}\n{log}"
    starts = re.findall(rf"job {job_id} \(restart (\d+)\) on ", log)
    assert [int(s) for s in starts] == list(range(restarts + 1)), log
    assert log.count("received SIGUSR1") == restarts, log
    assert log.count(f"requeueing job {job_id}") == restarts, log
    assert log.count("evo-mpi: resuming the run") == restarts, log
    assert "evo_mpi finished" in log, log
    assert_complete_history(run_dir, generations=REQUEUE_GENERATIONS, population=2, steps=256)
    assert (run_dir / "best.zip").is_file()


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
