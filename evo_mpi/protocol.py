"""The member protocol: what the engine needs from a population member, whatever trains it.

The SB3 adapter (:class:`evo_mpi.member.Member`) is one implementation;
:class:`evo_mpi.torch_member.TorchMember` is a base class that gives a plain
PyTorch training loop everything but its training step, fitness and
hyperparameters. Plug another in with ``--member module:factory`` or
``evo_mpi.train(member=factory)``; the factory is called as
``factory(member_id, cfg, hparams, tb_dir)`` on the rank that owns the member.

The engine relies on these promises:

* ``train(steps, generation, should_stop)`` depends only on the member's
  state (its envs and running episodes included: they belong to the member
  slot and survive exploits), its hyperparameters and ``(cfg.seed,
  member_id, generation)``, so any rank layout and any resume reproduce it.
* ``train`` calls ``should_stop()`` often (every step or so): the async
  engine serves other ranks' snapshot requests from it, so a long stretch
  without a call delays them.
* ``pack()`` returns the whole state that moves on exploit as one contiguous
  ``uint8`` buffer whose size and layout (``state_layout()``) depend only on
  the member's architecture hyperparameter (``net_arch``; members without one
  share one layout); ``match_layout(hparams)`` takes another member's
  architecture, after which ``unpack()`` loads that member's buffer.
* With ``--share-experience`` (off-policy members) the engine also calls
  ``mark_experience()`` before training, ``new_experience()`` after it (the
  transitions collected since, as one uint8 buffer of a layout every member
  shares) and ``add_experience(buf)`` with other members' buffers. These
  three are optional: only members that offer them can share.
* ``checkpoint_tensors()`` / ``checkpoint_meta()`` hold everything
  ``restore()`` needs to continue exactly (tensors for ``torch.save``, the rest
  plain JSON).
* Optionally ``recover(step)`` (:class:`Recovers`): called after ``train``
  or ``fitness`` raised in generation (or interval) ``step``, to rebuild
  what the error may have broken (the SB3 adapter builds fresh envs). The
  engine then has the member copy a donor at the next decision; without
  ``recover`` nothing is rebuilt. If ``recover`` raises, the member calls
  it again before it next trains, and a failing retry is that step's failure.
* Optionally ``evaluate_final(seeds)`` (:class:`EvaluatesFinal`): one score
  per seed for the final pick of ``best.zip``; without it a custom member's
  run picks by the last training fitness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import Config
from .space import Value


@runtime_checkable
class PBTMember(Protocol):
    """A population member as the engine sees it."""

    id: int
    hparams: dict[str, Value]

    @property
    def timesteps(self) -> int:
        """Training steps (env steps, samples, ...) this member has taken in all."""
        ...

    def apply_hparams(self, hparams: Mapping[str, Value]) -> None:
        """Make every hyperparameter take effect from the next training step."""
        ...

    def train(self, steps: int, generation: int, should_stop: Callable[[], bool] = ...) -> None:
        """Train ``steps`` steps of ``generation``; return early once ``should_stop()`` is true."""
        ...

    def fitness(self, generation: int) -> float:
        """Higher is better; NaN when it cannot be measured (never copied, replaced first)."""
        ...

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """Recent scores behind the fitness (the t-test's samples) and their lengths (or weights)."""
        ...

    def set_episode_stats(self, returns: list[float], lengths: list[float]) -> None:
        """Take over another member's recent scores (after an exploit)."""
        ...

    def state_layout(self) -> tuple[int, int, str]:
        """(state bytes, aux bytes, layout hash); equal for every member of a run."""
        ...

    @property
    def state_nbytes(self) -> int:
        """Size of :meth:`pack`'s buffer."""
        ...

    def pack(self) -> np.ndarray:
        """The state that moves on exploit, as one contiguous uint8 buffer (may be a live view)."""
        ...

    def receive_buffer(self) -> np.ndarray | None:
        """Where an incoming state can be received in place, or None."""
        ...

    def unpack(self, buf: np.ndarray) -> None:
        """Load a :meth:`pack` buffer of another member."""
        ...

    def match_layout(self, hparams: Mapping[str, Value]) -> None:
        """Take the state layout of a member with ``hparams`` (its architecture) before :meth:`unpack`."""
        ...

    def aux_nbytes(self, replay: bool) -> int:
        """Size of :meth:`pack_aux`'s buffer (0: nothing besides the state)."""
        ...

    def pack_aux(self, replay: bool) -> np.ndarray:
        """State that moves besides the tensors (normalisation statistics, replay buffers)."""
        ...

    def unpack_aux(self, buf: np.ndarray, replay: bool) -> None:
        """Load a :meth:`pack_aux` buffer."""
        ...

    def checkpoint_tensors(self) -> dict[str, Any]:
        """Tensors (or state dicts of tensors) for ``torch.save``."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """Everything else a resume needs, as plain JSON."""
        ...

    def restore(self, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Continue exactly from a checkpoint."""
        ...

    def log(self, fitness: float, hparams: Mapping[str, Value], parent: int | None) -> None:
        """Record the generation's PBT scalars (TensorBoard, ...)."""
        ...

    def save(self, path: str) -> None:
        """Write the final model to ``path`` (``.zip`` for SB3)."""
        ...

    def save_normalization(self, path: str) -> bool:
        """Write normalisation statistics next to the model; False when there are none."""
        ...

    def close(self) -> None:
        """Release envs, files and writers."""
        ...


@runtime_checkable
class SharesExperience(Protocol):
    """What a member offers to take part in ``--share-experience`` (the SB3 adapter's off-policy members)."""

    def mark_experience(self) -> None:
        """Remember where the member's own new transitions begin (before it trains)."""
        ...

    def new_experience(self) -> np.ndarray:
        """The transitions collected since :meth:`mark_experience`, as one uint8 buffer."""
        ...

    def add_experience(self, buf: np.ndarray) -> None:
        """Add another member's :meth:`new_experience` buffer to this member's replay memory."""
        ...


@runtime_checkable
class Recovers(Protocol):
    """What a member offers to start afresh after its ``train`` or ``fitness`` raised; optional."""

    def recover(self, step: int) -> None:
        """Rebuild what the failure in generation (or interval) ``step`` may have broken (envs, loaders)."""
        ...


@runtime_checkable
class EvaluatesFinal(Protocol):
    """What a custom member offers to take part in the final pick (``--final-eval-episodes``); optional.

    Without it a custom member's run picks ``best.zip`` by the last training
    fitness (the SB3 adapter is evaluated by :mod:`evo_mpi.champion` itself).
    """

    def evaluate_final(self, seeds: Sequence[int]) -> list[float]:
        """One deterministic score per seed (episode ``j`` seeded with ``seeds[j]``), higher is better."""
        ...


#: ``factory(member_id, cfg, hparams, tb_dir)`` builds one member on the rank that owns it.
MemberFactory = Callable[[int, Config, Mapping[str, Value], "str | None"], PBTMember]
