"""slurm/gpu_node.sbatch under a real single-node SLURM whose node declares GPUs as GRES.

The node's GPUs are SLURM generic resources backed by placeholder character
devices (with /dev/null's numbers; SLURM refuses plain files): SLURM allocates
them, counts them (``SLURM_GPUS_ON_NODE``) and sets ``CUDA_VISIBLE_DEVICES``
as on a GPU node, per task with ``srun --gpus-per-task=1``, but there is no
CUDA behind them (torch sees none). So the script's layout, the ``--device`` it passes and the
exit 2 of ``cuda`` without a GPU are real; training on a GPU is not (not yet run
on a GPU). Skipped when SLURM is not installed (``.ci/install-slurm.sh``).
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from slurm_cluster import SlurmCluster
from slurm_jobs import SLURM_DIR, TINY_TOML, assert_complete_history, job_env, job_log, started

GPUS = 2


class GresGpuCluster(SlurmCluster):
    """The one-node test cluster with ``GPUS`` GPUs declared as GRES (placeholder device files)."""

    def prepare(self) -> None:
        files = [self.dir / f"nvidia{i}" for i in range(GPUS)]
        for f in files:
            os.mknod(f, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a character device that is /dev/null
        (self.dir / "gres.conf").write_text(  # beside slurm.conf: SLURM reads it from there
            "".join(f"NodeName={self.host} Name=gpu File={f} Flags=nvidia_gpu_env\n" for f in files)
        )

    def conf_text(self) -> str:
        text = super().conf_text()
        text = text.replace("ClusterName=evotest\n", "ClusterName=evotest\nGresTypes=gpu\n", 1)
        return text.replace(f"NodeName={self.host} ", f"NodeName={self.host} Gres=gpu:{GPUS} ", 1)


@pytest.fixture(scope="module")
def slurm():
    with started(GresGpuCluster, "evo-gres-") as cluster:
        yield cluster


def submit(slurm, tmp_path, **evo: str) -> tuple[dict[str, str], str]:
    """sbatch gpu_node.sbatch on the node's 2 GPUs, one rank per GPU; returns (job fields, log) once it ended."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    env = job_env(EVO_CONFIG="tiny.toml", EVO_RUN_DIR=str(tmp_path / "run"), **evo)
    job = slurm.sbatch(f"--chdir={tmp_path}", f"--output={tmp_path}/job-%j.out", "--time=5",
                       f"--gpus-per-node={GPUS}", f"--ntasks-per-node={GPUS}", "--cpus-per-task=1",
                       str(SLURM_DIR / "gpu_node.sbatch"), env=env)  # fmt: skip
    info = slurm.wait(job, timeout=240, states=("COMPLETED", "FAILED"))
    log = job_log(tmp_path, job)
    return info, log


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback where no CUDA device is visible")
def test_gpu_script_auto_falls_back_to_cpu_with_slurm_gpus(slurm, tmp_path):
    info, log = submit(slurm, tmp_path, EVO_DEVICE="auto")
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log}"
    # SLURM allocated the GPUs and made them visible, as on a GPU node
    assert "device auto: 2 rank(s) per node on 2 GPU(s) per node (CUDA_VISIBLE_DEVICES=0,1)" in log, log
    assert "--device auto --torch-threads 1" in log, log
    assert log.count("evo-mpi: --device auto: no CUDA device visible, training on the CPU") == 1, log
    run_dir = tmp_path / "run"
    assert_complete_history(run_dir, generations=3, population=2, steps=256)
    (line,) = (run_dir / "placement.jsonl").read_text().splitlines()
    ranks = json.loads(line)["ranks"]
    assert [(r["local_rank"], r["device"], r["torch_threads"]) for r in ranks] == [(0, "cpu", 1), (1, "cpu", 1)]
    assert [r["cuda_visible_devices"] for r in ranks] == ["0,1", "0,1"], ranks  # mpiexec: every rank sees both


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback where no CUDA device is visible")
def test_gpu_script_srun_gpus_per_task_gives_each_rank_its_own_gpu(slurm, tmp_path):
    info, log = submit(slurm, tmp_path, EVO_DEVICE="auto", EVO_LAUNCHER="srun",
                       EVO_LAUNCHER_ARGS="--mpi=pmi2 --gpus-per-task=1")  # fmt: skip
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log}"
    (line,) = (tmp_path / "run" / "placement.jsonl").read_text().splitlines()
    ranks = json.loads(line)["ranks"]
    # each task sees one GPU, its own (with CUDA, both would train on their cuda:0)
    assert [(r["local_rank"], r["cuda_visible_devices"]) for r in ranks] == [(0, "0"), (1, "1")], ranks
    assert [r["launcher_local_rank"] for r in ranks] == [{"SLURM_LOCALID": 0}, {"SLURM_LOCALID": 1}], ranks


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is visible")
def test_gpu_script_cuda_without_cuda_is_exit_2(slurm, tmp_path):
    info, log = submit(slurm, tmp_path)  # EVO_DEVICE defaults to cuda
    assert info.get("JobState") == "FAILED" and info.get("ExitCode") == "2:0", f"{info}\n{log}"
    assert log.count("--device cuda: no CUDA device visible on host") == 1, log
    assert "CUDA_VISIBLE_DEVICES '0,1'" in log and "Traceback" not in log, log
    assert "evo_mpi refused its configuration" in log, log
    assert not (tmp_path / "run").exists()
