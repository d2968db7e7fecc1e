"""Member failures: an exception in one member's training or fitness costs that member, not the run.

Pure bookkeeping (no MPI, torch or SB3): run a member's call and catch what
it raises, describe the failure for ``history.jsonl``, append its traceback to
``errors.log``, and decide when failures should end the run. The engines
mark a failed member's fitness NaN, let it rebuild its envs
(:class:`~evo_mpi.protocol.Recovers`) and have it copy a donor at the next
decision (:func:`evo_mpi.selection.repair`).

What is not an exception in a member (a rank's process dying, a segfault, a
hang, an error in evo-mpi's own communication) still ends the job.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: ``history.jsonl``'s ``fitness_missing`` for a member whose training or fitness raised.
FAILED = "failed"
#: The failure phase of a member whose envs could not be rebuilt before it trains again.
REBUILDING = "rebuilding envs"

#: Longest exception message kept in ``history.jsonl`` (the whole traceback is in ``errors.log``).
MAX_MESSAGE = 500


def attempt(
    call: Callable[[Callable[[], bool]], T], should_stop: Callable[[], bool] = lambda: False
) -> tuple[T | None, Exception | None]:
    """``(call(poll), None)``, or ``(None, exc)`` when ``call`` raised ``exc`` (an ``Exception``).

    ``poll`` wraps ``should_stop``: an error raised by ``should_stop`` itself
    (the engine's own serving, a communication error) is not the member's
    failure and propagates. ``KeyboardInterrupt`` and ``SystemExit`` propagate too.
    """
    own: list[BaseException] = []

    def poll() -> bool:
        try:
            return should_stop()
        except BaseException as exc:
            own.append(exc)
            raise

    try:
        return call(poll), None
    except Exception as exc:
        if own:
            raise
        return None, exc


def describe(exc: BaseException, phase: str) -> dict[str, Any]:
    """``history.jsonl``'s ``failure``: the exception's type and message, and what the member was doing."""
    message = str(exc)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {"type": type(exc).__name__, "message": message, "phase": phase}


def log_traceback(run_dir: str, header: str, exc: BaseException) -> None:
    """Append ``header`` and ``exc``'s full traceback to ``RUN_DIR/errors.log`` in one write (ranks share it)."""
    text = header.rstrip("\n") + "\n" + "".join(traceback.format_exception(exc))
    try:
        fd = os.open(os.path.join(run_dir, "errors.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode("utf-8", errors="replace"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # the run dir itself may be the problem; history.jsonl and stdout still say what failed


def limit(max_failures: int, population: int) -> int:
    """The failures a run tolerates: ``--max-failures``, or the population size when it is -1 (the default)."""
    return population if max_failures < 0 else max_failures


def stop_reason(failed_now: int, population: int, total: int, tolerated: int, when: str) -> str | None:
    """Why failures end the run after ``when`` (None: they do not).

    The run ends when every member failed at once (nothing healthy is left
    to copy), or when the run's failures pass ``tolerated``.
    """
    if population > 0 and failed_now >= population:
        return f"every member failed in {when}"
    if total > tolerated:
        return f"{total} member failure(s) so far, more than --max-failures {tolerated}"
    return None


def failure_line(when: str, member: int, failure: dict[str, Any]) -> str:
    """The warning rank 0 prints for one failure."""
    return (
        f"warning: {when}: member {member} failed while {failure['phase']}: {failure['type']}: "
        f"{failure['message']}; fitness NaN, it copies a donor at the next decision (traceback in errors.log)"
    )


__all__ = ["FAILED", "REBUILDING", "attempt", "describe", "failure_line", "limit", "log_traceback", "stop_reason"]
