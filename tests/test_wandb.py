"""Optional Weights & Biases logging, written offline (no network) by rank 0 only."""

import json
import struct
import subprocess
import sys

import pytest

from evo_mpi.records import step_of
from helpers import ROOT, TINY, child_env, mpiexec, read_history

wandb = pytest.importorskip("wandb", reason="wandb is in the test extra: pip install -e '.[mpich,test]'")


def wandb_records(path):
    """The records of a ``.wandb`` file (wandb's own log format: 32 KiB blocks of chunked protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _history(run_file):
    steps = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            steps[record.history.step.num] = items
    return steps


def test_offline_run_writes_population_and_member_scalars(tmp_path):
    run_dir = tmp_path / "run"
    env = {**child_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "evo_mpi.run", *TINY, "--agents-per-rank", "2"]
    cmd += ["--wandb-project", "evo-test", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # one W&B run, written by rank 0
    logged = _history(runs[0])
    history = read_history(run_dir)
    assert sorted(logged) == [0, 1, 2]
    for g, items in logged.items():
        records = {r["member"]: r for r in history if step_of(r) == g}
        assert items["population/best_fitness"] == max(r["fitness"] for r in records.values())
        assert items["population/exploits"] == sum(r["parent"] is not None for r in records.values())
        for m, record in records.items():
            assert items[f"member_{m:02d}/fitness"] == record["fitness"]
            for name, value in record["hparams"].items():
                assert items[f"member_{m:02d}/{name}"] == pytest.approx(value, rel=1e-12)


def test_missing_wandb_is_a_configuration_error(tmp_path):
    code = "import sys; sys.modules['wandb'] = None; from evo_mpi.run import main; sys.exit(main(sys.argv[1:]))"
    args = [*TINY, "--agents-per-rank", "2", "--wandb-project", "p", "--run-dir", str(tmp_path / "r")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=child_env())
    assert proc.returncode == 2, proc.stderr
    assert "--wandb-project 'p': wandb is not installed (pip install 'evo-mpi[wandb]')" in proc.stderr


def test_an_async_resume_continues_the_wandb_steps(tmp_path):
    """The resumed launch logs steps after the first launch's, not from 0 again (W&B drops earlier steps)."""
    from helpers import LONG, launch, wait_for_line

    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [*LONG, "--generations", "4", "--mode", "async", "--agents-per-rank", "2"]
    args += ["--wandb-project", "evo-test", "--run-dir", str(run_dir)]
    proc = launch(args, None, extra_env=env)
    wait_for_line(proc, "async     4/")
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 75
    resumed = subprocess.run(
        [sys.executable, "-m", "evo_mpi.run", "--resume", str(run_dir)],
        capture_output=True, text=True, timeout=240, env={**child_env(), **env}, cwd=ROOT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    first, second = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    before, after = sorted(_history(first)), sorted(_history(second))
    assert before and after and min(after) > max(before), (before, after)
    assert after[-1] == 3  # 4 intervals per member x 2 members, one report per 2 records: steps 0-3
