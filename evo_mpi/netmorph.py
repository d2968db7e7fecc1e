"""Moving trained weights and optimizer state into a network of another architecture (torch only).

The SB3 adapter rebuilds a member's policy with new hidden layer sizes or a
new activation and calls :func:`carry_over` to fill it from the old one:

* every weight that exists in both keeps its value (the overlapping slice);
* new outgoing weights of added nodes are zero, so growth leaves the
  network's outputs unchanged (Net2Net's function-preserving rule); added
  nodes' incoming weights and biases keep the fresh network's initialisation;
* an appended layer is the identity (weights ``I``, bias 0); after a ReLU its
  input is >= 0 and ``ReLU(I x) = x``, so it changes nothing either;
* optimizer state (Adam's moments, RMSprop's averages) follows the weights
  slice for slice, with zeros for new entries and the old step count, and
  starts from zero for an appended layer.

Networks are found by structure: each ``nn.Sequential`` is a chain of
``nn.Linear`` layers, one per hidden layer, plus possibly its output layer;
Linear layers outside a chain (heads such as PPO's ``action_net``) keep their
names. This covers every SB3 MLP policy (PPO, A2C, SAC, TD3, DDPG, DQN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .arch import WeightNoise, weight_noise

#: ``activation_fn`` values and their torch modules.
ACTIVATION_CLASSES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def activation_name(cls: type[nn.Module]) -> str:
    """The ``activation_fn`` value of a torch activation class."""
    for name, known in ACTIVATION_CLASSES.items():
        if known is cls:
            return name
    raise ValueError(f"no activation_fn name for {cls.__name__} (known: {', '.join(ACTIVATION_CLASSES)})")


def linear_chains(module: nn.Module) -> dict[str, list[str]]:
    """Every ``nn.Sequential`` of ``module`` with Linear layers: path -> the paths of its Linear layers, in order."""
    chains: dict[str, list[str]] = {}
    for path, sub in module.named_modules():
        if isinstance(sub, nn.Sequential):
            linears = [f"{path}.{n}" if path else n for n, m in sub.named_children() if isinstance(m, nn.Linear)]
            if linears:
                chains[path] = linears
    return chains


def source_map(
    old: nn.Module, new: nn.Module, old_arch: Sequence[int], new_arch: Sequence[int]
) -> dict[str, str | None]:
    """For every Linear layer of ``new`` in a chain, the path of the old Linear it comes from (None: identity).

    Chain position ``k`` holds hidden layer ``k``; a chain with one more Linear
    than hidden layers ends in its output layer, which maps to the old output
    layer. Hidden layers beyond the old count are appended identity layers.
    """
    old_chains, new_chains = linear_chains(old), linear_chains(new)
    if set(old_chains) != set(new_chains):
        raise ValueError(f"networks differ in structure: {sorted(old_chains)} vs {sorted(new_chains)}")
    n_old, n_new = len(old_arch), len(new_arch)
    mapping: dict[str, str | None] = {}
    for path, new_linears in new_chains.items():
        old_linears = old_chains[path]
        head = len(old_linears) - n_old
        if head not in (0, 1) or len(new_linears) - n_new != head:
            raise ValueError(f"{path}: {len(old_linears)} Linear layers do not fit hidden layers {list(old_arch)}")
        for k, name in enumerate(new_linears):
            if k < min(n_old, n_new):
                mapping[name] = old_linears[k]
            elif k < n_new:
                mapping[name] = None  # an appended hidden layer
            else:
                mapping[name] = old_linears[n_old]  # the chain's output layer
    return mapping


def _overlap(old: torch.Tensor, into: torch.Tensor, zero_new_inputs: bool) -> None:
    """Copy the overlapping slice of ``old`` into ``into``; with ``zero_new_inputs`` a matrix's new columns become 0."""
    if zero_new_inputs and into.dim() == 2 and into.shape[1] > old.shape[1]:
        into[:, old.shape[1] :] = 0.0
    index = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, into.shape, strict=True))
    into[index] = old[index]


def _identity(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    weight.zero_()
    n = min(weight.shape)
    weight[torch.arange(n), torch.arange(n)] = 1.0
    if bias is not None:
        bias.zero_()


def carry_over(
    old: nn.Module,
    new: nn.Module,
    old_arch: Sequence[int],
    new_arch: Sequence[int],
    optimizer_pairs: Sequence[tuple[torch.optim.Optimizer, torch.optim.Optimizer]],
) -> None:
    """Fill ``new`` (a freshly built network of ``new_arch``) from ``old`` (``old_arch``), weights and optimizer state.

    ``optimizer_pairs`` are (old optimizer, new optimizer) of the two networks;
    every new optimizer must already hold its (zero) state for every parameter.
    """
    mapping = source_map(old, new, old_arch, new_arch)
    old_modules = dict(old.named_modules())
    old_state = old.state_dict(keep_vars=True)
    sources: dict[int, torch.Tensor | None] = {}  # id(new tensor) -> old tensor it comes from (None: identity)
    with torch.no_grad():
        for key, tensor in new.state_dict(keep_vars=True).items():
            path, _, leaf = key.rpartition(".")
            if path in mapping:
                origin = mapping[path]
                if origin is None:
                    module = dict(new.named_modules())[path]
                    assert isinstance(module, nn.Linear)
                    _identity(module.weight, module.bias)
                    sources[id(tensor)] = None
                    continue
                source = getattr(old_modules[origin], leaf)
            else:
                source = old_state[key]
            _overlap(source.detach(), tensor.data, zero_new_inputs=leaf == "weight")
            sources[id(tensor)] = source
    for old_opt, new_opt in optimizer_pairs:
        _carry_optimizer(old_opt, new_opt, sources)


def _carry_optimizer(
    old_opt: torch.optim.Optimizer, new_opt: torch.optim.Optimizer, sources: Mapping[int, torch.Tensor | None]
) -> None:
    with torch.no_grad():
        for group in new_opt.param_groups:
            for p in group["params"]:
                source = sources.get(id(p))
                state = new_opt.state[p]
                if source is None:  # an identity layer, or a tensor with no origin: fresh (zero) state
                    continue
                saved = old_opt.state.get(source, {})
                for name, value in state.items():
                    old_value = saved.get(name)
                    if not isinstance(value, torch.Tensor) or not isinstance(old_value, torch.Tensor):
                        continue
                    if value.dim() == 0:  # a step count
                        value.copy_(old_value)
                    else:
                        value.zero_()
                        _overlap(old_value, value, zero_new_inputs=False)


def add_weight_noise(network: nn.Module, noise: WeightNoise) -> int:
    """Apply a weight mutation to every trained Linear weight matrix of ``network``; returns entries changed.

    Target networks (paths containing ``target``) are left alone: they follow
    the trained ones by Polyak averaging. Matrices are visited in module
    order and each draws its entries and noise from one stream seeded by
    ``noise.seed``, so the same decision changes the same entries anywhere.
    """
    rng = np.random.default_rng(noise.seed)
    changed = 0
    with torch.no_grad():
        for path, module in network.named_modules():
            if not isinstance(module, nn.Linear) or "target" in path:
                continue
            flat = module.weight.data.view(-1)
            index, values = weight_noise(flat.cpu().numpy(), noise, rng)  # .cpu(): no copy on the CPU
            flat[torch.from_numpy(index).to(flat.device)] = torch.from_numpy(values).to(flat.device)
            changed += index.size
    return changed
