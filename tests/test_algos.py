"""Every algorithm's searched hyperparameters change what it does; state moves and checkpoints whole."""

import dataclasses

import numpy as np
import pytest
import torch

from evo_mpi import algorithms, checkpoint
from evo_mpi.config import Config
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
    space = parse_space(algorithms.get(algo).default_space)
    return sample_hparams(space, np.random.default_rng(0)) | {"batch_size": 32}


def all_tensors(member):
    return [t.detach().clone() for t in member._tensors()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def take_envs(dst, src):
    """``dst``'s envs continue ``src``'s running episodes (an exploit never moves envs: they belong to the slot).

    Rebuilt from ``src``'s checkpoint records, as a resume does, so that two members with one state can
    be compared step for step.
    """
    dst._rebuild_episodes(src.checkpoint_tensors(), src.checkpoint_meta()["episodes"])
    assert dst.rebuild_stats["exact"]


@pytest.fixture(scope="module")
def trained():
    """One member per algorithm trained past learning_starts, as a checkpoint to start every test from."""
    out = {}
    for algo in algorithms.names():
        cfg = config(algo)
        hp = {k: v for k, v in base_hparams(algo).items() if k in algorithms.get(algo).hparams}
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

CASES = [(algo, name) for algo in algorithms.names() for name in algorithms.get(algo).hparams]


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


@pytest.mark.parametrize("algo", list(algorithms.names()))
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


def test_dqn_epsilon_follows_the_runs_progress_not_the_learn_call():
    """The epsilon DQN acts with in generation 1 is its schedule at the run's global progress.

    SB3 measures progress against the end of each learn() call; PBT calls
    learn() once per generation, which would finish the decay within every
    generation (or, with reset_num_timesteps=False, sit at the final value).
    """
    cfg = config("dqn", n_envs=1, generations=20, steps_per_generation=256)  # run: 5120 steps, decay: first 512
    m = Member(0, cfg, {"exploration_final_eps": 0.05}, None)
    m.train(256, 0)
    used = []
    predict = m.model.predict

    def recording_predict(*args, **kwargs):
        used.append(m.model.exploration_rate)  # DQN.predict draws a random action with this probability
        return predict(*args, **kwargs)

    m.model.predict = recording_predict
    m.train(256, 1)
    assert len(used) == 256
    initial, final, fraction = 1.0, 0.05, 0.1  # SB3's DQN defaults, and our final eps

    def schedule(steps_done):
        progress = steps_done / 5120
        return initial + (final - initial) * min(progress / fraction, 1.0)

    # step k of generation 1 acts with the epsilon of the run's progress after 256 + k steps
    expected = [schedule(256 + k) for k in range(256)]
    assert used == pytest.approx(expected, abs=1e-12)
    assert used[0] == pytest.approx(0.525) and used[-1] > final  # mid-decay, not yet at its final value


def test_td3_noise_is_the_one_used(trained):
    t = from_checkpoint(trained, "td3", action_noise_sigma=0.37)
    t.train(64, 1)
    assert np.allclose(t.model.action_noise.noises[0]._sigma, 0.37)  # vectorised by learn() for 2 envs


@pytest.mark.parametrize("algo", list(algorithms.names()))
def test_state_moves_and_checkpoints_bit_for_bit(trained, algo, tmp_path):
    """pack/unpack and checkpoint files carry every network, target network, optimizer state and counter.

    ``a`` is the original; ``b`` (same id, other seeds, same step count)
    receives its state by pack/unpack plus the replay buffer; ``c`` is built
    fresh and restored from checkpoint files written to disk. All three then
    train one more generation to identical tensors.
    """
    a = from_checkpoint(trained, algo)
    b = Member(0, trained[algo][0], trained[algo][1], None)
    b.train(256, 5)  # other seeds: other weights, same counters
    assert not same(all_tensors(a), all_tensors(b))
    assert b.state_layout() == a.state_layout()
    b.unpack(a.pack().copy())
    b.unpack_aux(a.pack_aux(replay=True), replay=True)
    assert same(all_tensors(a), all_tensors(b))
    checkpoint.begin(str(tmp_path), 0)
    checkpoint.write_member(str(tmp_path), 0, 0, a.checkpoint_tensors(), a.checkpoint_meta())
    checkpoint.commit(str(tmp_path), 0, checkpoint.PopulationState(0, True, 1, [a.hparams], [0.0]), keep=1)
    c = Member(0, trained[algo][0], trained[algo][1], None)
    c.restore(*checkpoint.load_member(str(tmp_path), 0, 0))
    # one contiguous state buffer, as a and b have after pack/unpack and as the engine gives every member at
    # start-up: on AMD EPYC, training on a flattened and an unflattened copy of one state differs in the last bit
    c.state_layout()
    assert same(all_tensors(a), all_tensors(c))
    take_envs(b, a)  # b's own envs are elsewhere in their episodes; c's were rebuilt from the checkpoint
    for member in (a, b, c):
        member.train(64, 2)
    assert same(all_tensors(a), all_tensors(b)), "a moved state trains like the original (in the same envs)"
    assert same(all_tensors(a), all_tensors(c)), "a restored checkpoint trains like the original"


@pytest.mark.parametrize("algo", list(algorithms.names()))
def test_optimizer_state_exists_from_the_start_and_layout_never_changes(algo):
    """A fresh member packs the same layout as a trained one (so peers can check it once, at start-up)."""
    cfg = config(algo)
    fresh = Member(0, cfg, base_hparams(algo) if algo == "ppo" else {}, None)
    before = fresh.state_layout()
    weights = [p.detach().clone() for p in fresh.model.policy.parameters()]
    assert all(opt.state for opt in optimizers(fresh.model))
    assert all(torch.equal(w, p) for w, p in zip(weights, fresh.model.policy.parameters(), strict=True))
    steps = [v for opt in optimizers(fresh.model) for s in opt.state.values() for k, v in s.items() if k == "step"]
    assert steps and all(float(v) == 0.0 for v in steps), "state as a first step would create it: step 0"
    fresh.train(256, 0)
    assert fresh.state_layout() == before
    assert all(float(v) > 0 for opt in optimizers(fresh.model) for s in opt.state.values() for v in [s["step"]])


def test_eager_optimizer_state_trains_like_lazy_state():
    """Creating Adam's state up front is the same as PyTorch creating it at the first step."""
    cfg = config("ppo")
    hp = base_hparams("ppo")
    eager = Member(0, cfg, hp, None)
    lazy = Member(0, cfg, hp, None)
    lazy.model.policy.optimizer.state.clear()  # what PyTorch starts from
    lazy._flat = None
    eager.train(256, 0)
    lazy.train(256, 0)
    assert same(
        [p.detach() for p in eager.model.policy.parameters()], [p.detach() for p in lazy.model.policy.parameters()]
    )


def test_vecnormalize_gamma_follows_the_members_gamma():
    """VecNormalize discounts the return it scales rewards by with the member's current gamma."""
    cfg = config("ppo", normalize=True)
    hp = base_hparams("ppo")
    runs = []
    for gamma in (0.9, 0.9, 0.999):
        m = Member(0, cfg, {**hp, "gamma": 0.99}, None)
        m.apply_hparams({**hp, "gamma": gamma})  # as after an exploit + explore
        assert m.normalize.gamma == gamma
        m.train(256, 0)
        runs.append(m.normalize.ret_rms.var.copy())
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


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
        take_envs(b, a)
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
