"""The SB3 adapter: every searched hyperparameter changes what PPO does."""

import math

import numpy as np
import pytest
import torch

from evo_mpi import algorithms
from evo_mpi.config import Config
from evo_mpi.member import Member

torch.set_num_threads(1)

CFG = Config(n_envs=2, n_steps=64, steps_per_generation=128)
BASE = {
    "learning_rate": 1e-3,
    "batch_size": 32,
    "n_epochs": 2,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "clip_range": 0.2,
}


def make(member_id=0, **hp):
    return Member(member_id, CFG, {**BASE, **hp}, None)


def adam_steps(member):
    opt = member.model.policy.optimizer
    return int(next(iter(opt.state.values()))["step"].item())


def weights(member):
    return torch.cat([p.detach().reshape(-1) for p in member.model.policy.parameters()])


def test_learning_rate_reaches_optimizer_and_training():
    m = make()
    m.train(128, 0)
    m.apply_hparams({**BASE, "learning_rate": 3.3e-4})
    assert all(g["lr"] == 3.3e-4 for g in m.model.policy.optimizer.param_groups)
    m.model.logger.record = _capture(m.model.logger.record, seen := {})
    m.train(128, 1)  # train() re-applies lr from the schedule: must still be ours
    assert all(g["lr"] == 3.3e-4 for g in m.model.policy.optimizer.param_groups)
    assert seen["train/learning_rate"] == 3.3e-4  # the value SB3 wrote into the optimizer in train()


def test_clip_range_is_the_one_used_in_the_loss():
    m = make()
    m.apply_hparams({**BASE, "clip_range": 0.137})
    m.model.logger.record = _capture(m.model.logger.record, seen := {})
    m.train(128, 0)
    # PPO.train() records the very value it clamps the ratio with.
    assert seen["train/clip_range"] == pytest.approx(0.137)


def _capture(record, seen):
    def wrapped(key, value, exclude=None):
        seen[key] = value
        return record(key, value, exclude)

    return wrapped


@pytest.mark.parametrize("n_epochs, batch_size", [(1, 32), (3, 32), (2, 64), (1, 128), (2, 48)])
def test_epochs_and_minibatch_size_set_number_of_updates(n_epochs, batch_size):
    m = make(n_epochs=1, batch_size=32)
    m.apply_hparams({**BASE, "n_epochs": n_epochs, "batch_size": batch_size})
    m.train(128, 0)
    # one rollout of 2 envs x 64 steps = 128 samples
    assert adam_steps(m) == n_epochs * math.ceil(128 / batch_size)


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.8), (0.999, 1.0)])
def test_gamma_and_gae_lambda_reach_the_advantages(gamma, lam):
    m = make()
    m.apply_hparams({**BASE, "gamma": gamma, "gae_lambda": lam, "n_epochs": 1})
    m.train(128, 0)
    buf = m.model.rollout_buffer
    assert buf.gamma == gamma and buf.gae_lambda == lam
    n_envs, steps = buf.n_envs, buf.buffer_size
    # train() flattened values/advantages env-major; rewards/starts keep (steps, envs).
    v, adv = (buf.values.reshape(n_envs, steps).T, buf.advantages.reshape(n_envs, steps).T)
    r, starts = buf.rewards, buf.episode_starts
    # GAE recursion for every step but the last, from the buffer's own arrays.
    for t in range(buf.buffer_size - 1):
        nonterminal = 1.0 - starts[t + 1]
        delta = r[t] + gamma * v[t + 1] * nonterminal - v[t]
        np.testing.assert_allclose(adv[t], delta + gamma * lam * nonterminal * adv[t + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, a, b", [("ent_coef", 0.0, 0.5), ("vf_coef", 0.1, 2.0), ("max_grad_norm", 0.01, 5.0)])
def test_loss_coefficients_change_the_update(name, a, b):
    runs = {}
    for label, value in (("a1", a), ("a2", a), ("b", b)):
        m = make()
        m.apply_hparams({**BASE, name: value})
        assert getattr(m.model, name) == value
        m.train(128, 0)
        runs[label] = weights(m)
    assert torch.equal(runs["a1"], runs["a2"])  # same value, same seed: bit-identical
    assert not torch.equal(runs["a1"], runs["b"])  # the coefficient changed the gradient step


def test_every_default_hyperparameter_has_an_applier():
    for name in algorithms.names():
        assert set(algorithms.get(name).default_space) <= set(algorithms.get(name).hparams), name
    with pytest.raises(KeyError, match="n_steps"):
        make().apply_hparams({"n_steps": 3})


def test_exploit_copies_weights_and_optimizer_state_exactly():
    winner, loser = make(0, learning_rate=3e-3), make(1)
    winner.train(256, 0)
    loser.train(128, 0)
    assert not torch.equal(weights(winner), weights(loser))
    loser.unpack(winner.pack())
    w_sd, l_sd = winner.model.policy.state_dict(), loser.model.policy.state_dict()
    assert all(torch.equal(w_sd[k], l_sd[k]) for k in w_sd)
    w_opt, l_opt = winner.model.policy.optimizer.state_dict(), loser.model.policy.optimizer.state_dict()
    assert w_opt["state"].keys() == l_opt["state"].keys()
    for k in w_opt["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(w_opt["state"][k][key], l_opt["state"][k][key])
    assert adam_steps(loser) == adam_steps(winner)
    # the loser keeps its own step count
    assert (winner.timesteps, loser.timesteps) == (256, 128)
    # same state + same hparams + same stream + the same running episodes => identical next update
    # (the loser keeps its own envs on exploit; here they take the winner's, rebuilt as on resume)
    loser._rebuild_episodes(winner.checkpoint_tensors(), winner.checkpoint_meta()["episodes"])
    loser.apply_hparams(winner.hparams)
    winner.id = loser.id = 5
    winner.train(128, 3)
    loser.train(128, 3)
    assert torch.equal(weights(winner), weights(loser))


def test_unpack_rejects_wrong_size():
    m = make()
    m.train(128, 0)
    with pytest.raises(ValueError, match="bytes"):
        m.unpack(np.zeros(10, dtype=np.uint8))


def test_fitness_from_training_episodes_and_eval():
    m = make()
    m.train(256, 0)
    returns, lengths = m.episode_stats()
    assert 0 < len(returns) <= CFG.fitness_window and returns == lengths  # CartPole: reward 1 per step
    assert m.fitness(0) == pytest.approx(np.mean(returns))
    ev = Member(0, Config(n_envs=2, n_steps=64, eval_episodes=3), BASE, None)
    ev.train(128, 0)
    f1, f2 = ev.fitness(4), ev.fitness(4)
    assert len(ev.last_eval_returns) == 3 and f1 == f2  # deterministic policy, seeded eval env
