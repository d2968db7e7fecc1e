"""A base class for members whose training loop is plain PyTorch (not SB3).

Subclass :class:`TorchMember`, build your networks and optimizers in
:meth:`~TorchMember.build`, and write :meth:`~TorchMember.train_steps` (train some
steps), :meth:`~TorchMember.evaluate` (a score, higher is better) and, if
you search more than ``learning_rate``, :meth:`~TorchMember.set_hparams`.
The base class gives the engine everything else the member protocol asks
for: seeding per (seed, member, generation), state as one contiguous buffer,
layout checks, checkpoints, TensorBoard scalars and saving. See
``examples/custom_trainer.py``.
"""

from __future__ import annotations

import collections
import copy
import math
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from . import seeding
from .config import Config
from .space import Value
from .torchstate import FlatTorchState, init_optimizer_state


class TorchMember(FlatTorchState):
    """One population member trained by your own PyTorch code.

    Attributes:
        modules: Your networks by name (set in :meth:`build`).
        optimizers: Your optimizers by name (set in :meth:`build`).
        scores: The last ``cfg.fitness_window`` evaluation scores (the t-test's samples).

    """

    def __init__(self, member_id: int, cfg: Config, hparams: Mapping[str, Value], tb_dir: str | None) -> None:
        self.id = member_id
        self.cfg = cfg
        self.hparams: dict[str, Value] = {}
        self.diverged = False
        self._flat = None
        self._timesteps = 0
        self.scores: collections.deque[float] = collections.deque(maxlen=cfg.fitness_window)
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._seed(seeding.INIT)
        self.build(dict(hparams))
        init_optimizer_state(self._optimizers())
        self.apply_hparams(hparams)
        self._writer: Any = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(tb_dir)

    # -- what a subclass writes ------------------------------------------------------
    def build(self, hparams: Mapping[str, Value]) -> None:
        """Create ``self.modules`` and ``self.optimizers`` (random streams are already seeded)."""
        raise NotImplementedError

    def train_steps(self, steps: int, generation: int, should_stop: Callable[[], bool]) -> int:
        """Train about ``steps`` steps (your unit: samples, env steps); return how many were taken."""
        raise NotImplementedError

    def evaluate(self, generation: int) -> float:
        """A score of the current weights, higher is better (random streams are seeded per generation)."""
        raise NotImplementedError

    def set_hparams(self, hparams: Mapping[str, Value]) -> None:
        """Make hyperparameters take effect; by default ``learning_rate`` goes to every optimizer's groups."""
        if "learning_rate" in hparams:
            for opt in self._optimizers():
                for group in opt.param_groups:
                    group["lr"] = float(hparams["learning_rate"])

    # -- the member protocol ---------------------------------------------------------
    @property
    def timesteps(self) -> int:
        """Steps trained in all (as returned by :meth:`train_steps`)."""
        return self._timesteps

    def apply_hparams(self, hparams: Mapping[str, Value]) -> None:
        """Apply and remember the hyperparameters."""
        self.set_hparams(hparams)
        self.hparams = dict(hparams)

    def _seed(self, purpose: int, generation: int | None = None) -> None:
        keys = (self.id,) if generation is None else (self.id, generation)
        seed = seeding.derive_seed(self.cfg.seed, purpose, *keys)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def train(self, steps: int, generation: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Seed from (seed, member, generation), :meth:`train_steps`, then score with :meth:`evaluate`."""
        if self.diverged:
            return
        self._seed(seeding.TRAIN, generation)
        self._timesteps += int(self.train_steps(steps, generation, should_stop))
        self.diverged = not all(bool(torch.isfinite(t).all()) for _, t in self._named_tensors())
        if not self.diverged:
            self._seed(seeding.EVAL, generation)
            self.scores.append(float(self.evaluate(generation)))

    def fitness(self, generation: int) -> float:
        """The last evaluation score (NaN when diverged or never evaluated)."""
        if self.diverged or not self.scores or not math.isfinite(self.scores[-1]):
            return math.nan
        return self.scores[-1]

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """The recent scores, each with weight 1."""
        return list(self.scores), [1.0] * len(self.scores)

    def set_episode_stats(self, returns: list[float], lengths: list[float]) -> None:
        """Take over another member's recent scores."""
        self.scores = collections.deque(returns, maxlen=self.cfg.fitness_window)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizers[name] for name in sorted(self.optimizers)]

    def _named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        named: list[tuple[str, torch.Tensor]] = []
        for name in sorted(self.modules):
            named.extend((f"{name}.{k}", t) for k, t in self.modules[name].state_dict(keep_vars=True).items())
        for name in sorted(self.optimizers):
            opt = self.optimizers[name]
            params = [p for group in opt.param_groups for p in group["params"]]
            for index, p in enumerate(params):
                state = opt.state.get(p, {})
                named.extend(
                    (f"{name}.state.{index}.{k}", state[k]) for k in sorted(state) if torch.is_tensor(state[k])
                )
        unique: dict[int, tuple[str, torch.Tensor]] = {}
        for item in named:
            unique.setdefault(id(item[1]), item)
        return list(unique.values())

    def pack_aux(self, replay: bool) -> np.ndarray:
        """Nothing moves besides the tensors."""
        return np.empty(0, dtype=np.uint8)

    def unpack_aux(self, buf: np.ndarray, replay: bool) -> None:
        """Nothing moves besides the tensors."""

    def checkpoint_tensors(self) -> dict[str, Any]:
        """Every module's and optimizer's state dict."""
        out: dict[str, Any] = {f"module:{n}": m.state_dict() for n, m in self.modules.items()}
        out.update({f"optimizer:{n}": o.state_dict() for n, o in self.optimizers.items()})
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        """Steps, scores, hyperparameters."""
        return {
            "member": self.id,
            "timesteps": self._timesteps,
            "scores": list(self.scores),
            "hparams": self.hparams,
            "diverged": self.diverged,
        }

    def restore(self, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Continue exactly from a checkpoint."""
        for name, module in self.modules.items():
            module.load_state_dict(tensors[f"module:{name}"])
        for name, opt in self.optimizers.items():  # optimizers keep the given tensors: copy them
            opt.load_state_dict(copy.deepcopy(tensors[f"optimizer:{name}"]))
        self._flat = None
        self._timesteps = int(meta["timesteps"])
        self.scores = collections.deque(meta["scores"], maxlen=self.cfg.fitness_window)
        self.apply_hparams(meta["hparams"])
        self.diverged = bool(meta["diverged"])

    def log(self, fitness: float, hparams: Mapping[str, Value], parent: int | None) -> None:
        """PBT scalars in this member's TensorBoard dir."""
        if self._writer is None:
            return
        self._writer.add_scalar("pbt/fitness", fitness, self._timesteps)
        self._writer.add_scalar("pbt/exploited", 0 if parent is None else 1, self._timesteps)
        for name, value in hparams.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"hparams/{name}", float(value), self._timesteps)
        self._writer.flush()

    def save(self, path: str) -> None:
        """``torch.save`` of every module's state dict (load with ``torch.load(path, weights_only=True)``)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        torch.save({name: module.state_dict() for name, module in self.modules.items()}, path)

    def save_normalization(self, path: str) -> bool:
        """No normalisation statistics."""
        return False

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
