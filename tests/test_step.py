"""The PBT step both schedulers call: readiness, failure repair, draws and explore (pure, hand-checked)."""

import ast
from pathlib import Path

import numpy as np

from evo_mpi.config import Config
from evo_mpi.space import parse_space
from evo_mpi.step import PBTStep, Seen, start_fitness

PACKAGE = Path(__file__).resolve().parents[1] / "evo_mpi"


def _step(**fields) -> PBTStep:
    cfg = Config(**fields)
    return PBTStep(cfg, parse_space(cfg.space_specs), "tanh")


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(evo_mpi modules, outside top-level packages) that evo_mpi's ``module`` imports itself."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    package = module.split(".")[:-1]
    if not path.exists():
        path, package = PACKAGE / module.replace(".", "/") / "__init__.py", module.split(".")
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            outside |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            outside.add(str(node.module).split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1]
            names = [node.module] if node.module else [a.name for a in node.names]
            for name in names:
                target = ".".join([*base, *name.split(".")])
                if (PACKAGE / (target.replace(".", "/") + ".py")).exists() or (
                    PACKAGE / target.replace(".", "/")
                ).is_dir():
                    inside.add(target)
    return inside, outside


def test_the_step_records_and_fitness_import_no_mpi_torch_or_sb3_even_indirectly():
    todo, seen, outside = ["step", "records", "fitness"], set(), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            inside, more = _imports(module)
            todo += sorted(inside)
            outside |= more
    assert {"decision", "selection", "pb2", "mfpbt", "config"} <= seen  # the walk follows the package's imports
    assert not outside & {"mpi4py", "torch", "stable_baselines3"}, sorted(outside)
    assert not seen & {"comm", "member", "scheduler", "engine", "async_engine"}


def test_ready_after_counts_steps_since_the_last_exploit_and_an_unknown_count_is_ready():
    step = _step(selection="wta", ready_after=512)
    seen = [Seen(0, 1.0, since_exploit=None), Seen(1, 5.0, since_exploit=100), Seen(2, 3.0, since_exploit=512),
            Seen(3, 2.0, since_exploit=4096)]  # fmt: skip
    assert step.ready(seen).tolist() == [True, False, True, True]
    # member 1 (the best) is not ready: winner-takes-all among 0, 2, 3 makes 2 the donor
    assert step.choose(7, seen).donors == {0: 2, 3: 2}
    assert _step(selection="wta").ready(seen) is None
    assert _step(selection="wta").choose(7, seen).donors == {0: 1, 2: 1, 3: 1}


def test_a_failed_member_is_repaired_in_sync_and_when_it_decides_for_itself_in_async():
    step = _step(selection="none")  # random search: only a failure makes a member copy
    seen = [Seen(0, 4.0), Seen(1, 9.0), Seen(2, 1.0), Seen(3, float("nan"), failed=True)]
    sync = step.choose(2, seen).donors
    assert list(sync) == [3] and sync[3] in (0, 1, 2)
    assert step.choose(2, seen, deciding=1).donors == {}  # a healthy member decides: nobody copies
    mine = step.choose(2, seen, deciding=3).donors
    assert list(mine) == [3] and mine[3] in (0, 1, 2)


def test_each_decision_draws_from_its_own_stream():
    step = _step(selection="tournament", tournament_size=2)
    seen = [Seen(m, float(f)) for m, f in enumerate([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0, 3.5])]
    assert step.choose(5, seen).donors == step.choose(5, seen).donors  # repeatable on every rank
    draws = {str(sorted(step.choose(g, seen).donors.items())) for g in range(12)}
    assert len(draws) > 1  # another generation, other draws


def test_explore_draws_new_hyperparameters_or_leaves_them_to_rank_0():
    step = _step()
    space = parse_space(step.cfg.space_specs)
    source = {name: prior.low if prior.kind != "choice" else prior.choices[0] for name, prior in space.items()}
    pending: list = []
    new, mutation = step.explore(3, 1, dict(source), pending=pending)
    assert mutation is None and new is not None and set(new) == set(source) and new != source
    assert pending == [new]
    assert step.explore(3, 1, dict(source), pending=pending) == (new, None)  # (step, member) fixes the draw
    assert step.explore(3, 1, dict(source), draw_hparams=False) == (None, None)


def test_start_fitness_is_the_members_own_or_its_donors():
    got = start_fitness(np.array([1.0, 8.0, np.nan, 3.0]), {2: 1, 0: 3})
    assert got.tolist() == [3.0, 8.0, 8.0, 3.0]
