"""Does PBT find better agents for the same compute? Resumable comparison, not part of CI.

    python scripts/experiment.py [--out results/experiment] [--jobs 2] [--seeds 0,1,2] [--envs ...]
    python scripts/experiment.py --study async [--out results/async] [--seeds 0,1,2]
    python scripts/experiment.py --study share [--out results/share] [--seeds 0,1,2] [--jobs 2]
    python scripts/experiment.py --study hard [--out results/hard] [--seeds 0,1,2]
    python scripts/experiment.py --study arch [--out results/arch] [--seeds 0,1,2] [--jobs 2]

``--study arch`` compares PBT with and without architecture mutation on CartPole-v1 (PPO
with ReLU, population 8 in one process per run, 20,480 env steps per member): both arms
start every member at 64-64 and search the default space; the arch arm adds
``net_arch=arch:1:3:16:256`` and draws hparams or arch mutation with equal weight.

``--study hard`` (needs ``evo-mpi[box2d,zoo]``) runs LunarLander-v3 with PPO, a population of 8
(``mpiexec -n 2 --agents-per-rank 4``, one run at a time), equal env steps per member:
PBT (sync), PBT (``--mode async``), random search, SB3's defaults, and RL Zoo's tuned
hyperparameters read from the installed ``rl_zoo3`` (fixed: 8 members = 8 seeds of them).

``--study share`` compares off-policy populations of 4 (one process each run, ``--jobs`` at a
time) with and without ``--share-experience`` at equal env steps per member: DQN on
CartPole-v1 (50k steps) and SAC on Pendulum-v1 (20k steps), one env per member, with
the steps per member after which the best training fitness first reached a target
(CartPole 195, Pendulum -200).

``--study async`` compares ``--mode sync`` with ``--mode async`` (both PBT with the
defaults) on Pendulum-v1 at equal *total* env steps, each run as ``mpiexec -n 2
--agents-per-rank 2`` (one run at a time: it needs both cores), and records each
run's wall time.

Compares, at equal env steps per member (a population of 4, one process each run):

* ``pbt``     truncation selection + perturb/resample explore (the evo_mpi default),
* ``pb2``     truncation selection + PB2 (GP-UCB) explore,
* ``random``  the same population with exploit off (``--selection none``): random search,
* ``default`` the same population, exploit off, every hyperparameter at SB3's default.

For every run the run's own champion (``champion.json``: the best of the top 4 members
by final training fitness, each evaluated on 10 deterministic episodes with seeds no
training used) is scored on 20 further deterministic episodes from a held-out seed
(10,000 + seed): the "final best fitness" in the table. The member with the best
final training fitness (the pick before champion evaluation) is scored the same way,
for comparison.

Every run is an ordinary evo_mpi run dir, so an interrupted experiment resumes by
re-running the same command: finished runs are skipped, unfinished ones resume
from their last checkpoint, evaluations are cached in ``eval.json``. A finished
run's small outputs (config, history, champion, evaluation; never models) are
copied to ``docs/data/<study>/``, so a later session that has them committed
skips the run and rebuilds the table and figure from them. Writes
``summary.json``, ``table.md`` and ``curves.png`` into OUT.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from evo_mpi.lineage import load, read_history  # noqa: E402
from evo_mpi.records import step_of  # noqa: E402

#: SB3's own PPO defaults, for the searched hyperparameters of the default PPO space.
SB3_PPO_DEFAULTS = {
    "learning_rate": 3e-4,
    "ent_coef": 0.0,
    "clip_range": 0.2,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "vf_coef": 0.5,
    "n_epochs": 10,
    "batch_size": 64,
}

METHODS: dict[str, list[str]] = {
    "pbt": ["--selection", "truncation", "--explore", "perturb"],
    "pb2": ["--selection", "truncation", "--explore", "pb2"],
    "random": ["--selection", "none"],
    "default": ["--selection", "none"]
    + [arg for k, v in SB3_PPO_DEFAULTS.items() for arg in ("--search-space", f"{k}=const:{v}")],
}

ENVS = ("Pendulum-v1", "Acrobot-v1")
POPULATION = 4
#: Generations per env (x STEPS_PER_GENERATION env steps per member): Acrobot needs fewer.
GENERATIONS = {"Pendulum-v1": 36, "Acrobot-v1": 24}
STEPS_PER_GENERATION = 4096
EVAL_EPISODES = 20


def run_dir(out: str, env: str, method: str, seed: int) -> str:
    return os.path.join(out, env, method, f"seed{seed}")


def command(out: str, env: str, method: str, seed: int) -> list[str]:
    """One evo_mpi run: a single process holding the whole population."""
    return [
        sys.executable,
        "-m",
        "evo_mpi.run",
        "--env-id",
        env,
        "--seed",
        str(seed),
        "--agents-per-rank",
        str(POPULATION),
        "--generations",
        str(GENERATIONS.get(env, 36)),
        "--steps-per-generation",
        str(STEPS_PER_GENERATION),
        "--run-dir",
        run_dir(out, env, method, seed),
        *METHODS[method],
    ]


#: Held-out evaluation seeds: 10,000 + the run's seed (training and the champion phase use derived 31-bit seeds).
HELD_OUT_SEED = 10_000


def evaluate(path: str, env: str, seed: int) -> dict[str, Any]:
    """Held-out deterministic return of the run's champion and of its best-training-fitness member (eval.json)."""
    cache = os.path.join(path, "eval.json")
    if os.path.exists(cache):
        with open(cache, encoding="utf-8") as fh:
            cached = dict(json.load(fh))
        if "train_pick_eval_mean" in cached:
            return cached
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    latest = latest_records(path)  # each member's last record (sync: the last generation)
    last = np.array([math.nan if latest[m]["fitness"] is None else latest[m]["fitness"] for m in sorted(latest)])
    by_training = int(np.nanargmax(np.where(np.isfinite(last), last, -np.inf)))
    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        algo = json.load(fh).get("algo", "ppo")
    champion_file = os.path.join(path, "champion.json")
    champion: dict[str, Any] = {}
    if os.path.exists(champion_file):
        with open(champion_file, encoding="utf-8") as fh:
            champion = json.load(fh)
    if HELD_OUT_SEED + seed in champion.get("seeds", []):
        raise SystemExit(f"{path}: the held-out seed {HELD_OUT_SEED + seed} is one of the champion phase's seeds")
    from evo_mpi import algorithms

    def held_out(member: int) -> list[float]:
        model_path = os.path.join(path, "final", f"member_{member:02d}.zip")
        model_class: Any = algorithms.get(algo).model_class()
        model = model_class.load(model_path, device="cpu")
        venv = make_vec_env(env, n_envs=1, seed=HELD_OUT_SEED + seed)
        returns, _ = evaluate_policy(
            model, venv, n_eval_episodes=EVAL_EPISODES, deterministic=True, return_episode_rewards=True
        )
        return [float(r) for r in returns]  # type: ignore[union-attr]

    picked = int(champion.get("member", by_training))
    returns = held_out(picked)
    train_pick = returns if by_training == picked else held_out(by_training)
    result: dict[str, Any] = {
        "member": picked,
        "pick": champion.get("pick", "training_fitness"),
        "train_fitness": float(last[picked]),
        "eval_mean": float(np.mean(returns)),
        "eval_returns": returns,
        "train_pick_member": by_training,
        "train_pick_fitness": float(last[by_training]),
        "train_pick_eval_mean": float(np.mean(train_pick)),
    }
    with open(cache + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(cache + ".tmp", cache)
    return result


#: Each finished run's small outputs are kept here (committed; never models or checkpoints), by study.
DATA = os.path.join(ROOT, "docs", "data")
SMALL_FILES = (
    "config.json",
    "history.jsonl",
    "champion.json",
    "eval.json",
    "study_wall.json",
    "timings/rank_000.jsonl",
)


def kept_dir(study: str, out: str, path: str) -> str:
    """Where run ``path`` (under ``out``) keeps its small outputs: ``docs/data/<study>/<path relative to out>``."""
    return os.path.join(DATA, study, os.path.relpath(path, out))


def keep(study: str, out: str, path: str) -> None:
    """Copy a finished run's small outputs into docs/data, so a later session skips it and can rebuild tables."""
    import shutil

    target = kept_dir(study, out, path)
    for name in SMALL_FILES:
        if os.path.exists(os.path.join(path, name)):
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copyfile(os.path.join(path, name), os.path.join(target, name))


def kept_result(study: str, out: str, path: str) -> dict[str, Any] | None:
    """A run's evaluation from docs/data when a session already finished it (None: not there)."""
    cache = os.path.join(kept_dir(study, out, path), "eval.json")
    if not os.path.exists(cache):
        return None
    with open(cache, encoding="utf-8") as fh:
        result = dict(json.load(fh))
    return result if "train_pick_eval_mean" in result else None


def readable(study: str, out: str, path: str) -> str:
    """The run dir to read history from: the run itself if present, else its kept copy in docs/data."""
    return path if os.path.exists(os.path.join(path, "history.jsonl")) else kept_dir(study, out, path)


def latest_records(path: str) -> dict[int, dict[str, Any]]:
    """Each member's last history record (highest ``generation``: its own interval in async mode)."""
    latest: dict[int, dict[str, Any]] = {}
    for rec in read_history(path):
        if rec["member"] not in latest or step_of(rec) >= step_of(latest[rec["member"]]):
            latest[rec["member"]] = rec
    return latest


def run_logged(path: str, cmd: list[str]) -> None:
    """Run one evo_mpi command (1 torch thread per process), appending its output to ``path.log``."""
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    with open(path + ".log", "a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_vars)
    if proc.returncode != 0:
        raise RuntimeError(f"{path}: evo_mpi exited {proc.returncode}; see {path}.log")


def one(out: str, env: str, method: str, seed: int) -> dict[str, Any]:
    """Run (or resume, or skip) one configuration, then evaluate it."""
    path = run_dir(out, env, method, seed)
    kept = kept_result("methods", out, path)
    if kept is not None:
        return kept
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.time()
    if not os.path.exists(os.path.join(path, "best.zip")):
        run_logged(path, command(out, env, method, seed))
    result = evaluate(path, env, seed)
    keep("methods", out, path)
    print(f"{env:12s} {method:8s} seed {seed}: eval {result['eval_mean']:9.1f} ({time.time() - t0:.0f} s)", flush=True)
    return result


def curves(out: str, env: str, method: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Best training fitness per generation (rows: seeds) and the env steps per member."""
    rows = []
    generations = GENERATIONS.get(env, 36)
    steps = np.arange(1, generations + 1) * STEPS_PER_GENERATION
    for seed in seeds:
        hist, _ = load(readable("methods", out, run_dir(out, env, method, seed)))
        fit = np.where(np.isfinite(hist.fitness), hist.fitness, -np.inf).max(axis=1)
        rows.append(fit[:generations])
    return steps, np.array(rows)


def plot(out: str, envs: list[str], seeds: list[int]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(envs), 4))
    FigureCanvasAgg(fig)
    for i, env in enumerate(envs):
        ax = fig.add_subplot(1, len(envs), i + 1)
        for method in METHODS:
            steps, rows = curves(out, env, method, seeds)
            mean, sd = rows.mean(axis=0), rows.std(axis=0)
            ax.plot(steps, mean, label=method)
            ax.fill_between(steps, mean - sd, mean + sd, alpha=0.15)
        ax.set_title(f"{env}: best member's training return")
        ax.set_xlabel("env steps per member")
        ax.set_ylabel(f"mean +- sd over {len(seeds)} seeds")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=110)
    return path


# -- the async study --------------------------------------------------------------------------------

MODES = ("sync", "async")
ASYNC_ENV = "Pendulum-v1"


def mode_run(out: str, mode: str, seed: int) -> dict[str, Any]:
    """Run (or resume, or skip) one sync or async Pendulum run on 2 ranks, then evaluate it."""
    path = os.path.join(out, ASYNC_ENV, mode, f"seed{seed}")
    result = kept_result("async", out, path)
    if result is None:
        result = _mode_run(out, path, mode, seed)
    with open(os.path.join(readable("async", out, path), "study_wall.json"), encoding="utf-8") as fh:
        return {**result, "wall_s": json.load(fh)["wall_s"]}


def _mode_run(out: str, path: str, mode: str, seed: int) -> dict[str, Any]:
    """Run (or resume) one sync or async run, evaluate it and keep its small outputs."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wall_file = os.path.join(path, "study_wall.json")
    if not os.path.exists(os.path.join(path, "best.zip")):
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "mpiexec"),
            "-n",
            "2",
            *command(out, ASYNC_ENV, "pbt", seed),
        ]
        cmd[cmd.index("--agents-per-rank") + 1] = "2"
        cmd[cmd.index("--run-dir") + 1] = path
        cmd += ["--mode", mode]
        env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
        t0 = time.time()
        with open(path + ".log", "a", encoding="utf-8") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_vars)
        if proc.returncode != 0:
            raise RuntimeError(f"{path}: evo_mpi exited {proc.returncode}; see {path}.log")
        if not os.path.exists(wall_file):  # an interrupted and resumed run records its last launch only
            with open(wall_file, "w", encoding="utf-8") as fh:
                json.dump({"wall_s": time.time() - t0}, fh)
    result = evaluate(path, ASYNC_ENV, seed)
    keep("async", out, path)
    print(f"{ASYNC_ENV} {mode:5s} seed {seed}: eval {result['eval_mean']:8.1f}", flush=True)
    return result


def population_curve(path: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best latest fitness against mean env steps per member and against wall seconds, on ``grid`` steps."""
    latest: dict[int, dict[str, Any]] = {}
    steps, best = [], []
    for rec in read_history(path):
        latest[rec["member"]] = rec
        fits = [r["fitness"] for r in latest.values() if r["fitness"] is not None]
        steps.append(sum(r["timesteps"] for r in latest.values()) / POPULATION)
        best.append(max(fits) if fits else -np.inf)
    return grid, np.interp(grid, steps, best, left=np.nan)


def async_study(out: str, seeds: list[int]) -> int:
    results = {(mode, seed): mode_run(out, mode, seed) for seed in seeds for mode in MODES}
    lines = [
        "| mode | champion's held-out return (mean +- sd) | per seed | wall s (mean) |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        values = [results[(mode, s)]["eval_mean"] for s in seeds]
        walls = [results[(mode, s)]["wall_s"] for s in seeds]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        lines.append(
            f"| {mode} | {np.mean(values):.1f} +- {sd:.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
            f"{np.mean(walls):.0f} |"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(STEPS_PER_GENERATION, GENERATIONS[ASYNC_ENV] * STEPS_PER_GENERATION, 60)
    for mode in MODES:
        paths = [readable("async", out, os.path.join(out, ASYNC_ENV, mode, f"seed{s}")) for s in seeds]
        rows = np.array([population_curve(path, grid)[1] for path in paths])
        mean, sd = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
        ax.plot(grid, mean, label=mode)
        ax.fill_between(grid, mean - sd, mean + sd, alpha=0.15)
    ax.set_title(f"{ASYNC_ENV}, 2 ranks x 2 members: best latest return", fontsize=10)
    ax.set_xlabel("env steps per member (population total / 4)")
    ax.set_ylabel(f"mean +- sd over {len(seeds)} seeds")
    ax.legend()
    return write_study(out, "async", fig, lines)


def run_all(run: Any, todo: list[tuple[Any, ...]], jobs: int) -> dict[tuple[Any, ...], dict[str, Any]]:
    """``run(*job)`` for every job, ``jobs`` at a time (each launches its own processes): job -> result."""
    results: dict[tuple[Any, ...], dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, *job): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results


def study_figure(width: float) -> Any:
    """A matplotlib figure for a study's curves, drawn off-screen."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.8))
    FigureCanvasAgg(fig)
    return fig


def write_study(out: str, name: str, fig: Any, lines: list[str]) -> int:
    """Save a study's figure as OUT/<name>_curves.png and its table as OUT/<name>_table.md, print the table."""
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}_curves.png"), dpi=110)
    with open(os.path.join(out, f"{name}_table.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


#: --study share: off-policy runs, a population of 4 in one process each, with and without sharing.
SHARE_RUNS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "algo": "dqn", "target": 195.0, "generations": 25, "steps": 2000,
        "args": ["--algo", "dqn", "--n-envs", "1"],
    },
    "Pendulum-v1": {
        "algo": "sac", "target": -200.0, "generations": 20, "steps": 1000,
        "args": ["--algo", "sac", "--n-envs", "1"],
    },
}  # fmt: skip
SHARE_MODES = ("own", "shared")


def share_run(out: str, env: str, mode: str, seed: int) -> dict[str, Any]:
    """Run (or resume, or skip) one off-policy run with or without --share-experience, then evaluate it."""
    spec = SHARE_RUNS[env]
    path = os.path.join(out, env, mode, f"seed{seed}")
    result = kept_result("share", out, path)
    if result is None:
        result = _share_run(out, path, env, mode, seed)
    history = read_history(readable("share", out, path))
    return {**result, "first_target_steps": first_reach(history, spec["target"], spec["steps"])}


def _share_run(out: str, path: str, env: str, mode: str, seed: int) -> dict[str, Any]:
    """Run (or resume) one off-policy run, evaluate it and keep its small outputs."""
    spec = SHARE_RUNS[env]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.time()
    if not os.path.exists(os.path.join(path, "best.zip")):
        cmd = [
            sys.executable, "-m", "evo_mpi.run", "--env-id", env, "--seed", str(seed),
            "--agents-per-rank", str(POPULATION), "--generations", str(spec["generations"]),
            "--steps-per-generation", str(spec["steps"]), "--run-dir", path, *spec["args"],
        ]  # fmt: skip
        if mode == "shared":
            cmd.append("--share-experience")
        run_logged(path, cmd)
    result = evaluate(path, env, seed)
    keep("share", out, path)
    print(f"{env:12s} {mode:6s} seed {seed}: eval {result['eval_mean']:8.1f} ({time.time() - t0:.0f} s)", flush=True)
    return result


def first_reach(history: list[dict[str, Any]], target: float, steps: int) -> int | None:
    """Env steps per member after which the best member's training fitness first reached ``target``."""
    for g in sorted({step_of(r) for r in history}):
        fits = [r["fitness"] for r in history if step_of(r) == g and r["fitness"] is not None]
        if fits and max(fits) >= target:
            return (g + 1) * steps
    return None


def best_curve(path: str) -> np.ndarray:
    """Best training fitness per generation."""
    history = read_history(path)
    gens = sorted({step_of(r) for r in history})
    return np.array([max((r["fitness"] for r in history if step_of(r) == g and r["fitness"] is not None),
                         default=np.nan) for g in gens])  # fmt: skip


def share_study(out: str, seeds: list[int], jobs: int) -> int:
    todo = [(out, env, mode, seed) for env in SHARE_RUNS for seed in seeds for mode in SHARE_MODES]
    results = {job[1:]: result for job, result in run_all(share_run, todo, jobs).items()}
    lines = [
        "| env (algo) | replay | champion's held-out return (mean +- sd) | per seed "
        "| steps/member to target (per seed) |",
        "|---|---|---|---|---|",
    ]
    fig = study_figure(10)
    for i, (env, spec) in enumerate(SHARE_RUNS.items()):
        ax = fig.add_subplot(1, len(SHARE_RUNS), i + 1)
        steps = np.arange(1, spec["generations"] + 1) * spec["steps"]
        for mode in SHARE_MODES:
            values = [results[(env, mode, s)]["eval_mean"] for s in seeds]
            reach = [results[(env, mode, s)]["first_target_steps"] for s in seeds]
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            lines.append(
                f"| {env} ({spec['algo']}) | {mode} | {np.mean(values):.1f} +- {sd:.1f} | "
                f"{', '.join(f'{v:.1f}' for v in values)} | {', '.join('-' if r is None else str(r) for r in reach)} |"
            )
            rows = np.array(
                [best_curve(readable("share", out, os.path.join(out, env, mode, f"seed{s}"))) for s in seeds]
            )
            mean, low, high = np.nanmean(rows, axis=0), np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
            ax.plot(steps, mean, label=mode)
            ax.fill_between(steps, low, high, alpha=0.15)
        ax.axhline(spec["target"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{env}, {spec['algo'].upper()}, 4 members: best training return", fontsize=9)
        ax.set_xlabel("env steps per member")
        ax.set_ylabel(f"mean (band: min-max) over {len(seeds)} seeds", fontsize=8)
        ax.legend(fontsize=8)
    return write_study(out, "share", fig, lines)


# -- --study hard: LunarLander-v3, population 8, against RL Zoo's tuned hyperparameters -----------------------

HARD_ENV = "LunarLander-v3"
HARD_RANKS, HARD_PER_RANK = 2, 4  # population 8: mpiexec -n 2 --agents-per-rank 4, one run at a time
#: 98,304 env steps per member (6 generations): 3 seeds x 5 methods took 64 min here (2.5-5 min a run,
#: one 10 min beside a test run). 12 generations (~4 h) did not finish inside one session, and a session's
#: processes and results/ do not outlive it.
HARD_GENERATIONS, HARD_STEPS = 6, 16384
#: Env layout of every method: the zoo's for this env (16 envs x 1024 steps per rollout).
HARD_LAYOUT = ["--n-envs", "16", "--n-steps", "1024"]
HARD_METHODS = ("pbt", "pbt-async", "random", "default", "zoo")


def zoo_hyperparams(algo: str, env: str) -> dict[str, Any]:
    """RL Zoo's tuned hyperparameters for ``env``, read from the installed rl_zoo3 package's YAML."""
    try:
        import rl_zoo3
        import yaml
    except ImportError as exc:
        raise SystemExit(f"--study hard needs RL Zoo's files: pip install 'evo-mpi[zoo]' ({exc})") from None
    path = os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", f"{algo}.yml")
    with open(path, encoding="utf-8") as fh:
        table = yaml.safe_load(fh)
    return dict(table[env])


def zoo_args(algo: str, env: str) -> list[str]:
    """evo_mpi options that fix every searched hyperparameter at the zoo's value (SB3's default where it sets none)."""
    zoo = zoo_hyperparams(algo, env)
    args = ["--n-envs", str(int(zoo.pop("n_envs", 1)))]
    if "n_steps" in zoo:
        args += ["--n-steps", str(int(zoo.pop("n_steps")))]
    normalize = zoo.pop("normalize", False)
    if normalize not in (False, True):
        raise SystemExit(f"zoo {algo} {env}: normalize={normalize!r} has no evo_mpi equivalent")
    if normalize:
        args.append("--normalize")
    zoo.pop("n_timesteps", None)  # every method gets the same budget
    if zoo.pop("policy", "MlpPolicy") != "MlpPolicy":
        raise SystemExit(f"zoo {algo} {env}: only MlpPolicy is supported here")
    fixed = dict(SB3_PPO_DEFAULTS) if algo == "ppo" else {}
    for key, value in zoo.items():
        if key not in SB3_PPO_DEFAULTS or isinstance(value, str):
            raise SystemExit(f"zoo {algo} {env}: {key}={value!r} has no evo_mpi equivalent here")
        fixed[key] = value
    return args + [a for k, v in fixed.items() for a in ("--search-space", f"{k}=const:{v}")]


def hard_command(out: str, method: str, seed: int, generations: int = HARD_GENERATIONS) -> list[str]:
    path = os.path.join(out, HARD_ENV, method, f"seed{seed}")
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(HARD_RANKS),
        sys.executable, "-m", "evo_mpi.run", "--env-id", HARD_ENV, "--seed", str(seed),
        "--agents-per-rank", str(HARD_PER_RANK), "--generations", str(generations),
        "--steps-per-generation", str(HARD_STEPS), "--run-dir", path,
    ]  # fmt: skip
    if method == "zoo":
        return cmd + ["--selection", "none", *zoo_args("ppo", HARD_ENV)]
    cmd += HARD_LAYOUT
    if method == "pbt-async":
        return cmd + [*METHODS["pbt"], "--mode", "async"]
    return cmd + METHODS[method.removesuffix("-async")]


def hard_run(out: str, method: str, seed: int, generations: int = HARD_GENERATIONS) -> dict[str, Any]:
    """Run (or resume, or skip) one LunarLander run, then evaluate the member picked by training fitness."""
    path = os.path.join(out, HARD_ENV, method, f"seed{seed}")
    kept = kept_result("hard", out, path)
    if kept is not None:
        return kept
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(os.path.join(path, "best.zip")):
        env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
        t0 = time.time()
        with open(path + ".log", "a", encoding="utf-8") as log:
            cmd = hard_command(out, method, seed, generations)
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_vars)
        if proc.returncode != 0:
            raise RuntimeError(f"{path}: evo_mpi exited {proc.returncode}; see {path}.log")
        with open(os.path.join(path, "study_wall.json"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"launch_wall_s": time.time() - t0}) + "\n")
    result = evaluate(path, HARD_ENV, seed)
    keep("hard", out, path)
    print(f"{HARD_ENV} {method:9s} seed {seed}: eval {result['eval_mean']:7.1f}", flush=True)
    return result


def hard_curve(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(env steps per member, wall seconds since training began, best latest training fitness), per record."""
    history = read_history(path)
    if history and "seen" in history[0]:  # async: every publication
        latest: dict[int, dict[str, Any]] = {}
        steps, wall, best = [], [], []
        for rec in history:
            latest[rec["member"]] = rec
            fits = [r["fitness"] for r in latest.values() if r["fitness"] is not None]
            steps.append(sum(r["timesteps"] for r in latest.values()) / (HARD_RANKS * HARD_PER_RANK))
            wall.append(rec["wall"])
            best.append(max(fits) if fits else np.nan)
        return np.array(steps), np.array(wall), np.array(best)
    with open(os.path.join(path, "timings", "rank_000.jsonl"), encoding="utf-8") as fh:
        ends = {r["generation"]: r["unix"] - r["first_train_unix"] for r in map(json.loads, fh) if "generation" in r}
    gens = sorted({step_of(r) for r in history})
    best = [max((r["fitness"] for r in history if step_of(r) == g and r["fitness"] is not None), default=np.nan)
            for g in gens]  # fmt: skip
    return np.array([(g + 1) * HARD_STEPS for g in gens]), np.array([ends.get(g, np.nan) for g in gens]), np.array(best)


def hard_study(out: str, seeds: list[int], generations: int = HARD_GENERATIONS) -> int:
    results = {(m, s): hard_run(out, m, s, generations) for s in seeds for m in HARD_METHODS}
    lines = [
        f"| method | held-out return of the champion (mean +- sd, {len(seeds)} seeds) | per seed "
        "| held-out return of the best-training-fitness member (per seed) | wall min (mean) |",
        "|---|---|---|---|---|",
    ]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    by_steps, by_wall = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    grid = np.linspace(HARD_STEPS, generations * HARD_STEPS, 60)
    for method in HARD_METHODS:
        values = [results[(method, s)]["eval_mean"] for s in seeds]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        curves = [hard_curve(readable("hard", out, os.path.join(out, HARD_ENV, method, f"seed{s}"))) for s in seeds]
        walls = [float(np.nanmax(c[1])) for c in curves]
        old = [results[(method, s)]["train_pick_eval_mean"] for s in seeds]
        per_seed, old_seeds = ", ".join(f"{v:.1f}" for v in values), ", ".join(f"{v:.1f}" for v in old)
        lines.append(f"| {method} | {np.mean(values):.1f} +- {sd:.1f} | {per_seed} | "
                     f"{np.mean(old):.1f} ({old_seeds}) | {np.mean(walls) / 60:.1f} |")  # fmt: skip
        rows = np.array([np.interp(grid, c[0], c[2], left=np.nan) for c in curves])
        by_steps.plot(grid, np.nanmean(rows, axis=0), label=method)
        wgrid = np.linspace(0, max(walls), 60)
        rows = np.array([np.interp(wgrid, c[1], c[2], left=np.nan, right=np.nan) for c in curves])
        by_wall.plot(wgrid / 60, np.nanmean(rows, axis=0), label=method)
    by_steps.set_xlabel("env steps per member")
    by_wall.set_xlabel("wall minutes since training began (2 ranks x 4 members)")
    for ax in (by_steps, by_wall):
        ax.set_ylabel(f"best training return, mean of {len(seeds)} seeds", fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(f"{HARD_ENV}, PPO, population 8", fontsize=10)
    return write_study(out, "hard", fig, lines)


# -- --study arch: PBT with and without architecture mutation ----------------------------------------------

ARCH_ENV = "CartPole-v1"
#: 20,480 env steps per member (4 envs x 128 steps per rollout, two rollouts a generation): at 49,152 steps
#: every member of both arms had reached CartPole's ceiling of 500, which can tell nothing apart.
ARCH_GENERATIONS, ARCH_STEPS = 20, 1024
ARCH_LAYOUT = ["--n-envs", "4", "--n-steps", "128"]
ARCH_POPULATION = 8
ARCH_PRIOR = "arch:1:3:16:256"
#: The best member's training fitness this high counts as solved (CartPole's ceiling is 500).
ARCH_TARGET = 475.0
#: Both arms: PPO with ReLU (an appended layer is exact only after ReLU), the default space, all starting at 64-64.
ARCH_MODES: dict[str, list[str]] = {
    "fixed": ["--search-space", "activation_fn=const:relu"],
    "arch": [
        "--search-space", "activation_fn=const:relu", "--search-space", f"net_arch={ARCH_PRIOR}",
        "--mutation-probs", "hparams=1,arch=1",
    ],
}  # fmt: skip


def arch_run(out: str, mode: str, seed: int) -> dict[str, Any]:
    """Run (or resume, or skip) one PBT run with or without architecture mutation, then evaluate it."""
    path = os.path.join(out, ARCH_ENV, mode, f"seed{seed}")
    result = kept_result("arch", out, path)
    if result is None:
        result = _arch_run(out, path, mode, seed)
    latest = latest_records(readable("arch", out, path))
    return {**result, "final_arch": latest[result["member"]]["hparams"].get("net_arch", "64-64")}


def _arch_run(out: str, path: str, mode: str, seed: int) -> dict[str, Any]:
    """Run (or resume) one arch-study run, evaluate it and keep its small outputs."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.time()
    if not os.path.exists(os.path.join(path, "best.zip")):
        cmd = [
            sys.executable, "-m", "evo_mpi.run", "--env-id", ARCH_ENV, "--seed", str(seed),
            "--agents-per-rank", str(ARCH_POPULATION), "--generations", str(ARCH_GENERATIONS),
            "--steps-per-generation", str(ARCH_STEPS), "--run-dir", path, *ARCH_LAYOUT, *ARCH_MODES[mode],
        ]  # fmt: skip
        run_logged(path, cmd)
    result = evaluate(path, ARCH_ENV, seed)
    keep("arch", out, path)
    print(f"{ARCH_ENV} {mode:5s} seed {seed}: eval {result['eval_mean']:7.1f} ({time.time() - t0:.0f} s)", flush=True)
    return result


def arch_study(out: str, seeds: list[int], jobs: int) -> int:
    todo = [(out, mode, seed) for seed in seeds for mode in ARCH_MODES]
    results = {job[1:]: result for job, result in run_all(arch_run, todo, jobs).items()}
    lines = [
        "| arm | champion's held-out return (mean +- sd) | per seed | net_arch of the champion (per seed) "
        f"| steps/member to {ARCH_TARGET:.0f} (per seed) |",
        "|---|---|---|---|---|",
    ]
    fig = study_figure(11)
    ax = fig.add_subplot(1, 2, 1)
    steps = np.arange(1, ARCH_GENERATIONS + 1) * ARCH_STEPS
    for mode in ARCH_MODES:
        values = [results[(mode, s)]["eval_mean"] for s in seeds]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        archs = ", ".join(results[(mode, s)]["final_arch"] for s in seeds)
        paths = [readable("arch", out, os.path.join(out, ARCH_ENV, mode, f"seed{s}")) for s in seeds]
        reach = [first_reach(read_history(path), ARCH_TARGET, ARCH_STEPS) for path in paths]
        lines.append(
            f"| {mode} | {np.mean(values):.1f} +- {sd:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {archs} | "
            f"{', '.join('-' if r is None else str(r) for r in reach)} |"
        )
        rows = np.array([best_curve(path) for path in paths])
        ax.plot(steps, np.nanmean(rows, axis=0), label=mode)
        ax.fill_between(steps, np.nanmin(rows, axis=0), np.nanmax(rows, axis=0), alpha=0.15)
    ax.set_title(f"{ARCH_ENV}, PPO (ReLU), {ARCH_POPULATION} members: best training return", fontsize=9)
    ax.set_xlabel("env steps per member")
    ax.set_ylabel(f"mean (band: min-max) over {len(seeds)} seeds", fontsize=8)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    markers = {1: "v", 2: "o", 3: "^"}
    for i, s in enumerate(seeds):
        history = read_history(readable("arch", out, os.path.join(out, ARCH_ENV, "arch", f"seed{s}")))
        for depth, marker in markers.items():
            points = [
                (r["timesteps"] + (i - 1) * ARCH_STEPS * 0.12, sum(int(n) for n in r["hparams"]["net_arch"].split("-")))
                for r in history
                if len(r["hparams"]["net_arch"].split("-")) == depth
            ]
            if points:
                x, y = zip(*points, strict=True)
                ax.scatter(x, y, s=12, marker=marker, color=f"C{i}", alpha=0.6,
                           label=f"seed {s}, {depth} layer(s)")  # fmt: skip
    ax.axhline(128, color="grey", linestyle=":", linewidth=1)
    ax.set_title("arch arm: every member's architecture per generation (start 64-64)", fontsize=9)
    ax.set_xlabel("env steps per member")
    ax.set_ylabel("hidden nodes (sum over layers)", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    return write_study(out, "arch", fig, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "experiment"))
    parser.add_argument("--jobs", type=int, default=2, help="Runs at the same time (one process each).")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--envs", default=",".join(ENVS))
    parser.add_argument("--study", choices=("methods", "async", "share", "hard", "arch"), default="methods")
    parser.add_argument(
        "--hard-generations", type=int, default=HARD_GENERATIONS, help="--study hard: generations (a smoke test: 2)"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.study == "async":
        return async_study(args.out, seeds)
    if args.study == "share":
        return share_study(args.out, seeds, args.jobs)
    if args.study == "hard":
        return hard_study(args.out, seeds, args.hard_generations)
    if args.study == "arch":
        return arch_study(args.out, seeds, args.jobs)
    envs = args.envs.split(",")
    jobs = [(args.out, env, method, seed) for env in envs for seed in seeds for method in METHODS]
    results = {job[1:]: result for job, result in run_all(one, jobs, args.jobs).items()}
    summary: dict[str, Any] = {"population": POPULATION, "generations": GENERATIONS}
    summary["steps_per_member"] = {env: GENERATIONS.get(env, 36) * STEPS_PER_GENERATION for env in envs}
    lines = [
        "| env | method | held-out return of the champion (mean +- sd) | per seed "
        "| best-training-fitness member instead (mean; per seed) |",
        "|---|---|---|---|---|",
    ]
    for env in envs:
        for method in METHODS:
            values = [results[(env, method, s)]["eval_mean"] for s in seeds]
            summary[f"{env}/{method}"] = values
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            per_seed = ", ".join(f"{v:.1f}" for v in values)
            old = [results[(env, method, s)]["train_pick_eval_mean"] for s in seeds]
            old_txt = f"{np.mean(old):.1f}; " + ", ".join(f"{v:.1f}" for v in old)
            lines.append(f"| {env} | {method} | {np.mean(values):.1f} +- {sd:.1f} | {per_seed} | {old_txt} |")
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(plot(args.out, envs, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
