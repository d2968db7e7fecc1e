"""--share-experience: every member's transitions reach every member's replay buffer (real SB3 DQN, real MPI)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from evo_mpi import checkpoint
from helpers import history_without_rank, launch, read_history, run_evo, wait_for_line

STEPS, N_ENVS = 512, 2
ROWS = STEPS // N_ENVS  # replay rows (one env step of every env) a member collects per generation
DQN = [
    "--algo", "dqn", "--env-id", "CartPole-v1", "--seed", "5",
    "--steps-per-generation", str(STEPS), "--n-envs", str(N_ENVS), "--buffer-size", "20000",
]  # fmt: skip


def replay(tensors: dict) -> list[np.ndarray]:
    """A member's checkpointed replay arrays (the filled rows), in the adapter's fixed order."""
    keys = sorted((k for k in tensors if k.startswith("replay:")), key=lambda k: int(k.split(":")[1]))
    return [tensors[k].numpy() for k in keys]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("n, per_rank", [(None, 3), (2, 2)], ids=["one-rank", "two-ranks"])
def test_buffers_hold_every_members_transitions_bit_for_bit(tmp_path, n, per_rank):
    """After generation g, member m's buffer holds its own rows of g, then every other member's rows of g
    in member order, each exactly the rows that member collected itself."""
    run_dir = tmp_path / "run"
    run_evo([*DQN, "--generations", "2", "--agents-per-rank", str(per_rank), "--share-experience",
             "--run-dir", str(run_dir)], n)  # fmt: skip
    population = (n or 1) * per_rank
    for g in (0, 1):
        loaded = [checkpoint.load_member(str(run_dir), g, m) for m in range(population)]
        arrays = [replay(tensors) for tensors, _ in loaded]
        for m in range(population):
            assert loaded[m][1]["replay"]["pos"] == (g + 1) * population * ROWS
            start = g * population * ROWS
            own = [a[start : start + ROWS] for a in arrays[m]]
            others = [k for k in range(population) if k != m]
            for slot, k in enumerate(others, start=1):
                theirs_in_mine = [a[start + slot * ROWS : start + (slot + 1) * ROWS] for a in arrays[m]]
                theirs = [a[start : start + ROWS] for a in arrays[k]]  # member k's own rows of generation g
                assert all(same_bits(x, y) for x, y in zip(theirs_in_mine, theirs, strict=True)), (g, m, k)
            assert not all(same_bits(x, y) for x, y in zip(own, [a[start : start + ROWS] for a in arrays[others[0]]],
                                                             strict=True))  # fmt: skip


def test_sharing_is_off_by_default(tmp_path):
    run_dir = tmp_path / "run"
    run_evo([*DQN, "--generations", "1", "--agents-per-rank", "2", "--run-dir", str(run_dir)], None)
    for m in range(2):
        _, meta = checkpoint.load_member(str(run_dir), 0, m)
        assert meta["replay"]["pos"] == ROWS  # its own rows only


SHARED = [*DQN, "--generations", "4", "--share-experience"]


@pytest.fixture(scope="module")
def shared_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("shared") / "run"
    run_evo([*SHARED, "--agents-per-rank", "2", "--run-dir", str(run_dir)], 2)
    history = history_without_rank(run_dir)
    assert len(history) == 4 * 4
    return history


def test_sharing_is_layout_independent(tmp_path, shared_reference):
    run_dir = tmp_path / "run"
    run_evo([*SHARED, "--agents-per-rank", "4", "--run-dir", str(run_dir)], None)
    assert history_without_rank(run_dir) == shared_reference


def test_sharing_resumes_exactly(tmp_path, shared_reference):
    run_dir = tmp_path / "run"
    proc = launch([*SHARED, "--agents-per-rank", "2", "--run-dir", str(run_dir)], 2)
    wait_for_line(proc, "gen   2/")
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, (out, err)
    assert len(read_history(run_dir)) < 4 * 4
    run_evo(["--resume", str(run_dir), "--agents-per-rank", "4"], None)
    assert history_without_rank(run_dir) == shared_reference


def blocks(arrays: list[np.ndarray]) -> list[bytes]:
    """A buffer cut into the blocks of ROWS rows that sharing moves (all of its arrays' bytes per block)."""
    return [b"".join(a[s : s + ROWS].tobytes() for a in arrays) for s in range(0, len(arrays[0]), ROWS)]


@pytest.mark.parametrize("n, per_rank", [(None, 2), (2, 1)], ids=["one-rank", "two-ranks"])
def test_async_sharing_delivers_other_members_transitions(tmp_path, n, per_rank):
    """Async: a member's own rows of an interval are the last block of its buffer at that interval's
    checkpoint; every other block in member 0's buffer is, bit for bit, one of member 1's own blocks."""
    run_dir = tmp_path / "run"
    run_evo([*DQN, "--generations", "4", "--mode", "async", "--agents-per-rank", str(per_rank), "--keep-checkpoints",
             "100", "--share-experience", "--run-dir", str(run_dir)], n)  # fmt: skip
    own: dict[int, list[bytes]] = {}
    for m in (0, 1):
        own[m] = [blocks(replay(checkpoint.load_interval(str(run_dir), m, k)[0]))[-1]
                  for k in checkpoint.intervals(str(run_dir), m)]  # fmt: skip
    last = checkpoint.intervals(str(run_dir), 0)[-1]
    mine = blocks(replay(checkpoint.load_interval(str(run_dir), 0, last)[0]))
    foreign = [b for b in mine if b not in own[0]]
    assert len(mine) == len(own[0]) + len(foreign)
    assert foreign, "no other member's transitions reached member 0"
    assert all(b in own[1] for b in foreign)
