import numpy as np
import pytest

from evo_mpi import algorithms
from evo_mpi.space import SpaceError, explore, parse_prior, parse_space, sample_hparams


def test_parse_kinds_and_roundtrip_spec():
    for spec in ["loguniform:1e-05:0.01", "uniform:0.1:0.4", "int:3:20", "choice:32,64,128", "const:0.99"]:
        prior = parse_prior("x", spec)
        assert parse_prior("x", prior.spec()) == prior
    assert parse_prior("x", 0.5).kind == "const"
    assert parse_prior("x", "choice:tanh,relu").choices == ("tanh", "relu")


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("uniform:1:1", "low < high"),
        ("uniform:2:1", "low < high"),
        ("loguniform:0:1", "low > 0"),
        ("int:1.5:3", "integers"),
        ("uniform:a:1", "'a' is not a number"),
        ("gauss:0:1", "unknown prior kind 'gauss'"),
        ("choice:", "no values"),
        ("choice:1,1", "repeats"),
        ("uniform:1", "needs LO:HI"),
        ("banana", "cannot parse prior 'banana'"),
    ],
)
def test_parse_errors_name_the_value(spec, fragment):
    with pytest.raises(SpaceError) as err:
        parse_prior("lr", spec)
    assert fragment in str(err.value)
    assert str(err.value).startswith("lr:")


def test_parse_space_collects_every_error():
    with pytest.raises(SpaceError) as err:
        parse_space({"a": "uniform:2:1", "b": "int:1:5", "c": "nope:1"})
    assert len(str(err.value).splitlines()) == 2


def test_samples_within_bounds_and_typed():
    space = parse_space(algorithms.get("ppo").default_space)
    rng = np.random.default_rng(0)
    for _ in range(200):
        hp = sample_hparams(space, rng)
        for name, prior in space.items():
            v = hp[name]
            if prior.kind in ("uniform", "loguniform"):
                assert isinstance(v, float) and prior.low <= v <= prior.high
            elif prior.kind == "int":
                assert isinstance(v, int) and prior.low <= v <= prior.high
            else:
                assert v in prior.choices


def test_loguniform_covers_decades_evenly():
    prior = parse_prior("lr", "loguniform:1e-5:1e-1")
    rng = np.random.default_rng(0)
    logs = np.log10([prior.sample(rng) for _ in range(4000)])
    hist, _ = np.histogram(logs, bins=4, range=(-5, -1))
    assert hist.min() > 850 and hist.max() < 1150


def test_perturb_multiplies_and_clips():
    space = parse_space({"x": "uniform:0:1", "n": "int:1:10"})
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        out = explore({"x": 0.5, "n": 5}, space, (0.8, 1.2), 0.0, rng)
        seen.add(out["x"])
        assert out["n"] in (4, 6) and isinstance(out["n"], int)
    assert seen == {0.4, 0.6}
    # clipping at the bounds
    for _ in range(20):
        out = explore({"x": 0.95, "n": 10}, space, (2.0,), 0.0, rng)
        assert out == {"x": 1.0, "n": 10}


def test_resample_probability_one_draws_from_prior():
    space = parse_space({"x": "uniform:10:20"})
    rng = np.random.default_rng(0)
    values = [explore({"x": 0.0}, space, (0.8, 1.2), 1.0, rng)["x"] for _ in range(100)]
    assert all(10 <= v <= 20 for v in values)
    assert len(set(values)) == 100


def test_choice_moves_to_neighbour():
    space = parse_space({"b": "choice:32,64,128,256"})
    rng = np.random.default_rng(0)
    for start, allowed in [(32, {64}), (64, {32, 128}), (256, {128})]:
        seen = {explore({"b": start}, space, (0.8, 1.2), 0.0, rng)["b"] for _ in range(40)}
        assert seen == allowed


def test_const_and_unsearched_untouched_and_seeded():
    space = parse_space({"g": "const:0.99", "x": "loguniform:1e-4:1e-2"})
    hp = {"g": 0.99, "x": 1e-3, "other": 7}
    a = explore(hp, space, (0.8, 1.2), 0.25, np.random.default_rng(5))
    b = explore(hp, space, (0.8, 1.2), 0.25, np.random.default_rng(5))
    assert a == b and a["g"] == 0.99 and a["other"] == 7
    # without resampling the value is exactly one of the two perturbations, never anything else
    perturbed = {explore(hp, space, (0.8, 1.2), 0.0, np.random.default_rng(s))["x"] for s in range(40)}
    assert perturbed == {1e-3 * 0.8, 1e-3 * 1.2}
    # with resampling it comes from the prior: many distinct values, mostly not the perturbations
    drawn = [explore(hp, space, (0.8, 1.2), 1.0, np.random.default_rng(s))["x"] for s in range(40)]
    assert all(1e-4 <= x <= 1e-2 for x in drawn) and len(set(drawn) - perturbed) == 40


INT_PRIORS = ["int:1:4", "int:0:3", "int:3:20", "int:100:5000"]
FACTORS = [0.5, 0.8, 0.95, 1.0, 1.05, 1.2, 2.0]


@pytest.mark.parametrize("spec", INT_PRIORS)
def test_integer_perturbation_moves_at_least_one_step(spec):
    """round(1 x 1.2) = 1 and round(2 x 0.8) = 2 used to leave small integers where they were."""
    prior = parse_prior("n", spec)
    low, high = int(prior.low), int(prior.high)
    rng = np.random.default_rng(0)
    for value in range(low, high + 1):
        for factor in FACTORS:
            out = prior.perturb(value, (factor,), rng)  # one factor: the draw cannot pick another
            assert isinstance(out, int) and low <= out <= high, (value, factor, out)
            if factor == 1.0:
                assert out == value, (value, out)
            elif factor > 1:
                assert out >= value + 1 or value == high, (value, factor, out)
            else:
                assert out <= value - 1 or value == low, (value, factor, out)
            plain = min(max(round(value * factor), low), high)
            if plain != value:  # the plain product already moves: the minimum step does not interfere
                assert out == plain, (value, factor, out, plain)


def test_policy_delay_leaves_one_by_perturbation():
    space = parse_space({"policy_delay": "int:1:4"})
    seen = {
        explore({"policy_delay": 1}, space, (0.8, 1.2), 0.0, np.random.default_rng(s))["policy_delay"]
        for s in range(40)
    }
    assert seen == {1, 2}  # 0.8 keeps it at the bound, 1.2 moves it up


def test_negative_integers_move_the_way_the_product_does():
    """-3 x 1.2 = -3.6 rounds to -4: a factor above 1 moves a negative integer down, below 1 up."""
    prior = parse_prior("n", "int:-5:5")
    for value in range(-5, 6):
        for factor in FACTORS:
            out = prior.perturb(value, (factor,), np.random.default_rng(0))
            assert isinstance(out, int) and -5 <= out <= 5
            if factor == 1.0:
                assert out == value
                continue
            plain = min(max(round(value * factor), -5), 5)
            direction = (1 if factor > 1 else -1) * (-1 if value < 0 else 1)
            if plain != value:
                assert out == plain, (value, factor, out)
            assert out == value + direction or out == plain or out in (-5, 5), (value, factor, out)
            assert (out - value) * direction >= 0, (value, factor, out)
    assert prior.perturb(-3, (1.2,), np.random.default_rng(0)) == -4
    assert prior.perturb(-1, (1.2,), np.random.default_rng(0)) == -2
    assert prior.perturb(-1, (0.8,), np.random.default_rng(0)) == 0
