"""--zoo: RL Zoo's tuned values applied, the priors narrowed around them, member 0 starting at them.

The expected values come from the installed rl_zoo3 package's YAML (read here with
yaml, not through evo_mpi) and from the rule written in evo_mpi.config.zoo's docstring.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import rl_zoo3
import yaml

import evo_mpi
from evo_mpi.config import Config, ConfigError
from evo_mpi.config.zoo import narrow, policy_kwargs, resolve
from evo_mpi.space import parse_prior, parse_space
from helpers import run_evo


def zoo_entry(algo: str, env: str) -> dict:
    path = os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", f"{algo}.yml")
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)[env]


def spec(name: str, default: str, value: object) -> str:
    return narrow(name, parse_prior(name, default), value)  # type: ignore[arg-type]


def bounds(text: str) -> tuple[float, float]:
    kind, low, high = text.split(":")
    return float(low), float(high)


def test_the_narrowing_rule_for_each_kind_of_prior() -> None:
    low, high = bounds(spec("learning_rate", "loguniform:1e-4:3e-3", 0.001))  # [v/3, 3v]
    assert math.isclose(low, 0.001 / 3, rel_tol=1e-5) and math.isclose(high, 0.003)
    assert spec("ent_coef", "loguniform:1e-6:1e-2", 0.0) == "const:0.0"  # a switched-off term stays off
    low, high = bounds(spec("gae_lambda", "uniform:0.8:1.0", 0.9))  # a quarter of the width 0.2, centred
    assert math.isclose(low, 0.875) and math.isclose(high, 0.925)
    low, high = bounds(spec("gamma", "uniform:0.95:0.9999", 0.999))  # clipped at gamma's bound 1
    assert math.isclose(low, 0.999 - 0.0499 / 8, rel_tol=1e-5) and high == 1.0
    assert spec("n_epochs", "int:3:20", 4) == "int:2:8"
    assert spec("n_epochs", "int:3:20", 1) == "int:1:2"  # n_epochs >= 1: never 0
    assert spec("batch_size", "choice:64,128,256,512", 64) == "choice:32,64,128"
    assert spec("batch_size", "choice:64,128,256,512", 3) == "choice:3,6"  # 1.5 is no batch size
    assert spec("activation_fn", "choice:relu,tanh,elu", "tanh") == "choice:relu,tanh,elu"
    assert spec("activation_fn", "choice:relu,tanh,elu,gelu", "relu") == "choice:relu,tanh"


def test_policy_kwargs_are_read_not_evaluated() -> None:
    text = "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256]))"
    kwargs = policy_kwargs(text)
    assert kwargs["log_std_init"] == -2 and kwargs["ortho_init"] is False
    assert kwargs["net_arch"] == {"pi": [256, 256], "vf": [256, 256]} and kwargs["activation_fn"].name == "relu"
    with pytest.raises(ConfigError, match="RMSpropTFLike"):
        policy_kwargs("dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5))")
    with pytest.raises(ConfigError, match="cannot read"):
        policy_kwargs("__import__('os').system('true')")


def test_lunarlander_takes_every_zoo_value_and_member_0_starts_at_them() -> None:
    zoo = zoo_entry("ppo", "LunarLander-v3")
    cfg = resolve(Config(env_id="LunarLander-v3", zoo=True), given={"env_id", "zoo"})
    assert (cfg.n_envs, cfg.n_steps, cfg.normalize) == (zoo["n_envs"], zoo["n_steps"], zoo.get("normalize", False))
    assert cfg.steps_per_generation % (cfg.n_envs * cfg.n_steps) == 0 and cfg.steps_per_generation >= 8192
    space = parse_space(cfg.space_specs)
    sb3_default = {"learning_rate": 3e-4, "clip_range": 0.2, "vf_coef": 0.5}  # SB3 PPO's, where the zoo sets none
    for name, prior in space.items():
        expected = zoo.get(name, sb3_default.get(name))
        assert cfg.start_hparams[name] == expected, name
        assert prior.holds(expected) and prior.searched, (name, prior.spec())
    assert set(space) == set(cfg.start_hparams) == set(evo_mpi.algorithms.get("ppo").default_space)


def test_options_you_give_win_over_the_zoo() -> None:
    cfg = Config(env_id="LunarLander-v3", zoo=True, n_envs=4, search_space={"gamma": "uniform:0.9:0.99"})
    out = resolve(cfg, given={"env_id", "zoo", "n_envs", "search_space"})
    assert out.n_envs == 4 and out.n_steps == 1024 and out.steps_per_generation == 8192
    assert out.search_space["gamma"] == "uniform:0.9:0.99" and "gamma" not in out.start_hparams


def test_an_env_the_zoo_lacks_is_exit_2_with_what_it_has(tmp_path: Path) -> None:
    proc = run_evo(["--zoo", "--env-id", "FrozenLake-v1", "--agents-per-rank", "2", "--run-dir", str(tmp_path / "r")],
                   None, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "RL Zoo has no ppo hyperparameters for 'FrozenLake-v1' (it has: Acrobot-v1," in proc.stderr
    assert "LunarLander-v3" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_toml_zoo_and_print_config_show_the_schedules(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('env_id = "CartPole-v1"\nzoo = true\nagents_per_rank = 2\n', encoding="utf-8")
    proc = run_evo(["--config", str(tmp_path / "run.toml"), "--print-config"], None)
    zoo = zoo_entry("ppo", "CartPole-v1")
    assert f"n_steps = {zoo['n_steps']}\n" in proc.stdout and f"n_envs = {zoo['n_envs']}\n" in proc.stdout
    assert '[schedules]\nlearning_rate = "linear"\nclip_range = "linear"\n' in proc.stdout
    assert f"learning_rate = {float(zoo['learning_rate'][4:])}\n" in proc.stdout.split("[start_hparams]")[1]


def test_api_run_from_the_zoo_applies_its_linear_schedules(tmp_path: Path) -> None:
    """CartPole's zoo entry decays learning_rate and clip_range linearly: at the budget's end both reach 0."""
    from stable_baselines3 import PPO

    zoo = zoo_entry("ppo", "CartPole-v1")
    result = evo_mpi.train(
        Config(env_id="CartPole-v1", zoo=True), agents_per_rank=2, generations=2, steps_per_generation=512,
        final_eval_episodes=1, run_dir=str(tmp_path / "r"), echo=None,
    )  # fmt: skip
    assert (result.config.n_envs, result.config.n_steps) == (zoo["n_envs"], zoo["n_steps"])
    first = next(r for r in result.history if r["member"] == 0 and r["generation"] == 0)
    for name in ("batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef"):
        assert first["hparams"][name] == zoo[name], name
    assert first["hparams"]["learning_rate"] == float(zoo["learning_rate"][4:])
    model = PPO.load(tmp_path / "r" / "final" / "member_00.zip", device="cpu")
    last = [r for r in result.history if r["member"] == 0][-1]["hparams"]
    assert model.learning_rate(1.0) == last["learning_rate"] and model.learning_rate(0.5) == last["learning_rate"] / 2
    assert model.clip_range(0.25) == last["clip_range"] / 4
    assert [g["lr"] for g in model.policy.optimizer.param_groups] == [0.0]  # the last update ran at the budget's end
