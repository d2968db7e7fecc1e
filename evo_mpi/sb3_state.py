"""What of an SB3 member moves and persists: its state as buffers, shared experience, checkpoints.

:class:`SB3State` is the part of the SB3 adapter (:class:`evo_mpi.member.Member`)
that reads and writes an SB3 model's state without training it: it names the
tensors :class:`~evo_mpi.torchstate.FlatTorchState` packs into one buffer
(weights, buffers, optimizer state), packs what moves besides them (VecNormalize
statistics, the replay buffer), copies replay rows between members
(``--share-experience``), and writes and restores checkpoints, with the running
episodes (:class:`~evo_mpi.sb3_episodes.RunningEpisodes`) in them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from . import seeding
from .algorithms._sb3 import optimizers
from .config import Config
from .sb3_episodes import RunningEpisodes
from .space import Value
from .torchstate import FlatTorchState


def _rms_arrays(rms: RunningMeanStd | Mapping[str, RunningMeanStd]) -> list[RunningMeanStd]:
    if isinstance(rms, Mapping):
        return [rms[k] for k in sorted(rms)]
    return [rms]


class SB3State(FlatTorchState):
    """Mixin of :class:`~evo_mpi.member.Member`: an SB3 model's state as buffers and checkpoints.

    It reads the member's model, envs and settings, and asks the member for its
    step count, episode statistics and hyperparameters (the stubs below).
    """

    cfg: Config
    model: BaseAlgorithm
    env: VecEnv
    normalize: VecNormalize | None
    off_policy: bool
    hparams: dict[str, Value]
    rebuild_stats: dict[str, Any] | None
    _experience_from: int

    # -- what the member supplies (Member overrides each) ---------------------------
    @property
    def timesteps(self) -> int:
        """Env steps this member has trained."""
        raise NotImplementedError

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """Scores and lengths of the episodes fitness is measured on."""
        raise NotImplementedError

    def episode_returns(self) -> list[float]:
        """The returns of the episodes :meth:`episode_stats` scores."""
        raise NotImplementedError

    def set_episode_stats(
        self, returns: list[float], lengths: list[float], episode_returns: list[float] | None = None
    ) -> None:
        """Replace the episode statistics."""
        raise NotImplementedError

    def apply_hparams(self, hparams: Mapping[str, Value]) -> None:
        """Make every hyperparameter take effect."""
        raise NotImplementedError

    # -- state as one buffer ---------------------------------------------------
    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return optimizers(self.model)

    def _named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Weights, buffers and optimizer state of every network SB3 saves, named, in a fixed order (each once).

        For PPO/A2C that is the policy and its optimizer; SAC/TD3/DDPG add the
        target networks, the actor and critic optimizers and SAC's entropy
        coefficient with its optimizer; DQN adds the target Q-network.
        """
        names, variables = self.model._get_torch_save_params()
        tensors: list[tuple[str, torch.Tensor]] = []
        for name in names:
            obj = recursive_getattr(self.model, name)
            if isinstance(obj, torch.optim.Optimizer):
                index = 0
                for group in obj.param_groups:
                    for p in group["params"]:
                        state = obj.state.get(p, {})
                        tensors.extend(
                            (f"{name}.state.{index}.{k}", state[k])
                            for k in sorted(state)
                            if isinstance(state[k], torch.Tensor)
                        )
                        index += 1
            else:
                tensors.extend((f"{name}.{k}", t) for k, t in obj.state_dict(keep_vars=True).items())
        tensors.extend((v, recursive_getattr(self.model, v)) for v in variables)
        unique: dict[int, tuple[str, torch.Tensor]] = {}  # a module shared under two names appears twice
        for named in tensors:
            unique.setdefault(id(named[1]), named)
        return list(unique.values())

    # -- state that moves besides the weights ----------------------------------
    def _running_stats(self) -> list[RunningMeanStd]:
        if self.normalize is None:
            return []
        return [*_rms_arrays(self.normalize.obs_rms), self.normalize.ret_rms]

    def _replay_arrays(self) -> list[np.ndarray]:
        """The replay buffer's storage arrays (off-policy algorithms), in a fixed order."""
        if not self.off_policy:
            return []
        buffer = self.model.replay_buffer  # type: ignore[attr-defined]
        arrays: list[np.ndarray] = []
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            value = getattr(buffer, name, None)
            if isinstance(value, Mapping):
                arrays.extend(value[k] for k in sorted(value))
            elif isinstance(value, np.ndarray):
                arrays.append(value)
        return arrays

    def aux_nbytes(self, replay: bool) -> int:
        """Size of :meth:`pack_aux` output (0 when there is nothing to move)."""
        n = sum(2 * r.mean.size + 1 for r in self._running_stats()) * 8
        if replay and self.off_policy:
            n += sum(a.nbytes for a in self._replay_arrays()) + 16
        return n

    def pack_aux(self, replay: bool) -> np.ndarray:
        """VecNormalize statistics (float64) and, if ``replay``, the whole replay buffer, as bytes."""
        parts: list[np.ndarray] = []
        for r in self._running_stats():
            parts.append(np.concatenate([np.ravel(r.mean), np.ravel(r.var), [r.count]]).astype(np.float64))
        if replay and self.off_policy:
            buffer = self.model.replay_buffer  # type: ignore[attr-defined]
            parts.extend(np.ascontiguousarray(a).reshape(-1) for a in self._replay_arrays())
            parts.append(np.array([buffer.pos, int(buffer.full)], dtype=np.int64))
        if not parts:
            return np.empty(0, dtype=np.uint8)
        return np.concatenate([p.view(np.uint8) for p in parts])

    def unpack_aux(self, buf: np.ndarray, replay: bool) -> None:
        """Load a :meth:`pack_aux` buffer of the same layout."""
        if buf.nbytes != self.aux_nbytes(replay):
            raise ValueError(
                f"member {self.id}: aux buffer has {buf.nbytes} bytes, layout needs {self.aux_nbytes(replay)}"
            )
        offset = 0

        def take(n: int, dtype: Any) -> np.ndarray:
            nonlocal offset
            size = n * np.dtype(dtype).itemsize
            out = buf[offset : offset + size].view(dtype)
            offset += size
            return out

        for r in self._running_stats():
            k = r.mean.size
            values = take(2 * k + 1, np.float64)
            r.mean = values[:k].reshape(np.shape(r.mean)).copy()
            r.var = values[k : 2 * k].reshape(np.shape(r.var)).copy()
            r.count = float(values[2 * k])
        if replay and self.off_policy:
            for a in self._replay_arrays():
                a.reshape(-1)[:] = take(a.size, a.dtype)
            pos, full = take(2, np.int64)
            buffer = self.model.replay_buffer  # type: ignore[attr-defined]
            buffer.pos, buffer.full = int(pos), bool(full)

    # -- shared experience (off-policy) ------------------------------------------
    def mark_experience(self) -> None:
        """Remember where this member's own new transitions begin (called before it trains)."""
        self._experience_from = self.timesteps

    def new_experience(self) -> np.ndarray:
        """The replay rows this member collected since :meth:`mark_experience`, as one uint8 buffer.

        Each row is one env step of every vectorised env; the buffer holds the
        rows of each storage array in turn (observations, next observations,
        actions, rewards, dones, timeouts), oldest row first.
        """
        buffer = self.model.replay_buffer  # type: ignore[attr-defined]
        capacity = int(buffer.buffer_size)
        rows = min(max(0, self.timesteps - self._experience_from) // self.cfg.n_envs, capacity)
        index = (int(buffer.pos) - rows + np.arange(rows)) % capacity
        parts = [np.ascontiguousarray(a[index]).reshape(-1).view(np.uint8) for a in self._replay_arrays()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)

    def add_experience(self, buf: np.ndarray) -> None:
        """Append another member's :meth:`new_experience` rows to this member's replay buffer.

        The buffer is a ring: once full, the oldest rows are overwritten (as SB3
        does with a member's own transitions).
        """
        arrays = self._replay_arrays()
        row_bytes = sum(a[0].nbytes for a in arrays)
        if buf.nbytes % row_bytes:
            raise ValueError(f"member {self.id}: {buf.nbytes} bytes of experience is not a whole number of rows")
        rows = buf.nbytes // row_bytes
        if rows == 0:
            return
        buffer = self.model.replay_buffer  # type: ignore[attr-defined]
        capacity = int(buffer.buffer_size)
        index = (int(buffer.pos) + np.arange(rows)) % capacity
        offset = 0
        for a in arrays:
            n = rows * a[0].nbytes
            a[index] = buf[offset : offset + n].view(a.dtype).reshape((rows, *a.shape[1:]))
            offset += n
        buffer.full = bool(buffer.full or int(buffer.pos) + rows >= capacity)
        buffer.pos = (int(buffer.pos) + rows) % capacity

    # -- checkpoints -----------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, Any]:
        """State dicts of every network and optimizer, extra variables, and the filled replay buffer."""
        names, variables = self.model._get_torch_save_params()
        out: dict[str, Any] = {name: recursive_getattr(self.model, name).state_dict() for name in names}
        out.update({f"var:{v}": recursive_getattr(self.model, v).detach().clone() for v in variables})
        if self.off_policy:
            buffer = self.model.replay_buffer  # type: ignore[attr-defined]
            filled = buffer.buffer_size if buffer.full else buffer.pos
            for i, a in enumerate(self._replay_arrays()):
                out[f"replay:{i}"] = torch.from_numpy(np.ascontiguousarray(a[:filled]))
        out.update(self._episodes().tensors())  # what rebuilds each env's running episode
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        """Everything else a resume needs, as plain JSON."""
        returns, lengths = self.episode_stats()  # the scores: with --fitness info:KEY, the objective's samples
        meta: dict[str, Any] = {
            "member": self.id,
            "timesteps": self.timesteps,
            "n_updates": int(self.model._n_updates),
            "episode_num": int(self.model._episode_num),
            "n_calls": int(getattr(self.model, "_n_calls", 0)),
            "returns": returns,
            "lengths": lengths,
            "hparams": self.hparams,
            "diverged": self.diverged,
            **({"episode_returns": self.episode_returns()} if self.cfg.objective_key is not None else {}),
        }
        if self.normalize is not None:
            meta["normalize"] = [
                {"mean": np.ravel(r.mean).tolist(), "var": np.ravel(r.var).tolist(), "count": float(r.count)}
                for r in self._running_stats()
            ]
        if self.off_policy:
            buffer = self.model.replay_buffer  # type: ignore[attr-defined]
            meta["replay"] = {"pos": int(buffer.pos), "full": bool(buffer.full)}
        meta["episodes"] = self._episodes().meta()
        return meta

    # -- resume ------------------------------------------------------------------
    def _episodes(self) -> RunningEpisodes:
        """The member's running episodes: a view of its training envs now (``recover`` replaces them)."""
        return RunningEpisodes(self.model, self.env, self.normalize)

    def _rebuild_episodes(self, tensors: Mapping[str, Any], saved: Mapping[str, Any] | None) -> None:
        """Re-create every env's running episode from a checkpoint, or start fresh ones with a notice.

        Each env is re-stepped below VecNormalize (its statistics do not move)
        and its observation compared bit for bit with the saved one; then the
        model's last observation is rebuilt as SB3 had it
        (:meth:`~evo_mpi.sb3_episodes.RunningEpisodes.rebuild`). If any env fails,
        all of the member's envs start fresh episodes from a seed of (seed,
        member, step count), and one line says this resume is not bit-exact.
        """
        t0 = time.perf_counter()
        if saved is None:  # the member never stepped its envs: learn() resets them, as in a fresh run
            self.model._last_obs = None
            return
        episodes = self._episodes()
        problems = episodes.rebuild(tensors, saved)
        steps = sum(int(r["steps"]) for r in saved["envs"])
        if problems:
            more = f" (and {len(problems) - 1} more env(s))" if len(problems) > 1 else ""
            print(
                f"evo-mpi: member {self.id}: the running episode of env {self.cfg.env_id!r} could not be rebuilt "
                f"({problems[0]}{more}); its envs start fresh episodes, so this resume is not bit-exact",
                flush=True,
            )
            self.env.seed(seeding.derive_seed(self.cfg.seed, seeding.ENV, self.id, self.timesteps))
            self.model._last_obs = None
        self.rebuild_stats = {
            "member": self.id,
            "envs": len(episodes.recorders()),
            "steps": steps,
            "ms": (time.perf_counter() - t0) * 1e3,
            "exact": not problems,
        }

    def restore(self, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Load a checkpoint written from :meth:`checkpoint_tensors` and :meth:`checkpoint_meta`."""
        self.match_layout(meta["hparams"])
        names, variables = self.model._get_torch_save_params()
        for name in names:
            key = "optimizer" if name == "policy.optimizer" and name not in tensors else name  # pre-0.2 checkpoints
            # Optimizers keep the given state tensors (no copy), and flattening re-points them: copy first.
            recursive_getattr(self.model, name).load_state_dict(copy.deepcopy(tensors[key]))
        with torch.no_grad():
            for v in variables:
                recursive_getattr(self.model, v).copy_(tensors[f"var:{v}"])
        self._flat = None
        self.model.num_timesteps = int(meta["timesteps"])
        self.model._n_updates = int(meta["n_updates"])
        self.model._episode_num = int(meta["episode_num"])
        if hasattr(self.model, "_n_calls"):
            self.model._n_calls = int(meta.get("n_calls", 0))
        self.set_episode_stats(list(meta["returns"]), list(meta["lengths"]), meta.get("episode_returns"))
        for r, saved in zip(self._running_stats(), meta.get("normalize", []), strict=False):
            r.mean = np.array(saved["mean"], dtype=np.float64).reshape(np.shape(r.mean))
            r.var = np.array(saved["var"], dtype=np.float64).reshape(np.shape(r.var))
            r.count = float(saved["count"])
        if self.off_policy and "replay" in meta:
            buffer = self.model.replay_buffer  # type: ignore[attr-defined]
            for i, a in enumerate(self._replay_arrays()):
                saved_array = tensors[f"replay:{i}"].numpy()
                a[: len(saved_array)] = saved_array
            buffer.pos, buffer.full = int(meta["replay"]["pos"]), bool(meta["replay"]["full"])
        self.apply_hparams(meta["hparams"])
        self.diverged = bool(meta["diverged"])
        self._rebuild_episodes(tensors, meta.get("episodes"))
