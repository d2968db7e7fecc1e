"""Shared helpers of the ``bench_*.py`` scripts (not a benchmark itself).

Launches the real ``mpiexec -n K python -m evo_mpi.run ...`` in a fresh run
directory, timestamps every line rank 0 prints as it arrives, and reads back
the per-rank, per-generation records of ``RUN_DIR/timings/rank_XXX.jsonl``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

#: Phases the engine times, in generation order.
PHASES = ("train", "fitness", "wait", "exchange", "explore", "log", "checkpoint")
#: Phases that are not overhead: training itself and waiting for slower peers (load imbalance).
NOT_OVERHEAD = ("train", "wait")


def mpiexec() -> str:
    """The ``mpiexec`` next to this Python (the venv's MPICH), else the one on PATH."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    exe = shutil.which("mpiexec", path=path)
    if exe is None:
        raise SystemExit("mpiexec not found: install evo_mpi with the mpich extra (pip install -e '.[mpich]')")
    return exe


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the launched processes: evo_mpi and ``scripts/`` importable, warnings off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra or {})
    return env


@dataclass
class Run:
    """One finished evo_mpi launch."""

    cmd: list[str]
    ranks: int
    launch_unix: float  # taken just before mpiexec was started
    end_unix: float
    returncode: int
    lines: list[tuple[float, str]]  # (arrival time, line) of everything rank 0 printed
    stderr: str
    records: list[dict[str, Any]] = field(default_factory=list)  # timings of every rank and generation
    history: list[dict[str, Any]] = field(default_factory=list)  # RUN_DIR/history.jsonl
    champion: dict[str, Any] = field(default_factory=dict)  # RUN_DIR/champion.json (the final pick)

    def gen_line_times(self) -> list[float]:
        """Arrival time of each ``gen N/G`` progress line (printed by rank 0 after generation N-1)."""
        return [t for t, line in self.lines if line.startswith("gen ")]

    def generations(self, skip: int = 0) -> list[dict[str, Any]]:
        """Records of generations ``>= skip``."""
        return [r for r in self.records if "generation" in r and r["generation"] >= skip]

    def by_rank(self, skip: int = 0) -> dict[int, list[dict[str, Any]]]:
        """Records of generations ``>= skip``, grouped by rank."""
        out: dict[int, list[dict[str, Any]]] = {}
        for r in self.generations(skip):
            out.setdefault(r["rank"], []).append(r)
        return dict(sorted(out.items()))


def run_evo(
    ranks: int,
    args: Sequence[str],
    timeout: float = 300,
    env: dict[str, str] | None = None,
    keep: bool = False,
    echo: bool = False,
) -> Run:
    """Run ``mpiexec -n ranks python -m evo_mpi.run *args`` in a fresh run dir; fail loudly on errors."""
    base = Path(tempfile.mkdtemp(prefix="evo-bench-"))
    run_dir = base / "run"
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "evo_mpi.run", *args, "--run-dir", str(run_dir)]
    err_path = base / "stderr.txt"
    lines: list[tuple[float, str]] = []
    with open(err_path, "w", encoding="utf-8") as err:
        launch = time.time()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(env), cwd=ROOT, start_new_session=True
        )

        def kill() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.time(), line.rstrip("\n")))
                if echo:
                    print("    | " + line.rstrip("\n"), flush=True)
            returncode = proc.wait()
        finally:
            watchdog.cancel()
        end = time.time()
    stderr = err_path.read_text(encoding="utf-8")
    run = Run(cmd, ranks, launch, end, returncode, lines, stderr)
    if returncode != 0:
        out = "\n".join(line for _, line in lines)
        raise SystemExit(f"{' '.join(cmd)} exited {returncode}\nstdout:\n{out}\nstderr:\n{stderr}")
    for path in sorted((run_dir / "timings").glob("rank_*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            run.records.extend(json.loads(line) for line in fh if line.strip())
    if (run_dir / "history.jsonl").is_file():
        with open(run_dir / "history.jsonl", encoding="utf-8") as fh:
            run.history = [json.loads(line) for line in fh if line.strip()]
    if (run_dir / "champion.json").is_file():
        run.champion = json.loads((run_dir / "champion.json").read_text(encoding="utf-8"))
    if keep:
        print(f"    (run dir kept: {run_dir})")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return run


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (NaN for nothing)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


def remote_fetches(history: Sequence[dict[str, Any]], per_rank: int) -> list[dict[str, Any]]:
    """Async history rows of exploits whose donor is on another rank (their ``fetch_s`` is a real fetch)."""
    return [
        r
        for r in history
        if r.get("parent") is not None and r["parent"] // per_rank != r["member"] // per_rank and r.get("fetch_s")
    ]


def phase(record: dict[str, Any], name: str, kind: str = "wall") -> float:
    """Seconds of phase ``name`` in one timings record (0 if the phase did not occur)."""
    return float(record[kind].get(name, 0.0))


def overhead_s(record: dict[str, Any]) -> float:
    """Wall seconds outside training and waiting (what rank 0's ``overhead X%`` counts)."""
    return sum(v for k, v in record["wall"].items() if k not in NOT_OVERHEAD)


def usable_cores() -> int:
    """Cores this process may run on (affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def header(title: str, argv: Sequence[str] | None = None) -> None:
    """Print what ran, when, where: date, cores, load, versions."""
    cores = usable_cores()
    versions = []
    for pkg in ("torch", "stable-baselines3", "mpi4py", "mpich"):
        try:
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    print(f"# {title}")
    print(f"# date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; cores: os.cpu_count()={os.cpu_count()}, usable={cores}")
    print(f"# load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {sys.version.split()[0]}")
    print(f"# {', '.join(versions)}")
    if argv is not None:
        print(f"# command: python {' '.join(argv)}")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (aligned, so it reads on a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def verdict(ok: bool) -> str:
    """``met`` / ``MISSED``."""
    return "met" if ok else "MISSED"


def launched(run: Run) -> str:
    """The command as a user would type it (without the temporary run dir)."""
    cmd = list(run.cmd)
    cut = cmd.index("--run-dir")
    del cmd[cut : cut + 2]
    cmd[0] = "mpiexec"
    cmd[3] = "python"
    return " ".join(cmd)
