"""The SB3 adapter: the only code that touches stable-baselines3 internals.

A :class:`Member` owns one SB3 model and its envs. It trains with a random
stream that depends only on (seed, member, generation), computes fitness,
applies hyperparameters so that they really reach the algorithm, and packs
its weights plus optimizer state into one contiguous byte buffer.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import FloatSchedule, set_random_seed, update_learning_rate

from . import seeding
from .config import Config
from .space import Value


def _set_learning_rate(model: BaseAlgorithm, value: Value) -> None:
    # SB3 reads lr through lr_schedule, rebuilt from learning_rate at set-up.
    model.learning_rate = float(value)
    model._setup_lr_schedule()
    update_learning_rate(model.policy.optimizer, float(value))


def _set_clip_range(model: BaseAlgorithm, value: Value) -> None:
    # PPO calls self.clip_range(progress) in train(): it must stay a schedule.
    model.clip_range = FloatSchedule(float(value))  # type: ignore[attr-defined]


def _set_buffer_float(name: str) -> Callable[[BaseAlgorithm, Value], None]:
    # gamma / gae_lambda are copied into the rollout buffer at set-up; GAE reads the buffer's copy.
    def apply(model: BaseAlgorithm, value: Value) -> None:
        setattr(model, name, float(value))
        setattr(model.rollout_buffer, name, float(value))  # type: ignore[attr-defined]

    return apply


def _set_attr(name: str, cast: Callable[[Any], Any]) -> Callable[[BaseAlgorithm, Value], None]:
    # Read directly from the model in PPO.train() on every call.
    def apply(model: BaseAlgorithm, value: Value) -> None:
        setattr(model, name, cast(value))

    return apply


#: How each PPO hyperparameter is made to take effect.
PPO_APPLY: dict[str, Callable[[BaseAlgorithm, Value], None]] = {
    "learning_rate": _set_learning_rate,
    "clip_range": _set_clip_range,
    "gamma": _set_buffer_float("gamma"),
    "gae_lambda": _set_buffer_float("gae_lambda"),
    "ent_coef": _set_attr("ent_coef", float),
    "vf_coef": _set_attr("vf_coef", float),
    "max_grad_norm": _set_attr("max_grad_norm", float),
    "n_epochs": _set_attr("n_epochs", int),
    "batch_size": _set_attr("batch_size", int),
}


class _StopCallback(BaseCallback):
    """Ends ``learn()`` at the next env step once ``should_stop()`` is true."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.should_stop = should_stop

    def _on_step(self) -> bool:
        return not self.should_stop()


class Member:
    """One population member: an SB3 PPO model, its training env and optional eval env."""

    def __init__(self, member_id: int, cfg: Config, hparams: Mapping[str, Value], tb_dir: str | None) -> None:
        self.id = member_id
        self.cfg = cfg
        seed = seeding.derive_seed(cfg.seed, seeding.INIT, member_id)
        set_random_seed(seed)
        self.env = make_vec_env(cfg.env_id, n_envs=cfg.n_envs, seed=seed)
        self.eval_env = make_vec_env(cfg.env_id, n_envs=1, seed=seed) if cfg.eval_episodes > 0 else None
        self.model = PPO(
            cfg.policy,
            self.env,
            n_steps=cfg.n_steps,
            policy_kwargs={"net_arch": list(cfg.net_arch)},
            seed=seed,
            device="cpu",
            verbose=0,
            **hparams,  # type: ignore[arg-type]
        )
        self.hparams: dict[str, Value] = {}
        self.apply_hparams(hparams)
        if tb_dir is not None:
            self.model.set_logger(configure(tb_dir, ["tensorboard"]))
        else:
            self.model.set_logger(configure(None, []))
        self.last_eval_returns: list[float] = []
        #: Set when training produced non-finite weights (the member then has NaN fitness).
        self.diverged = False
        self._flat: np.ndarray | None = None

    # -- hyperparameters -------------------------------------------------------
    def apply_hparams(self, hparams: Mapping[str, Value]) -> None:
        """Make every hyperparameter take effect from the next training step."""
        for name, value in hparams.items():
            if name not in PPO_APPLY:
                raise KeyError(f"unknown PPO hyperparameter {name!r}")
            PPO_APPLY[name](self.model, value)
        self.hparams = dict(hparams)

    # -- training and fitness --------------------------------------------------
    @property
    def timesteps(self) -> int:
        """Env steps this member has trained, across generations and exploits."""
        return int(self.model.num_timesteps)

    def train(self, steps: int, generation: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Train ``steps`` env steps from a reproducible state for this generation.

        Global RNGs are reseeded from (seed, member, generation) and the env is
        reset with a seed from the same key, so the result does not depend on
        which other members share the process, or on a resume in between.
        Training stops early at the next env step once ``should_stop()`` is true.
        An error raised while the weights are non-finite (a diverged loss) marks
        the member as diverged instead of ending the run; any other error propagates.
        """
        if self.diverged:
            return
        set_random_seed(seeding.derive_seed(self.cfg.seed, seeding.TRAIN, self.id, generation))
        self.env.seed(seeding.derive_seed(self.cfg.seed, seeding.ENV, self.id, generation))
        self.model._last_obs = None  # makes learn() reset the (re-seeded) env
        try:
            self.model.learn(steps, reset_num_timesteps=False, callback=_StopCallback(should_stop))
        except (ValueError, RuntimeError):
            if self.weights_finite():
                raise
        self.diverged = not self.weights_finite()

    def weights_finite(self) -> bool:
        """Whether every policy parameter is finite."""
        return all(bool(torch.isfinite(p).all()) for p in self.model.policy.parameters())

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """Returns and lengths of the last ``fitness_window`` completed training episodes."""
        buf = list(self.model.ep_info_buffer or [])[-self.cfg.fitness_window :]
        return [float(e["r"]) for e in buf], [float(e["l"]) for e in buf]

    def set_episode_stats(self, returns: list[float], lengths: list[float]) -> None:
        """Replace the episode statistics (after an exploit, or on resume)."""
        self.model.ep_info_buffer = collections.deque(
            ({"r": r, "l": ln, "t": 0.0} for r, ln in zip(returns, lengths, strict=True)),
            maxlen=self.model._stats_window_size,
        )
        if self.model.ep_success_buffer is None:  # learn() creates both only when ep_info_buffer is None
            self.model.ep_success_buffer = collections.deque(maxlen=self.model._stats_window_size)

    def fitness(self, generation: int) -> float:
        """Mean of the last training episodes, or of deterministic eval episodes (NaN if diverged)."""
        if self.diverged:
            return math.nan
        if self.eval_env is None:
            returns, _ = self.episode_stats()
            return float(np.mean(returns)) if returns else math.nan
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

    # -- state as one buffer ---------------------------------------------------
    def _tensors(self) -> list[torch.Tensor]:
        """Parameters and buffers, then optimizer state tensors, in a fixed order (each once)."""
        policy = self.model.policy
        tensors = list(policy.state_dict(keep_vars=True).values())
        opt = policy.optimizer
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state.get(p, {})
                tensors.extend(state[k] for k in sorted(state) if isinstance(state[k], torch.Tensor))
        unique: dict[int, torch.Tensor] = {}  # a module shared under two names appears twice
        for t in tensors:
            unique.setdefault(id(t), t)
        return list(unique.values())

    def _flat_state(self) -> np.ndarray | None:
        """The member's state as one contiguous uint8 array that *is* its weights and Adam state.

        On first use (once the optimizer state exists) every parameter, buffer and
        optimizer-state tensor is re-pointed at a slice of one float32 tensor, so
        packing costs nothing and unpacking is one memcpy. Returns None when the
        layout cannot be flattened (no optimizer state yet, or mixed dtypes).
        """
        if self._flat is not None:
            return self._flat
        opt = self.model.policy.optimizer
        tensors = self._tensors()
        if not opt.state or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
            return None
        flat = torch.empty(sum(t.numel() for t in tensors), dtype=torch.float32)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                n = t.numel()
                view = flat[offset : offset + n].view(t.shape)
                view.copy_(t.detach())
                t.data = view  # the Parameter / state tensor object stays; its storage moves
                offset += n
        self._flat = flat.numpy().view(np.uint8)
        return self._flat

    @property
    def state_nbytes(self) -> int:
        """Size of :meth:`pack` output."""
        flat = self._flat_state()
        if flat is not None:
            return flat.nbytes
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def pack(self) -> np.ndarray:
        """Weights + optimizer state as one contiguous uint8 buffer.

        This is normally a live view of the member's state, not a copy: copy it
        before changing the member if the old state must survive.
        """
        flat = self._flat_state()
        if flat is not None:
            return flat
        tensors = self._tensors()
        out = np.empty(sum(t.numel() * t.element_size() for t in tensors), dtype=np.uint8)
        offset = 0
        for t in tensors:
            raw = t.detach().contiguous().reshape(-1).numpy().view(np.uint8)
            out[offset : offset + raw.size] = raw
            offset += raw.size
        return out

    def receive_buffer(self) -> np.ndarray | None:
        """Where an incoming state can be received directly (see :meth:`unpack`), if anywhere."""
        return self._flat_state()

    def unpack(self, buf: np.ndarray) -> None:
        """Load weights + optimizer state from a :meth:`pack` buffer of the same layout.

        Only finite members are ever copied, so the member is no longer diverged.
        """
        flat = self._flat_state()
        need = self.state_nbytes
        if buf.nbytes != need:
            raise ValueError(f"member {self.id}: state buffer has {buf.nbytes} bytes, layout needs {need}")
        if flat is not None:
            if buf.ctypes.data != flat.ctypes.data:  # equal when received in place
                flat[:] = buf
        else:
            offset = 0
            with torch.no_grad():
                for t in self._tensors():
                    n = t.numel() * t.element_size()
                    src = buf[offset : offset + n].view(t.detach().numpy().dtype)
                    t.copy_(torch.from_numpy(src.copy()).reshape(t.shape))
                    offset += n
        self.diverged = False

    # -- checkpoints -----------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, Any]:
        """Policy and optimizer state dicts, for ``torch.save``."""
        policy = self.model.policy
        return {"policy": policy.state_dict(), "optimizer": policy.optimizer.state_dict()}

    def checkpoint_meta(self) -> dict[str, Any]:
        """Everything else a resume needs, as plain JSON."""
        returns, lengths = self.episode_stats()
        return {
            "member": self.id,
            "timesteps": self.timesteps,
            "n_updates": int(self.model._n_updates),
            "episode_num": int(self.model._episode_num),
            "returns": returns,
            "lengths": lengths,
            "hparams": self.hparams,
            "diverged": self.diverged,
        }

    def restore(self, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Load a checkpoint written from :meth:`checkpoint_tensors` and :meth:`checkpoint_meta`."""
        policy = self.model.policy
        policy.load_state_dict(tensors["policy"])
        policy.optimizer.load_state_dict(tensors["optimizer"])  # new state tensors: re-flatten lazily
        self._flat = None
        self.model.num_timesteps = int(meta["timesteps"])
        self.model._n_updates = int(meta["n_updates"])
        self.model._episode_num = int(meta["episode_num"])
        self.set_episode_stats(list(meta["returns"]), list(meta["lengths"]))
        self.apply_hparams(meta["hparams"])
        self.diverged = bool(meta["diverged"])

    # -- outputs ---------------------------------------------------------------
    def log(self, fitness: float, hparams: Mapping[str, Value], parent: int | None) -> None:
        """Write PBT scalars next to SB3's own in this member's TensorBoard dir."""
        logger = self.model.logger
        returns, _ = self.episode_stats()
        logger.record("pbt/fitness", fitness)
        if returns:
            logger.record("pbt/episode_return", float(np.mean(returns)))
        logger.record("pbt/exploited", 0 if parent is None else 1)
        for name, value in hparams.items():
            if isinstance(value, (int, float)):
                logger.record(f"hparams/{name}", float(value))
        logger.dump(step=self.timesteps)

    def save(self, path: str) -> None:
        """Save as an SB3 ``.zip`` loadable with ``PPO.load``."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.model.save(path)

    def close(self) -> None:
        """Release envs and the TensorBoard writer."""
        self.model.logger.close()
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()
