"""A failing rank ends the whole job with one clear report; a diverging member does not."""

import time

from helpers import TINY, history_without_rank, launch, read_history


def test_error_outside_a_members_training_ends_every_rank_with_a_report(tmp_path):
    """The env raises while member 1 trains (isolated), then cannot be rebuilt (not isolated: the job ends)."""
    run_dir = tmp_path / "run"
    args = [*TINY, "--env-id", "tests.buggy_envs:CrashingCartPole-v0", "--run-dir", str(run_dir)]
    t0 = time.monotonic()
    proc = launch(args, 2, {"EVO_TEST_BAD_RANK": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 60  # start-up included; no rank is left waiting in a collective
    report = "evo-mpi: rank 1 failed while rebuilding member 1's envs after its failure (generation 1): RuntimeError"
    assert report in err and "cannot build the env again" in err
    assert err.count("failed while") == 1  # one report, from the failing rank
    log = (run_dir / "errors.log").read_text()
    assert "rank 1 failed while rebuilding member 1's envs" in log
    assert "member 1 on rank 1 failed in generation 1 while training: RuntimeError: simulated env bug" in log
    # the generation finished before the crash is on disk and intact
    assert [r["generation"] for r in read_history(run_dir)] == [0, 0]


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
    gen0 = {r["member"]: r for r in history if r["generation"] == 0}
    assert gen0[2]["fitness"] is None  # member 2 (rank 1's first) got NaN rewards and diverged
    assert gen0[2]["parent"] in (0, 1, 3) and gen0[2]["parent"] is not None
    assert "warning: generation 0: diverged (non-finite weights) for member(s) [2]" in out, out
    assert gen0[2]["fitness_missing"] == "diverged"  # not "no completed episode yet"
    later = [r for r in history if r["generation"] > 0]
    assert all(r["fitness"] is not None for r in later)  # replaced by a healthy copy; the run went on
    assert len(history_without_rank(run_dir)) == 3 * 4
