"""A member's running episodes in its checkpoints: the SB3 side of :mod:`evo_mpi.episodes`.

An SB3 member's envs keep running across generations, exploits and resumes.
:class:`RunningEpisodes` looks at one member's training envs (each recorded by
an :class:`~evo_mpi.episodes.EpisodeRecorder`, below VecNormalize if any) and
at the observation SB3 continues from; it names what a checkpoint must hold
to rebuild them, and rebuilds them on resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from .episodes import EpisodeRecorder, obs_arrays

#: Prefixes of a member's checkpoint tensor keys that hold the slot's running episodes (its envs'
#: records and SB3's last observation): they stay with the slot, an exploit never moves them.
EPISODE_KEYS = ("episode:", "_last_obs:", "_last_original_obs:")


class RunningEpisodes:
    """The running episodes of one member's training envs, as a checkpoint holds them.

    A view, built on use: ``env`` is the member's training env, ``normalize`` that
    same env when it is a VecNormalize (else None), ``model`` the SB3 model training on it.
    """

    def __init__(self, model: BaseAlgorithm, env: VecEnv, normalize: VecNormalize | None) -> None:
        self.model = model
        self.env = env
        self.normalize = normalize

    def vec(self) -> DummyVecEnv:
        """The vectorised env below VecNormalize (the one holding the recorded envs)."""
        venv = self.normalize.venv if self.normalize is not None else self.env
        assert isinstance(venv, DummyVecEnv)
        return venv

    def recorders(self) -> list[EpisodeRecorder]:
        """Each env's :class:`~evo_mpi.episodes.EpisodeRecorder`, in env order."""
        recorders = self.vec().envs
        assert all(isinstance(r, EpisodeRecorder) for r in recorders)
        return recorders  # type: ignore[return-value]

    @property
    def max_episode_steps(self) -> int | None:
        """The env's time limit in steps (its spec's ``max_episode_steps``), if it has one."""
        spec = self.recorders()[0].spec
        limit = getattr(spec, "max_episode_steps", None)
        return int(limit) if isinstance(limit, int) else None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that rebuild each env's running episode, keyed by :data:`EPISODE_KEYS` (none before a reset)."""
        out: dict[str, torch.Tensor] = {}
        if self.model._last_obs is None:
            return out
        for i, rec in enumerate(self.recorders()):
            actions = rec.action_array()
            if actions is not None and rec.rebuildable():
                out[f"episode:{i}:actions"] = torch.from_numpy(actions)
            for j, part in enumerate(obs_arrays(rec.obs)):
                out[f"episode:{i}:obs:{j}"] = torch.from_numpy(np.array(part, copy=True))
        # what SB3 continues from, exactly: normalised with the statistics of when it was observed
        for name in ("_last_obs", "_last_original_obs"):
            value = getattr(self.model, name, None)
            if value is not None:
                for j, part in enumerate(obs_arrays(value)):
                    out[f"{name}:{j}"] = torch.from_numpy(np.array(part, copy=True))
        return out

    def meta(self) -> dict[str, Any] | None:
        """The JSON part of the running episodes (None before the first reset)."""
        if self.model._last_obs is None:
            return None
        recorders = self.recorders()
        return {
            "envs": [r.record() for r in recorders],
            "obs_parts": len(obs_arrays(recorders[0].obs)),
            "episode_starts": [bool(x) for x in np.ravel(np.asarray(self.model._last_episode_starts))],
            "returns": None if self.normalize is None else [float(x) for x in self.normalize.returns],
        }

    def _obs_from_parts(self, tensors: Mapping[str, Any], name: str) -> Any:
        """An observation saved as :func:`~evo_mpi.episodes.obs_arrays` parts (a dict by sorted key)."""
        space = self.model.observation_space
        keys = sorted(space.spaces) if hasattr(space, "spaces") and isinstance(space.spaces, Mapping) else None
        parts = [tensors[f"{name}:{j}"].numpy().copy() for j in range(len(keys) if keys else 1)]
        return dict(zip(keys, parts, strict=True)) if keys else parts[0]

    def rebuild(self, tensors: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
        """Re-create every env's running episode from :meth:`tensors` and :meth:`meta`; why envs failed, if any.

        Each env is re-stepped below VecNormalize (its statistics do not move)
        and its observation compared bit for bit with the saved one. When every
        env matches, the model's last observation is rebuilt as SB3 had it;
        otherwise nothing more is touched and the caller starts fresh episodes.
        """
        problems: list[str] = []
        recorders = self.recorders()
        for i, (rec, record) in enumerate(zip(recorders, saved["envs"], strict=True)):
            actions = tensors.get(f"episode:{i}:actions")
            parts = [tensors[f"episode:{i}:obs:{j}"].numpy() for j in range(int(saved["obs_parts"]))]
            why = rec.rebuild(record, None if actions is None else actions.numpy(), parts)
            if why is not None:
                problems.append(f"env {i}: {why}")
        if problems:
            return problems
        venv = self.vec()
        for i, rec in enumerate(recorders):
            venv._save_obs(i, rec.obs)
        self.model._last_episode_starts = np.array(saved["episode_starts"], dtype=bool)
        if self.normalize is not None:
            self.normalize.old_obs = venv._obs_from_buf()  # type: ignore[assignment]
            self.normalize.returns = np.array(saved["returns"], dtype=np.float64)
        # SB3's last observation as it was (with VecNormalize: normalised by the statistics of its time,
        # which an exploit since may have replaced), and off-policy with VecNormalize the raw one
        for name in ("_last_obs", "_last_original_obs"):
            if f"{name}:0" in tensors:
                setattr(self.model, name, self._obs_from_parts(tensors, name))
        return []
