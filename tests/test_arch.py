"""Pure architecture and mutation logic: bounds, allowed changes, draws (no torch, no MPI)."""

import numpy as np
import pytest

from evo_mpi.arch import (
    arch_ops,
    default_mutation_probs,
    draw_weight_noise,
    mutate_activation,
    mutate_arch,
    parse_mutation_probs,
    weight_noise,
)
from evo_mpi.space import explore, parse_arch, parse_prior, parse_space

PRIOR = parse_prior("net_arch", "arch:1:3:32:128:16,32")


def test_arch_values_parse_and_print():
    assert parse_arch("128-64-64") == (128, 64, 64)
    assert parse_arch(64) == (64,)
    for bad in ("", "64-", "0-64", "a-b"):
        with pytest.raises(ValueError, match="is not an architecture"):
            parse_arch(bad)
    assert PRIOR.spec() == "arch:1:3:32:128:16,32"
    assert parse_prior("net_arch", PRIOR.spec()) == PRIOR


def test_every_change_stays_within_the_bounds_and_changes_one_thing():
    rng = np.random.default_rng(1)
    seen = set()
    arch = "64-64"
    for _ in range(2000):
        new, op = mutate_arch(arch, PRIOR, "relu", rng)
        old_sizes, sizes = parse_arch(arch), parse_arch(new)
        kind = op.split(":")[0]
        seen.add(kind)
        assert 1 <= len(sizes) <= 3 and all(32 <= n <= 128 for n in sizes)
        if kind == "add_layer":
            assert sizes == (*old_sizes, old_sizes[-1])
        elif kind == "remove_layer":
            assert sizes == old_sizes[:-1]
        else:
            layer = int(op.split(":")[1])
            assert len(sizes) == len(old_sizes)
            assert [i for i in range(len(sizes)) if sizes[i] != old_sizes[i]] == [layer]
            step = sizes[layer] - old_sizes[layer]
            assert (step > 0) == (kind == "add_nodes")
            assert abs(step) in (16, 32) or sizes[layer] in (32, 128)  # a step, or clipped to a bound
        arch = new
    assert seen == {"add_layer", "remove_layer", "add_nodes", "remove_nodes"}


def test_layers_change_only_under_relu():
    assert set(arch_ops((64, 64), PRIOR, "tanh")) == {"add_nodes", "remove_nodes"}
    assert set(arch_ops((64, 64), PRIOR, "relu")) == {"add_layer", "remove_layer", "add_nodes", "remove_nodes"}
    assert arch_ops((128, 128, 128), PRIOR, "relu") == ["remove_layer", "remove_nodes"]
    assert arch_ops((32,), PRIOR, "relu") == ["add_layer", "add_nodes"]
    fixed = parse_prior("net_arch", "arch:2:2:64:64")
    assert mutate_arch("64-64", fixed, "relu", np.random.default_rng(0)) == ("64-64", "none")


def test_explore_never_touches_architecture_or_activation():
    space = parse_space(
        {"net_arch": "arch:1:3:32:128", "activation_fn": "choice:relu,tanh", "gamma": "uniform:0.9:0.99"}
    )
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = explore({"net_arch": "64-64", "activation_fn": "tanh", "gamma": 0.95}, space, (0.8, 1.2), 0.5, rng)
        assert out["net_arch"] == "64-64" and out["activation_fn"] == "tanh" and out["gamma"] != 0.95


def test_activation_mutation_picks_another_choice():
    prior = parse_prior("activation_fn", "choice:relu,tanh,elu")
    rng = np.random.default_rng(0)
    picks = {mutate_activation("relu", prior, rng) for _ in range(100)}
    assert picks == {"tanh", "elu"}
    assert mutate_activation("relu", parse_prior("activation_fn", "const:relu"), rng) == "relu"


def test_mutation_probs_parse_and_default():
    assert parse_mutation_probs("none=0.1, arch=2") == {"none": 0.1, "arch": 2.0}
    assert parse_mutation_probs("") == {}
    with pytest.raises(ValueError, match="arch is given twice"):
        parse_mutation_probs("arch=1,arch=2")
    space = parse_space({"net_arch": "arch:1:3:32:128", "activation_fn": "choice:relu,tanh"})
    assert default_mutation_probs(space) == {"hparams": 1.0, "arch": 1.0, "activation": 1.0}
    assert default_mutation_probs(parse_space({"net_arch": "choice:64,128"})) == {"hparams": 1.0}


@pytest.mark.parametrize("fraction, size", [(0.1, 1000), (0.25, 37), (0.001, 50)])
def test_weight_noise_changes_the_chosen_fraction(fraction, size):
    values = np.random.default_rng(3).standard_normal(size).astype(np.float32)
    noise = draw_weight_noise(fraction, 0.1, np.random.default_rng(4))
    index, new = weight_noise(values, noise, np.random.default_rng(noise.seed))
    assert index.size == max(1, round(fraction * size)) == np.unique(index).size
    assert np.all(new != values[index])
    # the same decision picks the same entries and values anywhere
    again = weight_noise(values, noise, np.random.default_rng(noise.seed))
    assert np.array_equal(again[0], index) and np.array_equal(again[1], new)
