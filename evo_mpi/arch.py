"""Mutations beyond hyperparameters (AgileRL-style): which kind a member draws, architecture and weight mutation.

Pure numpy: no MPI, torch or SB3 import. Each function takes an explicit
``np.random.Generator`` so every rank can reproduce any member's draws. The
SB3 adapter (:mod:`evo_mpi.netmorph`) carries out what is decided here.

Kinds, each drawn with a relative weight (``--mutation-probs``):

* ``none``: keep the donor's hyperparameters and weights as they are;
* ``hparams``: PBT's explore (perturb or resample, or PB2);
* ``arch``: one architecture change (:func:`mutate_arch`), function-preserving on growth;
* ``weights``: Gaussian noise on a fraction of the weights (:func:`weight_noise`);
* ``activation``: another activation function from the ``activation_fn`` prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .records import WeightNoise as WeightNoise  # defined with the records that hold it; imported from here too
from .space import Prior, Value, format_arch, parse_arch

MUTATION_KINDS = ("none", "hparams", "arch", "weights", "activation")

#: Activation functions an ``activation_fn`` hyperparameter may name (torch.nn classes in :mod:`netmorph`).
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "leaky_relu", "silu")

#: Activations under which an identity-initialised new layer computes exactly what the network did:
#: its input is the previous layer's ReLU output (>= 0), and ReLU(I x) = x there.
IDENTITY_EXACT = ("relu",)

#: Weight-mutation variants and their probabilities (AgileRL's normal / super / reset mutations):
#: normal adds N(0, sd), super adds N(0, 10 sd), reset replaces the weight with N(0, sd).
WEIGHT_VARIANTS = (("normal", 0.85), ("super", 0.05), ("reset", 0.10))
SUPER_FACTOR = 10.0


class MutationSpecError(ValueError):
    """A ``--mutation-probs`` text that cannot be parsed."""


def parse_mutation_probs(text: str) -> dict[str, float]:
    """``"none=0.1,hparams=0.5,arch=0.2"`` -> relative weights of the named kinds (others 0).

    Raises:
        MutationSpecError: naming the bad entry.

    """
    weights: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in MUTATION_KINDS:
            raise MutationSpecError(
                f"--mutation-probs: {item!r} is not KIND=WEIGHT with KIND one of {', '.join(MUTATION_KINDS)}"
            )
        try:
            weight = float(value)
        except ValueError:
            raise MutationSpecError(f"--mutation-probs: {item!r}: {value.strip()!r} is not a number") from None
        if not weight >= 0 or weight == float("inf"):
            raise MutationSpecError(f"--mutation-probs: {item!r}: weights must be finite and >= 0")
        if name in weights:
            raise MutationSpecError(f"--mutation-probs: {name} is given twice")
        weights[name] = weight
    if weights and sum(weights.values()) <= 0:
        raise MutationSpecError(f"--mutation-probs {text!r}: at least one weight must be positive")
    return weights


def default_mutation_probs(space: Mapping[str, Prior]) -> dict[str, float]:
    """Weights when ``--mutation-probs`` is empty: PBT's explore, plus one share per searched arch or activation."""
    weights = {"hparams": 1.0}
    if "net_arch" in space and space["net_arch"].kind == "arch":
        weights["arch"] = 1.0
    if "activation_fn" in space and space["activation_fn"].kind == "choice":
        weights["activation"] = 1.0
    return weights


def draw_kind(weights: Mapping[str, float], rng: np.random.Generator) -> str:
    """One mutation kind, with probability proportional to its weight (one uniform draw)."""
    kinds = [k for k in MUTATION_KINDS if weights.get(k, 0.0) > 0]
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    edges = np.cumsum(p / p.sum())
    return kinds[min(int(np.searchsorted(edges, rng.random(), side="right")), len(kinds) - 1)]


def arch_ops(sizes: Sequence[int], prior: Prior, activation: str) -> list[str]:
    """The architecture changes the prior's bounds allow from ``sizes``.

    Layers are added or removed only where growth can be exact
    (:data:`IDENTITY_EXACT`); under other activations the layer count stays as
    sampled, so removal alone cannot shrink every network over time.
    """
    ops = []
    layered = activation in IDENTITY_EXACT
    if layered and len(sizes) < prior.layers[1]:
        ops.append("add_layer")
    if layered and len(sizes) > prior.layers[0]:
        ops.append("remove_layer")
    if any(n < prior.high for n in sizes):
        ops.append("add_nodes")
    if any(n > prior.low for n in sizes):
        ops.append("remove_nodes")
    return ops


def mutate_arch(arch: Value, prior: Prior, activation: str, rng: np.random.Generator) -> tuple[str, str]:
    """One architecture change of ``arch`` within ``prior``: ``(new arch, what changed)``.

    ``add_layer`` appends a copy of the last layer's size (an identity layer on
    the weights side); ``remove_layer`` drops the last hidden layer; ``add_nodes``
    / ``remove_nodes`` change one random layer by a random step, clipped to the
    node bounds. With no change allowed the architecture is returned as is.
    """
    sizes = list(parse_arch(arch))
    ops = arch_ops(sizes, prior, activation)
    if not ops:
        return format_arch(sizes), "none"
    op = ops[int(rng.integers(len(ops)))]
    if op == "add_layer":
        sizes.append(sizes[-1])
        return format_arch(sizes), op
    if op == "remove_layer":
        sizes.pop()
        return format_arch(sizes), op
    step = int(prior.steps[int(rng.integers(len(prior.steps)))])
    if op == "add_nodes":
        layers = [i for i, n in enumerate(sizes) if n < prior.high]
        i = layers[int(rng.integers(len(layers)))]
        sizes[i] = int(min(prior.high, sizes[i] + step))
    else:
        layers = [i for i, n in enumerate(sizes) if n > prior.low]
        i = layers[int(rng.integers(len(layers)))]
        sizes[i] = int(max(prior.low, sizes[i] - step))
    return format_arch(sizes), f"{op}:{i}"


def mutate_activation(current: Value, prior: Prior, rng: np.random.Generator) -> str:
    """Another activation from a ``choice`` prior (the current one when it is the only choice)."""
    others = [str(c) for c in prior.choices if str(c) != str(current)]
    if not others:
        return str(current)
    return others[int(rng.integers(len(others)))]


def draw_weight_noise(fraction: float, sd: float, rng: np.random.Generator) -> WeightNoise:
    """Pick a variant (:data:`WEIGHT_VARIANTS`) and a seed for :func:`weight_noise`."""
    names = [v for v, _ in WEIGHT_VARIANTS]
    p = np.array([w for _, w in WEIGHT_VARIANTS])
    variant = names[min(int(np.searchsorted(np.cumsum(p), rng.random(), side="right")), len(names) - 1)]
    return WeightNoise(variant, float(fraction), float(sd), int(rng.integers(2**63 - 1)))


def weight_noise(values: np.ndarray, noise: WeightNoise, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which entries of one flattened weight matrix change, and their new values.

    ``round(fraction * size)`` distinct entries (at least one) are chosen
    uniformly; returns ``(indices, new values)`` for them.
    """
    size = values.size
    count = min(size, max(1, round(noise.fraction * size)))
    index = np.sort(rng.choice(size, size=count, replace=False))
    if noise.variant == "reset":
        new = noise.sd * rng.standard_normal(count)
    else:
        scale = noise.sd * (SUPER_FACTOR if noise.variant == "super" else 1.0)
        new = values[index] + scale * rng.standard_normal(count)
    return index, new.astype(values.dtype)
