"""The algorithm registry: everything evo_mpi knows about each SB3 algorithm, one file per algorithm.

An :class:`Algorithm` names the SB3 class, whether it learns from a replay
buffer, the action spaces it supports, its default search space and, for
every hyperparameter it can search, how that value is made to take effect in
SB3. Adding an algorithm is one new module here that calls :func:`register`,
plus its tests. Importing this package imports no torch or SB3: classes and
SB3 helpers load when a member is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``apply(model, value)``: make one hyperparameter value take effect in an SB3 model.
Apply = Callable[[Any, Any], None]


@dataclass(frozen=True)
class Algorithm:
    """One SB3 algorithm as evo_mpi uses it.

    Attributes:
        name: The ``--algo`` name (lower case).
        sb3_class: ``module:Class`` of the SB3 algorithm, imported on first use.
        off_policy: Whether it learns from a replay buffer (SAC, TD3, DDPG, DQN).
        action_spaces: Gymnasium action-space class names it supports.
        default_space: Its default search space, ``{name: prior}``.
        appliers: For every searchable hyperparameter, how a value takes effect.
        activation: SB3's default ``activation_fn`` of its MLP policy (see :mod:`evo_mpi.netmorph`).
        schedulable: Hyperparameters SB3 reads through a schedule, which ``--schedules`` may make one.

    """

    name: str
    sb3_class: str
    off_policy: bool
    action_spaces: tuple[str, ...]
    default_space: Mapping[str, str]
    appliers: Mapping[str, Apply] = field(repr=False)
    activation: str = "relu"
    schedulable: tuple[str, ...] = ("learning_rate",)

    @property
    def hparams(self) -> tuple[str, ...]:
        """The hyperparameters it can search."""
        return tuple(self.appliers)

    def model_class(self) -> type:
        """The SB3 class (imports SB3)."""
        module, _, name = self.sb3_class.partition(":")
        cls: type = getattr(importlib.import_module(module), name)
        return cls


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Add an algorithm under its (lower-case) name; a name can be registered once."""
    if algorithm.name != algorithm.name.lower():
        raise ValueError(f"algorithm names are lower case, got {algorithm.name!r}")
    if algorithm.name in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    unknown = set(algorithm.default_space) - set(algorithm.appliers)
    if unknown:
        raise ValueError(f"{algorithm.name}: default space names hyperparameters it cannot apply: {sorted(unknown)}")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    """The algorithm called ``name`` (case-insensitive).

    Raises:
        KeyError: naming the known algorithms.

    """
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r} (known: {', '.join(names())})") from None


def names() -> tuple[str, ...]:
    """Registered algorithm names, in registration order."""
    return tuple(_REGISTRY)


#: The built-in algorithms, in the order ``--help`` lists them; each module registers itself on import.
BUILTIN = ("ppo", "a2c", "sac", "td3", "ddpg", "dqn")
for _module in BUILTIN:
    importlib.import_module(f"{__name__}.{_module}")
