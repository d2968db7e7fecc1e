"""Ranks never trust each other blindly: layouts are agreed once, every receive checks its size.

Also: a launcher whose world does not match MPI's, and a resume with another
torch thread count, are reported instead of passing silently.
"""

import os
import subprocess
import sys
import time

import pytest

from helpers import LONG, ROOT, TINY, child_env, launch, mpi_flavor, mpiexec, run_evo, wait_for_line

WRONG_SIZE = [
    ("p2p", "short", "has 100 bytes, this rank expected 120"),
    ("p2p", "long", "truncated"),  # MPI refuses the message; we name the member and the rank it came from
    ("collective", "short", "has 100 bytes, this rank expected 120"),  # the root announces its size first
    ("collective", "long", "has 100 bytes, this rank expected 80"),
]


@pytest.mark.parametrize("backend, mode, words", WRONG_SIZE)
def test_receive_of_the_wrong_size_is_an_error_never_a_short_copy(backend, mode, words):
    cmd = [mpiexec(), "-n", "2", sys.executable, str(ROOT / "tests" / "mpi_count_check.py"), backend, mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT)
    assert proc.returncode != 0
    assert "silently received" not in proc.stdout
    assert "caught rank 0:" in proc.stdout and "member 1's state from rank 1" in proc.stdout
    assert words in proc.stdout and "the ranks disagree on the state layout" in proc.stdout


def test_members_with_different_layouts_stop_the_run_before_training(tmp_path):
    """Rank 1's env observes one more value: its networks differ, and every rank says so at start-up."""
    run_dir = tmp_path / "run"
    args = [*TINY, "--env-id", "tests.buggy_envs:RankShapedCartPole-v0", "--run-dir", str(run_dir)]
    t0 = time.monotonic()
    proc = launch(args, 2, {"EVO_TEST_BAD_RANK": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert time.monotonic() - t0 < 60
    assert "member 1 on rank 1 has a state layout of" in err and "member 0 on rank 0 has" in err
    assert "Traceback" not in err
    assert not (run_dir / "history.jsonl").exists() or (run_dir / "history.jsonl").read_text() == ""


@pytest.mark.openmpi
def test_launcher_world_larger_than_mpis_is_exit_2_with_the_fix(tmp_path):
    """What a process sees when the other MPI's launcher starts it: a world of 1 of 2.

    Under MPICH: Open MPI's mpirun set OMPI_COMM_WORLD_SIZE; under Open MPI: MPICH's Hydra set PMI_SIZE."""
    variable = "PMI_SIZE" if mpi_flavor() == "openmpi" else "OMPI_COMM_WORLD_SIZE"
    rank = "PMI_RANK" if mpi_flavor() == "openmpi" else "OMPI_COMM_WORLD_RANK"
    env = {**child_env(), variable: "2", rank: "1"}
    cmd = [sys.executable, "-m", "evo_mpi.run", *TINY, "--agents-per-rank", "2", "--run-dir", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert f"started 2 processes ({variable}=2)" in proc.stderr
    assert "mpi4py uses a different MPI" in proc.stderr and "mpi4py.get_config()" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()
    same = subprocess.run(
        [mpiexec(), "-n", "2", *cmd, "--print-config"], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert same.returncode == 0 and "different MPI" not in same.stderr  # launcher and MPI agree


def test_resume_with_other_thread_count_warns(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch([*LONG, "--generations", "4", "--run-dir", str(run_dir), "--agents-per-rank", "2"], None)
    wait_for_line(proc, "gen   1/")
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 75
    warned = run_evo(["--resume", str(run_dir), "--torch-threads", "2"], None)
    assert "warning: member(s) [0, 1] trained with [1] torch thread(s) per rank and resume with [2]" in warned.stdout
    assert "--torch-threads N" in warned.stdout
    os.remove(run_dir / "best.zip")  # resume the finished run's last step again, with the same thread count
    quiet = run_evo(["--resume", str(run_dir), "--torch-threads", "2"], None)
    assert "torch thread(s)" not in quiet.stdout


def test_oversubscription_hint_pure():
    from evo_mpi.run import oversubscription_hint

    assert oversubscription_hint({"a": (2, 2)}, 2) is None
    assert oversubscription_hint({"a": (1, 16)}, 4) is None
    line = oversubscription_hint({"a": (4, 2)}, 1)
    assert line is not None and "4 ranks on 2 core(s) of a" in line and "launch -n 2 --agents-per-rank 2" in line
    # two nodes, one crowded: 3 + 4 usable cores, 8 members: the largest divisor of 8 that fits is 4
    line = oversubscription_hint({"a": (4, 3), "b": (4, 8)}, 2)
    assert line is not None and "4 ranks on 3 core(s) of a" in line and "of b" not in line
    assert "for the same 16 members launch -n 7" not in line and "launch -n 4 --agents-per-rank 4" in line


@pytest.mark.openmpi
@pytest.mark.parametrize("cores, n, expect", [("0", 2, "-n 1 --agents-per-rank 4"), ("0,1", 2, None)])
def test_more_ranks_than_cores_prints_one_line_with_the_fix(tmp_path, cores, n, expect):
    """Pinned to one core, 2 ranks get the hint; on 2 cores they do not (this machine has at least 2)."""
    cmd = ["taskset", "-c", cores, mpiexec(), "-n", str(n), sys.executable, "-m", "evo_mpi.run", *TINY]
    cmd += ["--generations", "1", "--agents-per-rank", "2", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    hints = [line for line in proc.stdout.splitlines() if "more ranks than cores" in line]
    if expect is None:
        assert hints == []
    else:
        assert len(hints) == 1 and "2 ranks on 1 core(s)" in hints[0] and expect in hints[0]


def test_async_resume_with_other_thread_count_warns(tmp_path):
    run_dir = tmp_path / "run"
    args = [*LONG, "--generations", "4", "--mode", "async", "--run-dir", str(run_dir), "--agents-per-rank", "2"]
    proc = launch(args, None)
    wait_for_line(proc, "async     2/")
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 75
    warned = run_evo(["--resume", str(run_dir), "--torch-threads", "2"], None)
    assert "warning: member(s) [0, 1] trained with [1] torch thread(s) per rank and resume with [2]" in warned.stdout


@pytest.mark.openmpi
@pytest.mark.parametrize("n", [2, 3])
def test_snapshot_mail_neither_hangs_nor_returns_before_the_buffer_is_sent(n):
    """Async snapshots of 16 MB: ranks that serve each other while waiting finish; a delivery is whole on return."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, str(ROOT / "tests" / "mpi_mailbox_check.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"OK {n} ranks: ring of {n} buffers of 16777216 bytes, then a delivery seen through" in proc.stdout
