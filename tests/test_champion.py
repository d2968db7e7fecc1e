"""The final pick: best.zip is the best of the top members by final fitness on fresh, seeded evaluation episodes."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from stable_baselines3 import PPO

import evo_mpi
from evo_mpi import champion, seeding
from evo_mpi.records import step_of
from helpers import cartpole_args, read_history, run_evo

TINY = {"n_envs": 2, "n_steps": 64, "steps_per_generation": 128, "seed": 7, "echo": None}
TINY_SPACE = {"batch_size": "choice:32,64,128", "n_epochs": "int:1:3"}


# -- the pure part ------------------------------------------------------------------------------------


def test_candidates_are_the_top_finite_members_ties_to_the_lowest_id():
    nan = math.nan
    assert champion.candidates(np.array([1.0, 3.0, 2.0, 3.0]), 3) == [1, 3, 2]
    assert champion.candidates(np.array([nan, 5.0, math.inf, 4.0]), 4) == [1, 3]  # non-finite left out
    assert champion.candidates(np.array([nan, nan, nan]), 2) == [0, 1]  # none finite: the first by id
    assert champion.candidates(np.array([2.0, 1.0]), 10) == [0, 1]  # min(K, population)


def test_pick_by_best_mean_ties_to_the_lowest_id_nan_last():
    assert champion.pick({3: [1.0, 3.0], 0: [2.0, 2.0], 5: [1.0, 1.0]}) == 0  # means 2, 2, 1: tie to id 0
    assert champion.pick({2: [math.nan, 9.0], 4: [0.0, 1.0]}) == 4
    assert champion.pick({2: [math.nan], 1: [math.nan]}) == 1
    assert champion.pick({7: [], 6: [-1.0]}) == 6  # no returns: NaN mean
    with pytest.raises(ValueError):
        champion.pick({})


def test_record_is_plain_json_with_mean_and_sd():
    fitness = np.array([10.0, math.nan, 30.0])
    report = champion.record(2, fitness, 4, [11, 12], {2: [1.0, 3.0], 0: [2.0, math.nan]}, 40, 0.5)
    rec = report.to_json()
    assert champion.ChampionReport.from_json(rec).to_json() == rec  # written and read back: the same file
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    assert rec["pick"] == "final_eval" and rec["episodes"] == 2 and rec["seeds"] == [11, 12] and rec["top"] == 4
    assert rec["candidates"][0] == {"member": 2, "final_fitness": 30.0, "returns": [1.0, 3.0], "mean": 2.0, "sd": 1.0}
    assert rec["candidates"][1]["returns"] == [2.0, None] and rec["candidates"][1]["mean"] is None
    plain = champion.record(1, fitness, 4, [], {}, 0, 0.1).to_json()
    assert plain["pick"] == "training_fitness" and plain["candidates"] == [] and plain["final_fitness"] is None
    assert champion.seeds(7, 3) == [seeding.derive_seed(7, seeding.CHAMPION, j) for j in range(3)]
    assert champion.estimate_s(2, 10, 50.0, 1e-3) == pytest.approx(1.0)
    assert champion.estimate_s(0, 10, 50.0, 1e-3) == 0.0


def test_time_limit_reserves_the_final_evaluation(tmp_path):
    """Local candidates x episodes x episode length (no episode yet: the env's limit) x s per training step."""
    from evo_mpi.comm import Comm
    from evo_mpi.config import Config
    from evo_mpi.engine import Engine
    from evo_mpi.status import RunContext

    cfg = Config(agents_per_rank=3, n_envs=2, n_steps=64, steps_per_generation=128, generations=1)
    cfg = replace(cfg, final_eval_episodes=5, final_eval_top=2)
    engine = Engine(cfg, Comm(), str(tmp_path), RunContext(echo=print))
    try:
        engine.last_fitness = np.array([1.0, math.nan, 3.0])
        assert engine._final_candidates_here() == [2, 0]
        # 3 members trained 128 steps each in 0.384 s: 1 ms per step; CartPole-v1 episodes last up to 500 steps
        assert engine._final_phase_estimate(0.384, 3) == pytest.approx(2 * 5 * 500 * 1e-3)
        engine.cfg = replace(engine.cfg, final_eval_episodes=0)
        assert engine._final_phase_estimate(0.384, 3) == 0.0
    finally:
        engine.close()


# -- real runs ---------------------------------------------------------------------------------------


def _params(path):
    return PPO.load(path, device="cpu").policy.state_dict()


def _same_params(a, b):
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def _latest(history):
    """Each member's last record (sync: the last generation; async: its last publication)."""
    latest = {}
    for r in history:
        if r["member"] not in latest or step_of(r) >= step_of(latest[r["member"]]):
            latest[r["member"]] = r
    return latest


def _top(latest, k):
    finite = [r for r in latest.values() if r["fitness"] is not None]
    return [r["member"] for r in sorted(finite, key=lambda r: (-r["fitness"], r["member"]))][:k]


def _check_champion(run_dir, k, episodes):
    """champion.json against the history and best.zip; returns it."""
    report = json.loads((run_dir / "champion.json").read_text())
    latest = _latest(read_history(run_dir))
    assert report["pick"] == "final_eval" and report["episodes"] == episodes and report["top"] == k
    assert [c["member"] for c in report["candidates"]] == _top(latest, k)
    assert report["seeds"] == [seeding.derive_seed(report_seed(run_dir), seeding.CHAMPION, j) for j in range(episodes)]
    for c in report["candidates"]:
        assert len(c["returns"]) == episodes and c["final_fitness"] == latest[c["member"]]["fitness"]
        assert c["mean"] == pytest.approx(np.mean(c["returns"])) and c["sd"] == pytest.approx(np.std(c["returns"]))
    best = max(report["candidates"], key=lambda c: (c["mean"], -c["member"]))
    assert report["member"] == best["member"]
    assert report["eval_steps"] >= episodes * len(report["candidates"]) and report["wall_s"] > 0
    assert _same_params(_params(run_dir / "best.zip"), _params(run_dir / "final" / f"member_{best['member']:02d}.zip"))
    return report


def report_seed(run_dir):
    return json.loads((run_dir / "config.json").read_text())["seed"]


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
    """4 members in one process on a CartPole that logs its reset seeds; fitness from 2 eval episodes."""
    tmp = tmp_path_factory.mktemp("champion")
    log = tmp / "seeds.log"
    lines = []
    result = evo_mpi.train(
        env="user_envs:seed_log_cartpole",
        env_kwargs={"log": str(log)},
        generations=3,
        agents_per_rank=4,
        eval_episodes=2,
        final_eval_episodes=3,
        final_eval_top=3,
        search_space=TINY_SPACE,
        run_dir=str(tmp / "run"),
        **{**TINY, "echo": lines.append},
    )
    return result, tmp / "run", log, lines


def test_sync_champion_is_the_best_eval_mean_of_the_top_three(sync_run):
    result, run_dir, _, lines = sync_run
    report = _check_champion(run_dir, 3, 3)
    assert result.status == "finished" and result.champion == report
    assert result.best_member == report["member"]
    latest = _latest(result.history)[report["member"]]
    assert (result.best_fitness, result.best_hparams) == (latest["fitness"], latest["hparams"])
    assert isinstance(result.best_model, PPO)
    done = [ln for ln in lines if ln.startswith("done: ")]
    assert len(done) == 1 and done[0].startswith(f"done: champion member {report['member']}, eval ")
    assert "over 3 episodes" in done[0]
    assert "; candidates " + ", ".join(str(c["member"]) for c in report["candidates"]) + ")" in done[0]


def test_champion_scalars_on_the_population_board(sync_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _, _ = sync_run
    report = json.loads((run_dir / "champion.json").read_text())
    acc = EventAccumulator(str(run_dir / "tb" / "population"))
    acc.Reload()
    row = next(c for c in report["candidates"] if c["member"] == report["member"])
    assert [e.value for e in acc.Scalars("champion/member")] == [report["member"]]
    assert acc.Scalars("champion/eval_mean")[0].value == pytest.approx(row["mean"])
    assert acc.Scalars("champion/eval_sd")[0].value == pytest.approx(row["sd"])


def test_evaluation_seeds_are_used_by_nothing_else(sync_run):
    """The env's own log: each champion seed once per candidate, and training/fitness seeds besides."""
    _, run_dir, log, _ = sync_run
    report = json.loads((run_dir / "champion.json").read_text())
    logged = [int(s) for s in log.read_text().split()]
    for s in report["seeds"]:
        assert logged.count(s) == len(report["candidates"]), s
    others = set(logged) - set(report["seeds"])
    # training envs (2 per member) and the fitness env (one seed per member and generation)
    assert len(others) >= 4 * 3


def test_final_eval_options_may_change_on_resume(sync_run):
    _, run_dir, _, _ = sync_run
    again = evo_mpi.train(resume=str(run_dir), final_eval_episodes=5, final_eval_top=1, echo=None)
    assert again.status == "already" and again.best_member == again.champion["member"]


def test_no_final_evaluation_keeps_the_training_pick(tmp_path):
    result = evo_mpi.train(
        agents_per_rank=4,
        generations=2,
        final_eval_episodes=0,
        search_space=TINY_SPACE,
        run_dir=str(tmp_path / "run"),
        **TINY,
    )
    latest = _latest(result.history)
    best = _top(latest, 1)[0]
    report = json.loads((tmp_path / "run" / "champion.json").read_text())
    assert report["pick"] == "training_fitness" and report["member"] == best and report["candidates"] == []
    assert report["episodes"] == 0 and report["seeds"] == [] and report["eval_steps"] == 0
    assert result.best_member == best and result.best_fitness == latest[best]["fitness"]
    final = tmp_path / "run" / "final" / f"member_{best:02d}.zip"
    assert _same_params(_params(tmp_path / "run" / "best.zip"), _params(final))


def test_async_run_picks_by_the_final_evaluation(tmp_path):
    result = evo_mpi.train(
        mode="async",
        agents_per_rank=3,
        generations=2,
        final_eval_episodes=2,
        final_eval_top=2,
        search_space=TINY_SPACE,
        run_dir=str(tmp_path / "run"),
        **TINY,
    )
    report = _check_champion(tmp_path / "run", 2, 2)
    assert result.status == "finished" and result.best_member == report["member"] and result.champion == report


def test_two_ranks_evaluate_their_own_candidates(tmp_path):
    run_dir = tmp_path / "run"
    args = [*cartpole_args(seed=5, generations=2, steps=128), "--agents-per-rank", "2"]
    args += ["--final-eval-episodes", "2", "--final-eval-top", "4", "--run-dir", str(run_dir)]
    proc = run_evo(args, 2, timeout=180)
    report = _check_champion(run_dir, 4, 2)
    members = {c["member"] for c in report["candidates"]}
    assert members & {0, 1} and members & {2, 3}  # candidates of rank 0 and of rank 1
    assert f"done: champion member {report['member']}, eval " in proc.stdout


def test_bad_final_eval_options_exit_2_naming_the_value(tmp_path):
    args = [*cartpole_args(seed=1, generations=1, steps=128), "--agents-per-rank", "2"]
    args += ["--final-eval-episodes", "-1", "--final-eval-top", "0", "--run-dir", str(tmp_path / "r")]
    proc = run_evo(args, None, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--final-eval-episodes must be >= 0, got -1" in proc.stderr
    assert "--final-eval-top must be >= 1, got 0" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_final_evaluation_of_an_episode_that_never_ends_counts_its_return_so_far(monkeypatch):
    """An env without a time limit cannot hang the final phase: an episode is cut at MAX_EPISODE_STEPS."""
    import numpy as np

    from evo_mpi import champion, config
    from evo_mpi.member import Member
    from evo_mpi.space import parse_space, sample_hparams

    monkeypatch.setattr(champion, "MAX_EPISODE_STEPS", 40)
    cfg = config.merge(
        {},
        {
            "env_id": "tests.user_envs:FixedLength",
            "env_kwargs": {"length": 1000},
            "n_envs": 2,
            "n_steps": 64,
            "steps_per_generation": 128,
        },
    )
    member = Member(0, cfg, sample_hparams(parse_space(cfg.space_specs), np.random.default_rng(0)), None)
    try:
        assert champion.evaluate_sb3(member, [1, 2, 3]) == ([40.0, 40.0, 40.0], 120)
    finally:
        member.close()


def _eval_crash_args(run_dir, bad_rank_only: bool) -> list[str]:
    """Envs whose first reset seed is the final pick's first: they raise at their first step (final evaluation only)."""
    from evo_mpi.champion import seeds as champion_seeds

    kwargs = {"fail_step": 1, "fail_seeds": [champion_seeds(6, 2)[0]], "bad_rank_only": bad_rank_only}
    return [
        *cartpole_args(seed=6, generations=2, steps=256), "--env-id", "tests.buggy_envs:FlakyCartPole-v0",
        "--env-kwargs", json.dumps(kwargs), "--final-eval-top", "4", "--run-dir", str(run_dir),
    ]  # fmt: skip


def test_a_candidate_whose_final_evaluation_fails_is_skipped_and_recorded(tmp_path):
    proc = run_evo([*_eval_crash_args(tmp_path / "r", bad_rank_only=True), "--agents-per-rank", "2"], 2)
    report = json.loads((tmp_path / "r" / "champion.json").read_text())
    assert [f["member"] for f in report["eval_failures"]] == [2, 3]  # rank 1's members
    assert all(f["phase"] == "final evaluation" and f["type"] == "RuntimeError" for f in report["eval_failures"])
    assert report["pick"] == "final_eval" and report["member"] in (0, 1)
    assert sorted(c["member"] for c in report["candidates"]) == [0, 1]
    assert (tmp_path / "r" / "best.zip").exists()
    assert "the evaluation of member(s) [2, 3] failed" in proc.stdout
    assert "failed in the final evaluation" in (tmp_path / "r" / "errors.log").read_text()


def test_when_every_final_evaluation_fails_the_champion_is_the_best_by_training_fitness(tmp_path):
    run_evo([*_eval_crash_args(tmp_path / "r", bad_rank_only=False), "--agents-per-rank", "3"], None)
    report = json.loads((tmp_path / "r" / "champion.json").read_text())
    history = read_history(tmp_path / "r")
    last = {r["member"]: r["fitness"] for r in history if step_of(r) == 1}
    assert report["pick"] == "training_fitness" and report["candidates"] == []
    assert [f["member"] for f in report["eval_failures"]] == [0, 1, 2]
    assert report["member"] == max(last, key=lambda m: (last[m], -m))
    assert (tmp_path / "r" / "best.zip").exists()
