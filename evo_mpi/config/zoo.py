"""``--zoo``: start from RL Zoo's tuned hyperparameters, with the search space narrowed around them.

:func:`resolve` reads the installed ``rl_zoo3`` package's YAML entry for the
algorithm and env and writes every setting into the configuration, so that
``--print-config`` shows it and ``config.json`` keeps it (a resumed run never
reads the zoo again). Options the user gave win over the zoo's.

The narrowing rule (:func:`narrow`), for a hyperparameter the algorithm
searches, around the zoo's value ``v`` (SB3's default where the zoo sets
none, since that is what the zoo's runs used):

* ``loguniform``: ``[v / 3, 3 v]``; a zero ``v`` (the term switched off)
  stays fixed at 0, which no log scale holds;
* ``uniform``: a window a quarter as wide as the default prior, centred on ``v``;
* ``int``: ``[v // 2, 2 v]`` (at least 1 either side);
* numeric ``choice``: ``v / 2, v, 2 v``; other choices: ``v`` and its neighbours;

each clipped to the values SB3 accepts (:data:`evo_mpi.hparams.BOUNDS`).
Member 0 starts exactly at the zoo's values (``start_hparams``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
from collections.abc import Mapping
from typing import Any

from .. import algorithms
from ..arch import ACTIVATIONS
from ..hparams import BOUNDS
from ..space import Prior, Value, parse_prior
from .schema import Config, ConfigError

#: ``loguniform``: the window is ``[v / LOG_FACTOR, v * LOG_FACTOR]``.
LOG_FACTOR = 3.0
#: ``uniform``: the window's width as a share of the default prior's.
UNIFORM_SHARE = 0.25
#: Default ``steps_per_generation`` that ``--zoo`` rounds up to a whole number of the zoo's rollouts.
STEPS_PER_GENERATION = 8192
#: Entry keys evo_mpi reads elsewhere or leaves out: the run's own budget replaces the zoo's.
IGNORED = ("n_timesteps",)
#: Entry keys evo_mpi cannot apply: an entry with one is refused.
UNSUPPORTED = (
    "env_wrapper",
    "frame_stack",
    "replay_buffer_class",
    "replay_buffer_kwargs",
    "callback",
    "vec_env_wrapper",
    "eval_env_wrapper",
)


def _zoo_dir() -> str:
    try:
        import rl_zoo3
    except ImportError:
        raise ConfigError(["--zoo needs RL Zoo's hyperparameter files: pip install 'evo-mpi[zoo]'"]) from None
    return os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams")


def entry(algo: str, env_id: str) -> dict[str, Any]:
    """The zoo's entry for ``algo`` on ``env_id``.

    Raises:
        ConfigError: naming what the zoo has when it has no such algorithm or env.

    """
    import yaml

    folder = _zoo_dir()
    path = os.path.join(folder, f"{algo}.yml")
    if not os.path.isfile(path):
        known = sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".yml") and n[:-4] in algorithms.names())
        raise ConfigError([f"--zoo: RL Zoo has no {algo} hyperparameters (it has: {', '.join(known)})"])
    with open(path, encoding="utf-8") as fh:
        table = yaml.safe_load(fh)
    if env_id not in table:
        envs = ", ".join(sorted(k for k in table if k not in ("default", "atari")))
        raise ConfigError([f"--zoo: RL Zoo has no {algo} hyperparameters for {env_id!r} (it has: {envs})"])
    return dict(table[env_id])


def narrow(name: str, prior: Prior, value: Value) -> str:
    """The prior spec of the module docstring's rule: ``prior`` (the default) narrowed around ``value``."""
    bounds = BOUNDS.get(name)
    low_ok = -math.inf if bounds is None else bounds.low
    high_ok = math.inf if bounds is None else bounds.high
    if prior.kind in ("choice", "const"):
        return "choice:" + ",".join(map(str, _choices(name, prior, value)))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError([f"--zoo: {name}={value!r} is not a number, but the {name} prior {prior.spec()} is"])
    v = float(value)
    if prior.kind == "loguniform":
        if v <= 0:
            return f"const:{value}"
        return f"loguniform:{max(v / LOG_FACTOR, low_ok):.6g}:{min(v * LOG_FACTOR, high_ok):.6g}"
    if prior.kind == "uniform":
        half = UNIFORM_SHARE * (prior.high - prior.low) / 2
        return f"uniform:{max(v - half, low_ok):.6g}:{min(v + half, high_ok):.6g}"
    if prior.kind == "int":
        n = int(round(v))
        low = min(n // 2, n - 1) if bounds is None else max(min(n // 2, n - 1), int(bounds.low))
        return f"int:{low}:{max(2 * n, n + 1)}"
    raise ConfigError([f"--zoo: cannot narrow {name}={prior.spec()} around {value!r}"])


def _choices(name: str, prior: Prior, value: Value) -> list[Value]:
    """A choice prior around ``value``: halved and doubled (numbers) or its neighbours in the default's order."""
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in (*prior.choices, value))
    if numeric:
        bounds = BOUNDS.get(name)
        integer = all(isinstance(c, int) for c in (*prior.choices, value))
        around: list[Value] = [value / 2, value, value * 2]  # type: ignore[operator]
        if integer:
            around = [int(v) for v in around if float(v).is_integer()]
        return sorted({v for v in around if bounds is None or bounds.contains(float(v))})
    order = list(prior.choices) if value in prior.choices else [*prior.choices, value]
    i = order.index(value)
    return order[max(0, i - 1) : i + 2]


def policy_kwargs(text: str | Mapping[str, Any]) -> dict[str, Any]:
    """The zoo's ``policy_kwargs`` (Python text like ``dict(net_arch=[64], activation_fn=nn.ReLU)``) as data.

    Read with :mod:`ast`, never evaluated: literals, ``dict(...)`` and
    ``nn.Name`` (an activation, returned as its evo_mpi name).
    """
    if isinstance(text, Mapping):
        return dict(text)
    try:
        node = ast.parse(str(text).strip(), mode="eval").body
        value = _literal(node)
    except (SyntaxError, ValueError) as exc:
        raise ConfigError([f"--zoo: cannot read policy_kwargs {text!r} ({exc})"]) from None
    if not isinstance(value, dict):
        raise ConfigError([f"--zoo: policy_kwargs {text!r} is not a dict"])
    return value


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {k.arg: _literal(k.value) for k in node.keywords if k.arg is not None}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nn":
        name = {"ReLU": "relu", "Tanh": "tanh", "ELU": "elu", "GELU": "gelu", "LeakyReLU": "leaky_relu"}.get(
            node.attr, node.attr.lower()
        )
        if name not in ACTIVATIONS:
            raise ValueError(f"activation nn.{node.attr} is not one evo_mpi knows ({', '.join(ACTIVATIONS)})")
        return _Activation(name)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    return ast.literal_eval(node)


@dataclasses.dataclass(frozen=True)
class _Activation:
    name: str


def _net_arch(value: Any) -> tuple[int, ...]:
    """``[64, 64]``, or ``dict(pi=[..], vf=[..])`` with one architecture for every network."""
    if isinstance(value, dict):
        archs = {tuple(v) for v in value.values()}
        if len(archs) != 1:
            raise ConfigError([f"--zoo: net_arch={value!r}: evo_mpi gives every network one architecture"])
        value = list(archs.pop())
    return tuple(int(n) for n in value)


def sb3_defaults(algo: algorithms.Algorithm) -> dict[str, Any]:
    """SB3's constructor defaults of ``algo`` (imports SB3)."""
    params = inspect.signature(algo.model_class()).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def resolve(cfg: Config, given: set[str]) -> Config:
    """``cfg`` with the zoo's entry applied (see the module docstring); options in ``given`` win.

    Raises:
        ConfigError: naming the entry's keys evo_mpi cannot apply, or what the zoo has.

    """
    if cfg.member:
        raise ConfigError([f"--zoo configures the SB3 adapter; --member {cfg.member} builds its own model"])
    if cfg.algo not in algorithms.names():
        return cfg  # validation names the unknown algorithm
    algo = algorithms.get(cfg.algo)
    zoo = entry(algo.name, cfg.env_id)
    bad = [k for k in zoo if k in UNSUPPORTED]
    normalize = zoo.pop("normalize", False)
    if not isinstance(normalize, bool):
        bad.append(f"normalize={normalize!r} (evo_mpi normalises observations and rewards together)")
    if zoo.get("noise_type", "normal") != "normal":
        bad.append(f"noise_type={zoo['noise_type']!r} (evo_mpi's action noise is Gaussian)")
    if bad:
        where = f"--zoo: the {algo.name} entry for {cfg.env_id}"
        raise ConfigError([f"{where} sets what evo_mpi cannot apply: {', '.join(bad)}"])
    out: dict[str, Any] = {"normalize": normalize, "policy": zoo.pop("policy", cfg.policy)}
    for key in ("n_envs", "n_steps", "buffer_size"):
        if key in zoo:
            out[key] = int(zoo.pop(key))
    if "noise_std" in zoo:
        zoo.pop("noise_type", None)
        zoo["action_noise_sigma"] = zoo.pop("noise_std")
    space: dict[str, str] = {}
    pkw = policy_kwargs(zoo.pop("policy_kwargs", {}))
    if "net_arch" in pkw:
        out["net_arch"] = _net_arch(pkw.pop("net_arch"))
    if "activation_fn" in pkw:
        space["activation_fn"] = f"const:{pkw.pop('activation_fn').name}"
    out["policy_kwargs"] = pkw
    for key in IGNORED:
        zoo.pop(key, None)
    values, schedules, model_kwargs = _split(algo, zoo)
    defaults = sb3_defaults(algo)
    start: dict[str, Value] = {}
    for name, spec in algo.default_space.items():
        prior = parse_prior(name, spec)
        value = values.pop(name, defaults.get(name))
        if value is None or name in cfg.search_space:
            continue
        space[name] = narrow(name, prior, value)
        if parse_prior(name, space[name]).searched:
            start[name] = value
    space.update({name: f"const:{value}" for name, value in values.items()})  # applied, not searched
    out.update(search_space=space, schedules=schedules, model_kwargs=model_kwargs, start_hparams=start)
    return _merge(cfg, out, given)


def _split(
    algo: algorithms.Algorithm, zoo: Mapping[str, Any]
) -> tuple[dict[str, Value], dict[str, str], dict[str, Any]]:
    """The entry's hyperparameters evo_mpi applies, its ``lin_`` schedules, and the rest (constructor keywords)."""
    values: dict[str, Value] = {}
    schedules: dict[str, str] = {}
    model_kwargs: dict[str, Any] = {}
    for key, value in zoo.items():
        if isinstance(value, str) and value.startswith("lin_") and key in algo.schedulable:
            schedules[key] = "linear"
            value = float(value[4:])
        if key in algo.appliers:
            values[key] = value
        else:
            model_kwargs[key] = value
    return values, schedules, model_kwargs


def _merge(cfg: Config, zoo: Mapping[str, Any], given: set[str]) -> Config:
    """``cfg`` with the zoo's values for every option not in ``given``; dict options merge, the user's keys win."""
    changes: dict[str, Any] = {}
    for name, value in zoo.items():
        if isinstance(value, dict):
            changes[name] = {**value, **getattr(cfg, name)}
        elif name not in given:
            changes[name] = value
    n_envs = int(changes.get("n_envs", cfg.n_envs))
    rollout = n_envs if algorithms.get(cfg.algo).off_policy else n_envs * int(changes.get("n_steps", cfg.n_steps))
    if "steps_per_generation" not in given and rollout > 0:  # a whole number of the zoo's rollouts
        changes["steps_per_generation"] = math.ceil(STEPS_PER_GENERATION / rollout) * rollout
    return dataclasses.replace(cfg, **changes)
