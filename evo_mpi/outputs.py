"""Run-directory outputs: history, timings, population TensorBoard, progress line."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import numpy as np

from .champion import ChampionReport, mean_sd
from .records import dumps, step_of


def member_tag(member: int) -> str:
    """``member_03``-style name used for TensorBoard dirs and model files."""
    return f"member_{member:02d}"


class JsonlWriter:
    """Append-only JSON-lines file, flushed and fsynced after each batch."""

    def __init__(self, path: str, on_write: Callable[[list[Mapping[str, Any]]], None] | None = None) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._fh: TextIO = open(path, "a", encoding="utf-8")
        self._on_write = on_write

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append records and make them durable, then hand them to ``on_write`` (e.g. TensorBoard)."""
        batch = list(records)
        for rec in batch:
            self._fh.write(dumps(rec) + "\n")  # strict JSON: writers turn NaN into null (records.finite)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._on_write is not None and batch:
            self._on_write(batch)

    def tell(self) -> int:
        """Current size in bytes (a checkpoint records it)."""
        return self._fh.tell()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


#: TensorBoard tag of a session's fitness in the HParams runs (``tb/hparams/...``), apart from the members'
#: own ``pbt/fitness`` so that the custom-scalars charts do not draw each point twice.
SESSION_FITNESS = "session/fitness"
#: The session's mean episode return (the fitness itself unless fitness is ``--fitness info:KEY``).
SESSION_RETURN = "session/return"
#: The session's objective, ``info[KEY]`` with ``--fitness info:KEY`` (there the same as its fitness); absent otherwise.
SESSION_OBJECTIVE = "session/objective"
#: TensorBoard text tag of the exploit events (``tb/population``).
EXPLOITS_TAG = "exploits"


def _hparam_value(value: Any) -> float | int | str | bool:
    """A value the HParams plugin takes: numbers and strings as they are, anything else as its string."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def exploit_markdown(records: Iterable[Mapping[str, Any]]) -> str:
    """Lineage records as a Markdown table: who copied whom, fitness, hyperparameters before and after."""
    records = list(records)
    unit = "interval" if any("interval" in r for r in records) else "generation"
    rows = [
        f"| loser | winner | {unit} | loser fitness | winner fitness | hyperparameters before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        old, new = r.get("old_hparams", {}), r.get("new_hparams", {})
        before = ", ".join(f"{k}={_fmt(old[k])}" for k in sorted(old))
        after = ", ".join(f"{k}={_fmt(new[k])}" for k in sorted(new))
        rows.append(
            f"| {r['loser']} | {r['winner']} | {step_of(r)} | {_fmt(r.get('loser_fitness'))} | "
            f"{_fmt(r.get('winner_fitness'))} | {before} | {after} |"
        )
    return "\n".join(rows)


def scalars_layout(hparam_names: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: every member's fitness on one chart, each hyperparameter on one, best/mean/min."""
    return {
        "population": {
            "fitness of every member": ["Multiline", [r"^pbt/fitness$"]],
            "best, mean and min fitness": ["Multiline", [r"^population/(best|mean|min)_fitness$"]],
        },
        "hyperparameters": {name: ["Multiline", [rf"^hparams/{re.escape(name)}$"]] for name in sorted(hparam_names)},
    }


class PopulationBoard:
    """Population-level TensorBoard (rank 0 only): scalars, the custom-scalars layout, exploits, HParams sessions.

    The HParams dashboard gets one *session* per member and stretch of constant hyperparameters (a new
    session starts when explore changes a member's values): the plugin models a session as one fixed set of
    hyperparameters with metrics over time, which is exactly a PBT member between two explores, whereas one
    session per member would have to show one of its sets beside fitness earned with others. Sessions are
    runs ``tb/hparams/member_XX-steps_N`` (N: the member's env steps when the stretch began), each with its
    hyperparameters and, at the member's env steps, its metrics: ``session/fitness``, ``session/return`` (the
    mean episode return) and, with ``--fitness info:KEY``, ``session/objective`` (the mean ``info[KEY]``, which
    is then the fitness). The plugin makes a column of every scalar tag in the session runs.
    """

    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=log_dir)
        self._hparams_dir = os.path.join(os.path.dirname(log_dir), "hparams")
        self._sessions: dict[int, tuple[dict[str, Any], Any]] = {}
        self._layout: tuple[str, ...] | None = None

    def log_members(
        self,
        timesteps: list[int],
        fitness: np.ndarray,
        hparams: list[dict[str, Any]],
        returns: list[float] | None = None,
    ) -> None:
        """Each member's metrics into the HParams session of its current hyperparameters; the layout once.

        Args:
            timesteps: Each member's env steps (the metrics' step).
            fitness: Each member's fitness (NaN: not logged).
            hparams: Each member's hyperparameters (empty: no record of it yet, skipped).
            returns: Each member's mean episode return when fitness is the objective (``--fitness info:KEY``);
                None when fitness is the return, which is then logged as both.
        """
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        numeric = tuple(sorted({k for h in hparams for k, v in h.items() if isinstance(v, (int, float))}))
        if numeric != self._layout:  # written once, and again only if the searched names change
            self._writer.add_custom_scalars(scalars_layout(numeric))
            self._layout = numeric
        for m, (steps, fit, values) in enumerate(zip(timesteps, fitness, hparams, strict=True)):
            if not values:  # async: no record of this member yet
                continue
            session = self._sessions.get(m)
            if session is None or session[0] != values:
                if session is not None:
                    session[1].close()
                writer = SummaryWriter(os.path.join(self._hparams_dir, f"{member_tag(m)}-steps_{int(steps):09d}"))
                _, start, _ = hparams_summary({k: _hparam_value(v) for k, v in values.items()}, {SESSION_FITNESS: 0.0})
                assert writer.file_writer is not None  # SummaryWriter opens it in __init__
                writer.file_writer.add_summary(start)
                session = (dict(values), writer)
                self._sessions[m] = session
            metrics = {SESSION_FITNESS: float(fit)}
            if returns is None:
                metrics[SESSION_RETURN] = float(fit)
            else:
                metrics[SESSION_RETURN] = float(returns[m])
                metrics[SESSION_OBJECTIVE] = float(fit)
            for tag, value in metrics.items():
                if math.isfinite(value):
                    session[1].add_scalar(tag, value, int(steps))
            session[1].flush()

    def log_exploits(self, records: list[Mapping[str, Any]]) -> None:
        """Exploit events (lineage records) as a Markdown table under ``exploits``, at the losers' env steps."""
        step = max(int(r["timesteps"]) for r in records)
        self._writer.add_text(EXPLOITS_TAG, exploit_markdown(records), step)
        self._writer.flush()

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

    def log_champion(self, step: int, report: ChampionReport) -> None:
        """The final pick (``champion.json``): ``champion/member``, and its ``eval_mean`` / ``eval_sd`` if evaluated."""
        self._writer.add_scalar("champion/member", report.member, step)
        row = report.row(report.member)
        if row is not None:
            for value, tag in zip(mean_sd(row.returns), ("champion/eval_mean", "champion/eval_sd"), strict=True):
                if math.isfinite(value):
                    self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close, the HParams sessions too."""
        self._writer.close()
        for _, writer in self._sessions.values():
            writer.close()
        self._sessions.clear()


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

        ``returns``: each member's mean episode return, when fitness is another objective (``info:KEY``);
        passed exactly then, since the HParams sessions take it as the sign that fitness is the objective.
        """
        self.board.log(board_step, fitness, exploits, extra)
        self.board.log_members(timesteps, fitness, hparams, returns)
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
