"""Exact resume and layout independence hold for every algorithm, with real mpiexec runs (DDPG through TD3).

Every run also evolves its networks (architecture and weight mutation from 32-32 or 64-64), so
members of different sizes move between ranks, resume and rebuild for every algorithm.
"""

import json
import signal

import gymnasium
import pytest
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from evo_mpi import checkpoint
from helpers import history_without_rank, launch, read_history, run_evo, wait_for_line

#: 250 steps per generation: Pendulum's 200-step episodes are in flight at every checkpoint.
OFF_POLICY = ["--n-envs", "1", "--buffer-size", "2000", "--net-arch", "32,32", "--steps-per-generation", "250"]
#: DQN collects 4 steps per update (SB3's train_freq), so a generation is a multiple of 4.
DQN_STEPS = ["--steps-per-generation", "256"]
ON_POLICY = ["--env-id", "CartPole-v1", "--n-envs", "2", "--n-steps", "64", "--steps-per-generation", "256"]

#: A tiny but real run per algorithm: off-policy ones train past SB3's learning_starts (100) in generation 0.
ARGS = {
    "ppo": [*ON_POLICY, "--search-space", "batch_size=choice:32,64,128", "--search-space", "n_epochs=int:1:3"],
    "a2c": ON_POLICY,
    "dqn": ["--env-id", "CartPole-v1", *OFF_POLICY, *DQN_STEPS, "--search-space", "target_update_interval=int:10:100"],
    # SAC also moves and resumes VecNormalize statistics and whole replay buffers
    "sac": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--fitness-window", "2", "--normalize", "--copy-replay-buffer"],
    "td3": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--fitness-window", "2"],
}
#: DDPG is left out here: SB3 implements it as TD3's class with other defaults (no policy delay, no
#: target noise), so its state packs, moves and resumes through exactly TD3's path; test_algos.py
#: trains, exploits and reloads it in one process like every algorithm.
GENERATIONS = 3
POPULATION = 4
CLASSES = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC, "td3": TD3}
EVOLVING = ["--search-space", "net_arch=arch:1:3:16:96", "--mutation-probs", "hparams=1,arch=2,weights=1"]


def _args(algo: str) -> list[str]:
    return ["--algo", algo, *ARGS[algo], *EVOLVING, "--generations", str(GENERATIONS), "--seed", "3"]


@pytest.fixture(scope="module", params=list(ARGS))
def reference(request, tmp_path_factory):
    """The uninterrupted history of each algorithm in one process with 4 members (no MPI)."""
    algo = request.param
    run_dir = tmp_path_factory.mktemp(f"{algo}-ref") / "run"
    run_evo([*_args(algo), "--agents-per-rank", "4", "--run-dir", str(run_dir)], None, timeout=300)
    history = history_without_rank(run_dir)
    assert len(history) == GENERATIONS * POPULATION
    assert all(r["fitness"] is not None for r in history)
    assert any(r["parent"] is not None for r in history), "the run must exercise the exploit path"
    assert len({r["hparams"]["net_arch"] for r in history}) >= 2, "members of different sizes must take part"
    steps = int(ARGS[algo][len(ARGS[algo]) - 1 - ARGS[algo][::-1].index("--steps-per-generation") + 1])  # the last
    model = CLASSES[algo].load(run_dir / "best.zip", device="cpu")
    assert model.num_timesteps == GENERATIONS * steps
    if "--normalize" in ARGS[algo]:
        venv = DummyVecEnv([lambda: gymnasium.make("Pendulum-v1")])
        assert VecNormalize.load(str(run_dir / "best.vecnormalize.pkl"), venv).obs_rms.count > steps
    return algo, history


def test_layouts_and_exact_resume(reference, tmp_path):
    """Started on 2 ranks x 2 members (collective backend), stopped by SIGTERM after generation 0, resumed
    in one process: the history of the uninterrupted one-process run, exactly.

    One run per algorithm thus shows layout independence (2 ranks against no MPI), members and their
    networks moving between ranks, and exact resume on another layout. ``-n 4`` and the p2p backend
    are covered for PPO in test_mpi.py and test_resume.py.
    """
    algo, history = reference
    run_dir = tmp_path / "run"
    proc = launch([*_args(algo), "--agents-per-rank", "2", "--backend", "collective", "--run-dir", str(run_dir)], 2)
    wait_for_line(proc, "gen   1/")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, (out, err)
    partial = history_without_rank(run_dir)
    assert 0 < len(partial) < len(history) and partial == history[: len(partial)]
    assert {r["rank"] for r in read_history(run_dir)} == {0, 1}
    # the checkpoint holds episodes in flight, which the resume rebuilds (replayed, checked bit for bit)
    last = checkpoint.complete(str(run_dir))[-1]
    for m in range(POPULATION):
        meta = json.loads((run_dir / "checkpoints" / f"gen_{last:06d}" / f"member_{m:02d}.json").read_text())
        assert all(env["steps"] > 0 and env["start"] is not None for env in meta["episodes"]["envs"]), (m, meta)
    resumed = run_evo(["--resume", str(run_dir)], None, timeout=300)
    assert "resuming the run" in resumed.stdout and "not bit-exact" not in resumed.stdout
    assert history_without_rank(run_dir) == history
