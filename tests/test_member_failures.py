"""One member's exception costs that member, not the run (sync, async, one process and -n 2).

The env is tests.buggy_envs:FlakyCartPole-v0: the env whose first reset seed
is in ``fail_seeds`` (every env when None) raises at its ``fail_step``-th step.
Member ``m``'s env ``i`` is first reset with ``derive_seed(seed, INIT, m) + i``.
"""

import json
import signal
from pathlib import Path

import pytest

from evo_mpi import seeding
from evo_mpi.records import step_of
from helpers import launch, no_rank_left, read_history, run_evo, wait_for_line

SEED, STEPS, GENERATIONS = 7, 256, 5
#: 2 envs x 128 steps per generation: a 200th step falls in generation 1.
FAIL_STEP, FAIL_GENERATION, FAILING = 200, 1, 1


def base(mode: str = "sync", generations: int = GENERATIONS) -> list[str]:
    return [
        "--env-id", "tests.buggy_envs:FlakyCartPole-v0",
        "--seed", str(SEED),
        "--generations", str(generations),
        "--steps-per-generation", str(STEPS),
        "--n-envs", "2",
        "--n-steps", "64",
        "--search-space", "batch_size=choice:32,64,128",
        "--search-space", "n_epochs=int:1:3",
        "--final-eval-episodes", "2",
        "--mode", mode,
    ]  # fmt: skip


def fail(member: int | None, step: int = FAIL_STEP) -> list[str]:
    """--env-kwargs making env 0 of ``member`` (every env when None) raise at ``step``."""
    seeds = None if member is None else [seeding.derive_seed(SEED, seeding.INIT, member)]
    return ["--env-kwargs", json.dumps({"fail_step": step, "fail_seeds": seeds})]


def layout(n: int | None) -> list[str]:
    """A population of 4 on either layout."""
    return ["--agents-per-rank", "4" if n is None else str(4 // n)]


def run(tmp_path: Path, name: str, args: list[str], n: int | None = None, check: bool = True):
    run_dir = tmp_path / name
    proc = run_evo([*args, "--run-dir", str(run_dir)], n, check=check)
    return run_dir, proc


def strip(records: list[dict], keys=("rank", "wall", "unix", "fetch_s")) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in records]


def failure_records(history: list[dict]) -> list[dict]:
    return [r for r in history if "failure" in r]


@pytest.fixture(scope="module")
def sync_runs(tmp_path_factory):
    """The same sync run (one process) without a failure, and with member 1 failing."""
    tmp = tmp_path_factory.mktemp("sync_failures")
    healthy, _ = run(tmp, "healthy", [*base(), *layout(None), *fail(FAILING, -1)])
    alone, out = run(tmp, "alone", [*base(), *layout(None), *fail(FAILING)])
    return healthy, alone, out.stdout


def test_sync_failure_costs_one_member_which_copies_a_donor(sync_runs):
    healthy, alone, stdout = sync_runs
    history = read_history(alone)
    (record,) = failure_records(history)  # the rebuilt env does not fail again
    assert (record["member"], step_of(record)) == (FAILING, FAIL_GENERATION)
    assert record["failure"]["type"] == "RuntimeError"
    assert f"simulated env bug at step {FAIL_STEP}" in record["failure"]["message"]
    assert record["failure"]["phase"] == "training"
    assert record["fitness"] is None and record["fitness_missing"] == "failed"
    assert record["parent"] not in (None, FAILING)  # it copied a healthy donor at the decision
    lineage = [json.loads(line) for line in (alone / "lineage.jsonl").read_text().splitlines()]
    assert any(r["loser"] == FAILING and step_of(r) == FAIL_GENERATION for r in lineage)
    later = [r for r in history if r["member"] == FAILING and step_of(r) > FAIL_GENERATION]
    assert later and all(r["fitness"] is not None for r in later)
    assert f"warning: generation {FAIL_GENERATION}: member {FAILING} failed while training: RuntimeError" in stdout
    assert "failed 1 (run 1)" in stdout
    errors = (alone / "errors.log").read_text()
    assert f"member {FAILING} on rank 0 failed in generation {FAIL_GENERATION} while training" in errors
    assert "Traceback (most recent call last)" in errors and "simulated env bug" in errors
    # every record before the failure equals the run without the failing env
    before = [r for r in history if step_of(r) < FAIL_GENERATION]
    assert before and before == [r for r in read_history(healthy) if step_of(r) < FAIL_GENERATION]
    assert history != read_history(healthy)
    # the run finished: champion among members that did not fail last, failures counted
    assert (alone / "best.zip").exists() and len(list((alone / "final").glob("member_*.zip"))) == 4
    champion = json.loads((alone / "champion.json").read_text())
    assert champion["failures"] == 1 and champion["excluded"] == []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(alone / "tb" / "population"))
    board.Reload()
    assert [e.value for e in board.Scalars("population/failures")] == [0, 1, 0, 0, 0]  # per generation
    assert [e.value for e in board.Scalars("population/failures_total")] == [0, 1, 1, 1, 1]


def test_sigterm_after_a_failure_then_resume_gives_the_uninterrupted_history(sync_runs, tmp_path):
    """On 2 ranks: the same failure, repair and history as in one process, also across a stop and resume."""
    _, alone, _ = sync_runs
    run_dir = tmp_path / "stopped"
    proc = launch([*base(), *layout(2), *fail(FAILING), "--run-dir", str(run_dir)], 2)
    wait_for_line(proc, f"gen   {FAIL_GENERATION + 2}/")  # the failure and its repair are behind
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 75
    assert len(failure_records(read_history(run_dir))) == 1
    assert "member 1 on rank 0 failed" in (run_dir / "errors.log").read_text()  # members 0, 1 live on rank 0
    run_evo(["--resume", str(run_dir)], 2)
    assert strip(read_history(run_dir)) == strip(read_history(alone))


def test_more_failures_than_max_failures_stop_with_healthy_models_then_a_fixed_resume(sync_runs, tmp_path):
    healthy, _, _ = sync_runs
    run_dir, proc = run(
        tmp_path, "strict", [*base(), *layout(None), *fail(FAILING), "--max-failures", "0"], None, False
    )
    assert proc.returncode == 3, proc.stderr
    assert "1 member failure(s) so far, more than --max-failures 0: the run stops" in proc.stdout
    assert not (run_dir / "best.zip").exists()
    finals = sorted(p.name for p in (run_dir / "final").glob("member_*.zip"))
    assert finals == ["member_00.zip", "member_02.zip", "member_03.zip"]  # not the member that failed
    assert [step_of(r) for r in failure_records(read_history(run_dir))] == [FAIL_GENERATION]
    # the bug fixed, resume: the failing generation runs again from the checkpoint before it, as if it never failed
    resumed = launch(["--resume", str(run_dir)], None, {"EVO_TEST_FIXED": "1"})
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert read_history(run_dir) == read_history(healthy)
    assert (run_dir / "best.zip").exists()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_member_failing_at_once_stops_the_run(tmp_path, mode):
    """Every env raises at its 200th step, rebuilt ones too. Sync: all 4 fail in generation 1.

    Async: a repaired member's fresh envs last one healthy interval, so whether all 4 latest records
    are failures at once before the 5th failure passes --max-failures (4) depends on timing; either
    reason must stop the run the same way."""
    run_dir, proc = run(tmp_path, mode, [*base(mode), *layout(2), *fail(None)], 2, check=False)
    assert proc.returncode == 3, proc.stderr
    reasons = ["every member failed in generation 1"] if mode == "sync" else ["every member failed in", "more than"]
    assert any(reason in proc.stdout for reason in reasons), proc.stdout
    assert "the run stops" in proc.stdout
    assert "Traceback" not in proc.stderr  # a clear message, not a crash
    assert not (run_dir / "best.zip").exists()
    assert no_rank_left(run_dir)
    latest: dict[int, dict] = {}
    for r in read_history(run_dir):
        latest[r["member"]] = r
    assert len(failure_records(read_history(run_dir))) >= 4  # every member failed once
    for model in (run_dir / "final").glob("member_*.zip"):  # async: a member repaired before the stop may have one
        assert "failure" not in latest[int(model.stem.split("_")[1])]
    if mode == "sync":
        assert not (run_dir / "final").exists()


@pytest.mark.parametrize("n", [None, 2])
def test_async_failure_costs_one_member_which_copies_a_donor(tmp_path, n):
    run_dir, proc = run(tmp_path, "flaky", [*base("async", 4), *layout(n), *fail(FAILING)], n)
    history = read_history(run_dir)
    (record,) = failure_records(history)
    assert (record["member"], step_of(record)) == (FAILING, FAIL_GENERATION)
    assert record["fitness"] is None and record["fitness_missing"] == "failed"
    assert record["parent"] not in (None, FAILING)
    assert len(history) == 4 * 4 and (run_dir / "best.zip").exists()
    assert f"warning: interval {FAIL_GENERATION}: member {FAILING} failed while training" in proc.stdout
    if n is None:  # one process is bit-reproducible: every record before the failure is the healthy run's
        healthy, _ = run(tmp_path, "healthy", [*base("async", 4), *layout(n), *fail(FAILING, -1)], n)
        index = history.index(record)
        assert index > 0 and strip(history[:index]) == strip(read_history(healthy)[:index])


def test_a_custom_members_failure_is_isolated_and_it_recovers(tmp_path):
    args = ["--member", "tests.buggy_members:make_member", "--agents-per-rank", "4", "--generations", "3"]
    args += ["--steps-per-generation", "1024", "--search-space", "learning_rate=loguniform:1e-3:1e-2"]
    args += ["--search-space", "batch_size=choice:32,64", "--search-space", "weight_decay=const:0.0"]
    run_dir, proc = run(tmp_path, "custom", args)
    (record,) = failure_records(read_history(run_dir))
    assert (record["member"], step_of(record)) == (1, 1)
    assert record["failure"] == {
        "type": "ValueError",
        "message": "simulated validation bug in member 1",
        "phase": "measuring fitness",
    }
    assert record["parent"] not in (None, 1)
    assert "test: member 1 recovered after step 1" in proc.stdout
    assert (run_dir / "best.zip").exists()


CUSTOM = ["--member", "tests.buggy_members:make_member", "--agents-per-rank", "4", "--steps-per-generation", "512"]
CUSTOM += ["--search-space", "learning_rate=loguniform:1e-3:1e-2", "--search-space", "batch_size=choice:32,64"]
CUSTOM += ["--search-space", "weight_decay=const:0.0"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_member_whose_rebuild_fails_tries_again_before_it_next_trains(tmp_path, monkeypatch, mode):
    """recover() is isolated too: member 1's first rebuild raises, its retry before its next training works."""
    monkeypatch.setenv("EVO_TEST_REBUILDS_FAIL", "1")
    run_dir, proc = run(tmp_path, mode, [*CUSTOM, "--generations", "4", "--mode", mode])
    (record,) = failure_records(read_history(run_dir))  # the failed rebuild is not a second failure
    assert (record["member"], step_of(record), record["failure"]["phase"]) == (1, 1, "measuring fitness")
    unit = "interval" if mode == "async" else "generation"
    errors = (run_dir / "errors.log").read_text()
    assert f"member 1 on rank 0 could not rebuild its envs after its failure in {unit} 1" in errors
    assert "OSError: simulated rebuild bug 1 in member 1 (step 1)" in errors
    assert "test: member 1 recovered after step 2" in proc.stdout  # the retry, before interval/generation 2
    later = [r for r in read_history(run_dir) if r["member"] == 1 and step_of(r) >= 2]
    assert later and all(r["fitness"] is not None for r in later)
    assert (run_dir / "best.zip").exists()


def test_a_member_that_can_never_be_rebuilt_fails_each_generation_until_max_failures_stops_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EVO_TEST_REBUILDS_FAIL", "99")
    args = [*CUSTOM, "--generations", "6", "--max-failures", "2"]
    run_dir, proc = run(tmp_path, "never", args, check=False)
    assert proc.returncode == 3, proc.stderr
    failed = [(step_of(r), r["member"], r["failure"]["phase"]) for r in failure_records(read_history(run_dir))]
    assert failed == [(1, 1, "measuring fitness"), (2, 1, "rebuilding envs"), (3, 1, "rebuilding envs")]
    assert "3 member failure(s) so far, more than --max-failures 2" in proc.stdout
    assert sorted(p.name for p in (run_dir / "final").glob("member_*.zip")) == [
        "member_00.zip", "member_02.zip", "member_03.zip"
    ]  # fmt: skip
    assert not (run_dir / "best.zip").exists()
