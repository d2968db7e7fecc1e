"""History and lineage rows as types: one NaN <-> null codec, rows of older versions stay readable."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from evo_mpi.records import (
    Failure,
    HistoryRow,
    IntervalFields,
    LineageRow,
    Mutation,
    WeightNoise,
    dumps,
    finite,
    number,
    step_of,
)

DATA = Path(__file__).resolve().parents[1] / "docs" / "data"
#: Committed runs written by older versions: a sync PBT run, an async one (2026-12-03, before
#: ``since_exploit``), and a sync run of the defaults study (exploit margin era).
OLD_RUNS = [
    DATA / "methods" / "Pendulum-v1" / "pbt" / "seed0",
    DATA / "hard" / "LunarLander-v3" / "pbt-async" / "seed0",
    DATA / "defaults" / "Pendulum-v1" / "pbt-margin3" / "seed0",
]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("run", OLD_RUNS, ids=lambda p: "/".join(p.parts[-3:]))
def test_rows_written_by_older_versions_read_back_and_write_the_same_fields(run):
    rows = _lines(run / "history.jsonl")
    assert rows
    for data in rows:
        row = HistoryRow.from_json(data)
        assert (row.step, row.member) == (data["generation"], data["member"])
        assert row.fitness == data["fitness"] or (data["fitness"] is None and math.isnan(row.fitness))
        out = row.to_json()
        if row.async_fields is not None:  # async rows name their index interval since 2026-12-05
            data = {RENAMED.get(k, k): v for k, v in data.items()}
        assert {k: out[k] for k in data} == data  # every field it had, unchanged (async: renamed)
        assert set(out) - set(data) <= {"since_exploit"}  # an old async row gains only since_exploit: null


#: Async history rows' names since 2026-12-05 for what earlier versions called generation.
RENAMED = {"generation": "interval", "parent_generation": "parent_interval"}


def test_an_old_async_row_has_no_since_exploit_and_counts_as_ready():
    data = _lines(OLD_RUNS[1] / "history.jsonl")[0]
    assert "since_exploit" not in data
    row = HistoryRow.from_json(data)
    assert row.async_fields is not None and row.fields.since_exploit is None
    assert row.fields.delta != row.fields.delta  # null delta -> NaN


def test_missing_numbers_are_null_on_disk_and_nan_in_memory():
    row = HistoryRow(
        step=3, member=1, rank=0, timesteps=10, fitness=math.nan, hparams={"lr": 0.1},
        returns=[1.0, math.inf, -2.5], fitness_missing="diverged", objectives=[math.nan],
        failure=Failure("RuntimeError", "boom", "training"),
    )  # fmt: skip
    out = row.to_json()
    assert out["fitness"] is None and out["returns"] == [1.0, None, -2.5] and out["objectives"] == [None]
    assert out["failure"] == {"type": "RuntimeError", "message": "boom", "phase": "training"}
    assert "held" not in out and "mutation" not in out and "target_reached" not in out and "wall" not in out
    text = dumps(out)
    assert "NaN" not in text and "Infinity" not in text
    back = HistoryRow.from_json(json.loads(text))
    assert math.isnan(back.fitness) and math.isnan(back.returns[1]) and back.failure == row.failure
    assert finite(math.nan) is None and finite(2) == 2.0 and math.isnan(number(None))


def test_the_strict_policy_refuses_a_nan_left_unconverted():
    with pytest.raises(ValueError):
        dumps({"fitness": math.nan})


def test_an_async_row_writes_its_exploit_fields_null_until_it_exploits():
    fields = IntervalFields(wall=1.0, unix=2.0, lengths=[5], delta=math.nan, since_exploit=64, seen=[0, -1])
    row = HistoryRow(
        step=0, member=0, rank=0, timesteps=64, fitness=1.5, hparams={}, returns=[1.5], async_fields=fields
    )
    out = row.to_json()
    assert out["interval"] == 0 and "generation" not in out  # an async row's index has its own name
    assert (out["parent"], out["parent_interval"], out["parent_fitness"], out["delta"]) == (None, None, None, None)
    copy = row.replace(parent=1)
    copy.fields.parent_step, copy.fields.parent_fitness = 4, 9.0
    assert row.fields.parent_step is None  # the copy's async fields are its own
    assert (copy.to_json()["parent_interval"], copy.to_json()["parent_fitness"]) == (4, 9.0)
    assert HistoryRow.from_json(copy.to_json()).fields.parent_step == 4
    with pytest.raises(ValueError, match="sync row"):
        _ = HistoryRow(step=0, member=2, rank=0, timesteps=0, fitness=0.0, hparams={}, returns=[]).fields


@pytest.mark.parametrize(
    "data",
    [  # a sync exploit with a mutation and MF-PBT's source; an async one with the donor's interval
        {"generation": 4, "loser": 3, "winner": 0, "timesteps": 2048, "loser_fitness": None, "winner_fitness": 12.5,
         "old_hparams": {"lr": 0.1}, "new_hparams": {"lr": 0.12}, "mutation": {"kind": "grow"}, "hparams_from": 1},
        {"interval": 7, "loser": 2, "winner": 5, "winner_interval": 6, "timesteps": 4096, "loser_fitness": -3.0,
         "winner_fitness": 8.0, "old_hparams": {}, "new_hparams": {"n_epochs": 3}},
    ],
)  # fmt: skip
def test_lineage_rows_read_and_write_every_field(data):
    row = LineageRow.from_json(data)
    assert row.to_json() == data
    assert (row.step, row.loser, row.winner) == (step_of(data), data["loser"], data["winner"])


def test_an_async_lineage_row_of_an_earlier_version_reads_its_generation_as_the_interval():
    old = {"generation": 7, "loser": 2, "winner": 5, "winner_generation": 6, "timesteps": 4096,
           "loser_fitness": -3.0, "winner_fitness": 8.0, "old_hparams": {}, "new_hparams": {}}  # fmt: skip
    row = LineageRow.from_json(old)
    assert (row.step, row.winner_step) == (7, 6)
    assert (row.to_json()["interval"], row.to_json()["winner_interval"]) == (7, 6)


def _documented(section: str) -> set[str]:
    """The field names of a section's tables in docs/outputs.md (the outputs reference)."""
    text = (DATA.parent / "outputs.md").read_text()
    body = text.split(f"## `{section}`", 1)[1].split("\n## ", 1)[0]
    return {line.split("`")[1] for line in body.splitlines() if line.startswith("| `")}


def test_the_outputs_reference_documents_exactly_the_fields_rows_write():
    fields = IntervalFields(wall=1.0, unix=2.0, lengths=[5], delta=0.5, since_exploit=64, seen=[0], parent_step=1)
    row = HistoryRow(
        step=0, member=0, rank=0, timesteps=64, fitness=math.nan, hparams={}, returns=[], parent=1,
        fitness_missing="failed", objectives=[], mutation=Mutation("arch", "add_layer"), held={"donor": 1},
        hparams_from=2,
        failure=Failure("E", "m", "training"), target_reached=True, async_fields=fields,
    )  # fmt: skip
    sync_row = row.replace(async_fields=None)
    assert _documented("history.jsonl") == set(row.to_json()) | set(sync_row.to_json())
    assert set(row.to_json()) ^ set(sync_row.to_json()) == {"generation", "interval"} | set(fields.to_json(True))
    lineage = LineageRow(1, 2, 3, 64, 1.0, 2.0, {}, {}, winner_step=0, mutation=Mutation("arch"), hparams_from=3)
    sync_lineage = dataclasses.replace(lineage, winner_step=None)
    assert _documented("lineage.jsonl") == set(lineage.to_json()) | set(sync_lineage.to_json())


def test_every_committed_champion_json_reads_as_a_report_and_writes_its_fields_back():
    """champion.json files of every version so far (some before ``failures``, ``scored``, ``eval_failures``)."""
    from evo_mpi.champion import ChampionReport

    paths = sorted(DATA.rglob("champion.json"))
    assert len(paths) >= 20
    without_scored = 0
    for path in paths:
        data = json.loads(path.read_text())
        report = ChampionReport.from_json(data)
        out = report.to_json()
        without_scored += "scored" not in data
        for key in ("member", "pick", "episodes", "seeds", "top", "final_fitness", "eval_steps", "failures"):
            if key in data:
                assert out[key] == data[key], (path, key)
        kept = [{k: c[k] for k in ("member", "final_fitness", "returns")} for c in data["candidates"]]
        assert [{k: c[k] for k in ("member", "final_fitness", "returns")} for c in out["candidates"]] == kept
    assert without_scored > 0  # an older file among them, whose missing fields took their defaults


def test_checkpoint_states_write_null_for_nan_and_read_back():
    from evo_mpi.checkpoint import IntervalState, PopulationState
    from evo_mpi.pb2 import Observation

    state = PopulationState(3, False, 2, [{"lr": 0.1}, {"lr": 0.2}], [1.0, math.nan], 10, 20, [math.nan, 2.0],
                            [Observation(1.0, {"lr": 0.1}, 0.5)], [-1, 2], 1, [1, 1])  # fmt: skip
    data = json.loads(dumps(state.to_json()))
    assert data["fitness"] == [1.0, None] and data["start_fitness"] == [None, 2.0]
    back = PopulationState.from_json(data)
    assert back.to_json() == state.to_json() and math.isnan(back.fitness[1])
    later = ("start_fitness", "pb2", "last_exploit", "failures", "torch_threads")
    old = {k: v for k, v in data.items() if k not in later}
    older = PopulationState.from_json(old)  # a checkpoint written before those were kept
    assert older.last_exploit == [-1, -1] and older.torch_threads is None and all(map(math.isnan, older.start_fitness))
    row = HistoryRow(4, 1, 0, 512, math.nan, {"lr": 0.1}, [], parent=0)
    interval = IntervalState({"timesteps": 512}, 5, math.nan, 256, row, 1)
    written = json.loads(dumps(interval.to_json()))
    assert written["start_fitness"] is None and written["record"]["fitness"] is None
    assert IntervalState.from_json(written).to_json() == interval.to_json()


@pytest.mark.parametrize(
    "mutation",
    [
        Mutation("hparams"),
        Mutation("arch", arch_op="remove_nodes:1:-16"),
        Mutation("activation"),
        Mutation("weights", weight_noise=WeightNoise("super", 0.1, 0.05, 12345)),
    ],
)
def test_a_mutation_writes_only_what_it_decided_and_reads_back(mutation):
    data = json.loads(dumps(mutation.to_json()))
    assert Mutation.from_json(data) == mutation
    assert set(data) == {"kind"} | ({"arch_op"} if mutation.arch_op else set()) | (
        {"weight_noise"} if mutation.weight_noise else set()
    )
