"""Does PBT make RL Zoo's tuned settings better? A study that outlives one sitting (not part of CI).

    python scripts/zoo_study.py run --env LunarLander-v3 [--seeds 0,1,2] [--arms pbt-zoo,zoo] [--commit]
    python scripts/zoo_study.py report        # table and figure from docs/data/zoo alone, in seconds

Needs ``evo-mpi[mpich,box2d,zoo]``. Population 8 as ``mpiexec -n 2 --agents-per-rank 4``, one run at a
time, the same env steps per member for every arm. Arms:

* ``default``       SB3's defaults for every searched hyperparameter (exploit off), the zoo's env layout;
* ``zoo``           the zoo's settings for all 8 members (``--zoo``, every searched value fixed; exploit off);
* ``random-zoo``    random search around the zoo (``--zoo --selection none``: member 0 at the zoo's values);
* ``pbt``           PBT from PPO's default search space, the zoo's env layout;
* ``pbt-zoo``       PBT from the zoo (``--zoo``);
* ``pb2-zoo``       PB2 from the zoo (``--zoo --explore pb2``);
* ``pbt-async-zoo`` async PBT from the zoo (``--zoo --mode async``).

Protocol (Eimer, Lindauer and Raileanu, ICML 2023): tuning and test seeds are apart. Each run's own
final pick (``best.zip``) is scored on 50 deterministic episodes, each reset with one of
:data:`TEST_SEEDS`, which no run uses for training, fitness or its final pick (checked against
``champion.json``); every member's final model is scored on the first 10 of them, to measure how well
training fitness predicts the test score.

A finished run keeps its small outputs under ``docs/data/zoo/<env>/<arm>/seed<k>/`` (config,
history, champion, timings and ``summary.json``; never models or checkpoints); with ``--commit``
the script commits them at once, so a later session skips every run whose ``summary.json`` is
committed and resumes an unfinished one from its checkpoint under ``--out``. ``summary.json`` names
the commit of evo_mpi the run's first launch ran (``commit``; runs before 2026-12-05 lack it), so
arms run before and after a change of defaults can be told apart.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: The repository the small outputs go to (``--repo``: a study may run its code from a worktree of a fixed commit).
REPO = ROOT
DATA = os.path.join(REPO, "docs", "data", "zoo")
FIGURE = os.path.join(REPO, "docs", "img", "zoo_study.png")
RANKS, PER_RANK = 2, 4
ARMS = ("default", "zoo", "random-zoo", "pbt", "pbt-zoo", "pb2-zoo", "pbt-async-zoo")
#: Per env: generations x steps per generation (env steps per member), the seeds, and RL Zoo's published
#: score for PPO (benchmark.md of DLR-RM/rl-baselines3-zoo: mean and sd of the trained agent, its budget).
ENVS: dict[str, dict[str, Any]] = {
    # 19 x 16,384 = 311,296 steps per member (the old study: 98,304), 18 exploits
    "LunarLander-v3": {"generations": 19, "steps": 16384, "seeds": (0, 1, 2),
                       "published": (242.119, 31.823, "LunarLander-v2, 1M steps")},
    # 25 x 4,096 = 102,400 steps per member, 24 exploits
    "Acrobot-v1": {"generations": 25, "steps": 4096, "seeds": (0, 1, 2, 3, 4),
                   "published": (-73.506, 18.201, "Acrobot-v1, 1M steps")},
}  # fmt: skip
#: Test episodes' reset seeds: far above the seeds evo_mpi derives for training (checked per run).
TEST_SEEDS = tuple(range(1_000_000_000, 1_000_000_050))
MEMBER_TEST_EPISODES = 10
SMALL_FILES = ("config.json", "history.jsonl", "champion.json", "timings/rank_000.jsonl", "summary.json")


def zoo_fixed(env: str) -> list[str]:
    """``--search-space NAME=const:V`` for every hyperparameter ``--zoo`` searches, at the zoo's value."""
    from evo_mpi.config import Config
    from evo_mpi.config.zoo import resolve

    start = resolve(Config(env_id=env, zoo=True), {"env_id", "zoo"}).start_hparams
    return [a for k, v in sorted(start.items()) for a in ("--search-space", f"{k}=const:{v}")]


def zoo_layout(env: str) -> list[str]:
    """The zoo's env layout (n_envs, n_steps) and nothing else of it."""
    from evo_mpi.config.zoo import entry

    zoo = entry("ppo", env)
    return ["--n-envs", str(zoo["n_envs"]), "--n-steps", str(zoo["n_steps"])]


def sb3_fixed() -> list[str]:
    """Every hyperparameter of PPO's default space fixed at SB3's default."""
    from evo_mpi import algorithms
    from evo_mpi.config.zoo import sb3_defaults

    ppo = algorithms.get("ppo")
    defaults = sb3_defaults(ppo)
    return [a for k in sorted(ppo.default_space) for a in ("--search-space", f"{k}=const:{defaults[k]}")]


def arm_args(env: str, arm: str) -> list[str]:
    if arm == "default":
        return [*zoo_layout(env), "--selection", "none", *sb3_fixed()]
    if arm == "pbt":
        return zoo_layout(env)
    extra = {
        "zoo": ["--selection", "none", *zoo_fixed(env)],
        "random-zoo": ["--selection", "none"],
        "pbt-zoo": [],
        "pb2-zoo": ["--explore", "pb2"],
        "pbt-async-zoo": ["--mode", "async"],
    }
    return ["--zoo", *extra[arm]]


def command(env: str, arm: str, seed: int, path: str) -> list[str]:
    spec = ENVS[env]
    return [
        os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(RANKS),
        sys.executable, "-m", "evo_mpi.run", "--env-id", env, "--seed", str(seed),
        "--agents-per-rank", str(PER_RANK), "--generations", str(spec["generations"]),
        "--steps-per-generation", str(spec["steps"]), "--run-dir", path, *arm_args(env, arm),
    ]  # fmt: skip


# -- scoring on the test seeds ---------------------------------------------------------------------


def test_returns(path: str, model_file: str, env: str, seeds: tuple[int, ...]) -> list[float]:
    """Deterministic returns of ``model_file`` (with its VecNormalize statistics, if any), one episode per seed."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    model = PPO.load(os.path.join(path, model_file), device="cpu")
    stats_file = os.path.join(path, model_file.removesuffix(".zip") + ".vecnormalize.pkl")
    stats = VecNormalize.load(stats_file, DummyVecEnv([lambda: gym.make(env)])) if os.path.exists(stats_file) else None
    returns = []
    game = gym.make(env)
    for seed in seeds:
        obs, _ = game.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(stats.normalize_obs(obs) if stats is not None else obs, deterministic=True)
            obs, reward, terminated, truncated, _ = game.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    game.close()
    return returns


def score(path: str, env: str) -> dict[str, Any]:
    """The run's final pick on all test seeds and every member on the first few, with their training fitness."""
    import torch

    torch.set_num_threads(1)
    with open(os.path.join(path, "champion.json"), encoding="utf-8") as fh:
        champion = json.load(fh)
    if set(TEST_SEEDS) & set(champion.get("seeds", [])):
        raise SystemExit(f"{path}: a test seed is one of the final pick's seeds")
    latest: dict[int, dict[str, Any]] = {}
    with open(os.path.join(path, "history.jsonl"), encoding="utf-8") as fh:
        for rec in map(json.loads, fh):
            latest[rec["member"]] = rec  # file order: each member's last record
    returns = test_returns(path, "best.zip", env, TEST_SEEDS)
    members = []
    for m in sorted(latest):
        model = f"final/member_{m:02d}.zip"
        if os.path.exists(os.path.join(path, model)):
            got = test_returns(path, model, env, TEST_SEEDS[:MEMBER_TEST_EPISODES])
            members.append({"member": m, "train_fitness": latest[m]["fitness"], "test_mean": float(np.mean(got))})
    return {
        "member": champion["member"],
        "test_mean": float(np.mean(returns)),
        "test_sd": float(np.std(returns)),
        "test_returns": returns,
        "members": members,
    }


# -- running ------------------------------------------------------------------------------------------


def kept(env: str, arm: str, seed: int) -> str:
    return os.path.join(DATA, env, arm, f"seed{seed}")


def launch(path: str, cmd: list[str], child: dict[str, str], cwd: str | None = None) -> bool:
    """Run one evo_mpi command into run dir ``path`` (output to ``path.log``), adding its wall to launch_wall.jsonl."""
    t0 = time.time()
    with open(path + ".log", "a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child, cwd=cwd)
    if proc.returncode != 0:
        print(f"{path}: evo_mpi exited {proc.returncode}; see {path}.log", flush=True)
        return False
    with open(os.path.join(path, "launch_wall.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"wall_s": time.time() - t0}) + "\n")
    return True


def launch_wall(path: str) -> float:
    """Seconds of every launch that finished (a launch stopped from outside writes none)."""
    with open(os.path.join(path, "launch_wall.jsonl"), encoding="utf-8") as fh:
        return sum(json.loads(line)["wall_s"] for line in fh)


def keep(path: str, target: str, summary: dict[str, Any], files: tuple[str, ...], repo: str, message: str) -> None:
    """Write ``summary.json``, copy the run's small outputs to ``target`` and, with a message, commit them."""
    with open(os.path.join(path, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    for name in files:
        if os.path.exists(os.path.join(path, name)):
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copyfile(os.path.join(path, name), os.path.join(target, name))
    if message:
        for _ in range(30):  # another git command may hold the index for a moment
            subprocess.run(["git", "add", "--", target], cwd=repo, capture_output=True)
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", target], cwd=repo, capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(2)


def save_report(fig: Any, figure: str, data: str, lines: list[str]) -> None:
    """Write the figure and ``table.md``, and print the table."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(figure), exist_ok=True)
    fig.savefig(figure, dpi=100)
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "table.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    print(f"figure: {os.path.relpath(figure, ROOT)}")


def run_one(out: str, env: str, arm: str, seed: int, commit: bool) -> None:
    """Run (or resume) one run, score it, keep its small outputs (and commit them)."""
    target = kept(env, arm, seed)
    if os.path.exists(os.path.join(target, "summary.json")):
        return
    path = os.path.join(out, env, arm, f"seed{seed}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    child = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    code = path + ".commit"  # beside the run dir, as its log is
    if not os.path.exists(code):  # the code of the first launch; a resume after a code change keeps it
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        with open(code, "w", encoding="utf-8") as fh:
            fh.write(head.stdout.strip() or "unknown")
    if not os.path.exists(os.path.join(path, "best.zip")) and not launch(path, command(env, arm, seed, path), child):
        raise SystemExit(1)
    wall = launch_wall(path)
    with open(code, encoding="utf-8") as fh:
        ran = fh.read().strip()
    summary = {"env": env, "arm": arm, "seed": seed, "generations": ENVS[env]["generations"],
               "steps_per_member": ENVS[env]["generations"] * ENVS[env]["steps"], "population": RANKS * PER_RANK,
               "launch_wall_s": wall, "commit": ran,
               **score(path, env)}  # fmt: skip
    message = f"zoo study: {env} {arm} seed {seed} (small outputs; test {summary['test_mean']:.1f})"
    keep(path, target, summary, SMALL_FILES, REPO, message if commit else "")
    print(f"{env} {arm:14s} seed {seed}: test {summary['test_mean']:7.1f} ({wall / 60:.1f} min)", flush=True)


# -- the report: from docs/data/zoo alone -----------------------------------------------------------


def load(env: str) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        for file in sorted(glob.glob(os.path.join(DATA, env, arm, "seed*", "summary.json"))):
            with open(file, encoding="utf-8") as fh:
                runs.setdefault(arm, []).append(json.load(fh))
    return runs


@functools.cache  # the report reads a run's history for its curve, lineages and final pick: parse it once
def history(env: str, arm: str, seed: int) -> tuple[dict[str, Any], ...]:
    with open(os.path.join(kept(env, arm, seed), "history.jsonl"), encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def curve(env: str, arm: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(env steps per member, best training fitness of the population's latest records), per record."""
    latest: dict[int, dict[str, Any]] = {}
    steps, best = [], []
    for rec in history(env, arm, seed):
        latest[rec["member"]] = rec
        fits = [r["fitness"] for r in latest.values() if r["fitness"] is not None]
        steps.append(sum(r["timesteps"] for r in latest.values()) / (RANKS * PER_RANK))
        best.append(max(fits) if fits else np.nan)
    return np.array(steps), np.array(best)


def lineages(env: str, arm: str, seed: int) -> list[int]:
    """Distinct founding members among the population after each generation (interval), from ``parent``."""
    root = list(range(RANKS * PER_RANK))
    counts = []
    for rec in history(env, arm, seed):
        if rec.get("parent") is not None:
            root[rec["member"]] = root[rec["parent"]]
        if rec["member"] == RANKS * PER_RANK - 1:
            counts.append(len(set(root)))
    return counts


def pick_hparams(env: str, arm: str, seed: int) -> dict[str, float]:
    """The hyperparameters the run's final pick (``champion.json``'s member) trained with last."""
    with open(os.path.join(kept(env, arm, seed), "champion.json"), encoding="utf-8") as fh:
        member = json.load(fh)["member"]
    last = [r for r in history(env, arm, seed) if r["member"] == member][-1]
    return dict(last["hparams"])


def hparam_lines(env: str, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A table of the final picks' hyperparameters per arm (median over seeds); ``zoo``'s are the zoo's values."""
    rows = {arm: [pick_hparams(env, arm, int(r["seed"])) for r in got] for arm, got in runs.items() if got}
    if "zoo" not in rows or len(rows) < 2:
        return []
    names = sorted(rows["zoo"][0])
    lines = [
        "Where the final picks' hyperparameters went: per arm, the median over seeds of the values the final "
        "pick trained with last (the `zoo` arm's are the zoo's values).",
        "",
        f"| arm | {' | '.join(names)} |",
        "|---|" + "---|" * len(names),
    ]
    for arm, picks in rows.items():
        lines.append(f"| {arm} | {' | '.join(f'{float(np.median([p[n] for p in picks])):.3g}' for n in names)} |")
    return [*lines, ""]


#: Fewest seeds both arms need for a bootstrap interval: from two differences a percentile bootstrap
#: only spans the two, which reads like an interval and is not one.
MIN_BOOTSTRAP_SEEDS = 3


def bootstrap_diff(a: dict[int, float], b: dict[int, float], draws: int = 10_000) -> tuple[float, float, float]:
    """Mean of a - b over the seeds both have, and its 95 % percentile bootstrap interval (paired by seed).

    All NaN with fewer than :data:`MIN_BOOTSTRAP_SEEDS` common seeds.
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < MIN_BOOTSTRAP_SEEDS:
        return math.nan, math.nan, math.nan
    diff = np.array([a[s] - b[s] for s in seeds])
    rng = np.random.default_rng(0)
    means = diff[rng.integers(len(diff), size=(draws, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def welch_p(a: list[float], b: list[float]) -> float:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def report() -> int:
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy import stats

    warnings.filterwarnings("ignore", "Mean of empty slice")  # curve points before a seed's first record
    envs = [e for e in ENVS if load(e)]
    fig = Figure(figsize=(11, 3.8 * max(1, len(envs))))
    FigureCanvasAgg(fig)
    lines = []
    for row, env in enumerate(envs):
        runs = load(env)
        mean, sd, budget = ENVS[env]["published"]
        lines += [
            f"### {env}: PPO, population 8, {ENVS[env]['generations'] * ENVS[env]['steps']:,} env steps per member",
            "",
            f"RL Zoo's published score: {mean:.1f} +- {sd:.1f} ({budget}). Test: {len(TEST_SEEDS)} episodes on "
            "held-out seeds. Diff: mean of the per-seed difference to the `zoo` arm over the seeds both have, "
            f"with a paired bootstrap 95 % interval (blank below {MIN_BOOTSTRAP_SEEDS} common seeds); p: Welch's "
            "t-test of the per-seed means against `zoo`. "
            "Corr: Spearman's rank correlation of each member's final training fitness with its test score. "
            "Wall: each launch's wall time; some runs shared the machine with other jobs, so walls do not "
            "compare the arms' costs (every arm trains the same env steps).",
            "",
            "| arm | test return (mean +- sd over seeds) | per seed | diff to zoo [95 % CI] | p vs zoo "
            "| wall min (mean) | corr(train fitness, test) per member | lineages left |",
            "|---|---|---|---|---|---|---|---|",
        ]
        zoo = [r["test_mean"] for r in runs.get("zoo", [])]
        zoo_by_seed = {int(r["seed"]): r["test_mean"] for r in runs.get("zoo", [])}
        by_steps, by_test = fig.add_subplot(len(envs), 2, 2 * row + 1), fig.add_subplot(len(envs), 2, 2 * row + 2)
        shown: list[str] = []
        for arm in ARMS:
            got = runs.get(arm, [])
            if not got:
                continue
            values = [r["test_mean"] for r in got]
            spread = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            corr = []
            for r in got:
                pairs = [(m["train_fitness"], m["test_mean"]) for m in r["members"] if m["train_fitness"] is not None]
                if len(pairs) > 2 and len({p[0] for p in pairs}) > 1:
                    corr.append(float(stats.spearmanr(*zip(*pairs, strict=True)).statistic))
            left = [lineages(env, arm, r["seed"])[-1] for r in got]
            p = "" if arm == "zoo" else f"{welch_p(values, zoo):.2f}"
            d, lo, hi = bootstrap_diff({int(r["seed"]): r["test_mean"] for r in got}, zoo_by_seed)
            diff = "" if arm == "zoo" or math.isnan(d) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            lines.append(
                f"| {arm} | {np.mean(values):.1f} +- {spread:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {diff} "
                f"| {p} "
                f"| {np.mean([r['launch_wall_s'] for r in got]) / 60:.1f} | {np.nanmean(corr):.2f} "
                f"| {', '.join(map(str, left))} |"
            )
            grid = np.linspace(0, ENVS[env]["generations"] * ENVS[env]["steps"], 60)[1:]
            rows = [np.interp(grid, *curve(env, arm, r["seed"]), left=np.nan) for r in got]
            color, x = f"C{ARMS.index(arm)}", len(shown)  # one colour per arm on every env
            by_steps.plot(grid, np.nanmean(rows, axis=0), label=arm, color=color)
            by_test.plot([x] * len(values), values, "o", color=color, alpha=0.7)
            by_test.plot([x - 0.25, x + 0.25], [np.mean(values)] * 2, color=color, linewidth=2)
            shown.append(arm)
        by_steps.set_xlabel("env steps per member")
        by_steps.set_ylabel(f"{env}: best training return", fontsize=8)
        by_steps.legend(fontsize=7)
        by_test.set_xticks(range(len(shown)), shown, fontsize=7)
        by_test.set_ylabel(f"{env}: test return of the final pick", fontsize=8)
        by_test.set_title("one dot per seed, bar: mean", fontsize=8)
        for ax in (by_steps, by_test):
            ax.axhline(mean, color="grey", linestyle=":", linewidth=1, label=f"RL Zoo, {budget}")
        by_test.legend(fontsize=7)
        lines += ["", *hparam_lines(env, runs)]
    save_report(fig, FIGURE, DATA, lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument("--env", choices=tuple(ENVS), default="LunarLander-v3")
    parser.add_argument("--seeds", default="", help="Comma-separated (default: the env's seeds).")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "zoo"), help="Run dirs (models, checkpoints).")
    parser.add_argument("--commit", action="store_true", help="Commit each finished run's small outputs.")
    parser.add_argument("--repo", default=ROOT, help="Repository for the small outputs (default: this one).")
    args = parser.parse_args(argv)
    global REPO, DATA, FIGURE
    REPO = os.path.abspath(args.repo)
    DATA, FIGURE = os.path.join(REPO, "docs", "data", "zoo"), os.path.join(REPO, "docs", "img", "zoo_study.png")
    if args.what == "report":
        return report()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(ENVS[args.env]["seeds"])
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    for seed in seeds:
        for arm in arms:
            run_one(args.out, args.env, arm, seed, args.commit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
