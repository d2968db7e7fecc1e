"""Checkpoints, exact resume, stop signals and crash safety, with real mpiexec."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from evo_mpi import checkpoint
from helpers import LONG, LONG_STEPS, history_without_rank, launch, mpi_flavor, no_rank_left, run_evo, wait_for_line

GENERATIONS = 8
POPULATION = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_evo([*LONG, "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2)
    history = history_without_rank(run_dir)
    assert len(history) == GENERATIONS * POPULATION
    return history


def _interrupt(run_dir, n, per_rank, after_generation, sig):
    proc = launch([*LONG, "--run-dir", str(run_dir), "--agents-per-rank", str(per_rank)], n)
    wait_for_line(proc, f"gen {after_generation:>3}/")
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 75, (proc.returncode, out, err)
    assert elapsed < 30
    assert "resume with:" in out and f"--resume {run_dir}" in out
    return out


@pytest.mark.parametrize(
    "after, sig, first, second",
    [
        (1, signal.SIGTERM, (2, 2), (4, 1)),  # stop early; resume on another layout
        pytest.param(3, signal.SIGUSR1, (4, 1), (None, 4), marks=pytest.mark.openmpi),  # SLURM's; resume without MPI
    ],  # SIGINT (Ctrl-C): test_rerunning_same_command_resumes_and_finished_run_is_left_alone
)
def test_stop_and_resume_reproduces_uninterrupted_history(tmp_path, reference, after, sig, first, second):
    if sig == signal.SIGTERM and mpi_flavor() == "openmpi":
        pytest.skip("Open MPI kills its ranks on SIGTERM: test_sigterm_to_open_mpis_mpirun_loses_no_checkpoint")
    run_dir = tmp_path / "run"
    _interrupt(run_dir, first[0], first[1], after, sig)
    done = checkpoint.complete(str(run_dir))
    assert done and done[-1] >= after - 1 and len(done) <= 2  # pruned to --keep-checkpoints 2
    partial = history_without_rank(run_dir)
    assert partial[: len(partial)] == reference[: len(partial)]
    proc = run_evo(["--resume", str(run_dir)], second[0])
    assert f"resuming the run in {run_dir} from generation {done[-1] + 1}" in proc.stdout
    assert history_without_rank(run_dir) == reference


@pytest.mark.openmpi
def test_sigterm_to_open_mpis_mpirun_loses_no_checkpoint(tmp_path, reference):
    """Open MPI 5's mpirun does not forward SIGTERM: it ends every rank within seconds (exit 1), before
    evo_mpi can checkpoint. The last complete checkpoint stays, no rank is left, and the resume is exact
    (slurm/requeue.sbatch sends SIGUSR1, which mpirun does forward)."""
    if mpi_flavor() != "openmpi":
        pytest.skip("MPICH's Hydra forwards SIGTERM: test_stop_and_resume_reproduces_uninterrupted_history")
    run_dir = tmp_path / "run"
    proc = launch([*LONG, "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2)
    wait_for_line(proc, "gen   2/")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode not in (0, 75) and time.monotonic() - t0 < 30, proc.returncode
    assert no_rank_left(run_dir)
    done = checkpoint.complete(str(run_dir))
    assert done and done[-1] >= 1
    run_evo(["--resume", str(run_dir)], 2)
    assert history_without_rank(run_dir) == reference


def test_rerunning_same_command_resumes_and_finished_run_is_left_alone(tmp_path, reference):
    run_dir = tmp_path / "run"
    args = [*LONG, "--run-dir", str(run_dir), "--agents-per-rank", "2"]
    _interrupt(run_dir, 2, 2, 2, signal.SIGINT)
    proc = run_evo(args, 2)
    assert "evo-mpi: resuming" in proc.stdout
    assert history_without_rank(run_dir) == reference
    again = run_evo(args, 2)
    assert "already finished" in again.stdout
    assert history_without_rank(run_dir) == reference
    # a crash while saving the final models: the last checkpoint says finished, best.zip is missing
    (run_dir / "best.zip").unlink()
    redo = run_evo(args, 2)
    assert "done: champion member" in redo.stdout and (run_dir / "best.zip").is_file()
    assert history_without_rank(run_dir) == reference
    changed = run_evo([*args, "--seed", "4"], 2, check=False)
    assert changed.returncode == 2
    assert "seed: the run has 3, this command gives 4" in changed.stderr
    assert history_without_rank(run_dir) == reference


def test_checkpoint_files_load_without_pickle(tmp_path):
    run_dir = tmp_path / "run"
    run_evo([*LONG, "--generations", "2", "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2)
    last = checkpoint.complete(str(run_dir))[-1]
    pop = checkpoint.load_population(str(run_dir), last)
    assert pop.finished is True and pop.generation == 1 and len(pop.hparams) == POPULATION
    tensors, meta = checkpoint.load_member(str(run_dir), last, 3)  # torch.load(weights_only=True)
    assert meta["timesteps"] == 2 * LONG_STEPS and len(meta["returns"]) == len(meta["lengths"]) > 0
    assert all(isinstance(t, torch.Tensor) for t in tensors["policy"].values())
    assert os.path.getsize(run_dir / "history.jsonl") == pop.history_bytes


@pytest.mark.parametrize("point", ["member:2:1", "commit:2", "prune:3"])
def test_crash_during_checkpoint_write_leaves_last_checkpoint_loadable(tmp_path, reference, point):
    run_dir = tmp_path / "run"
    proc = launch([*LONG, "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2, {"EVO_MPI_FAULT": point})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    done = checkpoint.complete(str(run_dir))
    crashed_gen = int(point.split(":")[1])
    # the checkpoint being written is complete only if the crash came after its rename
    assert done[-1] == (crashed_gen if point.startswith("prune") else crashed_gen - 1)
    leftovers = [n for n in os.listdir(run_dir / "checkpoints") if n.startswith(".tmp-")]
    assert leftovers == ([] if point.startswith("prune") else [f".tmp-gen_{crashed_gen:06d}"])
    proc = run_evo(["--resume", str(run_dir)], 2)
    assert history_without_rank(run_dir) == reference
    assert not [n for n in os.listdir(run_dir / "checkpoints") if n.startswith(".tmp-")]


@pytest.mark.openmpi
def test_kill_9_of_one_rank_ends_job_and_run_resumes(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = launch([*LONG, "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2)
    wait_for_line(proc, "gen   3/")
    ranks = subprocess.run(["pgrep", "-f", f"evo_mpi.run.*{run_dir}"], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in ranks if int(p) != proc.pid]
    victim = max(pids)  # some rank (not the launcher)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - t0 < 30
    assert no_rank_left(run_dir)  # no rank left hanging
    assert checkpoint.complete(str(run_dir))
    run_evo(["--resume", str(run_dir)], None)
    assert history_without_rank(run_dir) == reference


def test_resolved_config_feeds_back(tmp_path):
    run_dir = tmp_path / "run"
    args = [*LONG, "--agents-per-rank", "2", "--run-dir", str(run_dir)]
    printed = run_evo([*args, "--print-config"], None)
    assert not run_dir.exists()  # --print-config creates nothing
    assert 'batch_size = "choice:32,64,128"' in printed.stdout and "generations = 8" in printed.stdout
    run_evo([*args, "--generations", "1"], None)
    saved = (run_dir / "config.toml").read_text()
    other = tmp_path / "other"
    again = run_evo(
        ["--config", str(run_dir / "config.toml"), "--generations", "8", "--run-dir", str(other), "--print-config"],
        None,
    )
    assert again.stdout == printed.stdout.replace(str(run_dir), str(other))
    assert "generations = 1" in saved


def test_time_limit_ends_the_run_cleanly_before_it_is_exceeded(tmp_path, reference):
    """40 generations do not fit in 10 s; the run ends with final models, exit 0, and a prefix of the history.

    The rule is "end when another generation as long as this one would not fit", so the run may pass the
    limit by at most one generation (one longer than the one before it), then writes the final models."""
    run_dir = tmp_path / "run"
    args = [*LONG, "--generations", "40", "--agents-per-rank", "2", "--time-limit", "10", "--run-dir", str(run_dir)]
    t0 = time.time()
    proc = run_evo(args, 2)
    assert "--time-limit 10: another generation would not fit; the run ends after generation" in proc.stdout
    history = history_without_rank(run_dir)
    generations = len(history) // POPULATION
    assert 1 <= generations < 40
    same = min(len(history), len(reference)) - POPULATION  # the last generation of each has no exploit
    assert history[:same] == reference[:same]  # PPO's training does not depend on --generations
    assert (run_dir / "best.zip").is_file() and len(list((run_dir / "final").glob("member_*.zip"))) == POPULATION
    timings = [json.loads(line) for line in open(run_dir / "timings" / "rank_000.jsonl", encoding="utf-8")]
    walls = [t["total_wall"] for t in timings if "total_wall" in t]
    assert len(walls) == generations
    # Counted from process start. On a loaded machine start-up alone can use the budget: then the run
    # stops after its first generation. Either way it writes best.zip (its last file) within one more
    # generation plus 3 s (mpiexec's and python's start-up, the final evaluation) of the later of the two.
    first_end = timings[0]["unix"] - t0
    if first_end > 10:
        assert generations == 1, first_end
    assert (run_dir / "best.zip").stat().st_mtime - t0 < max(10, first_end) + max(walls) + 3, (first_end, walls)
    assert all(r["parent"] is None for r in history if r["generation"] == generations - 1)  # no exploit at the end
    again = run_evo(["--resume", str(run_dir)], 2)
    assert "already finished" in again.stdout
