"""Real mpiexec runs: backends move state exactly; history is layout- and backend-independent."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from stable_baselines3 import PPO

from evo_mpi import seeding
from evo_mpi.config import Config
from evo_mpi.selection import quantile_size, rank_order
from evo_mpi.space import explore, parse_space
from helpers import OPENMPI_ENV, ROOT, TINY, child_env, mpi_flavor, mpiexec, read_history, run_evo


@pytest.mark.openmpi
@pytest.mark.parametrize("n, per_rank", [(2, 2), (4, 1)])
def test_backends_move_state_bit_for_bit(n, per_rank):
    """One launch per layout; each backend moves the same states (mpi_exchange_check.py)."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, str(ROOT / "tests" / "mpi_exchange_check.py"), str(per_rank)]
    proc = subprocess.run(
        [*cmd, "p2p", "collective"], capture_output=True, text=True, timeout=180, env=child_env(), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for line, backend in zip(lines, ("p2p", "collective"), strict=True):
        assert line.startswith(f"OK {n * per_rank - 1} transfers") and f"backend {backend}, {n} ranks" in line, line


#: The collective backend at -n 4 moves the same bytes as p2p (test_backends_move_state_bit_for_bit);
#: here it runs at -n 2 x 2, the layout where a broadcast also reaches a rank's second member.
LAYOUTS = {
    "n4-p2p": (4, ["--agents-per-rank", "1", "--backend", "p2p"]),
    "n2x2-collective": (2, ["--agents-per-rank", "2", "--backend", "collective"]),
    "n1x4-noMPI": (None, ["--agents-per-rank", "4", "--backend", "p2p"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, (n, extra) in LAYOUTS.items():
        run_dir = tmp_path_factory.mktemp(name) / "run"
        proc = run_evo([*TINY, *extra, "--run-dir", str(run_dir)], n)
        out[name] = (run_dir, proc)
    return out


def _strip_rank(history):
    return [{k: v for k, v in rec.items() if k != "rank"} for rec in history]


@pytest.mark.openmpi
def test_history_identical_across_backends_and_layouts(runs):
    histories = {name: _strip_rank(read_history(run_dir)) for name, (run_dir, _) in runs.items()}
    reference = histories["n4-p2p"]
    assert len(reference) == 3 * 4
    assert any(rec["parent"] is not None for rec in reference)
    for name, history in histories.items():
        assert history == reference, f"{name} differs from n4-p2p"
    picks = {name: json.loads((d / "champion.json").read_text()) for name, (d, _) in runs.items()}
    for name, pick in picks.items():  # the final evaluation too: same returns, same champion on any layout
        assert {**pick, "wall_s": 0} == {**picks["n4-p2p"], "wall_s": 0}, f"{name}'s champion.json differs"
    ranks = {name: {rec["member"]: rec["rank"] for rec in read_history(d)} for name, (d, _) in runs.items()}
    assert ranks["n4-p2p"] == {0: 0, 1: 1, 2: 2, 3: 3}
    assert ranks["n2x2-collective"] == {0: 0, 1: 0, 2: 1, 3: 1}


def _check_plan_and_explore(history, cfg: Config, selection: str):
    space = parse_space(cfg.space_specs)
    gens = sorted({rec["generation"] for rec in history})
    by_gen = {g: sorted((r for r in history if r["generation"] == g), key=lambda r: r["member"]) for g in gens}
    population = len(by_gen[0])
    for g in gens:
        recs = by_gen[g]
        assert [r["timesteps"] for r in recs] == [(g + 1) * cfg.steps_per_generation] * population
        fitness = np.array([math.nan if r["fitness"] is None else r["fitness"] for r in recs])
        order = rank_order(fitness).tolist()
        parents = {r["member"]: r["parent"] for r in recs if r["parent"] is not None}
        if g == gens[-1]:
            assert parents == {}
            continue
        if selection == "truncation":
            n = quantile_size(population, cfg.truncation_fraction)
            assert sorted(parents) == sorted(order[population - n :])
            assert set(parents.values()) <= set(order[:n])
        else:
            assert parents == {m: order[0] for m in range(population) if m != order[0]}
        nxt = by_gen[g + 1]
        for m in range(population):
            if m in parents:
                want = explore(
                    recs[parents[m]]["hparams"],
                    space,
                    cfg.perturb_factors,
                    cfg.resample_probability,
                    seeding.stream(cfg.seed, seeding.EXPLORE, g, m),
                )
            else:
                want = recs[m]["hparams"]
            assert nxt[m]["hparams"] == want, (g, m)


def test_truncation_plan_matches_fitness(runs):
    run_dir, _ = runs["n4-p2p"]
    cfg = Config(
        seed=7, steps_per_generation=256, search_space={"batch_size": "choice:32,64,128", "n_epochs": "int:1:3"}
    )
    _check_plan_and_explore(read_history(run_dir), cfg, "truncation")


def test_wta_plan_matches_fitness(tmp_path):
    run_dir = tmp_path / "wta"
    run_evo(
        [*TINY, "--selection", "wta", "--backend", "collective", "--agents-per-rank", "2", "--run-dir", str(run_dir)], 2
    )
    cfg = Config(
        seed=7, steps_per_generation=256, search_space={"batch_size": "choice:32,64,128", "n_epochs": "int:1:3"}
    )
    history = read_history(run_dir)
    assert sum(rec["parent"] is not None for rec in history) == 2 * 3
    _check_plan_and_explore(history, cfg, "wta")


def test_outputs_models_and_progress(runs):
    run_dir, proc = runs["n4-p2p"]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gen ")]
    assert len(lines) == 3 and "steps/s" in lines[0] and "eta" in lines[0] and "exploits" in lines[0]
    assert "done: champion member" in proc.stdout
    best = json.loads((run_dir / "champion.json").read_text())["member"]  # the final evaluation's pick
    assert (run_dir / "config.json").is_file()
    for m in range(4):
        model = PPO.load(run_dir / "final" / f"member_{m:02d}.zip", device="cpu")
        assert model.num_timesteps == 3 * 256
    best_model = PPO.load(run_dir / "best.zip", device="cpu")
    final_best = PPO.load(run_dir / "final" / f"member_{best:02d}.zip", device="cpu")
    for (k, a), b in zip(best_model.policy.state_dict().items(), final_best.policy.state_dict().values(), strict=True):
        assert (a == b).all(), k


def test_tensorboard_tags(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = runs["n2x2-collective"]
    acc = EventAccumulator(str(run_dir / "tb" / "member_01"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in [
        "pbt/fitness",
        "pbt/episode_return",
        "hparams/learning_rate",
        "hparams/batch_size",
        "train/loss",
        "train/entropy_loss",
        "rollout/ep_rew_mean",
        "train/clip_range",
    ]:
        assert tag in tags, (tag, sorted(tags))
    fit = acc.Scalars("pbt/fitness")
    history = [r for r in read_history(run_dir) if r["member"] == 1]
    assert [e.step for e in fit] == [r["timesteps"] for r in history]
    assert [e.value for e in fit] == pytest.approx([r["fitness"] for r in history])
    pop = EventAccumulator(str(run_dir / "tb" / "population"))
    pop.Reload()
    ptags = set(pop.Tags()["scalars"])
    assert {
        "population/best_fitness",
        "population/mean_fitness",
        "population/min_fitness",
        "population/exploits",
    } <= ptags
    assert [e.value for e in pop.Scalars("population/exploits")] == [1, 1, 0]


def test_ranks_other_than_zero_print_nothing(runs):
    _, proc = runs["n4-p2p"]
    # rank 0 prints the header, the note that CartPole's episodes outlast a generation, 3 generation
    # lines and the summary: 6 lines in all, plus one oversubscription note when this machine has fewer
    # than 4 usable cores
    lines = proc.stdout.strip().splitlines()
    notes = [line for line in lines if "more ranks than cores" in line]
    assert len(notes) == (1 if len(os.sched_getaffinity(0)) < 4 else 0), proc.stdout
    assert sum("episodes of CartPole-v1 last up to 500 steps" in line for line in lines) == 1, proc.stdout
    assert len(lines) - len(notes) == 6, proc.stdout


def test_torch_threads_default_one_and_automatic(runs, tmp_path):
    run_dir, _ = runs["n4-p2p"]
    for rank in range(4):
        records = [json.loads(line) for line in open(run_dir / "timings" / f"rank_{rank:03d}.jsonl")]
        assert [r["torch_threads"] for r in records] == [1, 1, 1]
        assert set(records[0]["wall"]) >= {"train", "fitness", "wait", "exchange", "explore", "log", "checkpoint"}
    auto = tmp_path / "auto"
    run_evo([*TINY, "--generations", "1", "--torch-threads", "0", "--run-dir", str(auto)], 2)
    cores = len(os.sched_getaffinity(0))
    for rank in range(2):
        record = json.loads((auto / "timings" / f"rank_{rank:03d}.jsonl").read_text())
        assert record["torch_threads"] == max(1, cores // 2)


def _other_mpi_venv() -> str | None:
    """The venv with the other MPI: $EVO_TEST_OTHER_MPI_VENV, else .venv-ompi beside MPICH's .venv or vice versa."""
    flavor = mpi_flavor()
    path = os.environ.get("EVO_TEST_OTHER_MPI_VENV") or str(ROOT / (".venv-ompi" if flavor == "mpich" else ".venv"))
    launcher = os.path.join(path, "bin", "mpiexec")
    if not os.path.exists(launcher):
        return None
    out = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=30).stdout
    return path if ("Open MPI" in out) != (flavor == "openmpi") else None


@pytest.mark.openmpi
def test_history_is_the_same_under_open_mpi_and_mpich(tmp_path):
    """The same sync command under both MPIs (.ci/run's second step has both venvs) writes the same history."""
    other = _other_mpi_venv()
    if other is None:
        pytest.skip("no venv with the other MPI here (.ci/run's Open MPI step has both)")
    args = [*TINY, "--agents-per-rank", "2"]
    here = tmp_path / "here"
    run_evo([*args, "--run-dir", str(here)], 2)
    there = tmp_path / "there"
    cmd = [os.path.join(other, "bin", "mpiexec"), "-n", "2", os.path.join(other, "bin", "python"), "-m", "evo_mpi.run"]
    env = {**child_env(), **OPENMPI_ENV}  # harmless under MPICH
    proc = subprocess.run(
        [*cmd, *args, "--run-dir", str(there)], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert read_history(there) == read_history(here)
    picks = [json.loads((d / "champion.json").read_text()) for d in (there, here)]
    assert [{k: v for k, v in p.items() if k != "wall_s"} for p in picks] == [
        {k: v for k, v in picks[1].items() if k != "wall_s"}
    ] * 2
