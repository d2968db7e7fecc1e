"""Every algorithm's searched hyperparameters change what it does; state moves and checkpoints whole."""

import dataclasses

import numpy as np
import pytest
import torch

from evo_mpi.config import ALGO_HPARAMS, DEFAULT_SPACES, Config
from evo_mpi.member import Member, optimizers
from evo_mpi.space import parse_space, sample_hparams

torch.set_num_threads(1)

ENVS = {"ppo": "CartPole-v1", "a2c": "CartPole-v1", "dqn": "CartPole-v1"}
ENVS.update(dict.fromkeys(("sac", "td3", "ddpg"), "Pendulum-v1"))

#: Two clearly different values per hyperparameter.
VALUES = {
    "learning_rate": (1e-4, 3e-3),
    "gamma": (0.9, 0.999),
    "gae_lambda": (0.8, 1.0),
    "ent_coef": (0.0, 0.05),
    "vf_coef": (0.2, 1.0),
    "max_grad_norm": (0.05, 5.0),
    "clip_range": (0.05, 0.4),
    "n_epochs": (1, 4),
    "batch_size": (32, 64),
    "tau": (0.001, 0.5),
    "gradient_steps": (1, 3),
    "action_noise_sigma": (0.0, 0.5),
    "policy_delay": (1, 3),
    "target_policy_noise": (0.0, 0.5),
    "target_noise_clip": (0.01, 0.5),
    "target_update_interval": (10, 5000),
    "exploration_final_eps": (0.0, 0.9),
}


def config(algo, **extra):
    base = {"n_envs": 2, "n_steps": 32, "buffer_size": 2000, "net_arch": (32, 32), "steps_per_generation": 256}
    return Config(env_id=ENVS[algo], algo=algo, **{**base, **extra})


def base_hparams(algo):
    return sample_hparams(parse_space(DEFAULT_SPACES[algo]), np.random.default_rng(0)) | {"batch_size": 32}


def all_tensors(member):
    return [t.detach().clone() for t in member._tensors()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def trained():
    """One member per algorithm trained past learning_starts, as a checkpoint to start every test from."""
    out = {}
    for algo in ALGO_HPARAMS:
        cfg = config(algo)
        hp = {k: v for k, v in base_hparams(algo).items() if k in ALGO_HPARAMS[algo]}
        m = Member(0, cfg, hp, None)
        m.train(256, 0)
        out[algo] = (cfg, hp, m.checkpoint_tensors(), m.checkpoint_meta())
        m.close()
    return out


def from_checkpoint(trained, algo, **hp):
    cfg, base, tensors, meta = trained[algo]
    m = Member(0, cfg, base, None)
    m.restore(tensors, {**meta, "hparams": {**base, **hp}})
    return m


#: Settings some checks need to be visible within 128 steps.
EXTRA = {("dqn", "tau"): {"target_update_interval": 10}}

CASES = [(algo, name) for algo, names in ALGO_HPARAMS.items() for name in names]


@pytest.mark.parametrize("algo, name", CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_hyperparameter_changes_training(trained, algo, name):
    """Same start, same seed: equal values train identically, different values do not."""
    low, high = VALUES[name]
    runs = []
    for value in (low, low, high):
        m = from_checkpoint(trained, algo, **EXTRA.get((algo, name), {}), **{name: value})
        m.train(128, 1)
        runs.append(all_tensors(m))
        m.close()
    assert same(runs[0], runs[1]), "training must be deterministic for this check to mean anything"
    assert not same(runs[0], runs[2]), f"{algo} {name}: {low} and {high} trained identically"


@pytest.mark.parametrize("algo", list(ALGO_HPARAMS))
def test_learning_rate_reaches_every_optimizer(trained, algo):
    m = from_checkpoint(trained, algo, learning_rate=2.5e-4)
    m.train(128, 1)  # SB3 re-applies the schedule inside train()
    opts = optimizers(m.model)
    assert len(opts) == {"sac": 3, "td3": 2, "ddpg": 2}.get(algo, 1)
    assert all(g["lr"] == 2.5e-4 for o in opts for g in o.param_groups)


def test_sac_tau_is_the_polyak_coefficient(trained):
    m = from_checkpoint(trained, "sac", tau=0.3, gradient_steps=1)
    model = m.model
    target_before = [p.detach().clone() for p in model.critic_target.parameters()]
    model.train(gradient_steps=1, batch_size=32)
    for old, new, online in zip(
        target_before, model.critic_target.parameters(), model.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.7 * old + 0.3 * online.detach())


def test_dqn_epsilon_and_td3_noise_are_the_ones_used(trained):
    m = from_checkpoint(trained, "dqn", exploration_final_eps=0.123)
    m.train(128, 1)  # past the decay window: epsilon is the final value
    assert m.model.exploration_rate == pytest.approx(0.123)
    t = from_checkpoint(trained, "td3", action_noise_sigma=0.37)
    t.train(64, 1)
    assert np.allclose(t.model.action_noise.noises[0]._sigma, 0.37)  # vectorised by learn() for 2 envs


@pytest.mark.parametrize("algo", list(ALGO_HPARAMS))
def test_state_moves_and_checkpoints_bit_for_bit(trained, algo):
    """pack/unpack and checkpoint/restore carry every network, target network and optimizer state."""
    a = from_checkpoint(trained, algo)
    b = Member(0, trained[algo][0], trained[algo][1], None)  # same id: same seeds from here on
    b.train(128, 0)
    assert not same(all_tensors(a), all_tensors(b))
    b.unpack(a.pack().copy())
    assert same(all_tensors(a), all_tensors(b))
    a.train(64, 2)
    b.train(64, 2)  # same state, same generation: the copy trains like the original (own replay buffer aside)
    if algo in ("ppo", "a2c"):
        assert same(all_tensors(a), all_tensors(b))


@pytest.mark.parametrize("algo", ["sac", "dqn"])
def test_replay_buffer_kept_by_default_copied_on_request(trained, algo):
    a = from_checkpoint(trained, algo)
    b = Member(0, trained[algo][0], trained[algo][1], None)
    b.train(128, 0)
    own = b.model.replay_buffer.observations.copy()
    b.unpack(a.pack().copy())
    b.unpack_aux(a.pack_aux(replay=False), replay=False)
    assert np.array_equal(b.model.replay_buffer.observations, own)
    b.unpack_aux(a.pack_aux(replay=True), replay=True)
    for name in ("observations", "actions", "rewards", "dones", "next_observations"):
        assert np.array_equal(getattr(b.model.replay_buffer, name), getattr(a.model.replay_buffer, name))
    assert (b.model.replay_buffer.pos, b.model.replay_buffer.full) == (
        a.model.replay_buffer.pos,
        a.model.replay_buffer.full,
    )
    if algo == "sac":  # identical data and state train identically (DQN's loser keeps its own step counters)
        a.train(64, 3)
        b.train(64, 3)
        assert same(all_tensors(a), all_tensors(b))


def test_checkpoint_restores_replay_buffer_and_counters(trained):
    cfg, hp, tensors, meta = trained["dqn"]
    a = from_checkpoint(trained, "dqn")
    b = Member(0, cfg, hp, None)
    b.restore(a.checkpoint_tensors(), a.checkpoint_meta())
    assert b.model._n_calls == a.model._n_calls > 0
    a.train(128, 1)
    b.train(128, 1)
    assert same(all_tensors(a), all_tensors(b))


def test_vecnormalize_statistics_move_with_the_weights():
    cfg = config("ppo", normalize=True, eval_episodes=1)
    hp = base_hparams("ppo")
    a, b = Member(0, cfg, hp, None), Member(0, cfg, hp, None)
    a.train(256, 0)
    b.train(128, 0)
    assert not np.allclose(a.normalize.obs_rms.mean, b.normalize.obs_rms.mean)
    b.unpack(a.pack().copy())
    b.unpack_aux(a.pack_aux(replay=False), replay=False)
    for ra, rb in ((a.normalize.obs_rms, b.normalize.obs_rms), (a.normalize.ret_rms, b.normalize.ret_rms)):
        assert np.array_equal(ra.mean, rb.mean) and np.array_equal(ra.var, rb.var) and ra.count == rb.count
    # the eval env normalises with the same (copied) statistics: equal fitness
    assert a.fitness(5) == b.fitness(5)
    c = Member(2, cfg, hp, None)
    c.restore(a.checkpoint_tensors(), a.checkpoint_meta())
    assert np.array_equal(c.normalize.obs_rms.var, a.normalize.obs_rms.var)


def test_user_env_factory_and_class_take_kwargs():
    cfg = dataclasses.replace(
        config("ppo"), env_id="user_envs:short_cartpole", env_kwargs={"max_episode_steps": 7}, fitness_window=20
    )
    m = Member(0, cfg, {}, None)
    m.train(256, 0)
    _, lengths = m.episode_stats()
    assert lengths and max(lengths) <= 7
    cfg = dataclasses.replace(config("dqn"), env_id="user_envs:Corridor", env_kwargs={"length": 2})
    m = Member(0, cfg, {}, None)
    m.train(256, 0)
    returns, lengths = m.episode_stats()
    assert returns and all(r == -n for r, n in zip(returns, lengths, strict=True)) and min(lengths) >= 2
