"""Tournament, t-test, PB2 and no-exploit runs under real mpiexec (every algorithm: test_algos_mpi.py)."""

import math

import numpy as np
import pytest

from evo_mpi import seeding
from evo_mpi.config import Config
from evo_mpi.engine import PB2_MAX_OBSERVATIONS
from evo_mpi.pb2 import Observation, pb2_explore
from evo_mpi.selection import rank_order, tournament, ttest
from evo_mpi.space import explore, parse_space
from helpers import TINY, history_without_rank, read_history, run_evo

SPACE = {"batch_size": "choice:32,64,128", "n_epochs": "int:1:3"}
CFG = Config(seed=7, steps_per_generation=256, search_space=SPACE)

METHODS = {
    "tournament-elitism": ["--selection", "tournament", "--tournament-size", "3", "--elitism"],
    "ttest": ["--selection", "ttest", "--ttest-alpha", "0.3"],
    "pb2": ["--selection", "truncation", "--explore", "pb2"],
}  # ``none`` (random search) moves nothing between ranks: test_selection.py and test_step.py check it
FOUR_GENERATIONS = [*TINY, "--generations", "4"]


@pytest.fixture(scope="module", params=list(METHODS))
def method_runs(request, tmp_path_factory):
    """The same method on 2 ranks x 2 members and on one process with 4 members."""
    name = request.param
    out = {}
    for layout, n, per_rank in (("mpi", 2, "2"), ("single", None, "4")):
        run_dir = tmp_path_factory.mktemp(f"{name}-{layout}") / "run"
        run_evo([*FOUR_GENERATIONS, *METHODS[name], "--agents-per-rank", per_rank, "--run-dir", str(run_dir)], n)
        out[layout] = run_dir
    return name, out


def _by_generation(history):
    gens = sorted({r["generation"] for r in history})
    return [sorted((r for r in history if r["generation"] == g), key=lambda r: r["member"]) for g in gens]


def _fitness(recs):
    return np.array([math.nan if r["fitness"] is None else r["fitness"] for r in recs])


def test_history_same_on_every_layout_and_plan_recomputes(method_runs):
    name, runs = method_runs
    assert history_without_rank(runs["mpi"]) == history_without_rank(runs["single"])
    gens = _by_generation(read_history(runs["mpi"]))
    space = parse_space(CFG.space_specs)
    observations: list[Observation] = []
    start = np.full(4, math.nan)
    exploits = 0
    for g, recs in enumerate(gens):
        fitness = _fitness(recs)
        parents = {r["member"]: r["parent"] for r in recs if r["parent"] is not None}
        exploits += len(parents)
        if g == len(gens) - 1:
            assert parents == {}
            continue
        rng = seeding.stream(CFG.seed, seeding.SELECT, g)
        if name == "tournament-elitism":
            assert parents == tournament(fitness, 3, True, rng)
            assert int(rank_order(fitness)[0]) not in parents  # the elite is never replaced
        elif name == "ttest":
            returns = [np.array(r["returns"], dtype=float) for r in recs]
            assert all(len(r) > 0 for r in returns)
            assert parents == ttest(returns, fitness, 0.3, rng)
        else:
            n = 1  # truncation q = 0.25 of 4
            order = rank_order(fitness).tolist()
            assert sorted(parents) == sorted(order[-n:])
        # explore: recompute every member's next hyperparameters
        if name == "pb2":
            for m in range(4):
                if math.isfinite(fitness[m] - start[m]):
                    observations.append(Observation(float(g), recs[m]["hparams"], float(fitness[m] - start[m])))
            observations = observations[-PB2_MAX_OBSERVATIONS:]
        chosen = []
        for m in range(4):
            want = recs[m]["hparams"]
            if m in parents:
                rng = seeding.stream(CFG.seed, seeding.EXPLORE, g, m)
                donor = recs[parents[m]]["hparams"]
                if name == "pb2":
                    want = pb2_explore(donor, space, observations, float(g + 1), rng, pending=chosen)
                    chosen.append(want)
                else:
                    want = explore(donor, space, CFG.perturb_factors, CFG.resample_probability, rng)
            assert gens[g + 1][m]["hparams"] == want, (g, m)
        start = fitness.copy()
        for m, p in parents.items():
            start[m] = fitness[p]
    assert exploits > 0, "the run must exercise the exploit path"


def test_lineage_file_lists_every_exploit(method_runs):
    import json

    _, runs = method_runs
    history = read_history(runs["mpi"])
    lines = (runs["mpi"] / "lineage.jsonl").read_text().splitlines()
    lineage = [json.loads(line) for line in lines]
    expected = [(r["generation"], r["member"], r["parent"]) for r in history if r["parent"] is not None]
    assert sorted((e["generation"], e["loser"], e["winner"]) for e in lineage) == sorted(expected)
    by_key = {(r["generation"], r["member"]): r for r in history}
    for e in lineage:
        assert e["old_hparams"] == by_key[(e["generation"], e["loser"])]["hparams"]
        assert e["new_hparams"] == by_key[(e["generation"] + 1, e["loser"])]["hparams"]
        assert e["winner_fitness"] == by_key[(e["generation"], e["winner"])]["fitness"]
