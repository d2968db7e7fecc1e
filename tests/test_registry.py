"""The algorithm registry: one home per algorithm, cheap to import, strict about names."""

import subprocess
import sys

import pytest

from evo_mpi import algorithms
from evo_mpi.algorithms import Algorithm, register
from evo_mpi.algorithms._sb3 import ON_POLICY
from evo_mpi.config import Config, validate
from evo_mpi.hparams import BOUNDS
from helpers import ROOT, child_env


def test_builtin_algorithms_in_help_order_and_case_insensitive():
    assert algorithms.names() == ("ppo", "a2c", "sac", "td3", "ddpg", "dqn")
    assert algorithms.get("SAC") is algorithms.get("sac")
    with pytest.raises(KeyError, match="unknown algorithm 'ppo2' \\(known: ppo, a2c"):
        algorithms.get("ppo2")


def test_every_searchable_hyperparameter_has_bounds_and_every_default_prior_is_valid():
    for name in algorithms.names():
        algo = algorithms.get(name)
        assert set(algo.hparams) <= set(BOUNDS), name
        assert Config(algo=name).space_specs == dict(algo.default_space)
    # the default spaces pass validation (with an env of the right action space)
    for name, env in (("ppo", "CartPole-v1"), ("dqn", "CartPole-v1"), ("td3", "Pendulum-v1")):
        cfg = Config(algo=name, env_id=env, steps_per_generation=2048, n_envs=8, n_steps=256)
        assert validate(cfg, 2) == []


def test_register_refuses_duplicates_upper_case_and_unappliable_defaults():
    ppo = algorithms.get("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register(ppo)
    fields = dict(sb3_class="stable_baselines3:PPO", off_policy=False, action_spaces=("Discrete",))
    with pytest.raises(ValueError, match="lower case"):
        register(Algorithm(name="PPO2", default_space={}, appliers=ON_POLICY, **fields))
    with pytest.raises(ValueError, match="cannot apply: \\['clip_range'\\]"):
        register(Algorithm(name="odd", default_space={"clip_range": "uniform:0.1:0.2"}, appliers=ON_POLICY, **fields))
    assert "odd" not in algorithms.names()


def test_importing_the_registry_and_validating_loads_no_torch():
    code = (
        "import sys; from evo_mpi import algorithms; from evo_mpi.config import Config, validate; "
        "validate(Config(agents_per_rank=2), 1); "
        "print(sorted(m for m in ('torch', 'stable_baselines3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_new_algorithm_is_one_module(tmp_path):
    """A user module registering an algorithm makes it a valid --algo, trained like the built-ins."""
    (tmp_path / "my_algo.py").write_text(
        "from evo_mpi.algorithms import Algorithm, register\n"
        "from evo_mpi.algorithms._sb3 import ON_POLICY, set_attr\n"
        "register(Algorithm(name='ppo_fixed_clip', sb3_class='stable_baselines3:PPO', off_policy=False,\n"
        "    action_spaces=('Discrete',), default_space={'learning_rate': 'loguniform:1e-4:1e-3'},\n"
        "    appliers={**ON_POLICY, 'n_epochs': set_attr('n_epochs', int)}))\n"
    )
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from evo_mpi.config import Config, validate; from evo_mpi.member import Member\n"
        "import my_algo  # registered after the config module was imported\n"
        "cfg = Config(algo='ppo_fixed_clip', n_envs=2, n_steps=32, steps_per_generation=64, agents_per_rank=2)\n"
        "assert validate(cfg, 1) == [], validate(cfg, 1)\n"
        "m = Member(0, cfg, {'learning_rate': 5e-4, 'n_epochs': 2}, None); m.train(64, 0)\n"
        "print(type(m.model).__name__, m.model.n_epochs, m.timesteps)\n"
    )
    env = child_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PPO", "2", "64"]
