"""TensorBoard as a PBT dashboard, read back with TensorBoard's own readers and held against history.jsonl.

One real run (4 members in one process, 3 tiny generations); then:
- the HParams plugin's session data: one session per member and stretch of constant hyperparameters,
  with exactly the history's hyperparameters and fitness;
- the custom-scalars layout: every member's fitness on one chart, one chart per searched
  hyperparameter, best/mean/min, each pointing at tags the run really wrote;
- the exploit events as text: the lineage's copies, each at its generation.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from evo_mpi.outputs import EXPLOITS_TAG, SESSION_FITNESS

EVERYTHING = {"scalars": 0, "tensors": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("dashboard") / "run"
    argv = [
        *("--agents-per-rank", "4", "--generations", "3", "--steps-per-generation", "2048"),
        *("--final-eval-episodes", "1", "--seed", "3", "--run-dir", str(run_dir)),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "evo_mpi.run", *argv], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


def read(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stretches(history: list[dict], member: int) -> list[list[dict]]:
    """A member's records cut where its hyperparameters change: the sessions the board must have written."""
    out: list[list[dict]] = []
    for rec in sorted((r for r in history if r["member"] == member), key=lambda r: r["generation"]):
        if out and out[-1][-1]["hparams"] == rec["hparams"]:
            out[-1].append(rec)
        else:
            out.append([rec])
    return out


def plain(value) -> object:
    """A protobuf Value as the Python value it holds."""
    kind = value.WhichOneof("kind")
    return {"number_value": value.number_value, "string_value": value.string_value, "bool_value": value.bool_value}[
        kind
    ]


def test_hparams_sessions_match_the_history(run: Path):
    history = jsonl(run / "history.jsonl")
    expected = {}
    for m in range(4):
        for stretch in stretches(history, m):
            expected[f"member_{m:02d}-steps_{stretch[0]['timesteps']:09d}"] = stretch
    sessions = sorted(p.name for p in (run / "tb" / "hparams").iterdir())
    assert sessions == sorted(expected)
    assert len(sessions) > 4, "the run must explore for sessions to split"
    for name, stretch in expected.items():
        acc = read(run / "tb" / "hparams" / name)
        content = acc.PluginTagToContent("hparams")
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        got = {k: plain(v) for k, v in data.session_start_info.hparams.items()}
        want = stretch[0]["hparams"]
        assert set(got) == set(want), name
        for key, value in want.items():
            if isinstance(value, str):
                assert got[key] == value, (name, key)
            else:
                assert math.isclose(got[key], value, rel_tol=1e-12), (name, key, got[key], value)
        points = [(e.step, e.value) for e in acc.Scalars(SESSION_FITNESS)]
        finite = [(r["timesteps"], r["fitness"]) for r in stretch if r["fitness"] is not None]
        assert [s for s, _ in points] == [s for s, _ in finite], name
        for (_, got_fit), (_, want_fit) in zip(points, finite, strict=True):
            assert math.isclose(got_fit, want_fit, rel_tol=1e-6), (name, got_fit, want_fit)


def test_the_custom_scalars_layout_points_at_real_tags(run: Path):
    acc = read(run / "tb" / "population")
    (event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    searched = sorted(k for k, v in jsonl(run / "history.jsonl")[0]["hparams"].items() if isinstance(v, (int, float)))
    assert {"fitness of every member", "best, mean and min fitness", *searched} == set(charts)
    member_tags = read(run / "tb" / "member_00").Tags()["scalars"]
    population_tags = acc.Tags()["scalars"]
    assert [t for t in member_tags if re.match(charts["fitness of every member"][0], t)] == ["pbt/fitness"]
    population = [t for t in population_tags if re.match(charts["best, mean and min fitness"][0], t)]
    assert sorted(population) == [f"population/{k}_fitness" for k in ("best", "mean", "min")]
    for name in searched:
        assert [t for t in member_tags if re.match(charts[name][0], t)] == [f"hparams/{name}"]


def test_exploit_events_are_text_matching_the_lineage(run: Path):
    lineage = jsonl(run / "lineage.jsonl")
    assert lineage, "the run must exploit"
    acc = read(run / "tb" / "population")
    events = acc.Tensors(f"{EXPLOITS_TAG}/text_summary")
    shown = set()
    for event in events:
        text = event.tensor_proto.string_val[0].decode()
        for row in text.splitlines()[2:]:
            loser, winner, generation = (int(cell) for cell in row.strip("|").split("|")[:3])
            shown.add((loser, winner, generation, event.step))
    at_step = {}
    for rec in lineage:
        at_step[rec["generation"]] = max(at_step.get(rec["generation"], 0), rec["timesteps"])
    assert shown == {(r["loser"], r["winner"], r["generation"], at_step[r["generation"]]) for r in lineage}
    first = next(r for r in lineage)
    text = events[0].tensor_proto.string_val[0].decode()
    assert f"learning_rate={first['old_hparams']['learning_rate']:.4g}" in text
    assert f"learning_rate={first['new_hparams']['learning_rate']:.4g}" in text
