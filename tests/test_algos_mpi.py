"""Exact resume and layout independence hold for every algorithm, with real mpiexec runs.

Every run also evolves its networks (architecture and weight mutation from 32-32 or 64-64), so
members of different sizes move between ranks, resume and rebuild for every algorithm.
"""

import signal

import pytest

from helpers import history_without_rank, launch, run_evo, wait_for_line

OFF_POLICY = ["--n-envs", "1", "--buffer-size", "2000", "--net-arch", "32,32", "--steps-per-generation", "200"]
ON_POLICY = ["--env-id", "CartPole-v1", "--n-envs", "2", "--n-steps", "64", "--steps-per-generation", "256"]

#: A tiny but real run per algorithm: off-policy ones train past SB3's learning_starts (100) in generation 0.
ARGS = {
    "ppo": [*ON_POLICY, "--search-space", "batch_size=choice:32,64,128", "--search-space", "n_epochs=int:1:3"],
    "a2c": ON_POLICY,
    "dqn": ["--env-id", "CartPole-v1", *OFF_POLICY, "--search-space", "target_update_interval=int:10:100"],
    "sac": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--fitness-window", "2"],
    "td3": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--fitness-window", "2"],
    "ddpg": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--fitness-window", "2"],
}
GENERATIONS = 3
POPULATION = 4
EVOLVING = ["--search-space", "net_arch=arch:1:3:16:96", "--mutation-probs", "hparams=1,arch=2,weights=1"]


def _args(algo: str) -> list[str]:
    return ["--algo", algo, *ARGS[algo], *EVOLVING, "--generations", str(GENERATIONS), "--seed", "3"]


@pytest.fixture(scope="module", params=list(ARGS))
def reference(request, tmp_path_factory):
    """The uninterrupted history of each algorithm on 2 ranks x 2 members (p2p backend)."""
    algo = request.param
    run_dir = tmp_path_factory.mktemp(f"{algo}-ref") / "run"
    run_evo([*_args(algo), "--agents-per-rank", "2", "--run-dir", str(run_dir)], 2, timeout=300)
    history = history_without_rank(run_dir)
    assert len(history) == GENERATIONS * POPULATION
    assert all(r["fitness"] is not None for r in history)
    assert any(r["parent"] is not None for r in history), "the run must exercise the exploit path"
    assert len({r["hparams"]["net_arch"] for r in history}) >= 2, "members of different sizes must take part"
    return algo, history


def test_layout_independence(reference, tmp_path):
    """One process with 4 members gives the history of 2 ranks x 2 members."""
    algo, history = reference
    run_dir = tmp_path / "run"
    run_evo([*_args(algo), "--agents-per-rank", "4", "--run-dir", str(run_dir)], None, timeout=300)
    assert history_without_rank(run_dir) == history


def test_exact_resume_on_another_layout(reference, tmp_path):
    """Stopped by SIGTERM after generation 0 on 2 ranks, resumed on 4 ranks with the collective backend."""
    algo, history = reference
    run_dir = tmp_path / "run"
    proc = launch([*_args(algo), "--agents-per-rank", "2", "--run-dir", str(run_dir)], 2)
    wait_for_line(proc, "gen   1/")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, (out, err)
    partial = history_without_rank(run_dir)
    assert 0 < len(partial) < len(history) and partial == history[: len(partial)]
    resumed = run_evo(["--resume", str(run_dir), "--backend", "collective"], 4, timeout=300)
    assert "resuming the run" in resumed.stdout
    assert history_without_rank(run_dir) == history
