"""Episodes survive the generation boundary: fixed-length episodes, fitness messages, rebuilt resumes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from user_envs import FixedLength

from evo_mpi.episodes import EpisodeRecorder, obs_arrays
from evo_mpi.records import parent_step_of, step_of
from helpers import history_without_rank, launch, read_history, run_evo, wait_for_line

LENGTH = 300
#: PPO, 2 envs x 128 steps per generation: an episode of 300 steps ends in generation 2 at the earliest.
FIXED = [
    "--env-id", "tests.user_envs:FixedLength",
    "--env-kwargs", json.dumps({"length": LENGTH, "bonus": True}),
    "--n-envs", "2", "--n-steps", "128", "--steps-per-generation", "256",
    "--selection", "wta", "--seed", "11",
    "--search-space", "batch_size=choice:64,128", "--search-space", "n_epochs=int:1:2",
    "--final-eval-episodes", "0",
]  # fmt: skip
GENERATIONS = 5
FIRST_DONE = 2  # 3 x 128 = 384 >= 300 steps per env
#: CartPole, 4 envs x 128 steps per generation, fixed settings that learn fast; ends at a return of 150.
CARTPOLE_128 = [
    "--env-id", "CartPole-v1", "--n-envs", "4", "--n-steps", "128", "--steps-per-generation", "512",
    "--agents-per-rank", "2", "--generations", "40", "--seed", "1", "--target-fitness", "150",
    "--search-space", "learning_rate=const:0.001", "--search-space", "n_epochs=const:10",
    "--search-space", "batch_size=const:64", "--search-space", "gamma=const:0.99",
    "--search-space", "gae_lambda=const:0.95", "--search-space", "ent_coef=const:0.0",
    "--search-space", "clip_range=const:0.2", "--search-space", "vf_coef=const:0.5",
    "--final-eval-episodes", "0",
]  # fmt: skip


def _check_fixed_length(records: list[dict], population: int) -> None:
    """Every return is one whole episode: LENGTH plus its last step's bonus of at most 0.5 (a cut or split episode
    returns less than LENGTH, a doubled one about twice); no fitness before FIRST_DONE ('no completed episode')."""
    returns = [r for rec in records for r in rec["returns"]]
    assert returns and all(LENGTH <= r <= LENGTH + 0.5 for r in returns)
    for rec in records:
        if step_of(rec) < FIRST_DONE and parent_step_of(rec) is None:
            assert rec["fitness"] is None and rec["fitness_missing"] == "no completed episode yet", rec
        elif step_of(rec) >= FIRST_DONE:
            assert LENGTH <= rec["fitness"] <= LENGTH + 0.5 and "fitness_missing" not in rec, rec
    assert len({rec["member"] for rec in records}) == population


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("fixed") / "run"
    args = [*FIXED, "--generations", str(GENERATIONS), "--agents-per-rank", "4", "--run-dir", str(run_dir)]
    return run_dir, run_evo(args, None).stdout


def test_fixed_length_episodes_outlive_generations_and_exploits(fixed_run):
    run_dir, out = fixed_run
    records = read_history(run_dir)
    assert len(records) == GENERATIONS * 4
    _check_fixed_length(records, 4)
    # wta copies the best member (the bonus tells members apart): the episodes in flight at these exploits
    # (each spans several generations) still ended whole, counted once: never cut, split or doubled. In
    # FIRST_DONE + 1 no episode ends (the next end at 600 steps per env is in generation 4, the last), so
    # every member still holds the copied window: fitness ties, and ties never copy
    exploits = [r for r in records if r["parent"] is not None]
    assert {step_of(r) for r in exploits} == {FIRST_DONE}
    assert len({r["fitness"] for r in records if step_of(r) == FIRST_DONE + 1}) == 1
    assert "note: generation 0: no completed episode yet for member(s) [0, 1, 2, 3]" in out
    assert "diverged" not in out and "warning" not in out


def test_fixed_length_same_history_on_two_ranks(fixed_run, tmp_path):
    run_dir, _ = fixed_run
    args = [*FIXED, "--generations", str(GENERATIONS), "--agents-per-rank", "2", "--run-dir", str(tmp_path / "run")]
    run_evo(args, 2)
    assert history_without_rank(tmp_path / "run") == history_without_rank(run_dir)


def test_fixed_length_async(tmp_path):
    run_dir = tmp_path / "run"
    run_evo(
        [*FIXED, "--generations", "4", "--mode", "async", "--agents-per-rank", "3", "--run-dir", str(run_dir)], None
    )
    records = read_history(run_dir)
    assert len(records) == 4 * 3
    _check_fixed_length(records, 3)
    assert all(set(rec["lengths"]) <= {float(LENGTH)} for rec in records)
    assert any(rec["parent"] is not None for rec in records if step_of(rec) >= FIRST_DONE)


def test_cartpole_learns_past_one_generations_steps_per_env(tmp_path):
    """128 steps per env per generation: an episode of more than 128 steps must span generations."""
    run_dir = tmp_path / "run"
    proc = run_evo([*CARTPOLE_128, "--run-dir", str(run_dir)], None, timeout=300)
    assert "episodes of CartPole-v1 last up to 500 steps and each env steps 128 per generation" in proc.stdout
    assert "fitness may first appear after about 4 generations" in proc.stdout
    returns = [r for rec in read_history(run_dir) for r in rec["returns"]]
    assert max(returns) > 128
    assert "target reached" in proc.stdout


def test_recorder_rebuilds_an_episode_bit_for_bit():
    env = EpisodeRecorder(FixedLength(length=50))
    env.reset(seed=5)
    for a in [0, 1, 1, 0, 1]:
        env.step(a)
    rng_state = env.unwrapped.np_random.bit_generator.state
    record, actions, obs = env.record(), env.action_array(), obs_arrays(env.obs)
    fresh = EpisodeRecorder(FixedLength(length=50))
    assert fresh.rebuild(record, actions, obs) is None
    assert fresh.unwrapped.t == 5 and fresh.unwrapped.np_random.bit_generator.state == rng_state
    # an unseeded reset records the RNG state instead of a seed
    for _ in range(45):
        env.step(0)
    env.reset()
    env.step(1)
    assert "rng" in env.record()["start"]
    other = EpisodeRecorder(FixedLength(length=50))
    other.reset(seed=99)
    assert other.rebuild(env.record(), env.action_array(), obs_arrays(env.obs)) is None
    assert np.array_equal(other.obs, env.obs)
    # a wrong observation is reported, not accepted
    bad = [obs[0] + np.float32(1)]
    assert "differs" in EpisodeRecorder(FixedLength(length=50)).rebuild(record, actions, bad)
    entropy = EpisodeRecorder(FixedLength(length=50, entropy=True))
    entropy.reset(seed=1)
    entropy.step(0)
    again = EpisodeRecorder(FixedLength(length=50, entropy=True))
    assert "differs" in again.rebuild(entropy.record(), entropy.action_array(), obs_arrays(entropy.obs))


def test_recorder_on_a_registered_env_with_time_limit():
    env = EpisodeRecorder(gymnasium.make("Pendulum-v1"))
    env.reset(seed=3)
    for _ in range(150):
        env.step(env.action_space.sample())
    copy = EpisodeRecorder(gymnasium.make("Pendulum-v1"))
    assert copy.rebuild(env.record(), env.action_array(), obs_arrays(env.obs)) is None
    for _ in range(49):  # the TimeLimit's count was rebuilt: both end at step 200 together
        a = env.action_space.sample()
        assert not env.step(a)[3] and not copy.step(a)[3]
    a = env.action_space.sample()
    assert env.step(a)[3] and copy.step(a)[3]


@pytest.mark.parametrize("entropy", [False, True])
def test_resume_rebuilds_running_episodes_or_says_it_cannot(fixed_run, tmp_path, entropy):
    """Stopped mid-run with 300-step episodes in flight: the resumed history equals the uninterrupted one.

    An env that draws from OS entropy cannot be rebuilt: the resume names the member and the env, says it
    is not bit-exact, and the run completes.
    """
    kwargs = json.dumps({"length": LENGTH, "entropy": entropy, "bonus": True})
    args = [*FIXED, "--env-kwargs", kwargs, "--generations", str(GENERATIONS), "--agents-per-rank", "4"]
    run_dir = tmp_path / "run"
    proc = launch([*args, "--run-dir", str(run_dir)], None)
    wait_for_line(proc, "gen   2/")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    resumed = run_evo(["--resume", str(run_dir)], None)
    notices = [line for line in resumed.stdout.splitlines() if "not bit-exact" in line]
    if entropy:
        assert len(notices) == 4 and all("tests.user_envs:FixedLength" in line for line in notices)
        assert {line.split(":")[1].strip() for line in notices} == {f"member {m}" for m in range(4)}
        assert len(read_history(run_dir)) == GENERATIONS * 4
    else:
        assert notices == []
        assert history_without_rank(run_dir) == history_without_rank(fixed_run[0])
