"""The configuration's schema: one frozen dataclass, a docstring (help text) per field.

Every other home of the configuration reads this one: the CLI
(:mod:`.cli`) mirrors its fields 1:1 as flags, the file format
(:mod:`.fileformat`) as TOML keys, :mod:`.validation` checks its values and
:mod:`.resume` compares it with a run's saved options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import algorithms
from ..selection import SELECTIONS
from ..target import TARGET_METRICS

#: Selection rules (see :mod:`evo_mpi.selection`) and explore rules.
SELECTION_CHOICES = (*SELECTIONS, "mfpbt")


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
    mode: str = _f(
        "sync",
        "sync: generations in lockstep (bit-reproducible on any layout); async: no barrier, the population's "
        "budget goes to whoever is free (see the README).",
        choices=("sync", "async"),
    )
    agents_per_rank: int = _f(1, "Members per MPI rank; population = ranks x agents per rank.")
    backend: str = _f("p2p", "How weights move: p2p (Send/Recv) or collective (Bcast).", choices=("p2p", "collective"))
    selection: str = _f(
        "truncation",
        "Exploit rule: truncation (bottom q copy top q), wta (all copy the best), tournament (each member copies "
        "the best of a random tournament), ttest (copy a random other member if Welch's t-test says it is better), "
        "none (no exploit: random search), mfpbt (MF-PBT: sub-populations evolving at --mfpbt-periods, with "
        "asymmetric migration; sync mode).",
        choices=SELECTION_CHOICES,
    )
    mfpbt_periods: tuple[int, ...] = _f(
        (1, 10, 25, 50),
        "Selection mfpbt: comma-separated generations between evolution steps, one per sub-population (fastest "
        "first); the population splits into that many equal sub-populations of contiguous member ids, >= 4 each.",
    )
    truncation_fraction: float = _f(0.25, "Truncation quantile q, 0 < q <= 0.5.")
    tournament_size: int = _f(3, "Contestants per tournament (selection tournament), >= 2.")
    elitism: bool = _f(False, "Keep the best member unchanged (selection tournament).")
    ttest_alpha: float = _f(0.05, "Significance level of the t-test (selection ttest), 0 < alpha < 1.")
    ready_after: int = _f(
        0,
        "Burn-in: a member neither copies nor is copied before it has trained this many env steps since its "
        "last exploit (since the start for the first); 0: always ready.",
    )
    exploit_margin_std: float = _f(
        0.0,
        "Exploit margin: a loser copies its donor only if the donor's fitness beats its own by more than "
        "max(this x sd, --exploit-margin-abs x abs(donor's fitness)); sd: the population's fitness standard "
        "deviation without its worst fifth. A loser that does not clear it keeps its weights and hyperparameters "
        "(history: held). With both 0 any strict improvement copies: ties never do. Not with ttest (its test is "
        "the margin).",
    )
    exploit_margin_abs: float = _f(
        0.0, "Exploit margin's relative part: a share of abs(donor's fitness) (see --exploit-margin-std)."
    )
    explore: str = _f(
        "perturb",
        "Explore rule for members that exploited: perturb (multiply or resample, PBT) or pb2 (GP-UCB bandit "
        "over past fitness changes, Population-Based Bandits).",
        choices=EXPLORE_CHOICES,
    )
    perturb_factors: tuple[float, ...] = _f((0.8, 1.2), "Comma-separated explore multipliers.")
    resample_probability: float = _f(0.25, "Probability of resampling a hyperparameter from its prior.")
    mutation_probs: str = _f(
        "",
        "Relative weights of the mutation kinds a mutating member draws one of, e.g. "
        "none=0.1,hparams=0.5,arch=0.2,weights=0.1,activation=0.1 (hparams: the explore rule; arch: one change "
        "of the net_arch prior's architecture; weights: Gaussian noise on a fraction of the weights; activation: "
        "another activation_fn). Empty: hparams=1, plus arch=1 / activation=1 when net_arch / activation_fn is "
        "searched.",
    )
    mutate: str = _f(
        "exploited",
        "Which members mutate after a generation (async: interval): exploited (those that copied a winner, PBT's "
        "rule) or all (AgileRL's rule).",
        choices=("exploited", "all"),
    )
    weight_mutation_fraction: float = _f(0.1, "Mutation kind weights: share of each weight matrix that changes.")
    weight_mutation_sd: float = _f(
        0.1, "Mutation kind weights: noise standard deviation (super mutations 10x; resets draw N(0, sd))."
    )
    fitness: str = _f(
        "return",
        "What fitness measures: return (the mean episode return) or info:KEY, the true objective: the mean over "
        "the fitness window of info[KEY] at each episode's end (e.g. info:is_success). The t-test and the final "
        "pick then use it too; history keeps both it and the return.",
    )
    eval_episodes: int = _f(0, "Deterministic evaluation episodes for fitness; 0 = mean of the last training episodes.")
    fitness_window: int = _f(10, "Completed training episodes averaged for fitness when eval-episodes is 0.")
    final_eval_episodes: int = _f(
        10,
        "Final pick: deterministic episodes (fresh seeds no training or fitness episode uses) on which each of "
        "the top final-eval-top members by final fitness is evaluated at the end; the best mean is best.zip. "
        "0 = best.zip is the member with the best last training fitness. May change on resume.",
    )
    final_eval_top: int = _f(
        4, "Final pick: candidates evaluated, the top min(K, population) members by final fitness; >= 1."
    )
    n_envs: int = _f(8, "Vectorised envs per member.")
    n_steps: int = _f(256, "Rollout length per env (on-policy algorithms: PPO, A2C).")
    buffer_size: int = _f(1_000_000, "Replay buffer transitions per member (off-policy algorithms).")
    copy_replay_buffer: bool = _f(
        False, "On exploit, also copy the winner's replay buffer (off-policy); by default each member keeps its own."
    )
    share_experience: bool = _f(
        False,
        "Off-policy algorithms: after every generation (async: interval) every member's new transitions are added "
        "to every other member's replay buffer (each keeps its own buffer of --buffer-size, oldest out first).",
    )
    policy: str = _f("MlpPolicy", "SB3 policy class name.")
    policy_kwargs: dict[str, Any] = _f(
        {},
        'Further keyword arguments of the SB3 policy, as a JSON object, e.g. {"log_std_init": -2, "ortho_init": '
        "false} (net_arch and activation_fn have their own options).",
    )
    model_kwargs: dict[str, Any] = _f(
        {},
        'Further keyword arguments of the SB3 algorithm, as a JSON object, e.g. {"use_sde": true}; searched '
        "hyperparameters, --n-steps and --buffer-size have their own options.",
    )
    zoo: bool = _f(
        False,
        "Start from RL Zoo's tuned hyperparameters for --algo on --env-id (the installed rl_zoo3 package; "
        "evo-mpi[zoo]): its env layout, normalisation, network and fixed settings, member 0 at its values and "
        "every searched prior narrowed around them (see the README). Options you give win.",
    )
    start_hparams: dict[str, Any] = _f(
        {},
        "Values member 0 starts from instead of drawing them from the priors, as a JSON object, e.g. "
        '{"learning_rate": 0.0003}; every other member draws. Each must lie in its prior.',
    )
    schedules: dict[str, str] = _f(
        {},
        'Hyperparameters applied as a schedule, as a JSON object: {"learning_rate": "linear"} decays the value '
        "linearly to 0 over the run's steps per member (explore changes the starting value). SB3 adapter: "
        "learning_rate, and clip_range for PPO.",
    )
    member: str = _f(
        "",
        "Member factory module:function for training code that is not SB3 (see evo_mpi.protocol); empty: the "
        "SB3 adapter with --algo.",
    )
    net_arch: tuple[int, ...] = _f((64, 64), "Comma-separated hidden layer sizes of the policy and value networks.")
    torch_threads: int = _f(1, "Torch threads per rank; 0 = cores on the node / ranks on the node.")
    device: str = _f(
        "cpu",
        "Torch device of the SB3 members: cpu; cuda (node-local rank r on visible GPU r mod n, honouring "
        "CUDA_VISIBLE_DEVICES; none visible is an error); cuda:N (every rank on visible GPU N); auto (cuda where a "
        "GPU is visible, else cpu). State moves and is checkpointed as CPU tensors, so a run may resume on "
        "another device. May change on resume.",
    )
    deterministic: bool = _f(
        False,
        "Ask torch for deterministic algorithms (torch.use_deterministic_algorithms, cuDNN autotuning off, "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8 where unset) so that GPU runs of the same seed can repeat, at some speed "
        "cost; an op with no deterministic version then fails its member with torch's error. CPU runs are "
        "reproducible without it. May change on resume.",
    )
    search_space: dict[str, str] = _f(
        {},
        "Search-space overrides NAME=PRIOR, e.g. learning_rate=loguniform:1e-5:1e-3, "
        "batch_size=choice:64,128, n_epochs=int:3:10, gamma=const:0.99 (repeatable).",
    )
    wandb_project: str = _f(
        "", "Weights & Biases project to log to (rank 0, one W&B run per PBT run); empty: off. Needs evo-mpi[wandb]."
    )
    wandb_entity: str = _f("", "Weights & Biases entity (user or team); empty: your default.")
    run_dir: str = _f("", "Output directory (default runs/<env>-<timestamp>); an existing run there is resumed.")
    max_failures: int = _f(
        -1,
        "Member failures (an exception while a member trains or measures fitness: it copies a donor and goes on) "
        "the run tolerates; one more ends it (exit 3), as does every member failing at once. -1: the population "
        "size. May change on resume.",
    )
    checkpoint_every: int = _f(1, "Write a checkpoint every N generations (and always at the end or on a stop).")
    keep_checkpoints: int = _f(2, "Complete checkpoints kept on disk (older ones are pruned).")
    time_limit: str = _f(
        "",
        "Wall-clock limit of this launch: seconds or SLURM's [D-]HH:MM:SS. The run ends after the last generation "
        "that fits, the final evaluation counted, with final models written (exit 0). Empty: none.",
    )
    target_fitness: str = _f(
        "",
        "End the run (final models and best.zip written, exit 0) once the target metric reaches this fitness; "
        "checked after every generation (async: every published record). Empty: spend the whole budget.",
    )
    target_metric: str = _f(
        "best",
        "What --target-fitness is compared with: best (the best member's fitness) or mean (the population's mean; "
        "never reached while a member's fitness is not finite).",
        choices=TARGET_METRICS,
    )

    @property
    def mutation_weights(self) -> dict[str, float]:
        """``mutation_probs`` parsed, or its default for this search space."""
        from ..arch import default_mutation_probs, parse_mutation_probs
        from ..space import parse_space

        return parse_mutation_probs(self.mutation_probs) or default_mutation_probs(parse_space(self.space_specs))

    @property
    def objective_key(self) -> str | None:
        """``--fitness info:KEY``'s KEY (None: fitness is the return)."""
        return self.fitness.removeprefix("info:") if self.fitness.startswith("info:") else None

    @property
    def target(self) -> float | None:
        """``target_fitness`` as a number (None: no target)."""
        return float(self.target_fitness) if self.target_fitness.strip() else None

    @property
    def time_limit_s(self) -> float | None:
        """``time_limit`` in seconds (None: no limit)."""
        return parse_duration(self.time_limit) if self.time_limit else None

    @property
    def space_specs(self) -> dict[str, str]:
        """The algorithm's default space with the user's overrides applied."""
        if self.member:  # a custom member has no default space
            return dict(self.search_space)
        specs = dict(algorithms.get(self.algo).default_space) if self.algo in algorithms.names() else {}
        specs.update(self.search_space)
        return specs

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-friendly form; ``search_space`` is the full resolved space."""
        out = dataclasses.asdict(self)
        for name in TUPLE_FIELDS:
            out[name] = list(getattr(self, name))
        out["search_space"] = self.space_specs
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def choices_of(name: str) -> tuple[str, ...]:
    """The values option ``name`` accepts; algorithms are looked up when asked, so late registrations count."""
    choices = FIELDS[name].metadata["choices"]
    return tuple(choices() if callable(choices) else choices)


#: Options that may differ when a run is resumed: they change the layout,
#: bookkeeping or the final pick, never the history.
RESUME_OVERRIDABLE = (
    "agents_per_rank",
    "backend",
    "torch_threads",
    "device",
    "deterministic",
    "checkpoint_every",
    "keep_checkpoints",
    "max_failures",
    "run_dir",
    "time_limit",
    "final_eval_episodes",
    "final_eval_top",
    "wandb_project",
    "wandb_entity",
)


#: Options given as a JSON object (``--env-kwargs '{"g": 9.81}'``, a table in TOML).
DICT_FIELDS = ("env_kwargs", "policy_kwargs", "model_kwargs", "start_hparams", "schedules")

#: Comma-separated options and their element types.
TUPLE_FIELDS: dict[str, type] = {"perturb_factors": float, "net_arch": int, "mfpbt_periods": int}


def parse_tuple(name: str, cast: type) -> Any:
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


def parse_json_object(name: str) -> Any:
    """An argparse type reading a JSON object for the option ``name`` (one of :data:`DICT_FIELDS`)."""
    flag = "--" + name.replace("_", "-")

    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"invalid {flag} {text!r}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f'invalid {flag} {text!r}: expected a JSON object like {{"g": 9.81}}')
        return value

    return parse


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or SLURM's ``[D-]HH:MM:SS`` (also ``H:MM:SS``, ``MM:SS``).

    Raises:
        ValueError: naming the text, for anything else or a negative or zero duration.

    """
    raw = text.strip()
    try:
        days = 0
        rest = raw
        if "-" in raw:
            head, _, rest = raw.partition("-")
            days = int(head)
        if ":" in rest:
            parts = [int(p) for p in rest.split(":")]
            if len(parts) > 3 or any(p < 0 for p in parts) or any(p >= 60 for p in parts[1:]):
                raise ValueError
            while len(parts) < 3:
                parts.insert(0, 0)
            seconds = float(((days * 24 + parts[0]) * 60 + parts[1]) * 60 + parts[2])
        elif days:  # D-HH
            seconds = float((days * 24 + int(rest)) * 3600)
        else:
            seconds = float(rest)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (seconds, or [D-]HH:MM:SS)") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} must be a positive, finite duration")
    return seconds
