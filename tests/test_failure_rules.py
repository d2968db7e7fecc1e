"""The pure part of member failures: who a failed member copies, what is caught, when the run stops."""

import math

import numpy as np
import pytest

from evo_mpi import failures
from evo_mpi.selection import repair, select


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_repair_gives_every_failed_member_a_healthy_donor_from_the_top():
    # members 1 and 4 failed (NaN); healthy by fitness: 3 (9.0), 0 (5.0), 2 (1.0), 5 (NaN: no episode yet)
    fitness = np.array([5.0, math.nan, 1.0, 9.0, math.nan, math.nan])
    for seed in range(200):
        donors = repair({}, fitness, [1, 4], 0.5, rng(seed))
        assert set(donors) == {1, 4}
        assert all(donor in (3, 0) for donor in donors.values())  # top ceil(0.5 * 4) = 2 healthy members
    donors = {repair({}, fitness, [1, 4], 0.5, rng(seed))[1] for seed in range(200)}
    assert donors == {0, 3}  # drawn, not always the best
    # with only member 1 failed, member 4 counts as healthy: top ceil(0.5 * 5) = 3 (3, 0, 2)
    assert {repair({}, fitness, [1], 0.5, rng(seed))[1] for seed in range(200)} == {0, 2, 3}


def test_repair_keeps_the_rules_donors_and_needs_a_healthy_member():
    fitness = np.array([5.0, math.nan, 1.0, 9.0])
    assert repair({1: 0, 2: 3}, fitness, [1], 0.25, rng())[1] == 0  # the rule's own pick stands
    assert repair({2: 3}, fitness, [1], 0.25, rng()) == {2: 3, 1: 3}  # ceil(0.25 * 3) = 1 donor: the best
    assert repair({}, np.full(3, math.nan), [0, 1, 2], 0.25, rng()) == {}  # nobody healthy: nothing to copy
    # a healthy member without finite fitness is still a donor when it is all there is
    assert repair({}, np.array([math.nan, math.nan]), [0], 0.5, rng()) == {0: 1}


@pytest.mark.parametrize("rule", ["none", "wta", "tournament", "truncation"])
def test_a_failed_member_is_never_a_donor_and_always_a_loser_after_repair(rule):
    fitness = np.array([3.0, math.nan, 2.0, 1.0, 4.0])
    donors = select(rule, fitness, rng(), tournament_size=5)
    assert 1 not in donors.values()
    repaired = repair(donors, fitness, [1], 0.25, rng(1))
    assert repaired[1] != 1 and 1 not in repaired.values()


def test_attempt_catches_the_members_error_but_not_the_pollers():
    def member_fails(poll):
        poll()
        raise ValueError("bad state")

    value, exc = failures.attempt(member_fails, lambda: False)
    assert value is None and isinstance(exc, ValueError)
    assert failures.attempt(lambda poll: 42)[0] == 42

    def broken_poll():
        raise OSError("communication lost")

    with pytest.raises(OSError, match="communication lost"):  # the engine's own error: not a member failure
        failures.attempt(lambda poll: poll(), broken_poll)
    with pytest.raises(KeyboardInterrupt):
        failures.attempt(lambda poll: (_ for _ in ()).throw(KeyboardInterrupt()))


def test_describe_limits_the_message_and_stop_reason_counts():
    failure = failures.describe(RuntimeError("x" * 2000), "training")
    assert failure["type"] == "RuntimeError" and failure["phase"] == "training"
    assert len(failure["message"]) == failures.MAX_MESSAGE and failure["message"].endswith("...")
    assert failures.limit(-1, 8) == 8 and failures.limit(3, 8) == 3
    assert failures.stop_reason(1, 4, 4, 4, "generation 2") is None  # 4 failures tolerated
    assert failures.stop_reason(1, 4, 5, 4, "generation 2") == "5 member failure(s) so far, more than --max-failures 4"
    assert failures.stop_reason(4, 4, 4, 10, "generation 2") == "every member failed in generation 2"


def test_log_traceback_appends_the_whole_traceback(tmp_path):
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        failures.log_traceback(str(tmp_path), "member 3 failed", exc)
        failures.log_traceback(str(tmp_path), "member 4 failed", exc)
    text = (tmp_path / "errors.log").read_text()
    assert text.count("Traceback (most recent call last)") == 2
    assert text.index("member 3 failed") < text.index("member 4 failed")
    assert "RuntimeError: boom" in text
