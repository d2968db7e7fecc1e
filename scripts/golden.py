"""Golden runs: a refactor must leave every run's records and plots as they were (not part of CI).

    python scripts/golden.py record DIR [--only NAME,...]   # run every case here, keep its records in DIR
    python scripts/golden.py compare OLD NEW                # record for record; exit 1 on any difference

Each case is a tiny real run (CartPole, PPO, ``mpiexec`` where it has several ranks) covering one
path of the engines: every selection rule, PB2, MF-PBT, the exploit margin, ``--ready-after``, the
true objective, a member failure, architecture mutation, and async mode in one process (the only
async layout whose history does not depend on timing). ``record`` keeps history.jsonl, lineage.jsonl
and champion.json as parsed JSON with the fields that measure time removed (``wall``, ``unix``,
``fetch_s``; champion.json's ``wall_s``), and the SHA-256 of every PNG ``evo_mpi.plot`` draws from
the run (async rows' ``wall`` replaced by the row's index first, for the plot over wall time).
``compare`` prints the first difference of each case. Record at the commit before a refactor step
and after it; the two must agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = [
    "--env-id", "CartPole-v1", "--generations", "5", "--steps-per-generation", "256", "--n-envs", "2",
    "--n-steps", "64", "--search-space", "batch_size=choice:32,64,128", "--search-space", "n_epochs=int:1:3",
    "--search-space", "learning_rate=loguniform:1e-4:1e-2", "--final-eval-episodes", "2",
]  # fmt: skip
#: name -> (ranks, options after BASE); ranks 0 runs without mpiexec.
CASES: dict[str, tuple[int, list[str]]] = {
    "truncation": (2, ["--seed", "1", "--agents-per-rank", "2"]),
    "wta-mutate-all": (2, ["--seed", "2", "--agents-per-rank", "2", "--selection", "wta", "--mutate", "all"]),
    "tournament-collective": (
        2, ["--seed", "3", "--agents-per-rank", "2", "--selection", "tournament", "--backend", "collective"]
    ),
    "ttest": (2, ["--seed", "4", "--agents-per-rank", "2", "--selection", "ttest", "--ttest-alpha", "0.5"]),
    "pb2": (2, ["--seed", "5", "--agents-per-rank", "2", "--explore", "pb2"]),
    "mfpbt": (0, ["--seed", "6", "--agents-per-rank", "8", "--selection", "mfpbt", "--mfpbt-periods", "1,2"]),
    "margin": (2, ["--seed", "7", "--agents-per-rank", "2", "--exploit-margin-abs", "0.3"]),
    "ready-after": (2, ["--seed", "8", "--agents-per-rank", "2", "--ready-after", "512"]),
    "objective": (
        2, ["--seed", "9", "--agents-per-rank", "2", "--env-id", "tests.user_envs:ScoredCartPole", "--fitness",
            "info:score"]
    ),
    "arch-mutation": (
        2, ["--seed", "10", "--agents-per-rank", "2", "--search-space", "net_arch=arch:1:3:16:96", "--mutation-probs",
            "hparams=1,arch=2,weights=1"]
    ),
    "failure": (
        2, ["--seed", "11", "--agents-per-rank", "2", "--env-id", "tests.buggy_envs:FlakyCartPole-v0", "--env-kwargs",
            '{"fail_step": 300, "bad_rank_only": true}']
    ),
    "async-one-process": (0, ["--seed", "12", "--agents-per-rank", "4", "--mode", "async"]),
}  # fmt: skip
#: Fields that measure time, not decisions: left out of the comparison.
TIMED = {"wall", "unix", "fetch_s", "eval_s", "wall_s"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _jsonl(path: str) -> list[Any]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [_strip(json.loads(line)) for line in fh if line.strip()]


def _fix_walls(path: str) -> None:
    """Async rows' ``wall`` becomes the row's index, so the plot drawn over wall time is the same every run."""
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if rows and "wall" in rows[0]:
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({**r, "wall": float(i)}) + "\n" for i, r in enumerate(rows))


def run_case(name: str, work: str) -> dict[str, Any]:
    """Run case ``name`` in a fresh dir under ``work``; its records and plot hashes."""
    ranks, extra = CASES[name]
    run_dir = os.path.join(work, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    python = sys.executable
    cmd = [python, "-m", "evo_mpi.run", *BASE, *extra, "--run-dir", run_dir]
    if ranks:
        cmd = [os.path.join(os.path.dirname(python), "mpiexec"), "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"golden case {name} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    _fix_walls(os.path.join(run_dir, "history.jsonl"))
    plots = os.path.join(run_dir, "plots")
    subprocess.run([python, "-m", "evo_mpi.plot", run_dir, "--out", plots], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip
    pngs = {}
    for png in sorted(os.listdir(plots)):
        with open(os.path.join(plots, png), "rb") as fh:
            pngs[png] = hashlib.sha256(fh.read()).hexdigest()
    champion = {}
    if os.path.isfile(os.path.join(run_dir, "champion.json")):
        with open(os.path.join(run_dir, "champion.json"), encoding="utf-8") as fh:
            champion = _strip(json.load(fh))
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {
        "history": _jsonl(os.path.join(run_dir, "history.jsonl")),
        "lineage": _jsonl(os.path.join(run_dir, "lineage.jsonl")),
        "champion": champion,
        "plots": pngs,
    }


def record(out: str, only: list[str] | None) -> None:
    """Run the cases and keep one JSON per case in ``out``."""
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="golden-") as work:
        for name in only or list(CASES):
            with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as fh:
                json.dump(run_case(name, work), fh, indent=0, sort_keys=True)


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{where}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}.{key}: only in {'new' if key not in a else 'old'}"
            found = _first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} entries != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


def compare(old: str, new: str) -> int:
    """Print each case's first difference; 0 when every case in ``old`` is the same in ``new``."""
    bad = 0
    for name in sorted(os.listdir(old)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(new, name)
        if not os.path.isfile(path):
            print(f"{name[:-5]}: missing in {new}")
            bad += 1
            continue
        with open(os.path.join(old, name), encoding="utf-8") as fa, open(path, encoding="utf-8") as fb:
            diff = _first_difference(_strip(json.load(fa)), _strip(json.load(fb)))
        print(f"{name[:-5]}: {'same' if diff is None else 'DIFFERS ' + diff}")
        bad += diff is not None
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("--only", help="comma-separated case names")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("old")
    cmp_.add_argument("new")
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.only.split(",") if args.only else None)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
