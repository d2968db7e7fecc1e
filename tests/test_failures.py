"""A failing rank ends the whole job with one clear report; a diverging member does not."""

import json
import time

from evo_mpi.records import step_of
from helpers import TINY, history_without_rank, launch, read_history


def test_error_outside_a_members_training_ends_every_rank_with_a_report(tmp_path):
    """Member 1's checkpoint raises (a full disk; not isolated): one report, every rank ends, nothing waits."""
    run_dir = tmp_path / "run"
    args = ["--member", "tests.buggy_members:make_checkpoint_failing", "--generations", "3"]
    args += ["--steps-per-generation", "256", "--search-space", "learning_rate=loguniform:1e-3:1e-2"]
    args += ["--search-space", "batch_size=choice:32,64", "--search-space", "weight_decay=const:0.0"]
    t0 = time.monotonic()
    proc = launch([*args, "--run-dir", str(run_dir)], 2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 60  # start-up included; no rank is left waiting in a collective
    report = "evo-mpi: rank 1 failed while writing the checkpoint of generation 1: OSError: simulated full disk"
    assert report in err, err
    assert err.count("failed while") == 1  # one report, from the failing rank
    assert "rank 1 failed while writing the checkpoint of generation 1" in (run_dir / "errors.log").read_text()
    # the generations finished before the crash are on disk and intact
    assert [step_of(r) for r in read_history(run_dir)] == [0, 0, 1, 1]


def test_an_env_that_cannot_be_rebuilt_costs_its_member_not_the_run(tmp_path):
    """Member 1's env raises while it trains, then cannot be built again: each generation it fails, the run goes on."""
    run_dir = tmp_path / "run"
    args = [*TINY, "--env-id", "tests.buggy_envs:CrashingCartPole-v0", "--run-dir", str(run_dir)]
    proc = launch(args, 2, {"EVO_TEST_BAD_RANK": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    history = read_history(run_dir)
    failed = [(step_of(r), r["member"], r["failure"]["phase"]) for r in history if "failure" in r]
    assert failed == [(1, 1, "training"), (2, 1, "rebuilding envs")]
    assert all(r["fitness"] is not None for r in history if r["member"] == 0)
    log = (run_dir / "errors.log").read_text()
    assert "member 1 on rank 1 failed in generation 1 while training: RuntimeError: simulated env bug" in log
    assert "member 1 on rank 1 could not rebuild its envs after its failure in generation 1" in log
    assert "member 1 on rank 1 failed in generation 2 while rebuilding envs: RuntimeError: simulated env bug" in log
    champion = json.loads((run_dir / "champion.json").read_text())
    assert champion["member"] == 0 and champion["excluded"] == [1] and champion["failures"] == 2
    assert (run_dir / "best.zip").exists() and not (run_dir / "final" / "member_01.zip").exists()


def test_nan_member_is_ranked_last_replaced_and_reported(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "--env-id",
        "tests.buggy_envs:NanRewardCartPole-v0",
        "--run-dir",
        str(run_dir),
        "--agents-per-rank",
        "2",
    ]
    proc = launch(args, 2, {"EVO_TEST_BAD_RANK": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    history = read_history(run_dir)
    gen0 = {r["member"]: r for r in history if step_of(r) == 0}
    assert gen0[2]["fitness"] is None  # member 2 (rank 1's first) got NaN rewards and diverged
    assert gen0[2]["parent"] in (0, 1, 3) and gen0[2]["parent"] is not None
    assert "warning: generation 0: diverged (non-finite weights) for member(s) [2]" in out, out
    assert gen0[2]["fitness_missing"] == "diverged"  # not "no completed episode yet"
    later = [r for r in history if step_of(r) > 0]
    assert all(r["fitness"] is not None for r in later)  # replaced by a healthy copy; the run went on
    assert len(history_without_rank(run_dir)) == 3 * 4
