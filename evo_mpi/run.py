"""Entry point: ``python -m evo_mpi.run`` / ``evo-mpi``, alone or under ``mpiexec -n N``."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence

from . import config as config_mod
from .comm import Comm
from .config import EXIT_CONFIG_ERROR, ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1


def _default_run_dir(env_id: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{env_id.replace('/', '_')}-{stamp}")


def _prepare_run_dir(cfg: config_mod.Config) -> tuple[str, list[str]]:
    """Rank 0: resolve the run dir and refuse to overwrite an existing run."""
    run_dir = cfg.run_dir or _default_run_dir(cfg.env_id)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        return run_dir, [f"--run-dir {run_dir!r} already exists and is not empty; choose another --run-dir"]
    return run_dir, []


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, run. Returns the process exit code."""
    comm = Comm()
    try:
        cfg, args = config_mod.load(argv, comm.size)
    except ConfigError as exc:
        if comm.rank == 0:
            print("evo-mpi: invalid configuration:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if getattr(args, "print_config", False):
        if comm.rank == 0:
            print(config_mod.to_toml(cfg), end="")
        return EXIT_OK

    run_dir, problems = comm.bcast_obj(_prepare_run_dir(cfg) if comm.rank == 0 else None)
    if problems:
        if comm.rank == 0:
            print("evo-mpi: invalid configuration:", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    import torch

    torch.set_num_threads(cfg.torch_threads)
    from .engine import Engine, write_config

    engine = None
    try:
        if comm.rank == 0:
            os.makedirs(run_dir, exist_ok=True)
            data = cfg.to_dict()
            data["run_dir"] = run_dir
            data["world_size"] = comm.size
            data["population"] = comm.size * cfg.agents_per_rank
            write_config(run_dir, data)
            print(
                f"evo-mpi: {data['population']} members on {comm.size} rank(s), "
                f"{cfg.env_id}, {cfg.generations} generations x {cfg.steps_per_generation} steps; "
                f"output in {run_dir}",
                flush=True,
            )
        comm.barrier()
        engine = Engine(cfg, comm, run_dir, echo=lambda line: print(line, flush=True))
        engine.run()
        engine.close()
        return EXIT_OK
    except BaseException as exc:  # noqa: BLE001 - any failure must end every rank
        activity = engine.activity if engine is not None else "starting"
        print(
            f"evo-mpi: rank {comm.rank} failed while {activity}: {type(exc).__name__}: {exc}\n"
            + traceback.format_exc(),
            file=sys.stderr,
            flush=True,
        )
        comm.abort(EXIT_FAILURE)
        return EXIT_FAILURE


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
