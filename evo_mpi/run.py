"""Entry point: ``python -m evo_mpi.run`` / ``evo-mpi``, alone or under ``mpiexec -n N``.

Exit codes: 0 finished (or already finished), 1 failure (every rank is
aborted), 2 invalid configuration (nothing created), 75 interrupted by
SIGTERM/SIGINT/SIGUSR1 with a complete checkpoint on disk (resumable).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import checkpoint
from . import config as config_mod
from .comm import Comm, launcher_mismatch
from .config import EXIT_CONFIG_ERROR, Config, ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 75  # sysexits EX_TEMPFAIL: try again later (resume)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@dataclass
class Plan:
    """What rank 0 decided before any rank does expensive work."""

    cfg: Config | None = None
    run_dir: str = ""
    resume_from: int | None = None
    resuming: bool = False
    finished: bool = False
    print_only: bool = False
    problems: list[str] = field(default_factory=list)


def _default_run_dir(env_id: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{env_id.replace('/', '_')}-{stamp}")


def _read_saved(run_dir: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:  # unreadable, or not JSON (ValueError covers JSONDecodeError/UTF-8)
        raise ConfigError([f"{path}: cannot read the run's saved configuration ({exc})"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("population"), int):
        raise ConfigError([f"{path}: not an evo-mpi run configuration (no population)"])
    return data


def plan_run(parsed: config_mod.Parsed, world_size: int) -> Plan:
    """Resolve the configuration and run dir: fresh run, resume, or errors. Creates nothing."""
    plan = Plan()
    try:
        if parsed.resume:
            saved = _read_saved(parsed.resume)
            if saved is None:
                plan.problems.append(f"--resume {parsed.resume!r}: no config.json there (not an evo-mpi run dir)")
                return plan
            given = {**parsed.file_values, **parsed.cli_values}
            overrides = {k: v for k, v in given.items() if k in config_mod.RESUME_OVERRIDABLE and k != "run_dir"}
            if "agents_per_rank" not in overrides:
                population = int(saved["population"])
                if population % world_size:
                    plan.problems.append(
                        f"--resume: the run has {population} members, which {world_size} rank(s) cannot share "
                        "evenly; launch a divisor of that many ranks or pass --agents-per-rank"
                    )
                    return plan
                overrides["agents_per_rank"] = population // world_size
            cfg = config_mod.merge(config_mod.from_saved(saved), {**overrides, "run_dir": parsed.resume})
            merged_given = config_mod.merge(config_mod.from_saved(saved), given)
            plan.problems += [f"--resume: {d}" for d in config_mod.differences(merged_given, saved)]
            run_dir = parsed.resume
        else:
            cfg = config_mod.merge(parsed.file_values, parsed.cli_values)
            run_dir = cfg.run_dir or _default_run_dir(cfg.env_id)
            saved = _read_saved(run_dir)
            if saved is not None:
                plan.problems += [
                    f"--run-dir {run_dir!r} holds a run with other options ({d}); use another --run-dir, "
                    f"or --resume {run_dir} to continue it"
                    for d in config_mod.differences(cfg, saved)
                ]
            elif os.path.isdir(run_dir) and os.listdir(run_dir):
                plan.problems.append(f"--run-dir {run_dir!r} exists, is not empty and holds no evo-mpi run")
        plan.problems += config_mod.validate(cfg, world_size)
    except ConfigError as exc:
        plan.problems += exc.problems
        return plan
    if saved is not None:
        population = world_size * cfg.agents_per_rank
        if int(saved["population"]) != population:
            plan.problems.append(
                f"the run in {run_dir!r} has {saved['population']} members, this launch makes {population} "
                f"({world_size} rank(s) x {cfg.agents_per_rank}); change -n or --agents-per-rank"
            )
        plan.resuming = True
        done = checkpoint.complete(run_dir)
        if done:
            plan.resume_from = done[-1]
            # finished = last generation checkpointed *and* the final models written (best.zip comes last)
            try:
                last = checkpoint.load_population(run_dir, done[-1])
            except (OSError, ValueError) as exc:  # unreadable or not JSON
                plan.problems.append(
                    f"{run_dir}: cannot read the checkpoint of generation {done[-1]} ({exc}); move that checkpoint "
                    "directory away to resume from the one before it"
                )
                return plan
            plan.finished = bool(last.get("finished")) and os.path.isfile(os.path.join(run_dir, "best.zip"))
    plan.cfg = dataclasses.replace(cfg, run_dir=run_dir)
    plan.run_dir = run_dir
    return plan


def auto_threads(ranks_on_node: int, node_cores: int) -> int:
    """max(1, usable cores on this node / ranks on this node): no oversubscribed torch thread pools."""
    return max(1, node_cores // ranks_on_node)


def oversubscription_hint(nodes: Mapping[str, tuple[int, int]], agents_per_rank: int) -> str | None:
    """One line when some node runs more ranks than it has usable cores, with a launch that fits; else None.

    Args:
        nodes: Host name -> (ranks on it, cores its ranks may use).
        agents_per_rank: Members per rank now.

    """
    crowded = {host: rc for host, rc in nodes.items() if rc[0] > rc[1]}
    if not crowded:
        return None
    ranks = sum(r for r, _ in nodes.values())
    population = ranks * agents_per_rank
    cores = sum(min(r, c) for r, c in nodes.values())
    fit = max(n for n in range(1, cores + 1) if population % n == 0)
    where = ", ".join(f"{r} ranks on {c} core(s) of {host}" for host, (r, c) in sorted(crowded.items()))
    return (
        f"evo-mpi: note: more ranks than cores ({where}): ranks share cores and the run is slower for the same "
        f"result; for the same {population} members launch -n {fit} --agents-per-rank {population // fit}"
    )


def _print_problems(problems: Sequence[str]) -> None:
    print("evo-mpi: invalid configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, run. Returns the process exit code."""
    stop = {"signal": 0}

    def request_stop(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    for sig in _STOP_SIGNALS:  # first, so a stop during start-up is not lost either
        signal.signal(sig, request_stop)
    try:
        comm = Comm()
    except RuntimeError as exc:  # launched by an MPI launcher, but mpi4py cannot load an MPI library
        _print_problems([str(exc)])
        return EXIT_CONFIG_ERROR
    mismatch = launcher_mismatch(comm.size)
    if mismatch is not None:  # every process is a world of its own: each says so and stops
        _print_problems([mismatch])
        return EXIT_CONFIG_ERROR

    plan = Plan()
    if comm.rank == 0:
        try:
            parsed = config_mod.parse(argv)
            plan = plan_run(parsed, comm.size)
            if parsed.print_config and not plan.problems and plan.cfg is not None:
                print(config_mod.to_toml(plan.cfg), end="")
                plan.print_only = True
        except ConfigError as exc:
            plan.problems = exc.problems
        except Exception as exc:  # noqa: BLE001 - any error here must reach every rank, not leave them waiting
            plan.problems = [f"cannot check the configuration: {type(exc).__name__}: {exc}"]
    plan = comm.bcast_obj(plan)
    if plan.problems:
        if comm.rank == 0:
            _print_problems(plan.problems)
        return EXIT_CONFIG_ERROR
    if plan.print_only:
        return EXIT_OK
    assert plan.cfg is not None
    cfg, run_dir = plan.cfg, plan.run_dir
    if plan.finished:
        if comm.rank == 0:
            print(f"evo-mpi: the run in {run_dir} already finished ({cfg.generations} generations); nothing to do")
        return EXIT_OK

    import torch

    host, ranks_here, cores_here = comm.node_usage()
    torch.set_num_threads(cfg.torch_threads or auto_threads(ranks_here, cores_here))
    nodes = dict((h, (r, c)) for h, r, c in comm.allgather_obj((host, ranks_here, cores_here)))
    hint = oversubscription_hint(nodes, cfg.agents_per_rank)
    if hint is not None and comm.rank == 0:
        print(hint, flush=True)
    from .engine import Engine, LayoutMismatch, write_config

    engine = None
    try:
        if comm.rank == 0:
            population = comm.size * cfg.agents_per_rank
            if plan.resuming:
                where = (
                    f"from generation {plan.resume_from + 1} (checkpoint of generation {plan.resume_from})"
                    if plan.resume_from is not None
                    else "from generation 0 (no complete checkpoint yet)"
                )
                print(f"evo-mpi: resuming the run in {run_dir} {where} with {comm.size} rank(s)", flush=True)
            else:
                os.makedirs(run_dir, exist_ok=True)
                data = cfg.to_dict()
                data.update(world_size=comm.size, population=population)
                write_config(run_dir, data, config_mod.to_toml(cfg))
            print(
                f"evo-mpi: {population} members on {comm.size} rank(s), {cfg.env_id}, "
                f"{cfg.generations} generations x {cfg.steps_per_generation} steps; output in {run_dir}",
                flush=True,
            )
        comm.barrier()
        engine = Engine(
            cfg,
            comm,
            run_dir,
            echo=lambda line: print(line, flush=True),
            should_stop=lambda: stop["signal"] != 0,
            resume_from=plan.resume_from,
        )
        finished = engine.run()
        engine.close()
        if finished:
            return EXIT_OK
        if comm.rank == 0:
            done = checkpoint.complete(run_dir)
            last = f"generation {done[-1]}" if done else "none yet (the resumed run starts at generation 0)"
            launcher = f"mpiexec -n {comm.size} " if comm.uses_mpi else ""
            print(
                f"evo-mpi: interrupted by a stop signal; last complete checkpoint: {last}.\n"
                f"evo-mpi: resume with: {launcher}python -m evo_mpi.run --resume {run_dir}",
                flush=True,
            )
        return EXIT_INTERRUPTED
    except LayoutMismatch as exc:  # raised alike on every rank before any training: a setup error
        if comm.rank == 0:
            _print_problems([str(exc)])
        return EXIT_CONFIG_ERROR
    except BaseException as exc:  # noqa: BLE001 - any failure must end every rank
        activity = engine.activity if engine is not None else "starting"
        report = f"evo-mpi: rank {comm.rank} failed while {activity}: {type(exc).__name__}: {exc}\n"
        print(report + traceback.format_exc(), file=sys.stderr, flush=True)
        _keep_report(run_dir, report + traceback.format_exc())
        if comm.uses_mpi:
            # MPI_Abort tears the job down at once; give the launcher a moment to forward stderr
            time.sleep(_REPORT_GRACE_S)
        comm.abort(EXIT_FAILURE)
        return EXIT_FAILURE


_REPORT_GRACE_S = 1.0


def _keep_report(run_dir: str, text: str) -> None:
    """Append a failure report to RUN_DIR/errors.log, which survives a lost stderr."""
    try:
        with open(os.path.join(run_dir, "errors.log"), "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass  # the run dir itself may be the problem; stderr still has the report


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
