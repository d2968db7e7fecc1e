"""The Python API: ``evo_mpi.train(...)`` runs PBT in this process or, under ``mpiexec``, on every rank.

The command line (:mod:`evo_mpi.run`) is a thin layer over :func:`execute`:
both plan on rank 0 (validation, run dir, resume), broadcast the plan, and
run the same engine. Bad options raise :class:`~evo_mpi.config.ConfigError`
on every rank, listing every problem, before any rank builds a member.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import checkpoint
from . import config as config_mod
from .atomic import write_json_atomic, write_text_atomic
from .comm import Comm, launcher_mismatch
from .config import Config, ConfigError, zoo
from .episodes import EpisodeRecord
from .records import numbers, step_of
from .status import Callback, GenerationSummary, RunContext, Status

#: Signals that stop a run at the next env step with a resumable checkpoint.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

#: How a run ended (the names older code imports from here).
FINISHED, STOPPED_BY_CALLBACK, TIME_LIMIT = Status.FINISHED, Status.STOPPED_BY_CALLBACK, Status.TIME_LIMIT
TARGET_REACHED, INTERRUPTED, ALREADY_FINISHED = Status.TARGET_REACHED, Status.INTERRUPTED, Status.ALREADY_FINISHED
MEMBERS_FAILED = Status.FAILED

#: When this process imported evo_mpi: the command line's --time-limit counts from here.
PROCESS_START = time.monotonic()

#: Every rank's (host, ranks on its node, cores its ranks may use there, torch threads).
Placement = list[tuple[str, int, int, int]]

#: Seconds a failing rank waits before MPI_Abort, so the launcher forwards its report first.
REPORT_GRACE_S = 1.0


@dataclass
class Result:
    """What a run produced (the same on every rank).

    Attributes:
        status: A :class:`~evo_mpi.status.Status`, equal to its string: ``finished``,
            ``callback`` (ended early by the callback), ``time_limit``
            (ended early by ``time_limit``), ``target`` (``target_fitness`` reached),
            ``interrupted`` (a stop signal; resume it), ``failed`` (member failures
            ended the run: final models of the healthy members, no champion) or
            ``already`` (the run dir held a finished run).
        run_dir: Where everything was written.
        config: The run's resolved configuration.
        best_member: The champion, the member in ``best.zip`` (None when interrupted or failed): the best
            candidate of the final evaluation, or the best last training fitness without one.
        best_fitness: Its last training fitness (its evaluation is in ``champion``).
        best_hparams: Its hyperparameters.
        champion: ``champion.json``'s content: the final pick's candidates, their evaluation
            returns, seeds and ``pick`` (None when interrupted, or for a run finished before
            evo-mpi wrote it).
        history: Every ``history.jsonl`` record (one per member and generation).
        rank: This process's MPI rank (0 alone), e.g. to print only once.

    """

    status: Status
    run_dir: str
    config: Config
    rank: int = 0
    best_member: int | None = None
    best_fitness: float | None = None
    best_hparams: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    champion: dict[str, Any] | None = None
    _model: Any = field(default=None, repr=False)

    @property
    def best_model_path(self) -> str:
        """``RUN_DIR/best.zip``."""
        return os.path.join(self.run_dir, "best.zip")

    @property
    def best_model(self) -> Any:
        """The champion's model from ``best.zip``, loaded on first use (CPU).

        An SB3 model for the SB3 adapter; for a custom member, what its ``save``
        wrote (for :class:`~evo_mpi.torch_member.TorchMember`: the modules' state dicts).
        """
        if self._model is None and self.config.member:
            import torch

            self._model = torch.load(self.best_model_path, weights_only=True, map_location="cpu")
        if self._model is None:
            from . import algorithms

            model_class: Any = algorithms.get(self.config.algo).model_class()
            self._model = model_class.load(self.best_model_path, device="cpu")
        return self._model


# -- planning (rank 0) -----------------------------------------------------------------------------


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
    return os.path.join("runs", f"{env_id.replace('/', '_').replace(':', '_')}-{stamp}")


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


def plan_run(
    parsed: config_mod.Parsed,
    world_size: int,
    env_factory: Callable[..., Any] | None = None,
    member_factory: Callable[..., Any] | None = None,
) -> Plan:
    """Resolve the configuration and run dir: fresh run, resume, or errors. Creates nothing."""
    plan = Plan()
    try:
        if parsed.resume:
            cfg, saved = _resumed_config(parsed, world_size, plan.problems)
            run_dir = parsed.resume
        else:
            cfg, saved = _fresh_config(parsed, plan.problems)
            run_dir = cfg.run_dir
        if cfg is None:
            return plan
        plan.problems += config_mod.validate(cfg, world_size, env_factory=env_factory, member_factory=member_factory)
    except ConfigError as exc:
        plan.problems += exc.problems
        return plan
    if saved is not None:
        _plan_resume(plan, cfg, run_dir, saved, world_size)
    plan.cfg = dataclasses.replace(cfg, run_dir=run_dir)
    plan.run_dir = run_dir
    return plan


def _resumed_config(
    parsed: config_mod.Parsed, world_size: int, problems: list[str]
) -> tuple[Config | None, dict[str, Any] | None]:
    """``--resume``: the saved options with the ones a resume may change; problems for any other change."""
    assert parsed.resume is not None
    saved = _read_saved(parsed.resume)
    if saved is None:
        problems.append(f"--resume {parsed.resume!r}: no config.json there (not an evo-mpi run dir)")
        return None, None
    given = {**parsed.file_values, **parsed.cli_values}
    overrides = {k: v for k, v in given.items() if k in config_mod.RESUME_OVERRIDABLE and k != "run_dir"}
    if "agents_per_rank" not in overrides:
        population = int(saved["population"])
        if population % world_size:
            problems.append(
                f"--resume: the run has {population} members, which {world_size} rank(s) cannot share "
                "evenly; launch a divisor of that many ranks or pass --agents-per-rank"
            )
            return None, None
        overrides["agents_per_rank"] = population // world_size
    cfg = config_mod.merge(config_mod.from_saved(saved), {**overrides, "run_dir": parsed.resume})
    merged_given = config_mod.merge(config_mod.from_saved(saved), given)
    problems += [f"--resume: {d}" for d in config_mod.differences(merged_given, saved)]
    return cfg, saved


def _fresh_config(parsed: config_mod.Parsed, problems: list[str]) -> tuple[Config, dict[str, Any] | None]:
    """The given options (``--zoo`` resolved) and run dir; a run already there must have the same options."""
    cfg = config_mod.merge(parsed.file_values, parsed.cli_values)
    if cfg.zoo:
        named = {k.replace("-", "_") for k in (*parsed.file_values, *parsed.cli_values)}
        cfg = zoo.resolve(cfg, named)
    run_dir = cfg.run_dir or _default_run_dir(cfg.env_id)
    saved = _read_saved(run_dir)
    if saved is not None:
        problems += [
            f"--run-dir {run_dir!r} holds a run with other options ({d}); use another --run-dir, "
            f"or --resume {run_dir} to continue it"
            for d in config_mod.differences(cfg, saved)
        ]
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        problems.append(f"--run-dir {run_dir!r} exists, is not empty and holds no evo-mpi run")
    return dataclasses.replace(cfg, run_dir=run_dir), saved


def _plan_resume(plan: Plan, cfg: Config, run_dir: str, saved: Mapping[str, Any], world_size: int) -> None:
    """A run dir with a run: same population, where to resume from, and whether it already finished."""
    population = world_size * cfg.agents_per_rank
    if int(saved["population"]) != population:
        plan.problems.append(
            f"the run in {run_dir!r} has {saved['population']} members, this launch makes {population} "
            f"({world_size} rank(s) x {cfg.agents_per_rank}); change -n or --agents-per-rank"
        )
    plan.resuming = True
    done = checkpoint.complete(run_dir)
    if cfg.mode == "async":  # members checkpoint on their own; best.zip is written last
        plan.finished = os.path.isfile(os.path.join(run_dir, "best.zip"))
    elif done:
        plan.resume_from = done[-1]
        # finished = last generation checkpointed *and* the final models written (best.zip comes last)
        try:
            last = checkpoint.load_population(run_dir, done[-1])
        except (OSError, ValueError) as exc:  # unreadable or not JSON
            plan.problems.append(
                f"{run_dir}: cannot read the checkpoint of generation {done[-1]} ({exc}); move that checkpoint "
                "directory away to resume from the one before it"
            )
            return
        plan.finished = last.finished and os.path.isfile(os.path.join(run_dir, "best.zip"))


# -- running (every rank) --------------------------------------------------------------------------


def connect() -> Comm:
    """The job's communicator; ConfigError when the launcher and MPI disagree (each process says so)."""
    try:
        comm = Comm()
    except RuntimeError as exc:  # launched by an MPI launcher, but mpi4py cannot load an MPI library
        raise ConfigError([str(exc)]) from None
    mismatch = launcher_mismatch(comm.size)
    if mismatch is not None:
        raise ConfigError([mismatch])
    return comm


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


def write_placement(
    run_dir: str,
    mode: str,
    placement: Placement,
    say: Callable[[str], None],
    devices: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Append this launch's rank placement to RUN_DIR/placement.jsonl (one line per launch or resume).

    Each rank's host, ranks on its node (MPI's shared-memory split), usable
    cores there and torch threads, and from ``devices`` (:func:`_place_device`)
    its node-local rank, torch device and GPU; with more than one host, a line
    says where the ranks run.
    """
    ranks = [
        {"rank": i, "host": h, "ranks_on_node": r, "node_cores": c, "torch_threads": t}
        for i, (h, r, c, t) in enumerate(placement)
    ]
    for rank, record in zip(ranks, devices, strict=False):
        rank.update(record)
    hosts: dict[str, list[int]] = {}
    for i, (host, *_) in enumerate(placement):
        hosts.setdefault(host, []).append(i)
    with open(os.path.join(run_dir, "placement.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"unix": time.time(), "mode": mode, "hosts": len(hosts), "ranks": ranks}) + "\n")
    if len(hosts) > 1:
        where = ", ".join(f"{h} (ranks {', '.join(map(str, rs))})" for h, rs in hosts.items())
        say(f"evo-mpi: {len(ranks)} ranks on {len(hosts)} hosts: {where}")


def execute(
    comm: Comm,
    parsed: config_mod.Parsed,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    echo: Callable[[str], None] | None = print,
    env_factory: Callable[..., Any] | None = None,
    callback: Callback | None = None,
    member_factory: Callable[..., Any] | None = None,
    report_failures: bool = True,
    started: float | None = None,
) -> Result | None:
    """Plan on rank 0, broadcast, run the engine on every rank; the one path of the CLI and the API.

    ``started`` (``time.monotonic()``) is when ``time_limit`` starts counting;
    by default, now.

    Returns:
        The result, or None after ``--print-config`` (nothing ran).

    Raises:
        ConfigError: on every rank, listing every problem, before any member exists.

    """
    launched = time.monotonic() if started is None else started
    say = echo if (echo is not None and comm.rank == 0) else (lambda _line: None)
    plan = _shared_plan(comm, parsed, say, env_factory, member_factory)
    if plan.print_only:
        return None
    assert plan.cfg is not None
    cfg, run_dir = plan.cfg, plan.run_dir
    _refuse_async_callback(cfg, callback)
    if plan.finished:
        say(f"evo-mpi: the run in {run_dir} already finished ({cfg.generations} generations); nothing to do")
        return _result(ALREADY_FINISHED, cfg, run_dir, comm.rank)
    placement = _set_threads(comm, cfg, say)
    _set_determinism(cfg.deterministic)
    device, devices = _place_device(comm, cfg, say)
    ctx = RunContext(
        echo=say,
        should_stop=should_stop,
        env_factory=env_factory,
        member_factory=member_factory,
        callback=callback,
        deadline=None if cfg.time_limit_s is None else launched + cfg.time_limit_s,
        device=device,
    )
    return _run_engine(comm, plan, placement, devices, report_failures, ctx)


def _refuse_async_callback(cfg: Config, callback: Callback | None) -> None:
    """ConfigError for a per-generation ``callback`` with ``--mode async``, which has no generations."""
    if cfg.mode == "async" and callback is not None:
        raise ConfigError(
            [
                "callback= is called once per generation, which --mode async does not have; drop one of them "
                "(--time-limit and the history work in both modes)"
            ]
        )


def _run_engine(
    comm: Comm,
    plan: Plan,
    placement: Placement,
    devices: Sequence[Mapping[str, Any]],
    report_failures: bool,
    ctx: RunContext,
) -> Result:
    """Rank 0 opens the run dir, every rank runs the engine; an unexpected error is reported and aborts the job."""
    assert plan.cfg is not None
    cfg, run_dir, say = plan.cfg, plan.run_dir, ctx.echo
    # imported here, not at the top: the engines import torch and SB3, which `import evo_mpi`,
    # --print-config and configuration errors must not wait for
    from .async_engine import AsyncEngine
    from .engine import Engine
    from .scheduler import EngineBase, LayoutMismatch

    engine: EngineBase | None = None
    try:
        if comm.rank == 0:
            _open_run_dir(comm.size, plan, placement, say, devices)
        comm.barrier()
        if cfg.mode == "async":
            engine = AsyncEngine(cfg, comm, run_dir, ctx, resuming=plan.resuming)
        else:
            engine = Engine(cfg, comm, run_dir, ctx, resume_from=plan.resume_from)
        status = engine.run()
        engine.close()
        if status == INTERRUPTED:
            say(_interrupted_line(cfg, run_dir))
        return _result(status, cfg, run_dir, comm.rank)
    except LayoutMismatch as exc:  # raised alike on every rank before any training: a setup error
        raise ConfigError([str(exc)]) from None
    except ConfigError:  # raised alike on every rank from the same gathered table (--fitness info:KEY)
        if engine is not None:
            engine.close()
        raise
    except BaseException as exc:
        _report_crash(comm, run_dir, engine.activity if engine is not None else "starting", exc, report_failures)
        raise


def _shared_plan(
    comm: Comm,
    parsed: config_mod.Parsed,
    say: Callable[[str], None],
    env_factory: Callable[..., Any] | None,
    member_factory: Callable[..., Any] | None,
) -> Plan:
    """Rank 0 plans (and prints the config for ``--print-config``), every rank gets the plan; ConfigError alike."""
    plan = Plan()
    if comm.rank == 0:
        try:
            plan = plan_run(parsed, comm.size, env_factory, member_factory)
            if parsed.print_config and not plan.problems and plan.cfg is not None:
                say(config_mod.to_toml(plan.cfg).rstrip("\n"))
                plan.print_only = True
        except ConfigError as exc:
            plan.problems = exc.problems
        except Exception as exc:  # noqa: BLE001 - any error here must reach every rank, not leave them waiting
            plan.problems = [f"cannot check the configuration: {type(exc).__name__}: {exc}"]
    plan = comm.bcast_obj(plan)
    if plan.problems:
        raise ConfigError(plan.problems)
    return plan


def _set_threads(comm: Comm, cfg: Config, say: Callable[[str], None]) -> Placement:
    """Torch threads for this rank; every rank's (host, ranks on its node, cores there, threads)."""
    import torch

    host, ranks_here, cores_here = comm.node_usage()
    threads = cfg.torch_threads or auto_threads(ranks_here, cores_here)
    torch.set_num_threads(threads)
    placement: Placement = comm.allgather_obj((host, ranks_here, cores_here, threads))
    hint = oversubscription_hint({h: (r, c) for h, r, c, _ in placement}, cfg.agents_per_rank)
    if hint is not None:
        say(hint)
    return placement


def _set_determinism(on: bool) -> None:
    """``--deterministic``: torch's deterministic algorithms, before any member (or cuBLAS handle) exists.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when its first handle is made, so
    setting it here, before any model, covers every member of this process.
    Off, torch's own defaults are left alone (so an API caller's choice stands).
    """
    if not on:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def _place_device(comm: Comm, cfg: Config, say: Callable[[str], None]) -> tuple[str, list[dict[str, Any]]]:
    """The torch device of this rank (``--device`` and its node-local rank) and every rank's device record.

    Raises:
        ConfigError: on every rank, naming the value and what the rank saw, when any rank cannot
            honour ``--device`` (e.g. ``cuda`` with no GPU visible); nothing is created before this.

    """
    import socket

    import torch

    from .devices import DeviceError, assign_device, launcher_local_rank, visible_gpus

    local = comm.local_rank()
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count() if cfg.device != "cpu" else 0
    record: dict[str, Any] = {"local_rank": local, "device": "cpu", "gpu": None, "cuda_visible_devices": seen,
                              "deterministic": torch.are_deterministic_algorithms_enabled()}  # fmt: skip
    launcher = launcher_local_rank(os.environ)
    if launcher is not None:
        record["launcher_local_rank"] = {launcher[0]: launcher[1]}
    problem = note = None
    try:
        choice = assign_device(cfg.device, local, visible_gpus(seen, count))
    except DeviceError as exc:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"  # type: ignore[attr-defined]
        shown = "unset" if seen is None else repr(seen)
        problem = (
            f"{exc} on host {socket.gethostname()} (torch {torch.__version__} has {build}; "
            f"CUDA_VISIBLE_DEVICES {shown})"
        )
    else:
        record.update(device=choice.device, gpu=choice.gpu)
        note = choice.note
        if choice.device != "cpu":
            torch.cuda.set_device(choice.device)
    gathered: list[tuple[dict[str, Any], str | None, str | None]] = comm.allgather_obj((record, problem, note))
    problems = list(dict.fromkeys(p for _, p, _ in gathered if p))
    if problems:
        raise ConfigError(problems)
    for line in dict.fromkeys(n for _, _, n in gathered if n):
        say(line)
    disagree = [
        f"rank {i}: {name}={value}, MPI's split {r['local_rank']}"
        for i, (r, _, _) in enumerate(gathered)
        for name, value in r.get("launcher_local_rank", {}).items()
        if value != r["local_rank"]
    ]
    if disagree:
        say(
            f"evo-mpi: note: the launcher's node-local ranks differ from MPI's ({'; '.join(disagree)}); "
            "devices follow MPI's"
        )
    return record["device"], [r for r, _, _ in gathered]


def _open_run_dir(
    size: int,
    plan: Plan,
    placement: list[tuple[str, int, int, int]],
    say: Callable[[str], None],
    devices: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Rank 0: the run's config (a fresh run) or the resume line, the banner and this launch's placement."""
    assert plan.cfg is not None
    cfg, run_dir = plan.cfg, plan.run_dir
    population = size * cfg.agents_per_rank
    if plan.resuming:
        if cfg.mode == "async":
            where = "(async: every member from its last checkpointed interval)"
        elif plan.resume_from is not None:
            where = f"from generation {plan.resume_from + 1} (checkpoint of generation {plan.resume_from})"
        else:
            where = "from generation 0 (no complete checkpoint yet)"
        say(f"evo-mpi: resuming the run in {run_dir} {where} with {size} rank(s)")
    else:
        os.makedirs(run_dir, exist_ok=True)
        data = cfg.to_dict()
        data.update(world_size=size, population=population)
        write_config(run_dir, data, config_mod.to_toml(cfg))
    say(
        f"evo-mpi: {population} members on {size} rank(s), {cfg.member or cfg.env_id}, "
        f"{cfg.generations} generations x {cfg.steps_per_generation} steps; output in {run_dir}"
    )
    write_placement(run_dir, cfg.mode, placement, say, devices)


def _interrupted_line(cfg: Config, run_dir: str) -> str:
    """What a stop signal left to resume from."""
    if cfg.mode == "async":
        return "evo-mpi: interrupted by a stop signal; every member resumes from its last completed interval."
    done = checkpoint.complete(run_dir)
    last = f"generation {done[-1]}" if done else "none yet (the resumed run starts at generation 0)"
    return f"evo-mpi: interrupted by a stop signal; last complete checkpoint: {last}."


def _report_crash(comm: Comm, run_dir: str, activity: str, exc: BaseException, report_failures: bool) -> None:
    """One rank's unexpected error: kept in errors.log, printed, and (under MPI) the job aborted, not left waiting."""
    report = f"evo-mpi: rank {comm.rank} failed while {activity}: {type(exc).__name__}: {exc}\n"
    _keep_report(run_dir, report + traceback.format_exc())
    if report_failures or comm.uses_mpi:
        print(report + traceback.format_exc(), file=sys.stderr, flush=True)
    if comm.uses_mpi:  # one failing rank must not leave the others waiting in a collective
        time.sleep(REPORT_GRACE_S)  # MPI_Abort tears the job down at once; let the launcher forward stderr
        comm.abort(1)


def _result(status: Status, cfg: Config, run_dir: str, rank: int) -> Result:
    """Read the run's history and champion from its files (every rank sees the same files).

    The champion is ``champion.json``'s member; a run without that file (older
    runs) falls back to the best last training fitness.
    """
    history: list[dict[str, Any]] = []
    path = os.path.join(run_dir, "history.jsonl")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            history = [json.loads(line) for line in fh if line.strip()]
    result = Result(status=status, run_dir=run_dir, config=cfg, history=history, rank=rank)
    if history and status not in (INTERRUPTED, MEMBERS_FAILED):
        latest: dict[int, dict[str, Any]] = {}  # each member's last record (sync: all of the last generation)
        for r in history:
            if r["member"] not in latest or step_of(r) >= step_of(latest[r["member"]]):
                latest[r["member"]] = r
        records = [latest[m] for m in sorted(latest)]
        from .selection import rank_order

        fitness = numbers(r["fitness"] for r in records)
        best = int(rank_order(np.array(fitness))[0])
        champion_path = os.path.join(run_dir, "champion.json")
        if os.path.isfile(champion_path):
            with open(champion_path, encoding="utf-8") as fh:
                result.champion = json.load(fh)
            best = next((i for i, r in enumerate(records) if r["member"] == result.champion["member"]), best)
        result.best_member, result.best_fitness = records[best]["member"], records[best]["fitness"]
        result.best_hparams = records[best]["hparams"]
    return result


def _keep_report(run_dir: str, text: str) -> None:
    """Append a failure report to RUN_DIR/errors.log, which survives a lost stderr."""
    try:
        with open(os.path.join(run_dir, "errors.log"), "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass  # the run dir itself may be the problem; stderr still has the report


@contextmanager
def stop_signals(flag: dict[str, int]) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT/SIGUSR1 set ``flag['signal']`` instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def request_stop(signum: int, _frame: Any) -> None:
        flag["signal"] = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the public call -------------------------------------------------------------------------------


def _with_objective(
    target: str | Callable[..., Any], objective: Callable[[EpisodeRecord], float]
) -> Callable[..., Any]:
    """An env factory: ``target`` (an id or a factory) with :class:`~evo_mpi.episodes.Objective` on top."""
    import gymnasium

    from .episodes import Objective

    def make(**kwargs: Any) -> Any:
        env = gymnasium.make(target, **kwargs) if isinstance(target, str) else target(**kwargs)
        return Objective(env, objective)

    make.__qualname__ = f"objective_over_{getattr(target, '__qualname__', target)}"
    return make


def _import_path(obj: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level callable (how config.json names an env or member factory)."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def train(
    config: Config | None = None,
    *,
    env: str | Callable[..., Any] | None = None,
    callback: Callback | None = None,
    member: str | Callable[..., Any] | None = None,
    resume: str | None = None,
    echo: Callable[[str], None] | None = print,
    objective: Callable[[EpisodeRecord], float] | None = None,
    **options: Any,
) -> Result:
    """Run PBT and return its :class:`Result`: alone, or on every rank when started under ``mpiexec``.

    Args:
        config: A :class:`~evo_mpi.config.Config`; ``options`` override its fields.
        env: A gymnasium id, ``module:Name``, or a callable returning a gymnasium env
            (called with ``env_kwargs``); it overrides ``env_id``.
        callback: Called on every rank after each generation's evaluation with a
            :class:`GenerationSummary`; returning True ends the run there (no exploit,
            final models written).
        member: A member factory (``module:function`` or the callable itself) for
            training code that is not SB3; see :mod:`evo_mpi.protocol`.
        resume: A run dir to continue (as ``--resume``); ``options`` may change only
            what the CLI lets a resume change.
        echo: Where rank 0's progress lines go (None: nowhere).
        objective: The true objective: called with each ended training episode's
            :class:`~evo_mpi.episodes.EpisodeRecord` (return, length, final info); fitness is the mean of
            its values over the fitness window (as ``fitness="info:KEY"``, whose key it then fills), and the
            t-test and the final pick use them too. A resume needs the same ``objective``.
        **options: Any :class:`~evo_mpi.config.Config` field, e.g. ``agents_per_rank=4``.

    Raises:
        ConfigError: listing every problem with the options, on every rank, before any work.

    """
    values, env_factory, member_factory = _call_values(config, env, member, objective, options)
    comm = connect()
    parsed = config_mod.Parsed(values, {}, None, False, resume)
    flag = {"signal": 0}
    with stop_signals(flag):
        result = execute(
            comm,
            parsed,
            should_stop=lambda: flag["signal"] != 0,
            echo=echo,
            env_factory=env_factory,
            callback=callback,
            member_factory=member_factory,
            report_failures=False,
        )
    assert result is not None
    return result


def _call_values(
    config: Config | None,
    env: str | Callable[..., Any] | None,
    member: str | Callable[..., Any] | None,
    objective: Callable[[EpisodeRecord], float] | None,
    options: Mapping[str, Any],
) -> tuple[dict[str, Any], Callable[..., Any] | None, Callable[..., Any] | None]:
    """A :func:`train` call as the command line's option values, with its env and member factories."""
    values = _given_values(config, options)
    env_factory = _take_factory(env, values, "env_id")
    if objective is not None:
        from .episodes import OBJECTIVE_INFO_KEY
        from .resolvers import resolve_env

        env_factory = _with_objective(env_factory or resolve_env(values.get("env_id", Config().env_id)), objective)
        values["fitness"] = f"info:{OBJECTIVE_INFO_KEY}"
    member_factory = _take_factory(member, values, "member")
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return values, env_factory, member_factory


def _given_values(config: Config | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """``config``'s fields not at their defaults, then ``options``; ConfigError naming every unknown option."""
    unknown = sorted(set(options) - set(config_mod.FIELDS))
    if unknown:
        raise ConfigError([f"unknown option {name!r} (see evo_mpi.Config)" for name in unknown])
    values: dict[str, Any] = {}
    if config is not None:  # its fields at their defaults count as not given (--zoo fills those)
        default = Config()
        values.update({k: v for k, v in dataclasses.asdict(config).items() if v != getattr(default, k)})
    values.update(options)
    return values


def _take_factory(
    target: str | Callable[..., Any] | None, values: dict[str, Any], key: str
) -> Callable[..., Any] | None:
    """Set ``values[key]`` to ``target``'s name (a callable's import path); return ``target`` if it is callable."""
    if callable(target):
        values[key] = _import_path(target)
        return target
    if target is not None:
        values[key] = target
    return None


__all__: Sequence[str] = ("GenerationSummary", "Result", "Status", "train", "execute", "plan_run")


def write_config(run_dir: str, data: dict[str, Any], toml_text: str) -> None:
    """Write ``config.toml`` (feeds back with ``--config``), then ``config.json`` (marks a run dir), atomically."""
    write_text_atomic(os.path.join(run_dir, "config.toml"), toml_text)
    write_json_atomic(os.path.join(run_dir, "config.json"), data)
