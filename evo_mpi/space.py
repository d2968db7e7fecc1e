"""Hyperparameter priors, initial sampling and the PBT explore step.

Pure numpy: no MPI, torch or SB3 import. Every function takes an explicit
``np.random.Generator`` so each rank can reproduce any member's draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

Value: TypeAlias = float | int | str

#: Hyperparameters that explore leaves as the winner had them: they change only by architecture and
#: activation mutation (see :mod:`evo_mpi.arch`), which must also move the network's weights.
MUTATED_APART = ("net_arch", "activation_fn")

#: Node steps of an ``arch`` prior when the spec names none (AgileRL's add/remove-node sizes).
ARCH_STEPS = (16, 32, 64)


class SpaceError(ValueError):
    """A search-space specification that cannot be parsed or is inconsistent."""


@dataclass(frozen=True)
class Prior:
    """One hyperparameter's prior.

    Attributes:
        kind: ``loguniform``, ``uniform``, ``int``, ``choice``, ``const`` or
            ``arch`` (hidden layer sizes, written ``64-64``).
        low: Lower bound (numeric kinds; nodes per layer for ``arch``).
        high: Upper bound (numeric kinds; nodes per layer for ``arch``).
        choices: The ordered values of a ``choice`` prior, or the single
            value of a ``const`` prior.
        layers: Fewest and most hidden layers (``arch``).
        steps: Node counts a layer grows or shrinks by (``arch``).

    """

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Value, ...] = ()
    layers: tuple[int, int] = (0, 0)
    steps: tuple[int, ...] = ()

    @property
    def searched(self) -> bool:
        """Whether explore may change this hyperparameter."""
        return self.kind != "const"

    def spec(self) -> str:
        """The string form accepted by :func:`parse_prior`."""
        if self.kind in ("loguniform", "uniform", "int"):
            low: Value = int(self.low) if self.kind == "int" else self.low
            high: Value = int(self.high) if self.kind == "int" else self.high
            return f"{self.kind}:{low}:{high}"
        if self.kind == "arch":
            steps = ",".join(map(str, self.steps))
            return f"arch:{self.layers[0]}:{self.layers[1]}:{int(self.low)}:{int(self.high)}:{steps}"
        return f"{self.kind}:" + ",".join(str(c) for c in self.choices)

    def sample(self, rng: np.random.Generator) -> Value:
        """Draw one value from the prior."""
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "arch":  # (the engine starts every member from --net-arch instead)
            # a layer count, then each layer a multiple of the smallest step within bounds
            grain = min(self.steps)
            first = math.ceil(self.low / grain)
            depth = int(rng.integers(self.layers[0], self.layers[1] + 1))
            sizes = rng.integers(first, int(self.high) // grain + 1, size=depth)
            return format_arch(int(n) * grain for n in sizes)
        return self.choices[0]

    def holds(self, value: object) -> bool:
        """Whether ``value`` is one this prior can produce (within the bounds, an integer for ``int``)."""
        if self.kind in ("choice", "const"):
            return value in self.choices
        if self.kind == "arch":
            try:
                sizes = parse_arch(value)  # type: ignore[arg-type]
            except ValueError:
                return False
            return self.layers[0] <= len(sizes) <= self.layers[1] and all(self.low <= n <= self.high for n in sizes)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def clip(self, value: float) -> Value:
        """Clip a numeric value to the bounds (integers rounded first)."""
        if self.kind == "int":
            return int(min(max(round(value), int(self.low)), int(self.high)))
        return float(min(max(value, self.low), self.high))

    def scale(self, value: Value, factor: float) -> Value:
        """``value * factor`` within the bounds; an integer moves at least one step in the factor's direction.

        round(1 * 1.2) = 1 and round(2 * 0.8) = 2: without the minimum step,
        small integers (policy_delay, gradient_steps, n_epochs near their
        lower bound) would never move by perturbation, only by resampling.
        The step goes the way the product goes (a factor above 1 moves a
        negative integer down); at a bound the value may stay.
        """
        if self.kind != "int":
            return self.clip(float(value) * factor)
        current = int(value)
        moved = round(current * factor)
        if factor == 1:
            return self.clip(moved)
        # the direction the product moves in: away from 0 for a factor above 1 (so down for a negative value);
        # 0 itself goes up for a factor above 1 and down below 1
        step = (1 if factor > 1 else -1) * (-1 if current < 0 else 1)
        if (moved - current) * step <= 0:
            moved = current + step
        return self.clip(moved)

    def perturb(self, value: Value, factors: Sequence[float], rng: np.random.Generator) -> Value:
        """Multiply by a random factor (numeric; see :meth:`scale`) or step to a neighbour (choice)."""
        if self.kind == "choice":
            n = len(self.choices)
            if n == 1:
                return self.choices[0]
            idx = self.choices.index(value) if value in self.choices else int(rng.integers(n))
            step = 1 if rng.random() < 0.5 else -1
            if not 0 <= idx + step < n:
                step = -step
            return self.choices[idx + step]
        if self.kind == "const":
            return self.choices[0]
        factor = float(factors[int(rng.integers(len(factors)))])
        return self.scale(value, factor)


def format_arch(sizes: Iterable[int]) -> str:
    """Hidden layer sizes as an architecture value: ``[128, 64]`` -> ``"128-64"``."""
    return "-".join(str(int(n)) for n in sizes)


def parse_arch(value: Value) -> tuple[int, ...]:
    """An architecture value's hidden layer sizes: ``"128-64"`` (or ``128`` or ``"128,64"``) -> ``(128, 64)``.

    Raises:
        ValueError: naming the value, unless it is one or more positive integers.

    """
    text = str(value).strip().replace(",", "-")
    try:
        sizes = tuple(int(p) for p in text.split("-"))
    except ValueError:
        raise ValueError(f"{value!r} is not an architecture (hidden layer sizes like 64-64)") from None
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"{value!r} is not an architecture (hidden layer sizes like 64-64)")
    return sizes


def _parse_arch_prior(name: str, spec: str, rest: str) -> Prior:
    """``arch:MIN_LAYERS:MAX_LAYERS:MIN_NODES:MAX_NODES[:STEP,STEP,...]``."""
    parts = rest.split(":")
    if len(parts) not in (4, 5):
        raise SpaceError(
            f"{name}: arch prior needs MIN_LAYERS:MAX_LAYERS:MIN_NODES:MAX_NODES[:STEPS], got {spec!r} "
            "(e.g. arch:1:3:32:256:16,32,64)"
        )
    numbers = [_number(p, name) for p in parts[:4]]
    if any(n != int(n) or n < 1 for n in numbers):
        raise SpaceError(f"{name}: arch prior {spec!r} needs positive integer layer and node bounds")
    lo_layers, hi_layers, lo_nodes, hi_nodes = (int(n) for n in numbers)
    steps: tuple[int, ...] = ARCH_STEPS
    if len(parts) == 5:
        try:
            steps = tuple(int(s) for s in parts[4].split(",") if s.strip())
        except ValueError:
            raise SpaceError(f"{name}: arch prior {spec!r}: node steps must be integers") from None
    if lo_layers > hi_layers or lo_nodes > hi_nodes:
        raise SpaceError(f"{name}: arch prior {spec!r} needs MIN <= MAX for layers and nodes")
    if not steps or any(s < 1 for s in steps):
        raise SpaceError(f"{name}: arch prior {spec!r} needs positive node steps")
    if math.ceil(lo_nodes / min(steps)) * min(steps) > hi_nodes:
        raise SpaceError(
            f"{name}: arch prior {spec!r}: no multiple of {min(steps)} nodes lies in [{lo_nodes}, {hi_nodes}]"
        )
    return Prior("arch", low=lo_nodes, high=hi_nodes, layers=(lo_layers, hi_layers), steps=tuple(sorted(set(steps))))


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SpaceError(f"{name}: {text!r} is not a number") from None


def _scalar(text: str) -> Value:
    """Parse a choice/const element: int, float or string, in that order."""
    for cast in (int, float):
        try:
            return cast(text)  # type: ignore[no-any-return]
        except ValueError:
            pass
    return text


def parse_prior(name: str, spec: str | float | int) -> Prior:
    """Parse ``loguniform:LO:HI``, ``uniform:LO:HI``, ``int:LO:HI``,
    ``choice:A,B,C``, ``const:V`` or a bare number (a constant).

    Raises:
        SpaceError: naming the hyperparameter and the offending spec.

    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Prior("const", choices=(spec,))
    if not isinstance(spec, str):
        raise SpaceError(f"{name}: prior must be a string like 'uniform:0:1', got {spec!r}")
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep:
        value = _scalar(spec.strip())
        if isinstance(value, str):
            raise SpaceError(
                f"{name}: cannot parse prior {spec!r} "
                "(expected loguniform:LO:HI, uniform:LO:HI, int:LO:HI, choice:A,B or const:V)"
            )
        return Prior("const", choices=(value,))
    if kind in ("loguniform", "uniform", "int"):
        parts = rest.split(":")
        if len(parts) != 2:
            raise SpaceError(f"{name}: {kind} prior needs LO:HI, got {spec!r}")
        low, high = (_number(p, name) for p in parts)
        if kind == "int" and (low != int(low) or high != int(high)):
            raise SpaceError(f"{name}: int prior bounds must be integers, got {spec!r}")
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise SpaceError(f"{name}: prior {spec!r} needs finite bounds with low < high")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(f"{name}: loguniform prior {spec!r} needs low > 0")
        return Prior(kind, low=low, high=high)
    if kind == "arch":
        return _parse_arch_prior(name, spec, rest)
    if kind in ("choice", "const"):
        values = tuple(_scalar(v.strip()) for v in rest.split(",") if v.strip())
        if not values:
            raise SpaceError(f"{name}: {kind} prior {spec!r} has no values")
        if kind == "const" and len(values) != 1:
            raise SpaceError(f"{name}: const prior {spec!r} takes exactly one value")
        if len(set(values)) != len(values):
            raise SpaceError(f"{name}: choice prior {spec!r} repeats a value")
        return Prior(kind, choices=values)
    raise SpaceError(
        f"{name}: unknown prior kind {kind!r} in {spec!r} (expected loguniform, uniform, int, choice, const or arch)"
    )


def parse_space(specs: Mapping[str, str | float | int]) -> dict[str, Prior]:
    """Parse a ``{name: spec}`` mapping, collecting every error.

    Raises:
        SpaceError: one line per bad entry.

    """
    space: dict[str, Prior] = {}
    errors: list[str] = []
    for name in sorted(specs):
        try:
            space[name] = parse_prior(name, specs[name])
        except SpaceError as exc:
            errors.append(str(exc))
    if errors:
        raise SpaceError("\n".join(errors))
    return space


def sample_hparams(space: Mapping[str, Prior], rng: np.random.Generator) -> dict[str, Value]:
    """Draw every hyperparameter from its prior, in sorted name order."""
    return {name: space[name].sample(rng) for name in sorted(space)}


def explore(
    hparams: Mapping[str, Value],
    space: Mapping[str, Prior],
    factors: Sequence[float],
    resample_probability: float,
    rng: np.random.Generator,
) -> dict[str, Value]:
    """PBT explore: resample each searched hyperparameter with probability p,
    otherwise perturb it (multiply by a factor, or move a choice to a neighbour).

    Results are clipped to the prior's bounds and integers are rounded; a
    factor other than 1 moves an integer by at least one step (within bounds).
    Hyperparameters not in ``space`` or constant are returned unchanged, and so
    are ``net_arch`` and ``activation_fn`` (:data:`MUTATED_APART`).
    """
    out = dict(hparams)
    for name in sorted(space):
        prior = space[name]
        if name in MUTATED_APART:
            continue
        if not prior.searched:
            out[name] = prior.choices[0]
            continue
        if rng.random() < resample_probability:
            out[name] = prior.sample(rng)
        else:
            out[name] = prior.perturb(hparams[name], factors, rng)
    return out
