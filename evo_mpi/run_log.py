"""Rank 0's outputs (:class:`RunLog`): history, lineage, the population's TensorBoard, W&B, the reports.

Every other rank holds a :class:`NullLog`, which takes the same calls and writes
nothing, so the schedulers call the log alike on every rank and never ask
which rank they are on to decide whether to write. On resume the logs are cut
back to what the checkpoints hold: to a sync checkpoint's byte sizes, or
(async) to the intervals each member's checkpoint holds (:func:`trim_to_steps`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import checkpoint
from .atomic import write_text_atomic
from .champion import ChampionReport
from .config import Config
from .outputs import JsonlWriter, PopulationBoard, Reporter
from .records import HistoryRow, LineageRow, step_field

HISTORY, LINEAGE = "history.jsonl", "lineage.jsonl"


class NullLog:
    """The log of a rank that writes none: every call does nothing."""

    def write_history(self, rows: Sequence[HistoryRow]) -> None:
        """Append rows to ``history.jsonl``."""

    def write_lineage(self, rows: Sequence[LineageRow]) -> None:
        """Append exploits to ``lineage.jsonl`` (and the exploit text in TensorBoard)."""

    def report(self, *args: Any, **kwargs: Any) -> None:
        """One population report (:meth:`evo_mpi.outputs.Reporter.report`): TensorBoard, W&B, the progress line."""

    def log_champion(self, timesteps: int, report: ChampionReport) -> None:
        """The final pick in TensorBoard."""

    def sizes(self) -> tuple[int, int]:
        """Bytes in history and lineage so far (a sync checkpoint records them)."""
        return 0, 0

    def close(self) -> None:
        """Close every file."""


class RunLog(NullLog):
    """Rank 0's outputs, opened for appending; cut back first to ``cut_to`` (history, lineage bytes) if given."""

    def __init__(
        self, run_dir: str, cfg: Config, echo: Callable[[str], None], cut_to: tuple[int, int] | None = None
    ) -> None:
        history_path, lineage_path = os.path.join(run_dir, HISTORY), os.path.join(run_dir, LINEAGE)
        if cut_to is not None:  # drop records newer than the checkpoint
            checkpoint.truncate(history_path, cut_to[0])
            checkpoint.truncate(lineage_path, cut_to[1])
        self.history = JsonlWriter(history_path)
        self.board = PopulationBoard(os.path.join(run_dir, "tb", "population"))
        self.lineage = JsonlWriter(lineage_path, on_write=self.board.log_exploits)
        self.wandb: Any = None
        if cfg.wandb_project:
            from .wandb_log import WandbLogger

            self.wandb = WandbLogger(cfg.wandb_project, cfg.wandb_entity, run_dir, cfg.to_dict())
        self.reporter = Reporter(self.board, self.wandb, echo)

    def write_history(self, rows: Sequence[HistoryRow]) -> None:
        """Append rows to ``history.jsonl``."""
        self.history.write([row.to_json() for row in rows])

    def write_lineage(self, rows: Sequence[LineageRow]) -> None:
        """Append exploits to ``lineage.jsonl`` (and the exploit text in TensorBoard)."""
        if rows:
            self.lineage.write([row.to_json() for row in rows])

    def report(self, *args: Any, **kwargs: Any) -> None:
        """One population report (:meth:`evo_mpi.outputs.Reporter.report`): TensorBoard, W&B, the progress line."""
        self.reporter.report(*args, **kwargs)

    def log_champion(self, timesteps: int, report: ChampionReport) -> None:
        """The final pick in TensorBoard."""
        self.board.log_champion(timesteps, report)

    def sizes(self) -> tuple[int, int]:
        """Bytes in history and lineage so far (a sync checkpoint records them)."""
        return self.history.tell(), self.lineage.tell()

    def close(self) -> None:
        """Close every file."""
        self.history.close()
        self.lineage.close()
        self.board.close()
        if self.wandb is not None:
            self.wandb.close()


def trim_to_steps(run_dir: str, done: Mapping[int, int]) -> None:
    """Async resume: drop the records of intervals no checkpoint holds (member ``m`` keeps ``done[m]``)."""
    for name in (HISTORY, LINEAGE):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a partial last line of a killed run
            member = rec.get("member", rec.get("loser"))
            step = step_field(rec)
            if isinstance(member, int) and isinstance(step, int) and step < done.get(member, 0):
                kept.append(line if line.endswith("\n") else line + "\n")
        write_text_atomic(path, "".join(kept))
