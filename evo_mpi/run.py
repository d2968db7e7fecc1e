"""Entry point: ``python -m evo_mpi.run`` / ``evo-mpi``, alone or under ``mpiexec -n N``.

A thin layer over :func:`evo_mpi.api.execute`: parse the command line, run,
map the outcome to an exit code. Exit codes: 0 finished (or already
finished), 1 failure (every rank is aborted), 2 invalid configuration
(nothing created), 3 member failures ended the run (all members at once, or
more than ``--max-failures``; final models of the healthy members written),
75 interrupted by SIGTERM/SIGINT/SIGUSR1 with a complete checkpoint on disk
(resumable).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import config as config_mod
from .api import (
    INTERRUPTED,
    MEMBERS_FAILED,
    PROCESS_START,
    STOP_SIGNALS,
    auto_threads,
    connect,
    execute,
    oversubscription_hint,
    plan_run,
)
from .config import EXIT_CONFIG_ERROR, ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_MEMBERS_FAILED = 3
EXIT_INTERRUPTED = 75  # sysexits EX_TEMPFAIL: try again later (resume)

__all__ = ["auto_threads", "cli", "main", "oversubscription_hint", "plan_run"]


def _print_problems(problems: Sequence[str]) -> None:
    print("evo-mpi: invalid configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, run. Returns the process exit code."""
    stop = {"signal": 0}

    def request_stop(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    for sig in STOP_SIGNALS:  # first, so a stop during start-up is not lost either
        signal.signal(sig, request_stop)
    try:
        comm = connect()
    except ConfigError as exc:  # every process is a world of its own: each says so and stops
        _print_problems(exc.problems)
        return EXIT_CONFIG_ERROR
    parsed: config_mod.Parsed | None = None
    problems: list[str] = []
    if comm.rank == 0:  # only rank 0 reads argv and files; the others learn the outcome from its plan
        try:
            parsed = config_mod.parse(argv)
        except ConfigError as exc:
            problems = exc.problems
    problems = comm.bcast_obj(problems)
    if problems:
        if comm.rank == 0:
            _print_problems(problems)
        return EXIT_CONFIG_ERROR
    try:
        result = execute(
            comm,
            parsed if parsed is not None else config_mod.Parsed({}, {}, None, False, None),
            should_stop=lambda: stop["signal"] != 0,
            echo=lambda line: print(line, flush=True),
            started=PROCESS_START,
        )
    except ConfigError as exc:
        if comm.rank == 0:
            _print_problems(exc.problems)
        return EXIT_CONFIG_ERROR
    except BaseException:  # noqa: BLE001 - reported (and every rank aborted under MPI) by execute
        return EXIT_FAILURE
    if result is not None and result.status == MEMBERS_FAILED:
        return EXIT_MEMBERS_FAILED
    if result is None or result.status != INTERRUPTED:
        return EXIT_OK
    if comm.rank == 0:
        launcher = f"mpiexec -n {comm.size} " if comm.uses_mpi else ""
        print(f"evo-mpi: resume with: {launcher}python -m evo_mpi.run --resume {result.run_dir}", flush=True)
    return EXIT_INTERRUPTED


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
