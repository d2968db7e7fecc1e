"""Replay a PBT lineage's hyperparameter schedule with one fresh agent in one process.

    python -m evo_mpi.replay RUN_DIR [--member M] [--out DIR] [--eval-episodes N] [--seed S]

Like Ray Tune's ``PopulationBasedTrainingReplay``: the member (default: the
best of the last recorded generation) is traced back through its exploits to
generation 0 (:mod:`evo_mpi.lineage`), and a new agent is trained for the same
generations, each with the hyperparameters that lineage used in it.

Each generation trains with the random streams of the member slot the lineage
lived in then. The agent's envs are its own and keep running across
generations, as a member's do in the run. Envs belong to member slots, and a
lineage that moved slots (an exploit) continued in the loser slot's envs,
whose running episodes the replay cannot know. So with the run's seed (the
default) and the run's torch thread count the replay re-creates the lineage
exactly until it first moved slots (a lineage that never moved: all of it);
from there on it is an independent run of the same schedule. Pass ``--seed``
for an independent replay.

Writes into OUT (default ``RUN_DIR/replay``): ``schedule.json`` (before
training), ``history.jsonl`` (one record per generation), ``tb/`` and ``model.zip``.

Exit codes: 0 done, 1 failure, 2 bad input (missing run dir, empty history,
member out of range, OUT already used without ``--overwrite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from . import config as config_mod
from .lineage import HistoryError, chain, champion_member, is_async, latest_best, load, read_config, read_history
from .records import step_of

EXIT_OK = 0
EXIT_USAGE = 2
#: Files and folders a replay writes into OUT (what ``--overwrite`` replaces).
OUTPUTS = ("schedule.json", "history.jsonl", "model.zip", "tb")


class ReplayError(Exception):
    """Bad input: reported on stderr with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m evo_mpi.replay",
        description="Train one fresh agent with the hyperparameter schedule of a PBT member's lineage.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="evo-mpi run directory (finished or in progress)")
    parser.add_argument(
        "--member",
        type=int,
        help="member to replay (default: the champion in best.zip; unfinished run: best last fitness)",
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/replay)")
    parser.add_argument(
        "--eval-episodes", type=int, help="deterministic evaluation episodes for fitness (default: the run's)"
    )
    parser.add_argument(
        "--seed", type=int, help="master seed (default: the run's, which re-creates the lineage exactly)"
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier replay in OUT")
    return parser


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_fitness(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _fitness_of(record: Mapping[str, Any]) -> float | None:
    fit = record.get("fitness")
    return float(fit) if isinstance(fit, (int, float)) and math.isfinite(fit) else None


def _prepare_out(out: str, overwrite: bool) -> None:
    """Create OUT; refuse to mix with an earlier replay's outputs unless ``overwrite``."""
    used = [name for name in OUTPUTS if os.path.exists(os.path.join(out, name))]
    if used and not overwrite:
        raise ReplayError(f"{out!r} already holds a replay ({', '.join(used)}); pass --overwrite or another --out")
    os.makedirs(out, exist_ok=True)
    for name in used:
        path = os.path.join(out, name)
        if name == "tb":
            for entry in os.listdir(path):  # only TensorBoard event files: never a user's folder
                if entry.startswith("events.out.tfevents."):
                    os.remove(os.path.join(path, entry))
        else:
            os.remove(path)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the replay needs, checked before any training. Raises ReplayError."""
    asynchronous = is_async(read_config(args.run_dir))
    if args.member is None:
        args.member = champion_member(args.run_dir)  # a finished run: the member in best.zip
    try:
        if asynchronous:  # members have their own intervals: follow the records, not a generation grid
            records = read_history(args.run_dir)
            saved = read_config(args.run_dir)
            population = int(saved["population"]) if saved else 0
            member = latest_best(records) if args.member is None else args.member
        else:
            hist, saved = load(args.run_dir)
            records, population = [], hist.population
            member = hist.best_member() if args.member is None else args.member
    except HistoryError as exc:
        raise ReplayError(str(exc)) from None
    if saved is None:
        raise ReplayError(f"no readable config.json in {args.run_dir!r}")
    by_key = {(r["member"], step_of(r)): r for r in records}
    if not 0 <= member < population:
        raise ReplayError(f"--member: member {member} is out of range: the run has members 0..{population - 1}")
    try:
        lineage = chain(records, member) if asynchronous else hist.ancestry(member)
    except HistoryError as exc:
        raise ReplayError(f"--member: {exc}") from None
    overrides: dict[str, Any] = {}
    if args.eval_episodes is not None:
        if args.eval_episodes < 0:
            raise ReplayError(f"--eval-episodes must be >= 0, got {args.eval_episodes}")
        overrides["eval_episodes"] = args.eval_episodes
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.torch_threads < 1:
        raise ReplayError(f"--torch-threads must be >= 1, got {args.torch_threads}")
    try:
        cfg = config_mod.merge(config_mod.from_saved(saved), overrides)
    except config_mod.ConfigError as exc:
        raise ReplayError("config.json: " + "; ".join(exc.problems)) from None
    cfg = dataclasses.replace(cfg, torch_threads=args.torch_threads)
    return {
        "cfg": cfg,
        "saved": saved,
        "member": member,
        "ancestry": lineage,
        "schedule": [dict(by_key[(s, g)]["hparams"]) for g, s in lineage] if asynchronous else hist.schedule(member),
        "pbt_fitness": [_fitness_of(by_key[(s, g)]) for g, s in lineage]
        if asynchronous
        else [_finite_or_none(float(hist.fitness[g, s])) for g, s in lineage],
        # the weight mutation (if any) the slot underwent before generation g: the one recorded after g - 1
        "weight_noise": _weight_noise(read_history(args.run_dir), lineage),
        # async: the step count each slot had when it trained that interval (its own, not the lineage's)
        "start_steps": [int(by_key[(s, g)]["timesteps"]) - cfg.steps_per_generation for g, s in lineage]
        if asynchronous
        else None,
        "generations": len(lineage) if asynchronous else hist.generations,
        "population": population,
        "asynchronous": asynchronous,
    }


def _weight_noise(
    records: Sequence[Mapping[str, Any]], lineage: Sequence[tuple[int, int]]
) -> list[dict[str, Any] | None]:
    """For each step ``(g, slot)`` of the lineage, the weight mutation applied before it (None: none).

    The slot's record of its step before (generation or interval ``g - 1``)
    holds the mutation the slot underwent after that step, in either mode.
    """
    by_key = {(int(r["member"]), step_of(r)): r for r in records}
    return [dict(by_key.get((slot, g - 1), {}).get("mutation", {})).get("weight_noise") for g, slot in lineage]


def replay(p: Mapping[str, Any], out: str, echo: Any = print) -> float:
    """Train the replay described by :func:`plan` into ``out``; return its final fitness."""
    import torch

    from .arch import WeightNoise
    from .member import Member
    from .outputs import JsonlWriter

    cfg: config_mod.Config = p["cfg"]
    lineage: list[tuple[int, int]] = p["ancestry"]
    sched: list[dict[str, Any]] = p["schedule"]
    generations: int = p["generations"]
    member_id: int = p["member"]
    torch.set_num_threads(cfg.torch_threads)
    agent = Member(lineage[0][1], cfg, sched[0], os.path.join(out, "tb"))
    history = JsonlWriter(os.path.join(out, "history.jsonl"))
    fitness = math.nan
    try:
        starts = p.get("start_steps") or [None] * len(lineage)
        noises = p.get("weight_noise") or [None] * len(lineage)
        for i, ((g, slot), hparams, pbt, start, noise) in enumerate(
            zip(lineage, sched, p["pbt_fitness"], starts, noises, strict=True)
        ):
            agent.id = slot  # the random streams the lineage trained with in generation g
            if start is not None:
                agent.set_timesteps(start)
            agent.apply_hparams(hparams)  # a new net_arch grows the network as the run did (same stream)
            if noise is not None:
                agent.mutate_weights(WeightNoise(**noise))
            agent.train(cfg.steps_per_generation, g)
            fitness = agent.fitness(g)
            agent.log(fitness, hparams, None)
            history.write(
                [
                    {
                        "generation": g,
                        "member": slot,
                        "timesteps": agent.timesteps,
                        "fitness": _finite_or_none(fitness),
                        "pbt_fitness": pbt,
                        "hparams": hparams,
                    }
                ]
            )
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(hparams.items()))
            unit = "interval" if start is not None else "gen"
            echo(
                f"replay {unit} {i + 1:>3}/{generations} | steps {agent.timesteps:>9} | "
                f"fitness {_fmt_fitness(fitness):>7} (PBT {_fmt_fitness(pbt):>7}) | {shown}"
            )
        agent.id = member_id
        agent.save(os.path.join(out, "model.zip"))
    finally:
        history.close()
        agent.close()
    return fitness


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check, write ``schedule.json``, train, compare. Returns the exit code."""
    args = build_parser().parse_args(argv)
    out = args.out or os.path.join(args.run_dir, "replay")
    try:
        p = plan(args)
        _prepare_out(out, args.overwrite)
    except (ReplayError, OSError) as exc:
        print(f"evo-mpi replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _write_schedule(os.path.join(out, "schedule.json"), args.run_dir, p)
    for line in _intro(p, args.run_dir, out):
        print(line, flush=True)
    fitness = replay(p, out, echo=lambda line: print(line, flush=True))
    pbt = p["pbt_fitness"][-1]
    print(
        f"replay final fitness {_fmt_fitness(fitness)} vs PBT member {p['member']} final fitness "
        f"{_fmt_fitness(pbt)}; model in {os.path.join(out, 'model.zip')}",
        flush=True,
    )
    return EXIT_OK


def _write_schedule(path: str, run_dir: str, p: Mapping[str, Any]) -> None:
    """``schedule.json``: the replayed member, its ancestry and the hyperparameter schedule it follows."""
    cfg: config_mod.Config = p["cfg"]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(
            {
                "run_dir": os.path.abspath(run_dir),
                "member": p["member"],
                "generations": p["generations"],
                "run_generations": cfg.generations,
                "seed": cfg.seed,
                "eval_episodes": cfg.eval_episodes,
                "ancestry": [list(gs) for gs in p["ancestry"]],
                "schedule": p["schedule"],
                "pbt_fitness": p["pbt_fitness"],
            },
            fh,
            indent=2,
            sort_keys=True,
        )
        fh.write("\n")


def _intro(p: Mapping[str, Any], run_dir: str, out: str) -> list[str]:
    """What the replay is about to do, and why its result may differ from the run's."""
    cfg: config_mod.Config = p["cfg"]
    saved: Mapping[str, Any] = p["saved"]
    member, generations = p["member"], p["generations"]
    slots = [s for _, s in p["ancestry"]]
    moves = [f"{a}->{b} after gen {g}" for g, (a, b) in enumerate(zip(slots, slots[1:], strict=False)) if a != b]
    lines = [
        f"evo-mpi replay: member {member} of {run_dir} ({p['population']} members), {cfg.env_id}, "
        f"{generations} {'intervals' if p['asynchronous'] else 'generations'} x {cfg.steps_per_generation} steps; "
        "lineage "
        f"{'starts in slot ' + str(slots[0]) + ', moves ' + ', '.join(moves) if moves else 'never moved'}; "
        f"output in {out}"
    ]
    if moves:
        lines.append(
            "evo-mpi replay: the replay's envs are its own: its fitness matches the run's until the lineage first "
            f"moved slots ({moves[0]}), then it continues as an independent run of the same schedule"
        )
    if generations < cfg.generations and not p["asynchronous"]:
        lines.append(
            f"evo-mpi replay: the run is unfinished: replaying the {generations} of {cfg.generations} "
            "generations recorded so far"
        )
    notes = []
    if cfg.seed != saved.get("seed"):
        notes.append(f"seed {cfg.seed} instead of the run's {saved.get('seed')}")
    if cfg.eval_episodes != saved.get("eval_episodes", 0):
        notes.append(f"fitness from {cfg.eval_episodes} eval episodes, the run used {saved.get('eval_episodes', 0)}")
    if notes:
        lines.append("evo-mpi replay: " + "; ".join(notes) + ": expect a different result than the run")
    return lines


if __name__ == "__main__":
    sys.exit(main())
