"""Asynchronous PBT (--mode async) with real mpiexec and SB3 on tiny budgets."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time

import pytest
import torch

from evo_mpi import checkpoint
from evo_mpi.member import EPISODE_KEYS
from evo_mpi.records import parent_step_of, step_of
from helpers import LONG_STEPS, cartpole_args, launch, no_rank_left, read_history, run_evo, wait_for_line

GENERATIONS, STEPS = 4, 256
ASYNC = [*cartpole_args(seed=5, generations=GENERATIONS, steps=STEPS), "--mode", "async"]
#: Keys whose values depend on timing, not on the seeded computation.
TIMING = ("wall", "unix", "fetch_s", "rank")


def _timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def _fit(value) -> float:
    return math.nan if value is None else float(value)


def _order(fitness: dict[int, float]) -> list[int]:
    """Members best first: higher fitness first, non-finite last, ties to the lower id (the documented rule)."""
    finite = {m: math.isfinite(f) for m, f in fitness.items()}
    return sorted(fitness, key=lambda m: (not finite[m], -fitness[m] if finite[m] else 0.0, m))


def _visible(history: list[dict], record: dict) -> dict[int, float]:
    """The fitness of every member as the deciding rank saw it, with the record's ``seen`` checked first.

    ``seen`` is the engine's own account, so it is held against what the history shows independently:
    a record is stamped (``unix``) before its member decides and nothing is received in between, so
    every seen record was stamped no later than the deciding one; the deciding rank's own members'
    records are visible at once, so for them the seen interval is exactly the latest one stamped
    before; for another rank's member it is at most that (a record in flight is not seen yet).
    """
    by_key = {(r["member"], step_of(r)): r for r in history}
    for m, k in enumerate(record["seen"]):
        before = [step_of(r) for r in history if r["member"] == m and r["unix"] <= record["unix"]]
        latest = max(before, default=-1)
        if m == record["member"] or by_key.get((m, latest), {}).get("rank") == record["rank"]:
            assert k == latest, (m, k, latest, record)
        else:
            assert -1 <= k <= latest, (m, k, latest, record)
    return {m: _fit(by_key[(m, k)]["fitness"]) for m, k in enumerate(record["seen"]) if k >= 0}


def _check_truncation(history: list[dict], fraction: float) -> int:
    """Every decision obeys truncation against the records seen when it was taken; returns the exploit count."""
    exploits = 0
    for rec in history:
        visible = _visible(history, rec)
        assert visible[rec["member"]] == _fit(rec["fitness"]) or math.isnan(_fit(rec["fitness"]))
        if len(visible) < 2:
            assert rec["parent"] is None
            continue
        order = _order(visible)
        n = max(1, math.ceil(round(fraction * len(order), 9)))
        top = [m for m in order[:n] if math.isfinite(visible[m])]
        bottom = order[len(order) - n :]
        if rec["parent"] is not None:
            exploits += 1
            assert rec["member"] in bottom, (rec, visible)
            assert rec["parent"] in top and rec["parent"] != rec["member"], (rec, visible)
        else:
            assert rec["member"] not in bottom or not [w for w in top if w != rec["member"]], (rec, visible)
    return exploits


def _check_budget(run_dir, population: int) -> list[dict]:
    history = read_history(run_dir)
    keys = [(r["member"], step_of(r)) for r in history]
    assert len(keys) == len(set(keys)) == population * GENERATIONS  # the whole budget, every interval once
    for m in range(population):
        mine = sorted(k for mm, k in keys if mm == m)
        assert mine == list(range(len(mine)))  # each member's intervals in order, none lost
    latest = {r["member"]: r for r in history}
    assert sum(r["timesteps"] for r in latest.values()) == population * GENERATIONS * STEPS
    assert (run_dir / "best.zip").is_file()
    assert sorted(p.name for p in (run_dir / "final").glob("member_*.zip")) == [
        f"member_{m:02d}.zip" for m in range(population)
    ]
    lineage = [json.loads(line) for line in open(run_dir / "lineage.jsonl")]
    assert len(lineage) == sum(1 for r in history if r["parent"] is not None)
    return history


@pytest.mark.openmpi
@pytest.mark.parametrize("n, per_rank", [(2, 2), (4, 1)])
def test_async_run_spends_the_population_budget_and_obeys_truncation(tmp_path, n, per_rank):
    run_dir = tmp_path / "run"
    proc = run_evo([*ASYNC, "--agents-per-rank", str(per_rank), "--run-dir", str(run_dir)], n)
    assert f"async    {n * per_rank * GENERATIONS}/{n * per_rank * GENERATIONS} intervals" in proc.stdout
    history = _check_budget(run_dir, n * per_rank)
    assert _check_truncation(history, 0.25) >= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    population = EventAccumulator(str(run_dir / "tb" / "population"))
    population.Reload()  # one point per population-many records, at the population's total env steps
    steps = [s.step for s in population.Scalars("population/best_fitness")]
    assert steps == [n * per_rank * STEPS * (i + 1) for i in range(GENERATIONS)]
    member = EventAccumulator(str(run_dir / "tb" / "member_01"))
    member.Reload()
    assert len(member.Scalars("pbt/fitness")) == sum(1 for r in history if r["member"] == 1)
    summaries = [json.loads(line) for p in (run_dir / "timings").glob("rank_*.jsonl") for line in open(p)]
    summaries = [s for s in summaries if s.get("summary")]
    assert len(summaries) == n and sum(s["intervals"] for s in summaries) == n * per_rank * GENERATIONS


@pytest.mark.parametrize("selection", ["wta", "tournament"])
def test_async_decisions_follow_wta_and_tournament(tmp_path, selection):
    """One process, 4 members: wta copies the best visible member; with elitism the best never copies."""
    run_dir = tmp_path / "run"
    extra = ["--elitism"] if selection == "tournament" else []
    run_evo([*ASYNC, "--agents-per-rank", "4", "--selection", selection, *extra, "--run-dir", str(run_dir)], None)
    history = _check_budget(run_dir, 4)
    exploits = 0
    for rec in history:
        visible = _visible(history, rec)
        best = _order(visible)[0]
        if rec["parent"] is None:
            if selection == "wta" and len(visible) > 1 and math.isfinite(visible[best]):
                assert rec["member"] == best, (rec, visible)
            continue
        exploits += 1
        assert rec["member"] != best and rec["parent"] != rec["member"] and math.isfinite(visible[rec["parent"]])
        if selection == "wta":
            assert rec["parent"] == best
    assert exploits >= 1


def _tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a if k != "param_groups")
    return True


def test_exploit_copies_the_donor_snapshot_bit_for_bit_across_ranks(tmp_path):
    """wta on -n 2: a loser's state after the exploit equals its remote donor's published state exactly."""
    run_dir = tmp_path / "run"
    args = [*ASYNC, "--agents-per-rank", "2", "--selection", "wta", "--keep-checkpoints", "100"]
    run_evo([*args, "--run-dir", str(run_dir)], 2)
    history = read_history(run_dir)
    by_key = {(r["member"], step_of(r)): r for r in history}
    checked = 0
    for rec in history:
        donor, d = rec["parent"], parent_step_of(rec)
        if donor is None or donor // 2 == rec["member"] // 2 or by_key[(donor, d)]["parent"] is not None:
            continue  # same rank, or the donor itself exploited after measuring (its checkpoint is not its snapshot)
        loser_state, _, loser_arrays = checkpoint.load_interval(str(run_dir), rec["member"], step_of(rec))
        donor_state, _, donor_arrays = checkpoint.load_interval(str(run_dir), donor, d)
        # weights and optimizer moments (not the explored lr; not the envs' running episodes, which stay with the slot)
        moved = [{k: v for k, v in s.items() if not k.startswith(EPISODE_KEYS)} for s in (donor_state, loser_state)]
        assert _tensors_equal(*moved)
        # ... and the copy changed something: the loser's own measured state was another one
        assert not (loser_arrays["snapshot"] == donor_arrays["snapshot"]).all()
        assert rec["fetch_s"] is not None and rec["fetch_s"] > 0
        checked += 1
    assert checked >= 1


LONG_ASYNC = [*cartpole_args(seed=3, generations=8, steps=LONG_STEPS), "--mode", "async"]


def _interrupt(run_dir, n, per_rank, records, sig=signal.SIGTERM):
    proc = launch([*LONG_ASYNC, "--run-dir", str(run_dir), "--agents-per-rank", str(per_rank)], n)
    wait_for_line(proc, f"async {records:>5}/")
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, (proc.returncode, out, err)
    assert time.monotonic() - t0 < 30
    assert "every member resumes from its last completed interval" in out and f"--resume {run_dir}" in out
    return out


def test_async_stop_and_resume_on_another_layout(tmp_path):
    run_dir = tmp_path / "run"
    _interrupt(run_dir, 2, 2, 8)
    history = read_history(run_dir)
    for m in range(4):  # every published interval is checkpointed: a stop loses only the interval in progress
        published = [step_of(r) for r in history if r["member"] == m]
        assert checkpoint.intervals(str(run_dir), m)[-1] == max(published)
    proc = run_evo(["--resume", str(run_dir)], None)
    assert "resuming the run" in proc.stdout
    keys = [(r["member"], step_of(r)) for r in read_history(run_dir)]
    assert len(keys) == len(set(keys)) == 4 * 8
    assert (run_dir / "best.zip").is_file()


def test_single_process_async_run_is_reproducible_and_resumes_exactly(tmp_path):
    """One process: a second run from scratch repeats the first up to its stop (SIGUSR1 after 12 of 32
    records), and its resume gives the rest of the uninterrupted history exactly."""
    reference = tmp_path / "ref"
    run_evo([*LONG_ASYNC, "--agents-per-rank", "4", "--run-dir", str(reference)], None)
    expected = _timeless(read_history(reference))
    assert len(expected) == 4 * 8 and len({r["timesteps"] for r in expected}) > 1
    run_dir = tmp_path / "run"
    _interrupt(run_dir, None, 4, 12, signal.SIGUSR1)
    stopped = _timeless(read_history(run_dir))
    assert 12 <= len(stopped) < len(expected) and stopped == expected[: len(stopped)]
    run_evo(["--resume", str(run_dir)], None)
    assert _timeless(read_history(run_dir)) == expected


@pytest.mark.openmpi
def test_kill_9_of_one_async_rank_ends_the_job_and_it_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch([*LONG_ASYNC, "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2)
    wait_for_line(proc, "async     8/")
    pids = subprocess.run(["pgrep", "-f", f"evo_mpi.run.*{run_dir}"], capture_output=True, text=True).stdout.split()
    victim = max(int(p) for p in pids if int(p) != proc.pid)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - t0 < 30
    assert no_rank_left(run_dir)
    run_evo(["--resume", str(run_dir)], 2, check=True)
    keys = [(r["member"], step_of(r)) for r in read_history(run_dir)]
    assert len(keys) == len(set(keys)) == 4 * 8


def test_a_straggler_does_not_stall_the_other_rank(tmp_path):
    """Rank 0's env is 5x slower: rank 1 trains more intervals and never waits as long as one interval.

    Both bounds come from the run's own records (no wall-clock ratio), so a busy machine slows both
    ranks alike; in lockstep (sync) rank 1 would train as many intervals as rank 0 and wait for its
    slow interval every time."""
    run_dir = tmp_path / "run"
    args = [
        *cartpole_args(seed=1, generations=6, steps=512),
        "--mode", "async",
        "--env-id", "tests.user_envs:straggler_cartpole",
        "--env-kwargs", '{"step_cost": 0.0003, "factor": 5}',
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    run_evo(args, 2)
    history = read_history(run_dir)
    per_rank = [sum(1 for r in history if r["rank"] == rank) for rank in (0, 1)]
    assert per_rank[1] > per_rank[0], per_rank
    timings = [json.loads(line) for line in open(run_dir / "timings" / "rank_001.jsonl")]
    summary = next(t for t in timings if t.get("summary"))
    shortest = min(t["total_wall"] for t in timings if "total_wall" in t)
    assert summary["wait_s"] < shortest, summary  # tickets and fetches; the end's drain is separate


def test_time_limit_ends_an_async_run_cleanly(tmp_path):
    """200 intervals per member do not fit in 8 s: no interval starts past the limit, each rank stops within one
    interval of it, and the final outputs follow within the final evaluation's own time.

    Every bound is taken from the run's own records, so a loaded machine (start-up alone may use the budget,
    and then a rank trains nothing) slows the run and its bounds alike. The limit counts from process start,
    which is before the launch's line in placement.jsonl: that line's time plus 8 s bounds the deadline."""
    run_dir = tmp_path / "run"
    args = [*LONG_ASYNC, "--generations", "200", "--agents-per-rank", "2", "--time-limit", "8"]
    proc = run_evo([*args, "--run-dir", str(run_dir)], 2)
    deadline = json.loads((run_dir / "placement.jsonl").read_text().splitlines()[0])["unix"] + 8
    timings = [json.loads(line) for rank in (0, 1) for line in open(run_dir / "timings" / f"rank_{rank:03d}.jsonl")]
    intervals = [t for t in timings if "total_wall" in t]
    assert len(read_history(run_dir)) == len(intervals) < 4 * 200  # every trained interval published; few were
    starts = [t["unix"] - t["total_wall"] for t in intervals]
    assert all(start < deadline + 0.1 for start in starts), (deadline, sorted(starts)[-3:])
    longest = max((t["total_wall"] for t in intervals), default=0.0)
    stops = [t["end_unix"] for t in timings if t.get("summary")]
    assert len(stops) == 2 and max(stops) < deadline + longest + 1, (stops, deadline, longest)
    final_s = json.loads((run_dir / "champion.json").read_text())["wall_s"]
    assert (run_dir / "best.zip").stat().st_mtime < max(stops) + final_s + 5, (stops, final_s)
    assert "--time-limit 8: the run ends before its budget is spent" in proc.stdout
    assert (run_dir / "best.zip").is_file() and len(list((run_dir / "final").glob("member_*.zip"))) == 4
    assert "already finished" in run_evo(["--resume", str(run_dir)], 2).stdout


def test_api_refuses_a_callback_in_async_mode(tmp_path):
    import evo_mpi

    with pytest.raises(evo_mpi.ConfigError, match="--mode async does not have"):
        evo_mpi.train(
            env_id="CartPole-v1",
            mode="async",
            agents_per_rank=2,
            generations=1,
            steps_per_generation=256,
            n_envs=2,
            n_steps=128,
            run_dir=str(tmp_path / "run"),
            callback=lambda summary: None,
        )


def test_error_outside_a_members_training_ends_every_async_rank_with_one_report(tmp_path):
    """Member 1's checkpoint raises (a full disk; not isolated) while rank 0 trains or serves: the job ends,
    once reported, nothing hangs."""
    run_dir = tmp_path / "run"
    args = ["--member", "tests.buggy_members:make_checkpoint_failing", "--generations", "3", "--mode", "async"]
    args += ["--steps-per-generation", "256", "--search-space", "learning_rate=loguniform:1e-3:1e-2"]
    args += ["--search-space", "batch_size=choice:32,64", "--search-space", "weight_decay=const:0.0"]
    t0 = time.monotonic()
    proc = launch([*args, "--run-dir", str(run_dir)], 2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 60
    report = "evo-mpi: rank 1 failed while writing member 1's checkpoint (interval 1): OSError: simulated full disk"
    assert report in err, err
    assert err.count("failed while") == 1
    assert "rank 1 failed while writing member 1's checkpoint" in (run_dir / "errors.log").read_text()
    history = read_history(run_dir)  # what was published before the crash is intact
    assert (1, 0) in {(r["member"], step_of(r)) for r in history}


def test_an_env_that_cannot_be_rebuilt_costs_its_async_member_not_the_run(tmp_path):
    """Rank 1's env raises mid-run and cannot be built again: member 1 fails each interval after, the run ends."""
    run_dir = tmp_path / "run"
    args = [*ASYNC, "--env-id", "tests.buggy_envs:CrashingCartPole-v0", "--max-failures", "100"]
    proc = launch([*args, "--run-dir", str(run_dir)], 2, {"EVO_TEST_BAD_RANK": "1"})
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    history = read_history(run_dir)
    phases = [r["failure"]["phase"] for r in sorted(history, key=lambda r: step_of(r)) if "failure" in r]
    assert phases[0] == "training" and phases[1:] and set(phases[1:]) == {"rebuilding envs"}
    assert all(r["member"] == 1 for r in history if "failure" in r)
    assert all(r["fitness"] is not None for r in history if r["member"] == 0)
    assert "member 1 on rank 1 could not rebuild its envs" in (run_dir / "errors.log").read_text()
    assert json.loads((run_dir / "champion.json").read_text())["member"] == 0


@pytest.mark.parametrize("rule", [["--selection", "ttest"], ["--explore", "pb2"]], ids=["ttest", "pb2"])
def test_async_ttest_and_pb2(tmp_path, rule):
    """ttest copies only a member whose visible returns have a higher mean; PB2 explores within the priors."""
    run_dir = tmp_path / "run"
    args = [*cartpole_args(seed=2, generations=4, steps=512), "--mode", "async", "--agents-per-rank", "4", *rule]
    run_evo([*args, "--run-dir", str(run_dir)], None)
    history = read_history(run_dir)
    by_key = {(r["member"], step_of(r)): r for r in history}
    exploits = [r for r in history if r["parent"] is not None]
    assert len(history) == 16 and exploits
    for rec in exploits:
        donor = by_key[(rec["parent"], rec["seen"][rec["parent"]])]
        if rule[1] == "ttest":
            assert sum(donor["returns"]) / len(donor["returns"]) > sum(rec["returns"]) / len(rec["returns"])
        else:
            assert rec["new_hparams"]["batch_size"] in (32, 64, 128)
            assert 1 <= rec["new_hparams"]["n_epochs"] <= 3
            assert rec["new_hparams"] != rec["hparams"]


def test_interval_checkpoint_lets_the_engine_serve_between_its_large_files(tmp_path):
    """``between`` runs after member.pt and after each array (the owner answers snapshot requests there);
    nothing is visible under the checkpoint's name until the whole of it is written."""
    import numpy as np

    from evo_mpi.checkpoint import IntervalState
    from evo_mpi.records import HistoryRow

    run_dir = str(tmp_path)
    seen: list[tuple[list[str], list[int]]] = []

    def between() -> None:
        tmp = next(p for p in os.listdir(checkpoint.member_root(run_dir, 2)) if p.startswith(".tmp-"))
        seen.append((sorted(os.listdir(os.path.join(checkpoint.member_root(run_dir, 2), tmp))),
                     checkpoint.intervals(run_dir, 2)))  # fmt: skip

    tensors = {"w": torch.arange(6, dtype=torch.float32)}
    arrays = {"snapshot": np.arange(40, dtype=np.uint8), "snapshot_aux": np.arange(8, dtype=np.uint8)}
    state = IntervalState({"timesteps": 64}, 4, 1.5, 0, HistoryRow(3, 2, 0, 64, 1.5, {"lr": 0.1}, []), 1)
    checkpoint.write_interval(run_dir, 2, 3, tensors, state, arrays, keep=2, between=between)
    assert seen == [
        (["member.pt"], []),
        (["member.pt", "snapshot.npy"], []),
        (["member.pt", "snapshot.npy", "snapshot_aux.npy"], []),
    ]
    loaded, meta, got = checkpoint.load_interval(run_dir, 2, 3)
    assert checkpoint.intervals(run_dir, 2) == [3] and meta.to_json() == state.to_json()
    assert torch.equal(loaded["w"], tensors["w"]) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
