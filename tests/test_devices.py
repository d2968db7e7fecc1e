"""--device: the node-local rank to device mapping, bad values, placement records, device-neutral state.

The mapping (:mod:`evo_mpi.devices`) is a pure function: its cases below are
computed by hand. Runs go through real mpiexec and SB3. CUDA is never mocked:
the tests that need a GPU run where ``torch.cuda.is_available()`` and are
skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evo_mpi import checkpoint
from evo_mpi.api import plan_run
from evo_mpi.config import Config, ConfigError, Parsed
from evo_mpi.devices import DeviceChoice, DeviceError, assign_device, device_problem, launcher_local_rank, visible_gpus
from evo_mpi.member import Member
from evo_mpi.run import main
from helpers import ROOT, TINY, mpi_flavor, run_evo

torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour where no CUDA device is visible")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (not yet run on a GPU)")

FOUR = ["0", "1", "2", "3"]

# (requested, local rank, visible GPUs) -> (torch device, GPU name): worked out by hand from the rules
# in evo_mpi/devices.py (cuda: local rank r on visible device r % n; cuda:N: device N for every rank).
CASES = [
    # cpu ignores every GPU
    ("cpu", 0, FOUR, "cpu", None),
    ("cpu", 3, [], "cpu", None),
    # a 4-GPU node, one rank per GPU (mpiexec: every rank sees all four)
    ("cuda", 0, FOUR, "cuda:0", "0"),
    ("cuda", 1, FOUR, "cuda:1", "1"),
    ("cuda", 3, FOUR, "cuda:3", "3"),
    # more ranks than devices: 8 ranks on 4 GPUs share them round-robin (ranks 4..7 on GPUs 0..3)
    ("cuda", 4, FOUR, "cuda:0", "0"),
    ("cuda", 6, FOUR, "cuda:2", "2"),
    ("cuda", 7, FOUR, "cuda:3", "3"),
    # CUDA_VISIBLE_DEVICES=2,3: torch's cuda:0 and cuda:1 are the node's GPUs 2 and 3
    ("cuda", 0, ["2", "3"], "cuda:0", "2"),
    ("cuda", 1, ["2", "3"], "cuda:1", "3"),
    ("cuda", 2, ["2", "3"], "cuda:0", "2"),
    # SLURM --gpus-per-task=1: each task sees one device (here the node's GPU 5): every local rank uses cuda:0
    ("cuda", 0, ["5"], "cuda:0", "5"),
    ("cuda", 3, ["5"], "cuda:0", "5"),
    # cuda:N pins every rank to visible device N
    ("cuda:1", 0, FOUR, "cuda:1", "1"),
    ("cuda:1", 3, FOUR, "cuda:1", "1"),
    ("cuda:0", 2, ["GPU-7f3a"], "cuda:0", "GPU-7f3a"),
    # auto with GPUs is cuda
    ("auto", 5, ["2", "3"], "cuda:1", "3"),
]


@pytest.mark.parametrize("requested, local, visible, device, gpu", CASES)
def test_device_mapping(requested, local, visible, device, gpu):
    assert assign_device(requested, local, visible) == DeviceChoice(device, gpu)


def test_auto_without_gpu_is_cpu_with_one_line():
    choice = assign_device("auto", 2, [])
    assert (choice.device, choice.gpu) == ("cpu", None)
    assert choice.note == "evo-mpi: --device auto: no CUDA device visible, training on the CPU"


@pytest.mark.parametrize(
    "requested, visible, message",
    [
        ("cuda", [], "--device cuda: no CUDA device visible"),
        ("cuda:0", [], "--device cuda:0: no CUDA device visible"),
        ("cuda:2", ["0", "1"], "--device cuda:2: only 2 CUDA device(s) visible (cuda:0 .. cuda:1: 0, 1)"),
        ("cuda:-1", FOUR, "--device 'cuda:-1' is not a device (choose from auto, cpu, cuda or cuda:N (N >= 0))"),
        ("gpu", FOUR, "--device 'gpu' is not a device"),
    ],
)
def test_device_that_cannot_be_honoured_is_refused(requested, visible, message):
    with pytest.raises(DeviceError) as err:
        assign_device(requested, 0, visible)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("text", ["gpu", "cuda:-1", "CUDA", "cuda:", "cuda:x", "auto:1", "cpu:0", "", " cuda", "tpu"])
def test_malformed_device_is_named(text):
    assert device_problem(text) == f"--device {text!r} is not a device (choose from auto, cpu, cuda or cuda:N (N >= 0))"


@pytest.mark.parametrize("text", ["cpu", "cuda", "auto", "cuda:0", "cuda:12"])
def test_wellformed_device(text):
    assert device_problem(text) is None


@pytest.mark.parametrize(
    "variable, count, names",
    [
        (None, 0, []),
        (None, 3, ["0", "1", "2"]),  # unset: all of the node's devices, by index
        ("", 0, []),  # set and empty hides every device
        ("2,3", 2, ["2", "3"]),
        ("3, 1", 2, ["3", "1"]),  # CUDA keeps the listed order
        ("GPU-aa,GPU-bb", 2, ["GPU-aa", "GPU-bb"]),
        ("0,-1,1", 1, ["0"]),  # CUDA stops at the first invalid entry: torch counts 1
        ("-1", 0, []),
    ],
)
def test_visible_gpus_follow_cuda_visible_devices(variable, count, names):
    assert visible_gpus(variable, count) == names


@pytest.mark.parametrize(
    "env, found",
    [
        ({}, None),
        ({"SLURM_LOCALID": "1"}, ("SLURM_LOCALID", 1)),  # srun
        ({"MPI_LOCALRANKID": "2", "SLURM_LOCALID": "0"}, ("MPI_LOCALRANKID", 2)),  # Hydra inside an sbatch script
        ({"OMPI_COMM_WORLD_LOCAL_RANK": "3", "MPI_LOCALRANKID": "0"}, ("OMPI_COMM_WORLD_LOCAL_RANK", 3)),
        ({"MPI_LOCALRANKID": ""}, None),
    ],
)
def test_launcher_local_rank(env, found):
    assert launcher_local_rank(env) == found


def test_device_logic_imports_neither_torch_nor_mpi():
    tree = ast.parse((ROOT / "evo_mpi" / "devices.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "re", "collections", "dataclasses"}, imported


# -- real runs -------------------------------------------------------------------------------------


def _placement(run_dir: Path) -> list[dict]:
    (line,) = (run_dir / "placement.jsonl").read_text().splitlines()
    return json.loads(line)["ranks"]


def test_four_ranks_on_one_host_have_local_ranks_0_to_3(tmp_path):
    run_dir = tmp_path / "run"
    run_evo([*TINY, "--generations", "1", "--run-dir", str(run_dir)], 4)
    ranks = _placement(run_dir)
    assert [r["local_rank"] for r in ranks] == [0, 1, 2, 3], ranks
    assert [(r["device"], r["gpu"]) for r in ranks] == [("cpu", None)] * 4, ranks
    # the launcher's own variable agrees with MPI's split (Hydra: MPI_LOCALRANKID; Open MPI: its own)
    variable = "OMPI_COMM_WORLD_LOCAL_RANK" if mpi_flavor() == "openmpi" else "MPI_LOCALRANKID"
    assert [r["launcher_local_rank"] for r in ranks] == [{variable: i} for i in range(4)], ranks


def _fitness_and_hparams(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines() if x.strip()]
    return [(r["generation"], r["member"], r["fitness"], r["hparams"]) for r in rows]


def test_deterministic_is_on_in_every_rank_and_changes_nothing_on_cpu(tmp_path):
    plain, strict = tmp_path / "plain", tmp_path / "strict"
    run_evo([*TINY, "--run-dir", str(plain)], 2)
    run_evo([*TINY, "--deterministic", "--run-dir", str(strict)], 2)
    assert [r["deterministic"] for r in _placement(plain)] == [False, False]
    assert [r["deterministic"] for r in _placement(strict)] == [True, True]  # read back from torch in each rank
    # no op of PPO's training and exploit path lacks a deterministic version on the CPU, and the CPU
    # was deterministic already: the same seed gives the same history with and without the flag
    assert len(_fitness_and_hparams(plain)) == 6  # 3 generations x 2 members
    assert _fitness_and_hparams(strict) == _fitness_and_hparams(plain)


@needs_cuda
def test_deterministic_gpu_runs_repeat(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        run_evo([*TINY, "--device", "cuda", "--deterministic", "--run-dir", str(run_dir)], 2)
    assert all(r["device"].startswith("cuda:") and r["deterministic"] for r in _placement(runs[0]))
    assert _fitness_and_hparams(runs[0]) == _fitness_and_hparams(runs[1])


@needs_no_cuda
def test_cuda_without_gpu_is_exit_2_once_under_mpiexec(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_evo([*TINY, "--device", "cuda", "--run-dir", str(run_dir)], 2, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("--device cuda: no CUDA device visible on host") == 1, proc.stderr
    assert "CUDA_VISIBLE_DEVICES" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not run_dir.exists()


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu_is_exit_2_alone(device, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main([*TINY, "--agents-per-rank", "2", "--device", device, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("evo-mpi: invalid configuration:")
    assert f"--device {device}: no CUDA device visible on host" in err and "Traceback" not in err, err
    assert not run_dir.exists()


def test_api_refuses_a_bad_device():
    import evo_mpi

    with pytest.raises(ConfigError) as err:
        evo_mpi.train(env="CartPole-v1", agents_per_rank=2, device="gpu", echo=None)
    assert err.value.problems == ["--device 'gpu' is not a device (choose from auto, cpu, cuda or cuda:N (N >= 0))"]


@needs_no_cuda
def test_api_auto_without_gpu_trains_on_cpu(tmp_path):
    import evo_mpi

    lines: list[str] = []
    args = dict(n_envs=2, n_steps=64, steps_per_generation=128, generations=1, final_eval_episodes=1)
    result = evo_mpi.train(env="CartPole-v1", agents_per_rank=2, device="auto", run_dir=str(tmp_path / "r"),
                           echo=lines.append, **args)  # fmt: skip
    assert result.status == "finished"
    assert lines.count("evo-mpi: --device auto: no CUDA device visible, training on the CPU") == 1, lines
    assert [(r["local_rank"], r["device"]) for r in _placement(tmp_path / "r")] == [(0, "cpu")]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["device"] == "auto"
    # the device may change on resume (a run started on GPUs continues on CPUs); its form is still checked
    for device, problems in (("cpu", []), ("cuda:-1", ["--device 'cuda:-1' is not a device"])):
        plan = plan_run(Parsed({}, {"device": device}, None, False, str(tmp_path / "r")), 1)
        assert [p[: len(q)] for p, q in zip(plan.problems, problems, strict=True)] == problems, plan.problems
    assert plan_run(Parsed({}, {"device": "cpu"}, None, False, str(tmp_path / "r")), 1).cfg.device == "cpu"


# -- state: CPU bytes on the wire, CPU tensors in checkpoints ---------------------------------------

CFG = Config(n_envs=2, n_steps=64, steps_per_generation=128)
HP = {"learning_rate": 1e-3, "batch_size": 32, "n_epochs": 1}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _weights(member: Member) -> torch.Tensor:
    return torch.cat([p.detach().cpu().reshape(-1) for p in member.model.policy.parameters()])


def _checkpoint_round_trip(trained: Member, tmp_path: Path) -> Member:
    """Write ``trained``'s checkpoint as the engine does, check the file holds CPU tensors only, restore on CPU."""
    run_dir = str(tmp_path)
    checkpoint.begin(run_dir, 0)
    checkpoint.write_member(run_dir, 0, 0, trained.checkpoint_tensors(), trained.checkpoint_meta())
    checkpoint.commit(run_dir, 0, checkpoint.PopulationState(0, True, 1, [trained.hparams], [0.0]), keep=1)
    path = tmp_path / "checkpoints" / "gen_000000" / "member_00.pt"
    raw = torch.load(path, weights_only=True)  # no map_location: the tensors come back where they were saved
    stored = list(_tensors(raw))
    assert stored and {t.device.type for t in stored} == {"cpu"}
    tensors, meta = checkpoint.load_member(run_dir, 0, 0)
    fresh = Member(0, CFG, HP, None, device="cpu")
    fresh.restore(tensors, meta)
    return fresh


def test_cpu_member_checkpoint_loads_on_cpu_and_packs_cpu_bytes(tmp_path):
    member = Member(0, CFG, HP, None, device="cpu")
    member.train(128, 0)
    wire = member.pack()
    assert isinstance(wire, np.ndarray) and wire.dtype == np.uint8 and wire.nbytes == member.state_nbytes
    restored = _checkpoint_round_trip(member, tmp_path)
    assert restored.model.device.type == "cpu"
    assert torch.equal(_weights(restored), _weights(member))
    assert np.array_equal(restored.pack(), wire)  # weights and optimizer state, byte for byte


@needs_cuda
def test_gpu_member_state_is_cpu_on_the_wire_and_on_disk(tmp_path):
    gpu = Member(0, CFG, HP, None, device="cuda")
    assert gpu.model.device.type == "cuda"
    gpu.train(128, 0)
    wire = gpu.pack()
    assert isinstance(wire, np.ndarray) and wire.dtype == np.uint8 and wire.nbytes == gpu.state_nbytes
    restored = _checkpoint_round_trip(gpu, tmp_path)  # a GPU checkpoint resumes on the CPU
    assert torch.equal(_weights(restored), _weights(gpu))
    cpu = Member(1, CFG, HP, None, device="cpu")
    cpu.unpack(wire.copy())  # an exploit from a GPU member to a CPU member
    assert torch.equal(_weights(cpu), _weights(gpu))
    back = Member(2, CFG, HP, None, device="cuda")
    back.unpack(cpu.pack().copy())  # and back onto a GPU
    assert torch.equal(_weights(back), _weights(gpu))
