"""Evolvable networks in the SB3 adapter: growth preserves the function, removal and optimizer state survive."""

import re

import numpy as np
import pytest
import torch

from evo_mpi.arch import WeightNoise
from evo_mpi.config import Config
from evo_mpi.member import Member, optimizers

torch.set_num_threads(1)

#: (algo, env, a small valid budget); every algorithm whose networks are MLPs.
CASES = [
    ("ppo", "CartPole-v1", {"n_envs": 2, "n_steps": 64, "steps_per_generation": 128}),
    ("a2c", "CartPole-v1", {"n_envs": 2, "n_steps": 32, "steps_per_generation": 128}),
    ("sac", "Pendulum-v1", {"n_envs": 1, "steps_per_generation": 256, "buffer_size": 2000}),
    ("td3", "Pendulum-v1", {"n_envs": 1, "steps_per_generation": 256, "buffer_size": 2000}),
    ("ddpg", "Pendulum-v1", {"n_envs": 1, "steps_per_generation": 256, "buffer_size": 2000}),
    ("dqn", "CartPole-v1", {"n_envs": 1, "steps_per_generation": 256, "buffer_size": 2000}),
]


def trained(algo, env, budget, arch="64-64", activation="relu"):
    cfg = Config(algo=algo, env_id=env, **budget)
    hparams = {"learning_rate": 1e-3, "net_arch": arch, "activation_fn": activation}
    if algo in ("sac", "td3", "ddpg", "dqn"):
        hparams["batch_size"] = 32
    member = Member(0, cfg, hparams, None)
    if algo in ("sac", "td3", "ddpg", "dqn"):
        member.model.learning_starts = 64
    member.train(budget["steps_per_generation"], 0)
    return member, hparams


def outputs(member, obs):
    """Everything the policy computes from observations: actions, values / Q-values, log-probs."""
    policy = member.model.policy
    x = torch.as_tensor(obs, dtype=torch.float32)
    out = {}
    with torch.no_grad():
        if member.algorithm.name in ("ppo", "a2c"):
            dist = policy.get_distribution(x)
            actions = torch.as_tensor(np.arange(len(obs)) % policy.action_space.n)  # CartPole: Discrete
            out["values"] = policy.predict_values(x)
            out["logits"] = dist.distribution.logits
            out["log_prob"] = policy.evaluate_actions(x, actions)[1]
        elif member.algorithm.name == "dqn":
            out["q"] = policy.q_net(x)
            out["q_target"] = policy.q_net_target(x)
        else:
            action = policy.actor(x, deterministic=True) if member.algorithm.name == "sac" else policy.actor(x)
            out["action"] = action
            out["q"] = torch.cat(policy.critic(x, action), dim=1)
            out["q_target"] = torch.cat(policy.critic_target(x, action), dim=1)
            if member.algorithm.name == "sac":
                out["log_std"] = policy.actor.get_action_dist_params(x)[1]
    return out


def _moved(name, n_old, n_new):
    """Where a parameter lives after growing from n_old to n_new hidden layers.

    In an SB3 ``nn.Sequential`` hidden Linear k sits at index 2k (an activation
    follows each); a chain's output layer sits at 2n, so it moves when a layer is added.
    """
    match = re.match(r"(.*)\.(\d+)\.(weight|bias)$", name)
    if match and int(match.group(2)) == 2 * n_old:
        return f"{match.group(1)}.{2 * n_new}.{match.group(3)}"
    return name


def observations(member, n=32):
    rng = np.random.default_rng(0)
    space = member.model.observation_space
    return rng.uniform(np.maximum(space.low, -3), np.minimum(space.high, 3), size=(n, *space.shape)).astype(np.float32)


def adam_state(member):
    """Every optimizer's state, keyed by (optimizer index, parameter name)."""
    named = {id(p): n for n, p in member.model.policy.named_parameters()}
    named[id(getattr(member.model, "log_ent_coef", None))] = "log_ent_coef"
    out = {}
    for i, opt in enumerate(optimizers(member.model)):
        for group in opt.param_groups:
            for p in group["params"]:
                out[(i, named[id(p)])] = {k: v.detach().clone() for k, v in opt.state[p].items()}
    return out


@pytest.mark.parametrize("algo,env,budget", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("grown", ["80-96", "64-64-64"])  # nodes in the first and the last layer; a layer
def test_growth_leaves_every_output_unchanged(algo, env, budget, grown):
    member, hparams = trained(algo, env, budget)
    obs = observations(member)
    before = outputs(member, obs)
    state_before = adam_state(member)
    nbytes = member.state_nbytes
    member.apply_hparams({**hparams, "net_arch": grown})
    assert member.arch == tuple(int(n) for n in grown.split("-"))
    assert member.state_nbytes > nbytes  # the network really grew
    after = outputs(member, obs)
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0, msg=f"{algo} {grown}: {key}")
    # Adam's state for the surviving weights is the old one: the old slice of every state tensor
    state_after = adam_state(member)
    n_old, n_new = 2, len(grown.split("-"))
    for (opt, pname), old in state_before.items():
        new_name = _moved(pname, n_old, n_new)
        for name, value in old.items():
            new = state_after[(opt, new_name)][name]
            if value.dim() == 0:
                assert new.item() == value.item()
            else:
                index = tuple(slice(0, n) for n in value.shape)
                torch.testing.assert_close(new[index], value, atol=0, rtol=0)
    if n_new > n_old:  # the appended identity layer starts with fresh optimizer state
        fresh = [k for k in state_after if re.search(rf"\.{2 * n_old}\.(weight|bias)$", k[1])]
        assert fresh
        for key in fresh:
            if _moved(key[1], n_old, n_new) == key[1] and key in state_before:
                continue  # a chain without output layer: hidden layer n_old is new there too, checked below
            assert all(float(v.abs().sum()) == 0 for v in state_after[key].values()), key
    # and it trains on from there
    member.train(budget["steps_per_generation"], 1)
    assert member.weights_finite()


@pytest.mark.parametrize("algo,env,budget", CASES, ids=[c[0] for c in CASES])
def test_removal_keeps_surviving_weights_and_adam_state(algo, env, budget):
    member, hparams = trained(algo, env, budget, arch="64-64-64")
    old = {n: p.detach().clone() for n, p in member.model.policy.named_parameters()}
    state_before = adam_state(member)
    member.apply_hparams({**hparams, "net_arch": "48-64"})
    assert member.arch == (48, 64)
    new = dict(member.model.policy.named_parameters())
    state_after = adam_state(member)
    checked = 0
    for name, source in old.items():
        if re.search(r"\.4\.(weight|bias)$", name):  # hidden layer 3: removed
            continue
        target = _moved(name, 3, 2)  # a chain's output layer moves from index 6 to 4
        p = new[target].detach()
        index = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, p.shape, strict=True))
        torch.testing.assert_close(p[index], source[index], atol=0, rtol=0, msg=name)
        for opt in range(len(optimizers(member.model))):
            for k, value in state_before.get((opt, name), {}).items():
                got = state_after[(opt, target)][k]
                index = tuple(slice(0, min(a, b)) for a, b in zip(value.shape, got.shape, strict=True))
                torch.testing.assert_close(got[index], value[index], atol=0, rtol=0, msg=f"{name} {k}")
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("algo,env,budget", CASES[:1] + CASES[2:3], ids=["ppo", "sac"])
def test_activation_change_keeps_every_weight(algo, env, budget):
    member, hparams = trained(algo, env, budget)
    old = {n: p.detach().clone() for n, p in member.model.policy.named_parameters()}
    member.apply_hparams({**hparams, "activation_fn": "tanh"})
    assert member.activation == "tanh"
    policy = member.model.policy
    hidden = policy.actor.latent_pi if algo == "sac" else policy.mlp_extractor.policy_net
    assert isinstance(hidden[1], torch.nn.Tanh)
    for name, p in member.model.policy.named_parameters():
        torch.testing.assert_close(p.detach(), old[name], atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["normal", "super", "reset"])
def test_weight_mutation_changes_the_chosen_fraction_only(variant):
    member, _ = trained(*CASES[2])  # SAC: actor, critic and critic target
    before = {n: p.detach().clone() for n, p in member.model.policy.named_parameters()}
    changed = member.mutate_weights(WeightNoise(variant, 0.1, 0.1, seed=7))
    total = 0
    for name, p in member.model.policy.named_parameters():
        diff = int((p.detach() != before[name]).sum())
        if name.endswith(".weight") and "target" not in name:
            assert diff == max(1, round(0.1 * p.numel())), name
            total += diff
        else:  # biases, log_std heads' biases and the target networks stay
            assert diff == 0, name
    assert total == changed
