"""TensorBoard as a PBT dashboard, read back with TensorBoard's own readers and held against history.jsonl.

One real run (4 members in one process, 3 tiny generations), and one whose fitness is an objective
(``--fitness info:score``, 4 tiny generations); then:
- the HParams plugin's session data: one session per member and stretch of constant hyperparameters,
  with exactly the history's hyperparameters and, as metrics, fitness, mean return and (info:KEY) objective,
  each recomputed here from history.jsonl's episode lists; and the HPARAMS tab's own requests (the
  plugin's experiment and session groups) showing those metric columns with each session's last values;
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
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.context import RequestContext
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups, plugin_data_pb2

from evo_mpi.outputs import EXPLOITS_TAG, SESSION_FITNESS, SESSION_OBJECTIVE, SESSION_RETURN
from evo_mpi.records import step_of
from helpers import cartpole_args, run_evo

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


@pytest.fixture(scope="module")
def objective_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fitness is info["score"] (episode length mod 7), so fitness, return and objective differ."""
    run_dir = tmp_path_factory.mktemp("dashboard_objective") / "run"
    args = [*cartpole_args(seed=2, generations=4, steps=256), "--env-id", "tests.user_envs:ScoredCartPole"]
    run_evo([*args, "--fitness", "info:score", "--agents-per-rank", "4", "--run-dir", str(run_dir)], None, 900)
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
    for rec in sorted((r for r in history if r["member"] == member), key=lambda r: step_of(r)):
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


def mean_of(values: list[float | None]) -> float | None:
    """The mean of a history episode list's finite entries (history writes NaN and inf as null)."""
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def metrics_of(rec: dict) -> dict[str, float]:
    """The metrics a history record's session must show, from its episode lists, not from its fitness: the
    mean return; with info:KEY (``objectives`` present) the mean objective, which is also the fitness."""
    if "objectives" in rec:
        scores = {SESSION_RETURN: mean_of(rec["returns"]), SESSION_OBJECTIVE: mean_of(rec["objectives"])}
        scores[SESSION_FITNESS] = scores[SESSION_OBJECTIVE]
    else:
        scores = {SESSION_RETURN: mean_of(rec["returns"]), SESSION_FITNESS: mean_of(rec["returns"])}
    return {tag: value for tag, value in scores.items() if value is not None}


def expected_sessions(run: Path) -> dict[str, list[dict]]:
    history = jsonl(run / "history.jsonl")
    expected = {}
    for m in range(4):
        for stretch in stretches(history, m):
            expected[f"member_{m:02d}-steps_{stretch[0]['timesteps']:09d}"] = stretch
    return expected


def hparams_tab(tb: Path) -> tuple[api_pb2.Experiment, api_pb2.ListSessionGroupsResponse]:
    """What the HPARAMS tab asks the plugin for, with ``tensorboard --logdir tb``: its columns, its rows."""
    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance=EVERYTHING)
    mux.AddRunsFromDirectory(str(tb))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(tb))
    context = backend_context.Context(base_plugin.TBContext(logdir=str(tb), multiplexer=mux, data_provider=provider))
    experiment = get_experiment.Handler(RequestContext(), context, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10_000, allowed_statuses=list(api_pb2.Status.values())
    )
    return experiment, list_session_groups.Handler(RequestContext(), context, "", request).run()


def points(acc: EventAccumulator, tag: str) -> dict[int, float]:
    """A scalar series as {step: value}, each step once."""
    events = acc.Scalars(tag)
    assert len({e.step for e in events}) == len(events), tag
    return {e.step: e.value for e in events}


def check_sessions(run: Path, metrics: set[str]) -> None:
    """Every session's hyperparameters and every metric's points against the history."""
    expected = expected_sessions(run)
    sessions = sorted(p.name for p in (run / "tb" / "hparams").iterdir())
    assert sessions == sorted(expected)
    seen: set[str] = set()
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
        fitness = {r["timesteps"]: r["fitness"] for r in stretch if r["fitness"] is not None}
        assert points(acc, SESSION_FITNESS) == pytest.approx(fitness, rel=1e-6), name
        tags = set(acc.Tags()["scalars"])
        assert tags <= metrics, name
        seen |= tags
        for tag in metrics:
            want = {r["timesteps"]: metrics_of(r)[tag] for r in stretch if tag in metrics_of(r)}
            got = points(acc, tag) if tag in tags else {}
            assert got == pytest.approx(want, rel=1e-6), (name, tag)
    assert seen == metrics


def check_hparams_tab(run: Path, metrics: set[str]) -> None:
    """The tab's columns are the metrics; each row shows its session's last value of each, as in the history."""
    experiment, groups = hparams_tab(run / "tb")
    assert {(m.name.tag, m.name.group) for m in experiment.metric_infos} == {(tag, "") for tag in metrics}
    expected = expected_sessions(run)
    rows = {s.name.removeprefix("hparams/"): s for g in groups.session_groups for s in g.sessions}
    assert set(rows) == set(expected)
    for name, stretch in expected.items():
        shown = {v.name.tag: (v.training_step, v.value) for v in rows[name].metric_values}
        last: dict[str, tuple[int, float]] = {}
        for rec in stretch:
            last.update({tag: (rec["timesteps"], value) for tag, value in metrics_of(rec).items()})
        assert shown.keys() == last.keys(), name
        for tag, (step, value) in last.items():
            assert shown[tag][0] == step, (name, tag)
            assert shown[tag][1] == pytest.approx(value, rel=1e-6), (name, tag)


def test_hparams_sessions_match_the_history(run: Path):
    assert len(expected_sessions(run)) > 4, "the run must explore for sessions to split"
    check_sessions(run, {SESSION_FITNESS, SESSION_RETURN})
    check_hparams_tab(run, {SESSION_FITNESS, SESSION_RETURN})


def test_with_an_objective_the_sessions_show_fitness_return_and_objective(objective_run: Path):
    history = jsonl(objective_run / "history.jsonl")
    assert any(r["fitness"] is not None and r["fitness"] != mean_of(r["returns"]) for r in history)
    assert len(expected_sessions(objective_run)) > 4, "the run must explore for sessions to split"
    check_sessions(objective_run, {SESSION_FITNESS, SESSION_RETURN, SESSION_OBJECTIVE})
    check_hparams_tab(objective_run, {SESSION_FITNESS, SESSION_RETURN, SESSION_OBJECTIVE})


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
        at_step[step_of(rec)] = max(at_step.get(step_of(rec), 0), rec["timesteps"])
    assert shown == {(r["loser"], r["winner"], step_of(r), at_step[step_of(r)]) for r in lineage}
    first = next(r for r in lineage)
    text = events[0].tensor_proto.string_val[0].decode()
    assert f"learning_rate={first['old_hparams']['learning_rate']:.4g}" in text
    assert f"learning_rate={first['new_hparams']['learning_rate']:.4g}" in text
