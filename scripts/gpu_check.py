"""The prepared GPU check of ``--device`` (issue 38): one script to run where a CUDA GPU is at hand.

Steps (each prints one line and lands in OUT/gpu_check.json):

1. ``mpiexec -n 2 python -m evo_mpi.run --device DEVICE`` with CNN members on
   ``examples.image_env:DotTarget``, stopped by SIGTERM once generation 2 is
   logged (exit 75, a complete checkpoint);
2. ``--resume`` of that run with ``--device cpu``: it must finish (exit 0),
   and placement.jsonl must show DEVICE then cpu;
3. how far two runs of one seed drift on DEVICE: a short CNN run twice without and twice with
   ``--deterministic`` (histories equal or not, the largest fitness gap, each run's wall);
4. SB3 PPO env steps per second on the CPU and on DEVICE, for ``MlpPolicy`` on
   CartPole-v1 and ``CnnPolicy`` on DotTarget (1 torch thread, one process);
5. ``pytest tests/test_devices.py`` (its GPU tests run where CUDA exists).

Usage::

    python scripts/gpu_check.py --out /tmp/gpu-check            # on a GPU machine: DEVICE = cuda
    python scripts/gpu_check.py --out /tmp/gpu-check --device cpu --steps 2048   # dry run on a CPU

A markdown table for docs/benchmarks.md (section 10) is printed at the end.

On a GPU machine that cannot reach PyPI and lacks SB3, gymnasium and an MPI,
``scripts/gpu_wheels.sh`` (run beforehand where PyPI is reachable) puts their
wheels in ``.whl/`` and its header gives the three lines that install them
there and run this script; that recipe was checked end to end on a CPU image
holding only torch, numpy, scipy, matplotlib, tensorboard, pandas and pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples.image_env, also where evo_mpi is not installed (a GPU machine's image)

#: A CNN run small enough for minutes: 2 ranks x 2 members, 4 generations of 1024 steps.
CNN_RUN = [
    "--env-id", "examples.image_env:DotTarget",
    "--policy", "CnnPolicy",
    "--generations", "4",
    "--steps-per-generation", "1024",
    "--n-envs", "4",
    "--n-steps", "128",
    "--agents-per-rank", "2",
    "--search-space", "batch_size=choice:64,128",
    "--search-space", "n_epochs=int:1:2",
    "--final-eval-episodes", "2",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _mpiexec() -> str:
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        raise SystemExit("mpiexec not found: pip install -e '.[mpich]'")
    return exe


def stop_and_resume(out: Path, device: str) -> dict[str, Any]:
    """Steps 1 and 2: a CNN run on ``device`` stopped after generation 2, resumed on the CPU."""
    run_dir = out / "cnn-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "evo_mpi.run", *CNN_RUN, "--run-dir", str(run_dir)]
    t0 = time.monotonic()
    proc = subprocess.Popen([*cmd, "--device", device], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), cwd=ROOT)  # fmt: skip
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("gen   2/"):
            proc.send_signal(signal.SIGTERM)  # MPICH's Hydra forwards it; every rank checkpoints and exits 75
    first = proc.wait(timeout=600)
    first_s = time.monotonic() - t0
    t0 = time.monotonic()
    resumed = subprocess.run([*cmd, "--resume", str(run_dir), "--device", "cpu"], capture_output=True, text=True,
                             env=_env(), cwd=ROOT, timeout=900)  # fmt: skip
    resume_s = time.monotonic() - t0
    placements = [json.loads(x) for x in (run_dir / "placement.jsonl").read_text().splitlines() if x.strip()]
    devices = [[r["device"] for r in p["ranks"]] for p in placements]
    on_device = len(devices) == 2 and all(d.startswith("cuda" if device != "cpu" else "cpu") for d in devices[0])
    ok = first == 75 and resumed.returncode == 0 and on_device and set(devices[1]) == {"cpu"}
    (out / "cnn-run.log").write_text("".join(lines) + "\n--- resume ---\n" + resumed.stdout + resumed.stderr)
    return {
        "ok": ok,
        "first_exit": first,
        "first_s": round(first_s, 1),
        "resume_exit": resumed.returncode,
        "resume_s": round(resume_s, 1),
        "devices_per_launch": devices,
        "gpus_per_launch": [[r.get("gpu") for r in p["ranks"]] for p in placements],
    }


def _history(run_dir: Path) -> list[tuple[Any, ...]]:
    rows = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines() if x.strip()]
    return [(r["generation"], r["member"], r["fitness"], json.dumps(r["hparams"], sort_keys=True)) for r in rows]


def repeat_runs(out: Path, device: str) -> dict[str, Any]:
    """Step 3: one seed twice without and twice with ``--deterministic`` on ``device``; do the histories repeat?"""
    short = [*CNN_RUN, "--generations", "2", "--agents-per-rank", "1"]  # later flags win
    report: dict[str, Any] = {}
    for flag in ("off", "on"):
        histories, walls = [], []
        for k in (0, 1):
            run_dir = out / f"repeat-{flag}-{k}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "evo_mpi.run", *short, "--device", device,
                   "--run-dir", str(run_dir), *(["--deterministic"] if flag == "on" else [])]  # fmt: skip
            t0 = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
            walls.append(round(time.monotonic() - t0, 1))
            if proc.returncode != 0:
                report[flag] = {"exit": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
                break
            histories.append(_history(run_dir))
        else:
            gaps = [abs(a[2] - b[2]) for a, b in zip(*histories, strict=True) if a[2] is not None and b[2] is not None]
            report[flag] = {"equal": histories[0] == histories[1], "max_fitness_gap": max(gaps, default=0.0),
                            "rows": len(histories[0]), "wall_s": walls}  # fmt: skip
    return report


def steps_per_second(policy: str, device: str, steps: int) -> float:
    """SB3 PPO env steps per second of ``learn(steps)`` after a warm-up rollout (one process, 1 torch thread)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from examples.image_env import DotTarget

    torch.set_num_threads(1)
    env_id: Any = "CartPole-v1" if policy == "MlpPolicy" else DotTarget
    env = make_vec_env(env_id, n_envs=4, seed=0)
    model = PPO(policy, env, n_steps=128, batch_size=64, n_epochs=4, device=device, seed=0, verbose=0)
    model.learn(512)  # warm-up: CUDA context, cuDNN autotuning, first allocations
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    env.close()
    return steps / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=16384, help="env steps per throughput measurement")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    report: dict[str, Any] = {
        "device": args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host": platform.node(),
        "unix": time.time(),
    }
    report["stop_resume"] = stop_and_resume(args.out, args.device)
    print("stop on", args.device, "and resume on cpu:", report["stop_resume"], flush=True)
    report["repeat"] = repeat_runs(args.out, args.device)
    print("same seed twice on", args.device, "without/with --deterministic:", report["repeat"], flush=True)
    report["steps_per_s"] = {}
    for policy in ("MlpPolicy", "CnnPolicy"):
        for device in dict.fromkeys(("cpu", args.device)):
            rate = steps_per_second(policy, device, args.steps)
            report["steps_per_s"][f"{policy}@{device}"] = round(rate, 1)
            print(f"{policy} on {device}: {rate:.0f} env steps/s", flush=True)
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-rs", "tests/test_devices.py"],
                               capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900)  # fmt: skip
        report["tests"] = {"exit": tests.returncode, "summary": tests.stdout.strip().splitlines()[-1:]}
        print("tests/test_devices.py:", report["tests"], flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    rates = report["steps_per_s"]
    print(f"\n| policy | CPU steps/s | {args.device} steps/s |\n|---|---:|---:|")
    for policy in ("MlpPolicy", "CnnPolicy"):
        print(f"| {policy} | {rates[f'{policy}@cpu']:.0f} | {rates[f'{policy}@{args.device}']:.0f} |")
    ran = all("equal" in r for r in report["repeat"].values())  # whether they repeat is a finding, not a failure
    return 0 if report["stop_resume"]["ok"] and ran and report.get("tests", {"exit": 0})["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
