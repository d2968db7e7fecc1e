"""Run-directory outputs: history, timings, population TensorBoard, progress line."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import numpy as np


def member_tag(member: int) -> str:
    """``member_03``-style name used for TensorBoard dirs and model files."""
    return f"member_{member:02d}"


class JsonlWriter:
    """Append-only JSON-lines file, flushed and fsynced after each batch."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._fh: TextIO = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append records and make them durable."""
        for rec in records:
            self._fh.write(json.dumps(rec, sort_keys=True, allow_nan=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def tell(self) -> int:
        """Current size in bytes (a checkpoint records it)."""
        return self._fh.tell()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


class PopulationBoard:
    """Population-level TensorBoard scalars (rank 0 only)."""

    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=log_dir)

    def log(self, step: int, fitness: np.ndarray, exploits: int, extra: Mapping[str, float] | None = None) -> None:
        """Best/mean/min fitness (finite members) and the exploit count."""
        finite = fitness[np.isfinite(fitness)]
        if finite.size:
            self._writer.add_scalar("population/best_fitness", float(finite.max()), step)
            self._writer.add_scalar("population/mean_fitness", float(finite.mean()), step)
            self._writer.add_scalar("population/min_fitness", float(finite.min()), step)
        self._writer.add_scalar("population/exploits", exploits, step)
        self._writer.add_scalar("population/nonfinite_members", int(fitness.size - finite.size), step)
        for key, value in (extra or {}).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def log_champion(self, step: int, report: Mapping[str, Any]) -> None:
        """The final pick (``champion.json``): ``champion/member``, and its ``eval_mean`` / ``eval_sd`` if evaluated."""
        self._writer.add_scalar("champion/member", int(report["member"]), step)
        row = next((c for c in report.get("candidates", []) if c["member"] == report["member"]), None)
        if row is not None:
            for key, tag in (("mean", "champion/eval_mean"), ("sd", "champion/eval_sd")):
                if row[key] is not None:
                    self._writer.add_scalar(tag, float(row[key]), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close."""
        self._writer.close()


def fmt_duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s`` / ``3s``."""
    if not np.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def progress_line(
    generation: int,
    generations: int,
    timesteps: int,
    fitness: np.ndarray,
    steps_per_s: float,
    exploits: int,
    elapsed: float,
    eta: float,
    overhead: float | None = None,
    failures: tuple[int, int] = (0, 0),
) -> str:
    """The one line rank 0 prints per generation; ``failures`` (this generation's, the run's) once there are any."""
    finite = fitness[np.isfinite(fitness)]
    best = f"{finite.max():.1f}" if finite.size else "nan"
    mean = f"{finite.mean():.1f}" if finite.size else "nan"
    line = (
        f"gen {generation + 1:>3}/{generations} | steps {timesteps:>9} | best {best:>7} | mean {mean:>7} | "
        f"{steps_per_s:>7.0f} steps/s | exploits {exploits:>2} | elapsed {fmt_duration(elapsed):>7} | "
        f"eta {fmt_duration(eta):>7}"
    )
    if overhead is not None:
        line += f" | overhead {100 * overhead:.1f}%"
    if failures[1]:
        line += f" | failed {failures[0]} (run {failures[1]})"
    return line


def async_progress_line(
    intervals: int, budget: int, timesteps: int, fitness: np.ndarray, elapsed: float, failures: int
) -> str:
    """The line rank 0 prints in async mode after every population-many published records."""
    finite = fitness[np.isfinite(fitness)]
    best = f"{finite.max():.2f}" if finite.size else "nan"
    mean = f"{finite.mean():.2f}" if finite.size else "nan"
    return (
        f"async {intervals:>5}/{budget} intervals | steps {timesteps:>9} | best {best} mean {mean} | "
        f"{timesteps / elapsed if elapsed > 0 else 0:.0f} steps/s | elapsed {fmt_duration(elapsed)}"
        + (f" | failed {failures}" if failures else "")
    )


class Reporter:
    """Rank 0's population reports in both modes: TensorBoard's population board, W&B and the progress line."""

    def __init__(self, board: PopulationBoard, wandb: Any, echo: Callable[[str], None]) -> None:
        self.board = board
        self.wandb = wandb
        self.echo = echo

    def report(
        self,
        index: int,
        board_step: int,
        timesteps: list[int],
        fitness: np.ndarray,
        hparams: list[dict[str, Any]],
        exploits: int,
        extra: dict[str, float],
        line: str,
        returns: list[float] | None = None,
    ) -> None:
        """One report: ``index`` counts reports (W&B's step), ``board_step`` is TensorBoard's env-step axis.

        ``returns``: each member's mean episode return, when fitness is another objective (``info:KEY``).
        """
        self.board.log(board_step, fitness, exploits, extra)
        if self.wandb is not None:
            self.wandb.log(index, timesteps, [float(f) for f in fitness], hparams, exploits, returns)
        self.echo(line)


class PhaseTimer:
    """Wall and CPU seconds per named phase, reset every generation."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._phase: str | None = None
        self._t0 = (0.0, 0.0)

    def start(self, phase: str) -> None:
        """End the current phase (if any) and start ``phase``."""
        now = (time.perf_counter(), time.process_time())
        if self._phase is not None:
            self.wall[self._phase] = self.wall.get(self._phase, 0.0) + now[0] - self._t0[0]
            self.cpu[self._phase] = self.cpu.get(self._phase, 0.0) + now[1] - self._t0[1]
        self._phase = phase
        self._t0 = now

    def stop(self) -> dict[str, dict[str, float]]:
        """End the current phase and return and reset the totals."""
        self.start("")
        self._phase = None
        out = {"wall": dict(self.wall), "cpu": dict(self.cpu)}
        self.wall.clear()
        self.cpu.clear()
        return out
