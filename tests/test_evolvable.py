"""Evolvable networks over real mpiexec: members of different sizes move, mutate, resume and load alike."""

import json

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from evo_mpi.arch import draw_kind
from evo_mpi.member import EPISODE_KEYS
from evo_mpi.plot import _natural
from evo_mpi.records import parent_step_of, step_of
from helpers import check_pngs, history_without_rank, read_history, run_evo, run_module

BUDGET = ["--env-id", "CartPole-v1", "--steps-per-generation", "256", "--n-envs", "2", "--n-steps", "64"]
FIXED = ["--search-space", "batch_size=const:64", "--search-space", "n_epochs=const:2"]

#: Two members, seed 3: member 1 (64-64) copies member 0 (128-64-64) after generation 0; mutation none=1
#: keeps the copy exactly as it arrived.
COPY = [
    *BUDGET, *FIXED, "--seed", "3", "--generations", "2", "--selection", "wta", "--mutation-probs", "none=1",
    "--search-space", "net_arch=choice:64-64,128-64-64", "--search-space", "activation_fn=const:relu",
]  # fmt: skip

#: Every mutation kind, on an arch prior, four members.
MUTATING = [
    *BUDGET, *FIXED, "--seed", "7", "--generations", "5", "--selection", "truncation",
    "--truncation-fraction", "0.5", "--search-space", "net_arch=arch:1:3:32:128",
    "--search-space", "activation_fn=choice:relu,tanh",
    "--mutation-probs", "none=1,hparams=1,arch=3,weights=1,activation=1",
]  # fmt: skip


def _tensors(path):
    tensors = torch.load(path, weights_only=True)
    flat = {}
    for key, value in tensors.items():
        if isinstance(value, dict):  # a state dict (of a network or an optimizer)
            stack = [(f"{key}.{k}", v) for k, v in value.items()]
            while stack:
                name, v = stack.pop()
                if isinstance(v, dict):
                    stack.extend((f"{name}.{k}", x) for k, x in v.items())
                elif isinstance(v, list):
                    stack.extend((f"{name}.{i}", x) for i, x in enumerate(v))
                elif isinstance(v, torch.Tensor):
                    flat[name] = v
        elif isinstance(value, torch.Tensor) and not key.startswith("replay:"):
            flat[key] = value
    return flat


@pytest.fixture(scope="module")
def copy_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("copy") / "run"
    run_evo([*COPY, "--run-dir", str(run_dir), "--agents-per-rank", "2"], None)
    return history_without_rank(run_dir)


@pytest.mark.parametrize("backend", ["p2p", "collective"])
def test_small_loser_copies_bigger_winner_bit_for_bit(tmp_path, copy_reference, backend):
    run_dir = tmp_path / "run"
    run_evo([*COPY, "--run-dir", str(run_dir), "--backend", backend], 2)
    history = read_history(run_dir)
    first = {r["member"]: r for r in history if step_of(r) == 0}
    assert first[0]["hparams"]["net_arch"] == "128-64-64" and first[1]["hparams"]["net_arch"] == "64-64"
    assert first[1]["parent"] == 0 and first[0]["rank"] != first[1]["rank"]  # across ranks
    # after the exploit (the checkpoint of generation 0) the loser is the winner, tensor for tensor
    # (the envs' running episodes stay with the slot: an exploit moves everything else)
    winner, loser = (
        {k: v for k, v in _tensors(run_dir / "checkpoints" / "gen_000000" / f"member_{m:02d}.pt").items()
         if not k.startswith(EPISODE_KEYS)}
        for m in (0, 1)
    )  # fmt: skip
    assert winner.keys() == loser.keys() and len(winner) > 10
    assert any(t.shape == (128, 4) for t in winner.values())  # the 128-node first layer, weights and Adam moments
    for key in winner:
        assert torch.equal(winner[key], loser[key]), key
    second = {r["member"]: r for r in history if step_of(r) == 1}
    assert second[1]["hparams"] == second[0]["hparams"]
    assert history_without_rank(run_dir) == copy_reference  # the same run in one process
    # both final models load and are the architecture the history records
    for m in (0, 1):
        model = PPO.load(run_dir / "final" / f"member_{m:02d}.zip", device="cpu")
        assert model.policy.net_arch == {"pi": [128, 64, 64], "vf": [128, 64, 64]} or model.policy.net_arch == [
            128,
            64,
            64,
        ]


@pytest.fixture(scope="module")
def mutating_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mutating") / "run"
    run_evo([*MUTATING, "--run-dir", str(run_dir), "--agents-per-rank", "4"], None)
    return run_dir, history_without_rank(run_dir)


def test_every_mutation_kind_happens_and_final_models_match_the_history(mutating_reference):
    run_dir, history = mutating_reference
    kinds = [r["mutation"]["kind"] for r in history if "mutation" in r]
    ops = {r["mutation"].get("arch_op", "").split(":")[0] for r in history if "mutation" in r}
    assert {"arch", "weights"} <= set(kinds), kinds
    assert "add_nodes" in ops or "add_layer" in ops, ops
    archs = {r["hparams"]["net_arch"] for r in history}
    assert len(archs) >= 3, archs  # sizes really differ and change
    last = {r["member"]: r for r in history if step_of(r) == 4}
    lineage = [json.loads(line) for line in (run_dir / "lineage.jsonl").read_text().splitlines()]
    assert lineage and all("mutation" in rec for rec in lineage)
    for m, rec in last.items():
        model = PPO.load(run_dir / "final" / f"member_{m:02d}.zip", device="cpu")
        sizes = [int(n) for n in rec["hparams"]["net_arch"].split("-")]
        assert model.policy.net_arch in (sizes, {"pi": sizes, "vf": sizes})
        activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[rec["hparams"]["activation_fn"]]
        assert model.policy.activation_fn is activation


def test_async_members_of_different_sizes_exchange_and_finish(tmp_path):
    run_dir = tmp_path / "run"
    run_evo([*MUTATING, "--mode", "async", "--mutate", "all", "--run-dir", str(run_dir), "--agents-per-rank", "2"], 2)
    history = read_history(run_dir)
    assert len(history) == 4 * 5
    crossed = [r for r in history if r["parent"] is not None and r["parent"] // 2 != r["member"] // 2]
    assert crossed  # snapshots fetched from the other rank
    donors = {(r["member"], step_of(r)): r for r in history}
    sizes = [
        (r["hparams"]["net_arch"], donors[(r["parent"], parent_step_of(r))]["hparams"]["net_arch"])
        for r in history
        if r["parent"] is not None and (r["parent"], parent_step_of(r)) in donors
    ]
    assert any(a != b for a, b in sizes), sizes  # a member took a donor of another size
    assert all("mutation" in r for r in history)  # --mutate all: every member mutates after every interval
    for m in range(4):
        PPO.load(run_dir / "final" / f"member_{m:02d}.zip", device="cpu")


def test_mutation_kinds_follow_their_weights():
    """Chi-square goodness of fit of 20,000 draws against the configured weights (p > 0.001)."""
    weights = {"none": 1.0, "hparams": 4.0, "arch": 2.0, "weights": 2.0, "activation": 1.0}
    rng = np.random.default_rng(0)
    kinds = list(weights)
    draws = [draw_kind(weights, rng) for _ in range(20_000)]
    observed = np.array([draws.count(k) for k in kinds])
    expected = np.array([weights[k] for k in kinds]) / sum(weights.values()) * len(draws)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 18.47, (chi2, dict(zip(kinds, observed.tolist(), strict=True)))  # chi-square 4 dof, p = 0.001
    zero = {"none": 0.0, "hparams": 1.0, "arch": 1.0}
    assert "none" not in {draw_kind(zero, rng) for _ in range(1000)}


def test_plot_of_members_of_changing_sizes(mutating_reference, tmp_path):
    """Plots of a run whose members change size: every figure is written, levels in numeric order."""
    run_dir, history = mutating_reference
    out = tmp_path / "plots"
    check_pngs(run_module("evo_mpi.plot", str(run_dir), "--out", str(out)), out)
    assert len({r["hparams"]["net_arch"] for r in history}) >= 3  # a categorical panel of several levels
    # the panel's level order: numbers compared as numbers, a prefix before its extensions
    assert sorted(["160-64", "64-64-64", "48-64", "64-64"], key=_natural) == ["48-64", "64-64", "64-64-64", "160-64"]


def test_replay_repeats_growth_and_weight_noise_exactly(tmp_path):
    """Members that mutate in place (--mutate all, no exploit) are replayed exactly, growth and weight noise included.

    (A lineage that moved slots is replayed exactly only until its first move: after it, the run continued
    in the loser slot's running episodes, which a replay cannot know; test_plot_replay checks that part.)
    """
    run_dir = tmp_path / "run"
    run_evo(
        [*MUTATING, "--selection", "none", "--mutate", "all", "--run-dir", str(run_dir), "--agents-per-rank", "2"], None
    )
    history = read_history(run_dir)
    best = max((r for r in history if step_of(r) == 4), key=lambda r: r["fitness"])["member"]
    out = tmp_path / "replay"
    proc = run_module("evo_mpi.replay", str(run_dir), "--member", str(best), "--out", str(out), timeout=240)
    assert proc.returncode == 0, proc.stderr
    replayed = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(replayed) == 5 and {r["member"] for r in replayed} == {best}
    by_key = {(r["member"], step_of(r)): r for r in history}
    kinds = [by_key[(best, step_of(r) - 1)].get("mutation", {}).get("kind") for r in replayed[1:]]
    assert {"arch", "weights"} & set(kinds), kinds  # the lineage grew or was perturbed on the way
    assert len({r["hparams"]["net_arch"] for r in replayed}) >= 2  # and changed size
    for r in replayed:
        assert r["fitness"] == r["pbt_fitness"], (step_of(r), r["fitness"], r["pbt_fitness"])
        assert r["hparams"]["net_arch"] == by_key[(best, step_of(r))]["hparams"]["net_arch"]
