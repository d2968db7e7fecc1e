"""What the SLURM tests share: tiny job configs, the submitting environment, checks on a run's output."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
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


#: A run longer than the 1-minute time limit whatever the machine: SlowCartPole sleeps 5 ms per
#: env step, so 32 generations x 256 steps take at least 41 s of sleep per rank, plus training.
REQUEUE_GENERATIONS = 32
REQUEUE_TOML = TINY_TOML.replace('"CartPole-v1"', '"slurm_cluster:SlowCartPole-v1"').replace(
    "generations = 3", f"generations = {REQUEUE_GENERATIONS}"
)


@contextmanager
def started(cls: type[SlurmCluster], prefix: str) -> Iterator[SlurmCluster]:
    """A cluster of ``cls`` in a fresh short temporary folder (the MUNGE socket path must stay under the
    108-byte AF_UNIX limit), skipped with the reason when it cannot start, stopped and removed after."""
    directory = tempfile.mkdtemp(prefix=prefix)
    cluster = cls(directory, cpus=2)
    try:
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            pytest.skip(f"no {cls.__name__}: {exc}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
