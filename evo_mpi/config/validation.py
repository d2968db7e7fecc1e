"""Validation: every problem with a configuration, each naming its offending value, before any rank starts."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from .. import algorithms, mfpbt
from ..arch import MutationSpecError, default_mutation_probs, parse_mutation_probs
from ..devices import device_problem
from ..hparams import check_prior
from ..resolvers import resolve_env, resolve_member
from ..space import MUTATED_APART, Prior, SpaceError, parse_space
from .schema import Config, choices_of, parse_duration


def validate(
    cfg: Config,
    world_size: int,
    env_factory: Callable[..., Any] | None = None,
    member_factory: Callable[..., Any] | None = None,
) -> list[str]:
    """Every problem with ``cfg`` for a run on ``world_size`` ranks, with offending values."""
    algo = algorithms.get(cfg.algo) if cfg.algo in algorithms.names() else None
    problems = [*_check_numbers(cfg), *_check_sharing(cfg, algo), *_check_rollout(cfg, algo), *_check_choices(cfg)]
    population = world_size * cfg.agents_per_rank
    if cfg.agents_per_rank > 0 and population < 2:
        problems.append(
            f"population of {population} ({world_size} rank(s) x {cfg.agents_per_rank} agent(s)) is too small "
            "for selection: run under 'mpiexec -n N' or pass --agents-per-rank N with N >= 2"
        )
    try:
        space = parse_space(cfg.space_specs)
    except SpaceError as exc:
        problems.extend(f"search space: {line}" for line in str(exc).splitlines())
        space = {}
    problems.extend(_check_space(cfg, algo, space, member_factory))
    problems.extend(_check_mutations(cfg, space))
    problems.extend(_check_start(cfg, space))
    problems.extend(_check_sb3_extras(cfg, algo))
    try:
        json.dumps(cfg.env_kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"--env-kwargs {cfg.env_kwargs!r}: not JSON-serialisable ({exc}); use JSON values only")
    else:
        if not cfg.member:  # the SB3 adapter's env; a custom member makes (or does without) its own
            problems.extend(_check_env(cfg.env_id, cfg.env_kwargs, cfg.algo, env_factory))
    problems.extend(_check_async(cfg))
    problems.extend(_check_objective(cfg, env_factory))
    problems.extend(_check_mfpbt(cfg, population, space))
    problems.extend(_check_text_options(cfg))
    problems.extend(_check_device(cfg))
    if cfg.run_dir:
        problems.extend(_check_writable(cfg.run_dir))
    return problems


#: Options that count something and must be positive.
POSITIVE = (
    "generations",
    "steps_per_generation",
    "agents_per_rank",
    "n_envs",
    "n_steps",
    "fitness_window",
    "checkpoint_every",
    "keep_checkpoints",
    "buffer_size",
)


def _check_numbers(cfg: Config) -> list[str]:
    """Counts, rates and sizes in their ranges."""
    rules: list[tuple[bool, str]] = [
        (getattr(cfg, name) > 0, f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
        for name in POSITIVE
    ]
    rules += [
        (cfg.eval_episodes >= 0, f"--eval-episodes must be >= 0, got {cfg.eval_episodes}"),
        (cfg.final_eval_episodes >= 0, f"--final-eval-episodes must be >= 0, got {cfg.final_eval_episodes}"),
        (cfg.final_eval_top >= 1, f"--final-eval-top must be >= 1, got {cfg.final_eval_top}"),
        (cfg.torch_threads >= 0, f"--torch-threads must be >= 0 (0 = automatic), got {cfg.torch_threads}"),
        (
            0 < cfg.truncation_fraction <= 0.5,
            f"--truncation-fraction must be in (0, 0.5], got {cfg.truncation_fraction}",
        ),
        (
            0 <= cfg.resample_probability <= 1,
            f"--resample-probability must be in [0, 1], got {cfg.resample_probability}",
        ),
        (len(cfg.perturb_factors) > 0, "--perturb-factors is empty"),
        (
            len(cfg.net_arch) > 0 and all(n > 0 for n in cfg.net_arch),
            f"--net-arch needs positive layer sizes, got {','.join(map(str, cfg.net_arch)) or 'nothing'}",
        ),
    ]
    rules += [
        (math.isfinite(f) and f > 0, f"--perturb-factors must be finite and > 0, got {f}") for f in cfg.perturb_factors
    ]
    rules += [
        (cfg.tournament_size >= 2, f"--tournament-size must be >= 2, got {cfg.tournament_size}"),
        (0 < cfg.ttest_alpha < 1, f"--ttest-alpha must be in (0, 1), got {cfg.ttest_alpha}"),
        (cfg.ready_after >= 0, f"--ready-after must be >= 0 env steps, got {cfg.ready_after}"),
        *(
            (
                math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0,
                f"--{name.replace('_', '-')} must be finite and >= 0, got {getattr(cfg, name)}",
            )
            for name in ("exploit_margin_std", "exploit_margin_abs")
        ),
        (
            cfg.selection != "ttest" or cfg.exploit_margin_std == cfg.exploit_margin_abs == 0,
            f"--exploit-margin-std {cfg.exploit_margin_std} / --exploit-margin-abs {cfg.exploit_margin_abs} with "
            "--selection ttest: the t-test is its own margin; drop the margin or choose another selection",
        ),
        (
            cfg.max_failures >= -1,
            f"--max-failures must be >= 0 (or -1: the population size), got {cfg.max_failures}",
        ),
    ]
    return [message for ok, message in rules if not ok]


def _check_sharing(cfg: Config, algo: algorithms.Algorithm | None) -> list[str]:
    """--share-experience needs the SB3 adapter with an off-policy algorithm."""
    if not cfg.share_experience:
        return []
    off_policy = ", ".join(n for n in algorithms.names() if algorithms.get(n).off_policy)
    if cfg.member:
        return [
            f"--share-experience with --member {cfg.member}: only the SB3 adapter's off-policy algorithms "
            f"({off_policy}) share experience; drop one of them"
        ]
    if algo is not None and not algo.off_policy:
        return [
            f"--share-experience needs an off-policy algorithm with a replay buffer ({off_policy}); --algo {cfg.algo} "
            "learns from its own fresh rollouts only"
        ]
    return []


def _check_rollout(cfg: Config, algo: algorithms.Algorithm | None) -> list[str]:
    """A generation is a whole number of rollouts (on-policy) or of env steps across the envs (off-policy)."""
    if cfg.member or min(cfg.n_envs, cfg.n_steps, cfg.steps_per_generation) <= 0:
        return []  # a custom member counts its own steps; non-positive values have their own message
    if algo is not None and algo.off_policy:
        if cfg.steps_per_generation % cfg.n_envs:
            return [f"--steps-per-generation {cfg.steps_per_generation} is not a multiple of n_envs = {cfg.n_envs}"]
        return []
    rollout = cfg.n_steps * cfg.n_envs
    if cfg.steps_per_generation % rollout:
        return [
            f"--steps-per-generation {cfg.steps_per_generation} is not a multiple of "
            f"n_steps * n_envs = {cfg.n_steps} * {cfg.n_envs} = {rollout}"
        ]
    return []


def _check_choices(cfg: Config) -> list[str]:
    """Every option with a fixed set of values holds one of them."""
    problems = []
    for f in dataclasses.fields(Config):
        if "choices" in f.metadata and getattr(cfg, f.name) not in choices_of(f.name):
            flag = "--" + f.name.replace("_", "-")
            choices = ", ".join(choices_of(f.name))
            problems.append(f"{flag} {getattr(cfg, f.name)!r} is unknown (choose from {choices})")
    return problems


def _check_space(
    cfg: Config,
    algo: algorithms.Algorithm | None,
    space: Mapping[str, Prior],
    member_factory: Callable[..., Any] | None,
) -> list[str]:
    """Every searched name is one the member applies, every prior gives valid values only."""
    problems = []
    if cfg.member:  # a custom member searches its own hyperparameters; the SB3 bounds apply to names it shares
        if member_factory is None:
            try:
                resolve_member(cfg.member)
            except Exception as exc:  # importlib raises several error types
                problems.append(f"--member {cfg.member!r}: cannot import it ({type(exc).__name__}: {exc})")
        if not space:
            problems.append("--member needs a --search-space: a custom member has no default one")
        for name, prior in space.items():
            problems.extend(check_prior(name, prior))
        return problems
    allowed = (*algo.hparams, *MUTATED_APART) if algo is not None else ()
    for name in sorted(cfg.space_specs):
        if name not in allowed:
            problems.append(f"search space: unknown {cfg.algo} hyperparameter {name!r} (known: {', '.join(allowed)})")
    for name, prior in space.items():
        if name in allowed:
            problems.extend(check_prior(name, prior))
    return problems


def _check_async(cfg: Config) -> list[str]:
    """Options that need every rank at once, which --mode async never has."""
    if cfg.mode != "async":
        return []
    rules = [
        (
            cfg.backend == "p2p",
            f"--backend {cfg.backend} needs every rank at once, which --mode async never has; in async mode a "
            "snapshot is fetched point to point from its owner (--backend p2p, the default)",
        ),
        (
            not cfg.copy_replay_buffer,
            "--copy-replay-buffer is not supported with --mode async (every published snapshot would hold a copy "
            "of the replay buffer); drop one of them",
        ),
        (
            cfg.checkpoint_every == 1,
            f"--checkpoint-every {cfg.checkpoint_every} with --mode async: async members checkpoint after every "
            "interval (so a stop loses at most one); drop --checkpoint-every",
        ),
    ]
    return [message for ok, message in rules if not ok]


#: Env steps of random actions the info key check spends looking for the end of a first episode.
PROBE_STEPS = 5_000


def _check_objective(cfg: Config, env_factory: Callable[..., Any] | None) -> list[str]:
    """``--fitness``: ``return`` or ``info:KEY`` with a key that a first episode's final info has."""
    if cfg.fitness == "return":
        return []
    key = cfg.objective_key
    if key is None or not key.strip():
        what = "an empty key" if key is not None else "neither return nor info:KEY"
        return [f"--fitness {cfg.fitness!r}: {what}; use --fitness return or --fitness info:KEY (e.g. info:is_success)"]
    if cfg.member:
        return [f"--fitness {cfg.fitness} with --member {cfg.member}: a custom member computes its own fitness"]
    if cfg.eval_episodes:
        return [
            f"--fitness {cfg.fitness} with --eval-episodes {cfg.eval_episodes}: evaluation episodes score returns "
            "only; the objective is read from the training episodes (--eval-episodes 0)"
        ]
    return _probe_info_key(cfg, key, env_factory)


def _probe_info_key(cfg: Config, key: str, env_factory: Callable[..., Any] | None) -> list[str]:
    """Random actions until a first episode ends (at most :data:`PROBE_STEPS`): its final info must have ``key``.

    An env whose episode does not end that soon is not judged here; the engines then stop at the first
    ended episode without it.
    """
    import gymnasium

    try:
        target = env_factory if env_factory is not None else resolve_env(cfg.env_id)
        env = gymnasium.make(target, **cfg.env_kwargs) if isinstance(target, str) else target(**cfg.env_kwargs)
    except Exception:  # noqa: BLE001 - _check_env reports why the env cannot be made
        return []
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        for _ in range(PROBE_STEPS):
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            if terminated or truncated:
                if key in info:
                    return []
                return [
                    f"--fitness info:{key}: the env's info at an episode's end has no {key!r} (it has: "
                    f"{', '.join(sorted(map(str, info))) or 'nothing'})"
                ]
    except Exception:  # noqa: BLE001 - the env's own error shows in training, with failure isolation
        return []
    finally:
        env.close()
    return []


def _check_mfpbt(cfg: Config, population: int, space: Mapping[str, Prior]) -> list[str]:
    """MF-PBT: periods that split the population, sync mode, and hyperparameters that may move apart from weights."""
    if cfg.selection != "mfpbt":
        return []
    problems = mfpbt.check(population, cfg.mfpbt_periods)
    if cfg.mode == "async":
        problems.append(
            "--selection mfpbt with --mode async: MF-PBT's sub-populations evolve at whole generations of the "
            "population and migration ranks every member at the same generation, which async mode never has; "
            "use --mode sync"
        )
    if cfg.ready_after:
        problems.append(
            f"--ready-after {cfg.ready_after} with --selection mfpbt: MF-PBT's slow sub-populations are its guard "
            "against early greed; drop --ready-after"
        )
    try:
        weights = parse_mutation_probs(cfg.mutation_probs) or default_mutation_probs(space)
    except MutationSpecError:
        return problems  # reported by _check_mutations
    network = [k for k in ("arch", "activation") if weights.get(k, 0) > 0]
    if network:
        problems.append(
            f"--selection mfpbt with mutation kind(s) {network}: a migrant from a faster sub-population takes its "
            "weights with another member's hyperparameters, which must not change the network; drop "
            "net_arch / activation_fn from the search space or --mutation-probs"
        )
    return problems


def _check_text_options(cfg: Config) -> list[str]:
    """--target-fitness, --time-limit and --wandb-project: text that must parse, or a package that must exist."""
    problems = []
    if cfg.target_fitness.strip():
        try:
            value = float(cfg.target_fitness)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            problems.append(f"--target-fitness {cfg.target_fitness!r}: expected a finite number, e.g. 195")
    if cfg.time_limit:
        try:
            parse_duration(cfg.time_limit)
        except ValueError as exc:
            problems.append(f"--time-limit {exc}")
    if cfg.wandb_project:
        try:
            importlib.import_module("wandb")
        except ImportError:
            problems.append(
                f"--wandb-project {cfg.wandb_project!r}: wandb is not installed (pip install 'evo-mpi[wandb]')"
            )
    return problems


def _check_device(cfg: Config) -> list[str]:
    """--device has a known form (whether a GPU is there is each rank's own check, after planning)."""
    problem = device_problem(cfg.device)
    if problem is not None:
        return [problem]
    if cfg.member and cfg.device != "cpu":
        return [
            f"--device {cfg.device} places the SB3 adapter's members; a custom --member places its own tensors "
            "(see examples/custom_trainer.py): drop --device"
        ]
    return []


def _check_env(
    env_id: str, kwargs: Mapping[str, Any], algo: str, factory: Callable[..., Any] | None = None
) -> list[str]:
    """Build the env once (cheap next to training) to check the id, the kwargs and the action space."""
    import gymnasium

    try:
        target = factory if factory is not None else resolve_env(env_id)
        if isinstance(target, str):
            gymnasium.spec(target)
    except Exception as exc:  # gymnasium and importlib raise several error types here
        return [f"--env-id {env_id!r} is not a registered gymnasium environment ({type(exc).__name__}: {exc})"]
    try:
        env = gymnasium.make(target, **kwargs) if isinstance(target, str) else target(**kwargs)
    except (gymnasium.error.DependencyNotInstalled, ImportError) as exc:
        extra = _missing_extra(target)
        if extra is None:
            return [f"--env-id {env_id!r} needs a package that is not installed ({exc})"]
        return [f"--env-id {env_id!r} needs the {extra} extra, which is not installed: pip install 'evo-mpi[{extra}]'"]
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


def _missing_extra(target: Any) -> str | None:
    """The evo-mpi extra that installs what a gymnasium env family needs (None: not one we know)."""
    import gymnasium

    if not isinstance(target, str):
        return None
    entry = str(gymnasium.spec(target).entry_point)
    for family, extra in (("box2d", "box2d"), ("mujoco", "mujoco")):
        if f"envs.{family}" in entry:
            return extra
    return None


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


def _check_mutations(cfg: Config, space: dict[str, Prior]) -> list[str]:
    """Problems with --mutation-probs, --mutate, the weight-mutation options and the architecture priors."""
    problems: list[str] = []
    try:
        given = parse_mutation_probs(cfg.mutation_probs)
    except MutationSpecError as exc:
        return [str(exc)]
    weights = given or default_mutation_probs(space)
    if not 0 < cfg.weight_mutation_fraction <= 1:
        problems.append(f"--weight-mutation-fraction must be in (0, 1], got {cfg.weight_mutation_fraction}")
    if not 0 < cfg.weight_mutation_sd < float("inf"):
        problems.append(f"--weight-mutation-sd must be positive and finite, got {cfg.weight_mutation_sd}")
    if cfg.mutate == "all" and cfg.explore == "pb2":
        problems.append(
            "--mutate all with --explore pb2: PB2 chooses for members that copied a winner; use --mutate exploited "
            "or --explore perturb"
        )
    network = [k for k in ("arch", "weights", "activation") if weights.get(k, 0) > 0]
    network_names = [n for n in MUTATED_APART if n in space]
    if (network or network_names) and cfg.member:
        problems.append(
            f"--member {cfg.member}: mutation kind(s) {network or network_names} change the SB3 adapter's networks; "
            "a custom member mutates hyperparameters only (drop them from --mutation-probs / --search-space)"
        )
    elif (network or network_names) and cfg.policy != "MlpPolicy":
        problems.append(
            f"--policy {cfg.policy}: architecture, activation and weight mutation (here {network or network_names}) "
            "work on MLP policies only; use --policy MlpPolicy or drop them"
        )
    arch = space.get("net_arch")
    if arch is not None and arch.kind == "arch":
        layers, nodes = arch.layers, (int(arch.low), int(arch.high))
        need_in = layers[0] <= len(cfg.net_arch) <= layers[1] and all(nodes[0] <= n <= nodes[1] for n in cfg.net_arch)
        if not need_in:
            problems.append(
                f"--net-arch {','.join(map(str, cfg.net_arch))}: every member starts from it, so it must lie in "
                f"net_arch={arch.spec()} ({layers[0]}-{layers[1]} layers of {nodes[0]}-{nodes[1]} nodes)"
            )
    if weights.get("arch", 0) > 0 and (arch is None or arch.kind != "arch"):
        shown = "nothing" if arch is None else f"net_arch={arch.spec()}"
        problems.append(
            f"--mutation-probs arch={weights['arch']} needs an arch prior for net_arch (e.g. --search-space "
            f"net_arch=arch:1:3:32:256), the search space has {shown}"
        )
    activation = space.get("activation_fn")
    if weights.get("activation", 0) > 0 and (activation is None or len(activation.choices) < 2):
        shown = "nothing" if activation is None else f"activation_fn={activation.spec()}"
        problems.append(
            f"--mutation-probs activation={weights['activation']} needs a choice of two or more activations "
            f"(e.g. --search-space activation_fn=choice:relu,tanh), the search space has {shown}"
        )
    return problems


def _check_start(cfg: Config, space: Mapping[str, Prior]) -> list[str]:
    """--start-hparams: every value names a searched hyperparameter and lies in its prior."""
    problems = []
    for name, value in sorted(cfg.start_hparams.items()):
        prior = space.get(name)
        if prior is None:
            problems.append(
                f"--start-hparams {name}={value!r}: {name} is not in the search space "
                f"(it has {', '.join(sorted(space)) or 'nothing'})"
            )
        elif not prior.holds(value):
            problems.append(f"--start-hparams {name}={value!r} lies outside its prior {name}={prior.spec()}")
    return problems


def _check_sb3_extras(cfg: Config, algo: algorithms.Algorithm | None) -> list[str]:
    """--schedules, --policy-kwargs and --model-kwargs: SB3 adapter options, checked against SB3's signatures."""
    given = [f"--{n.replace('_', '-')}" for n in ("schedules", "policy_kwargs", "model_kwargs") if getattr(cfg, n)]
    if cfg.member and given:
        return [f"{' and '.join(given)} configure the SB3 adapter; --member {cfg.member} builds its own model"]
    if algo is None or not given:
        return []
    problems = []
    for name, kind in sorted(cfg.schedules.items()):
        if name not in algo.schedulable:
            problems.append(f"--schedules {name}={kind!r}: {cfg.algo} can schedule {', '.join(algo.schedulable)} only")
        elif kind != "linear":
            problems.append(f"--schedules {name}={kind!r}: unknown schedule (known: linear)")
    own = {"net_arch": "--net-arch or net_arch in --search-space", "activation_fn": "activation_fn in --search-space"}
    for name in sorted(set(cfg.policy_kwargs) & set(own)):
        problems.append(f"--policy-kwargs {name}: set it with {own[name]}")
    try:
        json.dumps([cfg.policy_kwargs, cfg.model_kwargs], allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"--policy-kwargs / --model-kwargs: not JSON-serialisable ({exc})")
    if cfg.model_kwargs:
        managed = {"policy", "env", "seed", "device", "verbose", "policy_kwargs", "n_steps", "buffer_size"}
        managed.add("tensorboard_log")  # evo_mpi writes each member's TensorBoard log itself
        params = {p for p in inspect.signature(algo.model_class()).parameters if not p.startswith("_")}
        accepted = params - managed - set(algo.hparams)
        for name in sorted(set(cfg.model_kwargs) - accepted):
            why = "has its own option" if name in managed or name in algo.hparams else "is not one it takes"
            takes = ", ".join(sorted(accepted))
            problems.append(f"--model-kwargs {name}: {cfg.algo}'s {name} {why} (it takes {takes})")
    return problems
