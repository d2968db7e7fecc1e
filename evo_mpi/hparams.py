"""What each searchable hyperparameter may be: its type and its valid interval.

Pure Python: no MPI, torch or SB3 import. :func:`check_prior` turns a prior
that could ever produce an invalid value (a discount above 1, a negative
rate, zero gradient steps, a string batch size) into one message naming the
hyperparameter, its prior and the offending value, before any rank starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .space import Prior, Value, parse_arch


@dataclass(frozen=True)
class Bounds:
    """A hyperparameter's type and interval.

    Attributes:
        integer: Whether values must be integers (counts, sizes, intervals).
        low: Smallest valid value (or infimum when ``low_open``).
        high: Largest valid value (or supremum when ``high_open``).
        low_open: ``low`` itself is invalid.
        high_open: ``high`` itself is invalid.

    """

    integer: bool
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below and not math.isnan(value)

    def describe(self) -> str:
        """The interval in math notation, e.g. ``(0, 1]`` or ``an integer >= 1``."""
        if self.integer:
            return f"an integer >= {int(self.low)}"
        if self.high == math.inf:
            return f"> {_num(self.low)}" if self.low_open else f">= {_num(self.low)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_POSITIVE = Bounds(False, 0.0, low_open=True)
_NON_NEGATIVE = Bounds(False, 0.0)
_UNIT = Bounds(False, 0.0, 1.0)
_COUNT = Bounds(True, 1.0)

#: Every hyperparameter any algorithm can search, with the values SB3 accepts for it.
BOUNDS: dict[str, Bounds] = {
    "learning_rate": _POSITIVE,
    "gamma": Bounds(False, 0.0, 1.0, low_open=True),
    "gae_lambda": _UNIT,
    "ent_coef": _NON_NEGATIVE,
    "vf_coef": _NON_NEGATIVE,
    "max_grad_norm": _POSITIVE,
    "clip_range": Bounds(False, 0.0, 1.0, low_open=True),
    "n_epochs": _COUNT,
    "batch_size": Bounds(True, 2.0),
    "tau": Bounds(False, 0.0, 1.0, low_open=True),
    "gradient_steps": _COUNT,
    "action_noise_sigma": _NON_NEGATIVE,
    "policy_delay": _COUNT,
    "target_policy_noise": _NON_NEGATIVE,
    "target_noise_clip": _NON_NEGATIVE,
    "target_update_interval": _COUNT,
    "exploration_final_eps": _UNIT,
}


def _values(prior: Prior) -> list[Value]:
    """The values a prior can produce at its extremes (bounds), or all of them (choice/const)."""
    if prior.kind == "int":
        return [int(prior.low), int(prior.high)]
    if prior.kind in ("loguniform", "uniform"):
        return [prior.low, prior.high]
    return list(prior.choices)


def check_prior(name: str, prior: Prior) -> list[str]:
    """Problems with searching ``name`` under ``prior`` (empty when every draw is valid)."""
    if name in ("net_arch", "activation_fn"):
        return _check_network_prior(name, prior)
    bounds = BOUNDS.get(name)
    if bounds is None:
        return []
    where = f"search space: {name}={prior.spec()}"
    if bounds.integer and prior.kind in ("loguniform", "uniform"):
        return [f"{where}: {name} takes integers; use int:LO:HI or choice:A,B"]
    problems = []
    for value in _values(prior):
        if isinstance(value, str) or isinstance(value, bool):
            problems.append(f"{where}: {value!r} is not a number ({name} must be {bounds.describe()})")
        elif bounds.integer and not float(value).is_integer():
            problems.append(f"{where}: {value!r} is not an integer ({name} must be {bounds.describe()})")
        elif not bounds.contains(float(value)):
            problems.append(f"{where}: {value!r} is out of range ({name} must be {bounds.describe()})")
    return problems


def _check_network_prior(name: str, prior: Prior) -> list[str]:
    """``net_arch``: an arch prior, or choices of architectures; ``activation_fn``: choices of known activations."""
    from .arch import ACTIVATIONS

    where = f"search space: {name}={prior.spec()}"
    if name == "net_arch":
        if prior.kind == "arch":
            return []
        if prior.kind not in ("choice", "const"):
            return [f"{where}: net_arch takes arch:MIN_LAYERS:MAX_LAYERS:MIN_NODES:MAX_NODES or choice:64-64,128-64"]
        problems = []
        for value in prior.choices:
            try:
                parse_arch(value)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        return problems
    if prior.kind not in ("choice", "const"):
        return [f"{where}: activation_fn takes choice:{','.join(ACTIVATIONS)} or const:NAME"]
    return [
        f"{where}: unknown activation {value!r} (known: {', '.join(ACTIVATIONS)})"
        for value in prior.choices
        if value not in ACTIVATIONS
    ]
