"""Plots, lineage parsing and schedule replay, on a real single-process run and hand-written histories."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evo_mpi.lineage import HistoryError, ancestry, best_member, chain, latest_best, read_history, schedule, tabulate
from evo_mpi.records import step_of
from helpers import ROOT, TINY, check_pngs, child_env, run_evo, run_module

POPULATION = 4
GENERATIONS = 3  # TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pbt") / "run"
    run_evo([*TINY, "--agents-per-rank", str(POPULATION), "--run-dir", str(path)], None)
    return path


def test_plot_writes_three_pngs(run_dir):
    check_pngs(run_module("evo_mpi.plot", str(run_dir)), run_dir / "plots")


def test_plot_run_in_progress_with_partial_last_line(run_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "config.json", partial / "config.json")
    lines = (run_dir / "history.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == GENERATIONS * POPULATION
    cut = lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]  # killed while writing the last record
    (partial / "history.jsonl").write_text("".join(cut))
    records = read_history(partial)
    assert len(records) == len(lines) - 1
    assert tabulate(records, POPULATION).generations == GENERATIONS - 1  # the incomplete generation is dropped
    out = tmp_path / "plots"
    proc = subprocess.run(
        [sys.executable, "scripts/plot_run.py", str(partial), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=ROOT,
    )
    check_pngs(proc, out)


def record(g: int, m: int, parent: int | None, fitness: float | None = 1.0) -> dict:
    return {
        "generation": g,
        "member": m,
        "rank": 0,
        "timesteps": 100 * (g + 1),
        "fitness": fitness,
        "hparams": {"lr": 10 * g + m, "tag": f"g{g}m{m}"},
        "parent": parent,
    }


#: 4 members, 4 generations. End of g0: 0 copies 1. End of g1: 2 copies 0. End of g2 (the last
#: exploit): 1 copies 2. Member 3 never copies. Fitness of the last generation: [null, 5, 7, 7].
PARENTS = {(0, 0): 1, (1, 2): 0, (2, 1): 2}
LAST_FITNESS = [None, 5.0, 7.0, 7.0]


def hand_history() -> list[dict]:
    records = [
        record(g, m, PARENTS.get((g, m)), LAST_FITNESS[m] if g == 3 else float(m)) for g in range(4) for m in range(4)
    ]
    records.reverse()  # order does not matter
    records.append(record(4, 0, None))  # generation 4 is incomplete: ignored
    return records


@pytest.mark.parametrize(
    "member, expected",
    [
        (1, [(0, 1), (1, 0), (2, 2), (3, 1)]),  # copies at the last exploit; chain 1 <- 2 <- 0 <- 1
        (2, [(0, 1), (1, 0), (2, 2), (3, 2)]),
        (0, [(0, 1), (1, 0), (2, 0), (3, 0)]),
        (3, [(0, 3), (1, 3), (2, 3), (3, 3)]),
    ],
)
def test_ancestry_and_schedule_on_known_exploits(member, expected):
    records = hand_history()
    assert ancestry(records, member) == expected
    assert schedule(records, member) == [{"lr": 10 * g + m, "tag": f"g{g}m{m}"} for g, m in expected]


def test_tabulate_best_member_and_errors():
    hist = tabulate(hand_history())
    assert (hist.generations, hist.population) == (4, 4)
    assert hist.exploits() == [(0, 0, 1), (1, 2, 0), (2, 1, 2)]
    assert math.isnan(hist.fitness[3, 0])
    assert best_member(hist) == 2  # 7 twice: the lowest index; null ranks last
    assert best_member([record(0, 0, None, None), record(0, 1, None, None)]) == 0
    assert ancestry([record(0, 0, None), record(0, 1, None)], 1) == [(0, 1)]
    with pytest.raises(HistoryError, match="out of range"):
        ancestry(hand_history(), 4)
    with pytest.raises(HistoryError, match="no complete generation"):
        tabulate([record(0, 1, None)])


def test_read_history_skips_bad_lines(tmp_path):
    good = [record(0, 0, None), record(0, 1, None, None)]
    text = json.dumps(good[0]) + "\n\n[1, 2]\n" + json.dumps(good[1]) + "\n" + json.dumps(good[1])[:20]
    (tmp_path / "history.jsonl").write_text(text)
    assert read_history(tmp_path) == good
    with pytest.raises(HistoryError, match="not a directory"):
        read_history(tmp_path / "missing")


def _until_first_move(lineage: list[tuple[int, int]]) -> int:
    """How many steps ``(generation, slot)`` of a lineage come before it first moves to another slot."""
    return next((i for i in range(1, len(lineage)) if lineage[i][1] != lineage[i - 1][1]), len(lineage))


@pytest.mark.parametrize("choose", ["best", "last-exploit-loser"])
def test_replay_follows_the_schedule(run_dir, tmp_path, choose):
    records = read_history(run_dir)
    hist = tabulate(records)
    if choose == "best":  # the default: the champion, the member in best.zip
        member, args = json.loads((run_dir / "champion.json").read_text())["member"], []
    else:
        member = max(hist.exploits())[1]  # copied at the last exploit: its lineage moved slots
        args = ["--member", str(member)]
    out = tmp_path / "replay"
    proc = run_module("evo_mpi.replay", str(run_dir), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = schedule(records, member)
    saved = json.loads((out / "schedule.json").read_text())
    assert saved["member"] == member
    assert saved["schedule"] == expected
    assert [tuple(x) for x in saved["ancestry"]] == ancestry(records, member)
    replayed = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [step_of(r) for r in replayed] == list(range(GENERATIONS))
    assert [r["hparams"] for r in replayed] == expected
    # same seed, same member streams, same schedule: the lineage is re-created exactly until it first moved
    # slots (envs belong to slots, so after a move the run continued in the loser slot's running episodes)
    lineage = ancestry(records, member)
    pbt = [hist.fitness[g, m] for g, m in lineage]
    stay = _until_first_move(lineage)
    if choose == "last-exploit-loser":
        assert stay < len(lineage) and "until the lineage first moved slots" in proc.stdout
    assert stay >= 1 and [r["fitness"] for r in replayed][:stay] == pbt[:stay]
    assert f"vs PBT member {member} final fitness" in proc.stdout
    assert (out / "model.zip").stat().st_size > 0
    assert any((out / "tb").iterdir())


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("evo_mpi.replay", ["--member", str(POPULATION)], "out of range"),
        ("evo_mpi.replay", ["--member", "-1"], "out of range"),
        ("evo_mpi.plot", ["--member", str(POPULATION)], "out of range"),
    ],
)
def test_bad_member_exits_2(run_dir, tmp_path, module, args, message):
    proc = run_module(module, str(run_dir), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["evo_mpi.plot", "evo_mpi.replay"])
def test_missing_run_dir_or_empty_history_exits_2(tmp_path, module):
    proc = run_module(module, str(tmp_path / "missing"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "history.jsonl").write_text('{"generation": 0, "memb')
    proc = run_module(module, str(tmp_path))
    assert proc.returncode == 2 and "no record" in proc.stderr and "Traceback" not in proc.stderr


# -- asynchronous runs ------------------------------------------------------------------------------


def test_chain_of_a_sync_history_is_its_ancestry():
    records = [r for r in hand_history() if step_of(r) < 4]
    for m in range(4):
        assert chain(records, m) == ancestry(records, m)


def async_record(m: int, k: int, fitness: float | None, parent: int | None = None, donor_k: int | None = None):
    return {"generation": k, "member": m, "fitness": fitness, "hparams": {"lr": 10 * m + k}, "timesteps": 100 * (k + 1),
            "wall": float(k), "parent": parent, "parent_generation": donor_k}  # fmt: skip


#: Member 0 is fast (4 intervals), 1 slow (2), 2 in between (3). After its interval 0, member 1 copied
#: member 0's snapshot of interval 1; after its interval 1, member 2 copied member 1's of interval 1.
ASYNC = [
    async_record(0, 0, 1.0), async_record(0, 1, 3.0), async_record(1, 0, 0.5, parent=0, donor_k=1),
    async_record(2, 0, 2.0), async_record(0, 2, 4.0), async_record(2, 1, 1.0, parent=1, donor_k=1),
    async_record(1, 1, 5.0), async_record(0, 3, 4.5), async_record(2, 2, 6.0),
]  # fmt: skip


def test_chain_follows_donors_at_other_intervals():
    assert chain(ASYNC, 2) == [(0, 0), (1, 0), (1, 1), (2, 2)]  # (interval, slot)
    assert chain(ASYNC, 1) == [(0, 0), (1, 0), (1, 1)]
    assert chain(ASYNC, 0) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert latest_best(ASYNC) == 2  # latest records: 4.5, 5.0, 6.0
    assert latest_best([*ASYNC, async_record(1, 2, 6.0)]) == 1  # a tie goes to the lower id
    with pytest.raises(HistoryError, match="lacks member 1's record of interval 0"):
        chain([r for r in ASYNC if (r["member"], step_of(r)) != (1, 0)], 2)
    with pytest.raises(HistoryError, match="member 5 has no record"):
        chain(ASYNC, 5)


@pytest.fixture(scope="module")
def async_run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("async") / "run"
    args = [*TINY, "--generations", "4", "--selection", "wta", "--mode", "async", "--agents-per-rank", "3"]
    run_evo([*args, "--run-dir", str(path)], None)
    return path


def test_plot_and_replay_of_an_async_run(async_run_dir, tmp_path):
    check_pngs(run_module("evo_mpi.plot", str(async_run_dir), "--out", str(tmp_path / "plots")), tmp_path / "plots")
    records = read_history(async_run_dir)
    moved = [m for m in range(3) if len({s for _, s in chain(records, m)}) > 1]
    assert moved  # wta: some member's state came from another slot
    member = moved[0]
    out = tmp_path / "replay"
    proc = run_module("evo_mpi.replay", str(async_run_dir), "--member", str(member), "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replayed = [json.loads(line) for line in open(out / "history.jsonl")]
    nodes = chain(records, member)
    assert len(replayed) == len(nodes) and nodes[-1] == (
        max(step_of(r) for r in records if r["member"] == member),
        member,
    )
    # one process, the run's seed and threads: the replay re-creates the lineage's fitness exactly until the
    # lineage first moved slots (it then continued in another slot's running episodes)
    stay = _until_first_move(nodes)
    assert 1 <= stay < len(nodes)
    assert [r["fitness"] for r in replayed][:stay] == [r["pbt_fitness"] for r in replayed][:stay]
    assert [(step_of(r), r["member"]) for r in replayed] == nodes
