"""Run configuration: one frozen dataclass, mirrored by CLI flags and a TOML file.

Precedence: built-in defaults < ``--config FILE`` < command-line flags.
:func:`validate` reports every problem with its offending value before any
rank does expensive work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from . import algorithms
from .hparams import check_prior
from .space import SpaceError, parse_space

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Selection rules (see :mod:`evo_mpi.selection`) and explore rules.
SELECTION_CHOICES = ("truncation", "wta", "tournament", "ttest", "none")
EXPLORE_CHOICES = ("perturb", "pb2")

EXIT_CONFIG_ERROR = 2


class ConfigError(Exception):
    """Invalid configuration; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _f(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field carrying its CLI help text."""
    meta = {"help": help, **extra}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """Everything a run needs. Field names are the CLI flags with ``-`` for ``_``."""

    env_id: str = _f(
        "CartPole-v1",
        "Gymnasium environment id, or module:Class / module:factory for your own env (module:Id-v0 imports "
        "module, then makes the id it registered).",
    )
    env_kwargs: dict[str, Any] = _f({}, 'Keyword arguments for the env, as a JSON object, e.g. {"g": 9.81}.')
    normalize: bool = _f(
        False, "Wrap the envs in VecNormalize; its statistics move with the weights on exploit and are checkpointed."
    )
    algo: str = _f("ppo", "SB3 algorithm (see evo_mpi.algorithms).", choices=algorithms.names)
    seed: int = _f(0, "Master seed; every random stream derives from it.")
    generations: int = _f(30, "Number of generations (train, evaluate, exploit, explore).")
    steps_per_generation: int = _f(
        8192, "Env steps each member trains per generation (a multiple of n_steps * n_envs)."
    )
    agents_per_rank: int = _f(1, "Members per MPI rank; population = ranks x agents per rank.")
    backend: str = _f("p2p", "How weights move: p2p (Send/Recv) or collective (Bcast).", choices=("p2p", "collective"))
    selection: str = _f(
        "truncation",
        "Exploit rule: truncation (bottom q copy top q), wta (all copy the best), tournament (each member copies "
        "the best of a random tournament), ttest (copy a random other member if Welch's t-test says it is better), "
        "none (no exploit: random search).",
        choices=SELECTION_CHOICES,
    )
    truncation_fraction: float = _f(0.25, "Truncation quantile q, 0 < q <= 0.5.")
    tournament_size: int = _f(3, "Contestants per tournament (selection tournament), >= 2.")
    elitism: bool = _f(False, "Keep the best member unchanged (selection tournament).")
    ttest_alpha: float = _f(0.05, "Significance level of the t-test (selection ttest), 0 < alpha < 1.")
    explore: str = _f(
        "perturb",
        "Explore rule for members that exploited: perturb (multiply or resample, PBT) or pb2 (GP-UCB bandit "
        "over past fitness changes, Population-Based Bandits).",
        choices=EXPLORE_CHOICES,
    )
    perturb_factors: tuple[float, ...] = _f((0.8, 1.2), "Comma-separated explore multipliers.")
    resample_probability: float = _f(0.25, "Probability of resampling a hyperparameter from its prior.")
    eval_episodes: int = _f(0, "Deterministic evaluation episodes for fitness; 0 = mean of the last training episodes.")
    fitness_window: int = _f(10, "Completed training episodes averaged for fitness when eval-episodes is 0.")
    n_envs: int = _f(8, "Vectorised envs per member.")
    n_steps: int = _f(256, "Rollout length per env (on-policy algorithms: PPO, A2C).")
    buffer_size: int = _f(1_000_000, "Replay buffer transitions per member (off-policy algorithms).")
    copy_replay_buffer: bool = _f(
        False, "On exploit, also copy the winner's replay buffer (off-policy); by default each member keeps its own."
    )
    policy: str = _f("MlpPolicy", "SB3 policy class name.")
    net_arch: tuple[int, ...] = _f((64, 64), "Comma-separated hidden layer sizes of the policy and value networks.")
    torch_threads: int = _f(1, "Torch threads per rank; 0 = cores on the node / ranks on the node.")
    search_space: dict[str, str] = _f(
        {},
        "Search-space overrides NAME=PRIOR, e.g. learning_rate=loguniform:1e-5:1e-3, "
        "batch_size=choice:64,128, n_epochs=int:3:10, gamma=const:0.99 (repeatable).",
    )
    run_dir: str = _f("", "Output directory (default runs/<env>-<timestamp>); an existing run there is resumed.")
    checkpoint_every: int = _f(1, "Write a checkpoint every N generations (and always at the end or on a stop).")
    keep_checkpoints: int = _f(2, "Complete checkpoints kept on disk (older ones are pruned).")

    @property
    def space_specs(self) -> dict[str, str]:
        """The algorithm's default space with the user's overrides applied."""
        specs = dict(algorithms.get(self.algo).default_space) if self.algo in algorithms.names() else {}
        specs.update(self.search_space)
        return specs

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-friendly form; ``search_space`` is the full resolved space."""
        out = dataclasses.asdict(self)
        out["perturb_factors"] = list(self.perturb_factors)
        out["net_arch"] = list(self.net_arch)
        out["search_space"] = self.space_specs
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def choices_of(name: str) -> tuple[str, ...]:
    """The values option ``name`` accepts; algorithms are looked up when asked, so late registrations count."""
    choices = FIELDS[name].metadata["choices"]
    return tuple(choices() if callable(choices) else choices)


def _tuple_parser(name: str, cast: type) -> Any:
    """Parse ``"a,b,c"`` into a tuple of ``cast`` values, for a comma-separated option."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(cast(x) for x in text.split(",") if x.strip())
        except ValueError:
            flag = "--" + name.replace("_", "-")
            raise argparse.ArgumentTypeError(
                f"invalid {flag} {text!r}: expected comma-separated {cast.__name__} values"
            ) from None

    return parse


#: Comma-separated options and their element types.
TUPLE_FIELDS: dict[str, type] = {"perturb_factors": float, "net_arch": int}


def _parse_hparam(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"invalid --search-space {text!r}: expected NAME=PRIOR")
    return name.strip(), spec.strip()


def _parse_env_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid --env-kwargs {text!r}: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'invalid --env-kwargs {text!r}: expected a JSON object like {{"g": 9.81}}')
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every option shows its default, none sets one (files may)."""
    parser = argparse.ArgumentParser(
        prog="evo-mpi",
        description="Population-Based Training of SB3 agents over MPI. "
        "Run under 'mpiexec -n N' or as a single process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    defaults = Config()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"help": f.metadata["help"] + f" (default: {_show(default)})"}
        if f.name in TUPLE_FIELDS:
            kwargs["type"] = _tuple_parser(f.name, TUPLE_FIELDS[f.name])
        elif f.name == "search_space":
            kwargs.update(type=_parse_hparam, action="append", metavar="NAME=PRIOR")
            kwargs["help"] = f.metadata["help"]
        elif f.name == "env_kwargs":
            kwargs.update(type=_parse_env_kwargs, metavar="JSON")
        elif isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(default)
        if "choices" in f.metadata:
            kwargs["choices"] = choices_of(f.name)
            kwargs["type"] = str.lower  # --algo SAC names the same algorithm as --algo sac
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options above (flags override it).")
    parser.add_argument(
        "--print-config", action="store_true", help="Print the resolved configuration as TOML and exit."
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="Continue the run in RUN_DIR from its last complete checkpoint with its saved options; only "
        + ", ".join("--" + n.replace("_", "-") for n in RESUME_OVERRIDABLE if n != "run_dir")
        + " may change.",
    )
    return parser


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value == "" or value == {}:
        return "see description"
    return str(value)


def load_toml(path: str) -> dict[str, Any]:
    """Read a config file; errors name the file and the problem."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"--config {path!r}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"--config {path!r}: invalid TOML ({exc})"]) from None


def _coerce(name: str, value: Any, problems: list[str]) -> Any:
    """Type-check one file value against the dataclass default's type."""
    default = getattr(Config(), name)
    if name in TUPLE_FIELDS:
        cast = TUPLE_FIELDS[name]
        if isinstance(value, str):
            try:
                return _tuple_parser(name, cast)(value)
            except argparse.ArgumentTypeError as exc:
                problems.append(str(exc))
                return default
        kinds = (int, float) if cast is float else (int,)
        if isinstance(value, list) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
            return tuple(cast(v) for v in value)
        problems.append(f"{name} = {value!r}: expected a list of {cast.__name__} values")
        return default
    if name == "env_kwargs":
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):  # how to_toml writes kwargs TOML cannot hold (null)
            try:
                return _parse_env_kwargs(value)
            except argparse.ArgumentTypeError as exc:
                problems.append(str(exc))
                return default
        problems.append(f"env_kwargs = {value!r}: expected a table of keyword arguments")
        return default
    if "choices" in FIELDS[name].metadata and isinstance(value, str):
        value = value.lower()
    if name == "search_space":
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        problems.append(f"search_space = {value!r}: expected a table of NAME = PRIOR")
        return default
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        problems.append(f"{name} = {value!r}: expected {type(default).__name__}")
        return default
    return value


def merge(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> Config:
    """Combine file and CLI values into a Config (no range checks; see :func:`validate`)."""
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in file_values.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            problems.append(f"unknown key {key!r} in config file")
            continue
        kwargs[name] = _coerce(name, value, problems)
    for name, value in cli_values.items():
        if name == "search_space":
            merged = dict(kwargs.get("search_space", {}))
            merged.update(dict(value))
            kwargs[name] = merged
        else:
            kwargs[name] = value
    if problems:
        raise ConfigError(problems)
    return Config(**kwargs)


def validate(cfg: Config, world_size: int) -> list[str]:
    """Every problem with ``cfg`` for a run on ``world_size`` ranks, with offending values."""
    problems: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    for name in (
        "generations",
        "steps_per_generation",
        "agents_per_rank",
        "n_envs",
        "n_steps",
        "fitness_window",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        value = getattr(cfg, name)
        need(value > 0, f"--{name.replace('_', '-')} must be > 0, got {value}")
    need(cfg.eval_episodes >= 0, f"--eval-episodes must be >= 0, got {cfg.eval_episodes}")
    need(cfg.torch_threads >= 0, f"--torch-threads must be >= 0 (0 = automatic), got {cfg.torch_threads}")
    need(
        0 < cfg.truncation_fraction <= 0.5, f"--truncation-fraction must be in (0, 0.5], got {cfg.truncation_fraction}"
    )
    need(
        0 <= cfg.resample_probability <= 1,
        f"--resample-probability must be in [0, 1], got {cfg.resample_probability}",
    )
    need(len(cfg.perturb_factors) > 0, "--perturb-factors is empty")
    need(
        len(cfg.net_arch) > 0 and all(n > 0 for n in cfg.net_arch),
        f"--net-arch needs positive layer sizes, got {','.join(map(str, cfg.net_arch)) or 'nothing'}",
    )
    for factor in cfg.perturb_factors:
        need(math.isfinite(factor) and factor > 0, f"--perturb-factors must be finite and > 0, got {factor}")
    need(cfg.buffer_size > 0, f"--buffer-size must be > 0, got {cfg.buffer_size}")
    need(cfg.tournament_size >= 2, f"--tournament-size must be >= 2, got {cfg.tournament_size}")
    need(0 < cfg.ttest_alpha < 1, f"--ttest-alpha must be in (0, 1), got {cfg.ttest_alpha}")
    algo = algorithms.get(cfg.algo) if cfg.algo in algorithms.names() else None
    if algo is not None and algo.off_policy and cfg.n_envs > 0 and cfg.steps_per_generation > 0:
        need(
            cfg.steps_per_generation % cfg.n_envs == 0,
            f"--steps-per-generation {cfg.steps_per_generation} is not a multiple of n_envs = {cfg.n_envs}",
        )
    elif cfg.n_steps > 0 and cfg.n_envs > 0 and cfg.steps_per_generation > 0:
        rollout = cfg.n_steps * cfg.n_envs
        need(
            cfg.steps_per_generation % rollout == 0,
            f"--steps-per-generation {cfg.steps_per_generation} is not a multiple of "
            f"n_steps * n_envs = {cfg.n_steps} * {cfg.n_envs} = {rollout}",
        )
    for f in dataclasses.fields(Config):
        choices = choices_of(f.name) if "choices" in f.metadata else None
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        need(
            choices is None or value in choices, f"{flag} {value!r} is unknown (choose from {', '.join(choices or ())})"
        )
    population = world_size * cfg.agents_per_rank
    if cfg.agents_per_rank > 0:
        need(
            population >= 2,
            f"population of {population} ({world_size} rank(s) x {cfg.agents_per_rank} agent(s)) is too small "
            "for selection: run under 'mpiexec -n N' or pass --agents-per-rank N with N >= 2",
        )
    try:
        space = parse_space(cfg.space_specs)
    except SpaceError as exc:
        problems.extend(f"search space: {line}" for line in str(exc).splitlines())
        space = {}
    allowed = algo.hparams if algo is not None else ()
    for name in sorted(cfg.space_specs):
        need(name in allowed, f"search space: unknown {cfg.algo} hyperparameter {name!r} (known: {', '.join(allowed)})")
    for name, prior in space.items():
        if name in allowed:
            problems.extend(check_prior(name, prior))
    try:
        json.dumps(cfg.env_kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"--env-kwargs {cfg.env_kwargs!r}: not JSON-serialisable ({exc}); use JSON values only")
    else:
        problems.extend(_check_env(cfg.env_id, cfg.env_kwargs, cfg.algo))
    if cfg.run_dir:
        problems.extend(_check_writable(cfg.run_dir))
    return problems


def resolve_env(env_id: str) -> Any:
    """What to build for ``env_id``: a gymnasium id, or a user's class/factory.

    ``module:Name`` imports ``module``; if ``Name`` is a callable attribute of it
    (an ``Env`` subclass or a function returning an env) that is used, otherwise
    ``Name`` is a gymnasium id the module registered on import.
    """
    import importlib

    if ":" in env_id:
        module_name, name = env_id.split(":", 1)
        target = getattr(importlib.import_module(module_name), name, None)
        return target if callable(target) else name
    return env_id


def _check_env(env_id: str, kwargs: Mapping[str, Any], algo: str) -> list[str]:
    """Build the env once (cheap next to training) to check the id, the kwargs and the action space."""
    import gymnasium

    try:
        target = resolve_env(env_id)
        if isinstance(target, str):
            gymnasium.spec(target)
    except Exception as exc:  # gymnasium and importlib raise several error types here
        return [f"--env-id {env_id!r} is not a registered gymnasium environment ({type(exc).__name__}: {exc})"]
    try:
        env = gymnasium.make(target, **kwargs) if isinstance(target, str) else target(**kwargs)
    except Exception as exc:  # any error of the user's env constructor
        return [f"--env-id {env_id!r} with --env-kwargs {json.dumps(dict(kwargs))}: cannot create it ({exc})"]
    try:
        space = type(env.action_space).__name__
    finally:
        env.close()
    supported = algorithms.get(algo).action_spaces if algo in algorithms.names() else None
    if supported is not None and space not in supported:
        return [f"--algo {algo} needs a {' or '.join(supported)} action space; {env_id!r} has {env.action_space}"]
    return []


def _check_writable(path: str) -> list[str]:
    """Check that ``path`` can be created, by creating and removing a file in its nearest existing parent.

    Permission bits are not enough: root passes ``os.access`` everywhere, and
    ``/proc`` or a read-only mount refuse files whatever the bits say.
    """
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return [f"--run-dir {path!r}: {probe!r} exists and is not a directory"]
    try:
        fd, name = tempfile.mkstemp(prefix=".evo-mpi-probe-", dir=probe)
        os.close(fd)
        os.remove(name)
    except OSError as exc:
        return [f"--run-dir {path!r}: cannot create files in {probe!r} ({exc.strerror or exc})"]
    return []


#: Options that may differ when a run is resumed: they change the layout or
#: bookkeeping, never the history.
RESUME_OVERRIDABLE = ("agents_per_rank", "backend", "torch_threads", "checkpoint_every", "keep_checkpoints", "run_dir")


@dataclass(frozen=True)
class Parsed:
    """The raw inputs: config-file values, CLI values, and CLI-only switches."""

    file_values: dict[str, Any]
    cli_values: dict[str, Any]
    config_file: str | None
    print_config: bool
    resume: str | None


def parse(argv: Sequence[str] | None) -> Parsed:
    """Parse argv and read ``--config``; raise ConfigError (never exit) on a bad flag."""
    parser = build_parser()

    def fail(message: str) -> None:
        raise ConfigError([message])

    parser.error = fail  # type: ignore[method-assign,assignment]
    args = parser.parse_args(argv)
    config_file = getattr(args, "config", None)
    file_values = load_toml(config_file) if config_file else {}
    cli = {k: v for k, v in vars(args).items() if k in FIELDS}
    return Parsed(
        file_values, cli, config_file, bool(getattr(args, "print_config", False)), getattr(args, "resume", None)
    )


def from_saved(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Config values from a run dir's ``config.json`` (extra keys dropped, missing ones default)."""
    return {k: v for k, v in saved.items() if k in FIELDS}


def differences(cfg: Config, saved: Mapping[str, Any]) -> list[str]:
    """Fields (other than layout/bookkeeping ones) where ``cfg`` differs from a saved config.

    A key missing from the saved config (an option added after the run
    started) counts as that option's default.
    """
    now = cfg.to_dict()
    old = {**Config().to_dict(), **saved}
    return [
        f"{name}: the run has {old[name]!r}, this command gives {now[name]!r}"
        for name in FIELDS
        if name not in RESUME_OVERRIDABLE and now[name] != old[name]
    ]


def to_toml(cfg: Config) -> str:
    """Serialise a config as TOML that ``--config`` reads back.

    ``env_kwargs`` is written as a table when TOML can hold it, otherwise (a
    JSON null, say) as its JSON text, which ``--config`` also accepts.
    """
    data = cfg.to_dict()
    space = data.pop("search_space")
    try:
        tomli_w.dumps({"env_kwargs": data["env_kwargs"]})
    except TypeError:
        data["env_kwargs"] = json.dumps(data["env_kwargs"])
    data["search_space"] = {key: space[key] for key in sorted(space)}
    return tomli_w.dumps(data)
