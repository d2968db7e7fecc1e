"""The SB3 adapter: one member as a stable-baselines3 model and its envs (per-algorithm parts: evo_mpi.algorithms).

A :class:`Member` owns one SB3 model and its envs. Its envs keep running
across generations and exploits (an episode in flight continues under new
weights and counts once, when it ends); its training streams depend only on
(seed, member, generation). It trains, computes fitness, and applies
hyperparameters so that they really reach the algorithm. What moves and
persists (its weights plus optimizer state as one contiguous byte buffer, the
state besides them, shared experience, checkpoints) is the
:class:`~evo_mpi.sb3_state.SB3State` part it inherits; what rebuilds its
running episodes on resume is :mod:`evo_mpi.sb3_episodes`.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from . import algorithms, netmorph, seeding
from .algorithms._sb3 import Linear, optimizers
from .arch import WeightNoise
from .config import Config
from .episodes import OBJECTIVE, EpisodeRecorder
from .fitness import ObjectiveMissing
from .resolvers import resolve_env
from .sb3_episodes import EPISODE_KEYS as EPISODE_KEYS  # re-exported: where tests and callers look
from .sb3_state import SB3State
from .space import MUTATED_APART, Value, parse_arch
from .torchstate import init_optimizer_state


def make_env(cfg: Config, n_envs: int, seed: int, factory: Callable[..., Any] | None = None) -> VecEnv:
    """The member's vectorised env; ``factory`` overrides env_id.

    Each env is Monitor-wrapped (episode returns are raw) and recorded
    (:class:`~evo_mpi.episodes.EpisodeRecorder`), so a checkpoint can rebuild its running episode.
    """
    target = factory if factory is not None else resolve_env(cfg.env_id)
    recorder = functools.partial(EpisodeRecorder, info_key=cfg.objective_key)
    return make_vec_env(target, n_envs=n_envs, seed=seed, env_kwargs=dict(cfg.env_kwargs), wrapper_class=recorder)


class _StopCallback(BaseCallback):
    """Ends ``learn()`` at the next env step once ``should_stop()`` is true."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.should_stop = should_stop

    def _on_step(self) -> bool:
        return not self.should_stop()


class Member(SB3State):
    """One population member: an SB3 model, its training env and optional eval env.

    ``device`` is where its networks live (``cpu`` or ``cuda:K``); what it packs
    for an exploit and what it checkpoints are CPU bytes and CPU tensors either
    way, and load onto whatever device the receiving member is on.
    """

    def __init__(
        self,
        member_id: int,
        cfg: Config,
        hparams: Mapping[str, Value],
        tb_dir: str | None,
        env_factory: Callable[..., Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self.id = member_id
        self.cfg = cfg
        self.env_factory = env_factory
        seed = seeding.derive_seed(cfg.seed, seeding.INIT, member_id)
        set_random_seed(seed)
        env = make_env(cfg, cfg.n_envs, seed, env_factory)
        self.normalize: VecNormalize | None = None
        if cfg.normalize:
            env = self.normalize = VecNormalize(env, gamma=float(hparams.get("gamma", 0.99)))
        self.env = env
        self.eval_env: VecEnv | None = None
        if cfg.eval_episodes > 0:
            self.eval_env = make_env(cfg, 1, seed, env_factory)
            if cfg.normalize:  # evaluate on raw rewards with the training statistics, frozen
                self.eval_env = VecNormalize(self.eval_env, training=False, norm_reward=False)
        self.algorithm = algorithms.get(cfg.algo)
        algo: type[BaseAlgorithm] = self.algorithm.model_class()
        #: Hidden layer sizes and activation of the member's networks now (``net_arch`` / ``activation_fn``).
        self.arch: tuple[int, ...] = parse_arch(hparams["net_arch"]) if "net_arch" in hparams else cfg.net_arch
        self.activation = str(hparams.get("activation_fn", self.algorithm.activation))
        policy_kwargs: dict[str, Any] = {**cfg.policy_kwargs, "net_arch": list(self.arch)}
        if "activation_fn" in hparams:
            policy_kwargs["activation_fn"] = netmorph.ACTIVATION_CLASSES[self.activation]
        kwargs: dict[str, Any] = {**cfg.model_kwargs, "policy_kwargs": policy_kwargs, "seed": seed, "device": device}
        self.off_policy = self.algorithm.off_policy
        if self.off_policy:
            kwargs["buffer_size"] = cfg.buffer_size
        else:
            kwargs["n_steps"] = cfg.n_steps
        accepted = inspect.signature(algo).parameters
        kwargs.update({k: v for k, v in hparams.items() if k in accepted})  # the rest is applied below
        self.model = algo(cfg.policy, self.env, verbose=0, **kwargs)
        # SB3 measures progress against the end of the current learn() call; PBT calls learn() once per
        # generation, so without this epsilon (and any schedule) would restart or finish every generation.
        self.model._update_current_progress_remaining = self._progress_remaining  # type: ignore[method-assign,assignment]
        init_optimizer_state(optimizers(self.model))
        self.hparams: dict[str, Value] = {}
        self.apply_hparams(hparams)
        if tb_dir is not None:
            self.model.set_logger(configure(tb_dir, ["tensorboard"]))
        else:
            self.model.set_logger(configure(None, []))
        self.last_eval_returns: list[float] = []
        self._experience_from = 0  # --share-experience: step count where this member's new transitions begin
        #: Set when training produced non-finite weights (the member then has NaN fitness).
        self.diverged = False
        #: After :meth:`restore`: how the running episodes were rebuilt (envs, steps replayed, ms, exact).
        self.rebuild_stats: dict[str, Any] | None = None
        self._flat = None

    # -- hyperparameters -------------------------------------------------------
    def apply_hparams(self, hparams: Mapping[str, Value]) -> None:
        """Make every hyperparameter take effect from the next training step.

        A new ``net_arch`` or ``activation_fn`` rebuilds the networks from the
        current ones (:meth:`morph`), so it comes first: the others then reach
        the new optimizers.
        """
        arch, activation = self._arch_of(hparams)
        if (arch, activation) != (self.arch, self.activation):
            self.morph(arch, activation)
        table = self.algorithm.appliers
        for name, value in hparams.items():
            if name in MUTATED_APART:
                continue
            if name not in table:
                raise KeyError(f"unknown {self.cfg.algo} hyperparameter {name!r}")
            table[name](self.model, Linear(float(value)) if name in self.cfg.schedules else value)
        if self.normalize is not None and "gamma" in hparams:
            # VecNormalize discounts the return it normalises rewards by with its own copy of gamma
            self.normalize.gamma = float(hparams["gamma"])
        self.hparams = dict(hparams)
        self._sync_progress()

    # -- architecture ------------------------------------------------------------
    def _arch_of(self, hparams: Mapping[str, Value]) -> tuple[tuple[int, ...], str]:
        arch = parse_arch(hparams["net_arch"]) if "net_arch" in hparams else self.arch
        return arch, str(hparams.get("activation_fn", self.activation))

    def morph(self, arch: tuple[int, ...], activation: str, carry: bool = True) -> None:
        """Rebuild the policy with ``arch`` hidden layers and ``activation``, keeping what it learned.

        With ``carry`` the new networks take the old weights and optimizer
        state (:func:`evo_mpi.netmorph.carry_over`: growth leaves every output
        unchanged under ReLU-free node growth or an identity layer after ReLU);
        without, they are freshly initialised (a state is about to be loaded).
        New weights are drawn from a stream of (seed, member, step count), so
        any rank layout draws the same ones.
        """
        model = self.model
        old_policy, old_opts = model.policy, optimizers(model)
        kwargs = dict(model.policy_kwargs)
        kwargs["net_arch"] = list(arch)
        kwargs["activation_fn"] = netmorph.ACTIVATION_CLASSES[activation]
        model.policy_kwargs = kwargs
        set_random_seed(seeding.derive_seed(self.cfg.seed, seeding.MORPH, self.id, self.timesteps))
        extra = {} if self.off_policy else {"use_sde": model.use_sde}
        policy = model.policy_class(model.observation_space, model.action_space, model.lr_schedule, **extra, **kwargs)
        model.policy = policy.to(model.device)
        if hasattr(model, "_create_aliases"):  # SAC/TD3/DDPG/DQN keep actor, critic, q_net aliases
            model._create_aliases()
        new_opts = optimizers(model)
        init_optimizer_state(new_opts)
        if carry:
            pairs = [(o, n) for o, n in zip(old_opts, new_opts, strict=True) if o is not n]
            netmorph.carry_over(old_policy, model.policy, self.arch, arch, pairs)
        self.arch, self.activation = tuple(arch), activation
        self._flat = None

    def match_layout(self, hparams: Mapping[str, Value]) -> None:
        """Take the architecture of a member with ``hparams`` (fresh weights), so its state can be loaded."""
        arch, activation = self._arch_of(hparams)
        if (arch, activation) != (self.arch, self.activation):
            self.morph(arch, activation, carry=False)

    def mutate_weights(self, noise: WeightNoise) -> int:
        """Gaussian noise on a fraction of the trained networks' weights; returns how many entries changed."""
        return netmorph.add_weight_noise(self.model.policy, noise)

    # -- schedules -------------------------------------------------------------
    @property
    def run_timesteps(self) -> int:
        """The member's whole training budget: what SB3's progress-driven schedules count against."""
        return self.cfg.generations * self.cfg.steps_per_generation

    def _progress_remaining(self, num_timesteps: int, total_timesteps: int = 0) -> None:
        """SB3's progress hook, measured against the run's budget, not ``total_timesteps`` (the ``learn()`` call's).

        Clamped at 0: in async mode a member may train more than its share of the budget.
        """
        self.model._current_progress_remaining = max(0.0, 1.0 - float(num_timesteps) / float(self.run_timesteps))

    def _sync_progress(self) -> None:
        """Set SB3's progress (and DQN's epsilon, which follows it) from the member's step count now."""
        self._progress_remaining(self.timesteps)
        schedule = getattr(self.model, "exploration_schedule", None)
        if schedule is not None:
            self.model.exploration_rate = schedule(self.model._current_progress_remaining)  # type: ignore[attr-defined]

    # -- training and fitness --------------------------------------------------
    @property
    def timesteps(self) -> int:
        """Env steps this member has trained, across generations and exploits."""
        return int(self.model.num_timesteps)

    def set_timesteps(self, timesteps: int) -> None:
        """Set the step count (replay of an async lineage: a slot's count is its own, not its lineage's)."""
        self.model.num_timesteps = int(timesteps)
        self._sync_progress()

    def train(self, steps: int, generation: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Train ``steps`` env steps of this generation, continuing the member's running episodes.

        Global RNGs (torch's, numpy's, the action space's) are reseeded from
        (seed, member, generation); the envs are not reset: each continues its
        own stream and its episode in flight, which belong to the member slot
        (seeded once, at creation). So the result does not depend on which
        other members share the process, or on a resume in between.
        ``should_stop()`` is called at every env step and after every optimizer step (the async engine
        serves snapshot requests from it); training stops at the next env step once it is true.
        An error raised while the weights are non-finite (a diverged loss) marks
        the member as diverged instead of ending the run; any other error propagates.
        """
        if self.diverged:
            return
        set_random_seed(seeding.derive_seed(self.cfg.seed, seeding.TRAIN, self.id, generation))
        # off-policy random actions (learning_starts, DQN's epsilon) come from the action space's own stream
        self.model.action_space.seed(seeding.derive_seed(self.cfg.seed, seeding.ACTION, self.id, generation))
        self._sync_progress()

        def poll(*_: Any) -> None:
            should_stop()  # a stop takes effect at the next env step; this call lets the async engine serve

        hooks = [opt.register_step_post_hook(poll) for opt in optimizers(self.model)]
        try:
            self.model.learn(steps, reset_num_timesteps=False, callback=_StopCallback(should_stop))
        except (ValueError, RuntimeError):
            if self.weights_finite():
                raise
        finally:
            for hook in hooks:
                hook.remove()
        self.diverged = not self.weights_finite()

    def recover(self, step: int) -> None:
        """After a failure in ``step`` (generation or interval): fresh envs, so a broken env state goes.

        The training envs (and the eval env) are closed and built anew from a
        seed of (seed, member, step), then reset at once, so the new episodes
        are checkpointed like any other; VecNormalize statistics stay the
        member's. The weights are left as they are: the engine has the member
        copy a donor at the next decision.
        """
        for old in (self.env, self.eval_env):
            if old is not None:
                try:
                    old.close()
                except Exception:  # noqa: BLE001, S110 - a broken env may fail to close too; it is dropped anyway
                    pass
        seed = seeding.derive_seed(self.cfg.seed, seeding.RECOVER, self.id, step)
        env: VecEnv = make_env(self.cfg, self.cfg.n_envs, seed, self.env_factory)
        if self.normalize is not None:
            stats = self.normalize
            env = self.normalize = VecNormalize(env, gamma=float(stats.gamma))
            env.obs_rms, env.ret_rms = stats.obs_rms, stats.ret_rms
        self.env = env
        if self.eval_env is not None:
            self.eval_env = make_env(self.cfg, 1, seed, self.env_factory)
            if self.cfg.normalize:
                self.eval_env = VecNormalize(self.eval_env, training=False, norm_reward=False)
        model = self.model
        model.set_env(env)
        model._last_obs = env.reset()  # type: ignore[assignment]
        model._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
        if self.normalize is not None:
            model._last_original_obs = self.normalize.get_original_obs()  # type: ignore[assignment]

    def weights_finite(self) -> bool:
        """Whether every policy parameter is finite."""
        return all(bool(torch.isfinite(p).all()) for p in self.model.policy.parameters())

    def _window(self) -> list[dict[str, Any]]:
        return list(self.model.ep_info_buffer or [])[-self.cfg.fitness_window :]

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """Scores and lengths of the last ``fitness_window`` completed training episodes.

        The scores are the returns, or with ``--fitness info:KEY`` each episode's ``info[KEY]`` (NaN: absent).
        """
        buf = self._window()
        key = "r" if self.cfg.objective_key is None else OBJECTIVE
        return [float(e.get(key, math.nan)) for e in buf], [float(e["l"]) for e in buf]

    def episode_returns(self) -> list[float]:
        """The returns of the episodes :meth:`episode_stats` scores."""
        return [float(e["r"]) for e in self._window()]

    def set_episode_stats(
        self, returns: list[float], lengths: list[float], episode_returns: list[float] | None = None
    ) -> None:
        """Replace the episode statistics (after an exploit, or on resume).

        ``returns`` are :meth:`episode_stats`'s scores; with ``--fitness info:KEY`` the objective's samples,
        and ``episode_returns`` the returns beside them.
        """
        if self.cfg.objective_key is None:
            episodes = [{"r": r, "l": ln, "t": 0.0} for r, ln in zip(returns, lengths, strict=True)]
        else:
            rets = episode_returns if episode_returns is not None else [math.nan] * len(returns)
            episodes = [
                {"r": r, "l": ln, "t": 0.0, OBJECTIVE: o} for o, ln, r in zip(returns, lengths, rets, strict=True)
            ]
        self.model.ep_info_buffer = collections.deque(episodes, maxlen=self.model._stats_window_size)
        if self.model.ep_success_buffer is None:  # learn() creates both only when ep_info_buffer is None
            self.model.ep_success_buffer = collections.deque(maxlen=self.model._stats_window_size)

    def fitness(self, generation: int) -> float:
        """Mean of the last training episodes, or of deterministic eval episodes (NaN if diverged)."""
        if self.diverged:
            return math.nan
        if self.eval_env is None:
            scores, _ = self.episode_stats()
            if self.cfg.objective_key is not None:
                return self._objective(scores)
            return float(np.mean(scores)) if scores else math.nan
        if isinstance(self.eval_env, VecNormalize) and self.normalize is not None:
            self.eval_env.obs_rms = copy.deepcopy(self.normalize.obs_rms)
        self.eval_env.seed(seeding.derive_seed(self.cfg.seed, seeding.EVAL, self.id, generation))
        rewards, _ = evaluate_policy(
            self.model,
            self.eval_env,
            n_eval_episodes=self.cfg.eval_episodes,
            deterministic=True,
            return_episode_rewards=True,
            warn=False,
        )
        self.last_eval_returns = [float(r) for r in rewards]  # type: ignore[union-attr]
        return float(np.mean(self.last_eval_returns))

    def _objective(self, scores: list[float]) -> float:
        """The mean of the window's ``info[KEY]`` samples (episodes without it left out).

        Raises:
            ObjectiveMissing: when episodes have ended and none of this member's envs ever had the key.

        """
        finite = [s for s in scores if math.isfinite(s)]
        if finite:
            return float(np.mean(finite))
        recorders = self._episodes().recorders()
        if scores and not any(r.key_seen for r in recorders):
            seen = next((r.missing_in for r in recorders if r.missing_in is not None), [])
            raise ObjectiveMissing(
                f"--fitness info:{self.cfg.objective_key}: {len(scores)} episode(s) ended and no final info had "
                f"{self.cfg.objective_key!r} (it has: {', '.join(seen) or 'nothing'})"
            )
        return math.nan

    # -- running episodes ------------------------------------------------------
    @property
    def max_episode_steps(self) -> int | None:
        """The env's time limit in steps (its spec's ``max_episode_steps``), if it has one."""
        return self._episodes().max_episode_steps

    # -- outputs ---------------------------------------------------------------
    def log(self, fitness: float, hparams: Mapping[str, Value], parent: int | None) -> None:
        """Write PBT scalars next to SB3's own in this member's TensorBoard dir."""
        logger = self.model.logger
        returns = self.episode_returns()
        logger.record("pbt/fitness", fitness)
        if returns:
            logger.record("pbt/episode_return", float(np.mean(returns)))
        if self.cfg.objective_key is not None:
            logger.record(f"pbt/objective/{self.cfg.objective_key}", fitness)
        logger.record("pbt/exploited", 0 if parent is None else 1)
        for name, value in hparams.items():
            if isinstance(value, (int, float)):
                logger.record(f"hparams/{name}", float(value))
        if "net_arch" in hparams:  # the architecture the generation trained with, as numbers
            sizes = parse_arch(hparams["net_arch"])
            logger.record("arch/layers", len(sizes))
            logger.record("arch/hidden_nodes", sum(sizes))
        logger.dump(step=self.timesteps)

    def save(self, path: str) -> None:
        """Save as an SB3 ``.zip`` loadable with ``<Algo>.load`` (e.g. ``PPO.load``)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.model.save(path, exclude=["_update_current_progress_remaining"])

    def save_normalization(self, path: str) -> bool:
        """Save the VecNormalize statistics (``VecNormalize.load(path, env)``); False when not normalising."""
        if self.normalize is None:
            return False
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.normalize.save(path)
        return True

    def close(self) -> None:
        """Release envs and the TensorBoard writer."""
        self.model.logger.close()
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()
