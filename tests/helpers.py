"""Shared helpers: run evo_mpi for real, under mpiexec or as one process."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cartpole_args(seed: int, generations: int, steps: int) -> list[str]:
    """A tiny but real PBT configuration on CartPole (2 envs x 64 steps per rollout).

    The final pick evaluates its candidates on 2 episodes, not the default 10: up to 500-step
    episodes each, at the end of every run of the suite (tests/test_champion.py checks the pick).
    """
    return [
        "--env-id", "CartPole-v1",
        "--seed", str(seed),
        "--generations", str(generations),
        "--steps-per-generation", str(steps),
        "--n-envs", "2",
        "--n-steps", "64",
        "--search-space", "batch_size=choice:32,64,128",
        "--search-space", "n_epochs=int:1:3",
        "--final-eval-episodes", "2",
    ]  # fmt: skip


#: Seconds per run.
TINY = cartpole_args(seed=7, generations=3, steps=256)


def mpiexec() -> str:
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.fail("mpiexec not found: install the test extra with MPI, e.g. pip install -e '.[mpich,test]'")
    return exe


@functools.cache
def mpi_flavor() -> str:
    """``openmpi`` or ``mpich``: which MPI the suite's ``mpiexec`` belongs to (``.ci/run`` runs a subset under each)."""
    out = subprocess.run([mpiexec(), "--version"], capture_output=True, text=True, timeout=30).stdout
    return "openmpi" if "Open MPI" in out else "mpich"


#: Open MPI's mpirun refuses root and more ranks than cores unless told (as ``--allow-run-as-root --oversubscribe``).
OPENMPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if mpi_flavor() == "openmpi":
        for key, value in OPENMPI_ENV.items():
            env.setdefault(key, value)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_evo(args: list[str], n: int | None, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m evo_mpi.run`` under ``mpiexec -n n`` (or alone when n is None)."""
    cmd = [sys.executable, "-m", "evo_mpi.run", *args]
    if n is not None:
        cmd = [mpiexec(), "-n", str(n), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


#: Env steps per generation of LONG.
LONG_STEPS = 512
#: A run long enough to interrupt (8 generations of 512 steps, about half a second each).
LONG = cartpole_args(seed=3, generations=8, steps=LONG_STEPS)


def history_without_rank(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "rank"} for rec in read_history(run_dir)]


def launch(args: list[str], n: int | None, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``evo_mpi.run`` without waiting (stdout piped line by line)."""
    cmd = [sys.executable, "-m", "evo_mpi.run", *args]
    if n is not None:
        cmd = [mpiexec(), "-n", str(n), *cmd]
    env = child_env()
    env.update(extra_env or {})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def no_rank_left(run_dir: Path, timeout: float = 30) -> bool:
    """True once no ``evo_mpi.run`` process of ``run_dir`` is left (polled, so a loaded machine's slow exits pass)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = subprocess.run(["pgrep", "-f", f"evo_mpi.run.*{run_dir}"], capture_output=True, text=True)
        if not found.stdout.split():
            return True
        if time.monotonic() > deadline:
            print(f"still running after {timeout} s: {found.stdout.split()}")
            return False
        time.sleep(0.2)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 180) -> list[str]:
    """Read stdout until a line starts with ``prefix``; return the lines read."""
    import threading

    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith(prefix):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"never saw {prefix!r}; stdout: {''.join(lines)}; stderr: {proc.stderr.read()}")


#: What ``python -m evo_mpi.plot`` writes, and the PNG signature each file starts with.
PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("fitness.png", "hparams.png", "lineage.png")


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` (plot, replay) in a child process, output captured."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=ROOT)


def check_pngs(proc: subprocess.CompletedProcess, out: Path) -> None:
    """The plot command succeeded and printed, then wrote, every figure as a real PNG under ``out``."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [str(out / name) for name in PLOTS]
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG), name
