"""Which PBT settings beat random search with the same members? The study behind the defaults (not part of CI).

    python scripts/defaults_study.py run [--envs Pendulum-v1,Acrobot-v1] [--seeds 0-9] [--arms ...] [--commit]
    python scripts/defaults_study.py report     # table and figure from docs/data/defaults alone, in seconds

PPO, population 8 as ``mpiexec -n 2 --agents-per-rank 4``, one run at a time, the methods study's
budgets (Pendulum-v1 36 x 4,096 env steps per member, Acrobot-v1 24 x 4,096). Arms:

* ``pbt``        today's defaults: truncation 25 %, perturb/resample explore, every generation;
* ``pbt-ready``  the same with ``--ready-after 16384``: a member neither copies nor is copied before it has
                 trained 4 generations since the start or its last exploit (82 Pendulum episodes, the
                 fitness window several times over; DexPBT waits too, 20M steps of its billions);
* ``pbt-margin`` the same with ``--exploit-margin-std 0.5 --exploit-margin-abs 0.05`` (DexPBT's values;
                 seed 0 only: there it held none of Pendulum's 70 truncation copies, whose gaps were 2.4-4.1
                 sd (10th-90th percentile), so its history equals ``pbt``'s);
* ``pbt-margin3`` ``--exploit-margin-std 3``: a margin that binds, the median gap of those copies;
* ``mfpbt``      MF-PBT (``--selection mfpbt --mfpbt-periods 1,10``): 2 sub-populations of 4 evolving every
                 generation and every 10th, with migration (the paper's two fastest periods: a population
                 of 8 holds two sub-populations of the 4 members its brackets need);
* ``random``     the same population, exploit off (``--selection none``): random search;
* ``default``    exploit off, every searched hyperparameter at SB3's default (seeds 0-4 only).

A third task, ``ShapedAcrobot`` (scripts/shaped_envs.py: Acrobot-v1 whose height bonus pays for hovering
below the line), has two arms of 5 seeds scored on plain Acrobot-v1: ``pbt-return`` (fitness = the shaped
return) and ``pbt-objective`` (``--fitness info:task_return``, the unshaped return the env reports).

Every arm runs a fixed commit of evo_mpi (:data:`ARMS`), checked out in a git worktree beside the
repository, so a later session repeats exactly the code that earlier seeds ran; the commit is kept in
each run's ``summary.json``. Scoring follows the RL Zoo study (scripts/zoo_study.py): the run's own
final pick (``best.zip``) on 50 deterministic episodes from held-out reset seeds, every member's
final model on the first 10 of them.

A finished run keeps its small outputs under ``docs/data/defaults/<env>/<arm>/seed<k>/`` (config,
history, champion, summary; never models); ``--commit`` commits them at once. A run whose
``summary.json`` is there is skipped; an unfinished one resumes from its checkpoint under ``--out``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo_study  # noqa: E402  (the same test seeds and scoring)

REPO = ROOT
DATA = os.path.join(REPO, "docs", "data", "defaults")
FIGURE = os.path.join(REPO, "docs", "img", "defaults_study.png")
RANKS, PER_RANK = 2, 4
POPULATION = RANKS * PER_RANK
STEPS = 4096
ENVS: dict[str, dict[str, Any]] = {
    "Pendulum-v1": {"generations": 36, "collapse": -400.0},
    "Acrobot-v1": {"generations": 24, "collapse": None},
    # the objective is not the return: scripts/shaped_envs.py; scored on plain Acrobot-v1 (the task)
    "ShapedAcrobot": {"generations": 24, "collapse": None, "env_id": "shaped_envs:shaped_acrobot",
                      "test_env": "Acrobot-v1", "arms": ("pbt-return", "pbt-objective"), "baseline": "pbt-return"},
}  # fmt: skip
#: The shaped task's arms: the same PBT with fitness = the shaped return, or the task's own score.
OBJECTIVE_ARMS = ("pbt-return", "pbt-objective")
SEEDS = tuple(range(10))
#: The commit of evo_mpi each arm runs (None: not built yet, the arm is skipped) and its options.
BEFORE = "950fc25"  # the defaults before this study
ARMS: dict[str, dict[str, Any]] = {
    "pbt": {"commit": BEFORE, "args": []},
    "pbt-ready": {"commit": BEFORE, "args": ["--ready-after", "16384"]},
    "pbt-margin": {
        "commit": "937139f",
        "args": ["--exploit-margin-std", "0.5", "--exploit-margin-abs", "0.05"],
        "seeds": (0,),
    },
    "pbt-margin3": {"commit": "937139f", "args": ["--exploit-margin-std", "3"]},
    "mfpbt": {"commit": "dd604e8", "args": ["--selection", "mfpbt", "--mfpbt-periods", "1,10"]},
    "random": {"commit": BEFORE, "args": ["--selection", "none"]},
    "default": {"commit": BEFORE, "args": ["--selection", "none", "SB3"], "seeds": tuple(range(5))},
    "pbt-return": {"commit": "f250732", "args": [], "seeds": tuple(range(5))},
    "pbt-objective": {"commit": "f250732", "args": ["--fitness", "info:task_return"], "seeds": tuple(range(5))},
}
#: The arm everything is compared with, and the arms of the two plain envs.
BASELINE = "random"
MAIN_ARMS = tuple(a for a in ARMS if a not in OBJECTIVE_ARMS)
SMALL_FILES = ("config.json", "history.jsonl", "champion.json", "summary.json")


def code_dir(commit: str) -> str:
    """A worktree of ``commit`` beside the repository (made on first use)."""
    path = os.path.join(os.path.dirname(REPO), "study-code", commit)
    if not os.path.exists(os.path.join(path, "evo_mpi", "__init__.py")):
        subprocess.run(["git", "worktree", "add", "--detach", "-f", path, commit], cwd=REPO, check=True)
    return path


def arm_args(arm: str) -> list[str]:
    args: list[str] = []
    for a in ARMS[arm]["args"]:
        args += zoo_study.sb3_fixed() if a == "SB3" else [a]
    return args


def command(env: str, arm: str, seed: int, path: str) -> list[str]:
    return [
        os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(RANKS),
        sys.executable, "-m", "evo_mpi.run", "--env-id", ENVS[env].get("env_id", env), "--seed", str(seed),
        "--agents-per-rank", str(PER_RANK), "--generations", str(ENVS[env]["generations"]),
        "--steps-per-generation", str(STEPS), "--run-dir", path, *arm_args(arm),
    ]  # fmt: skip


def kept(env: str, arm: str, seed: int) -> str:
    return os.path.join(DATA, env, arm, f"seed{seed}")


def run_one(out: str, env: str, arm: str, seed: int, commit: bool) -> None:
    """Run (or resume) one run with its arm's code, score it, keep its small outputs (and commit them)."""
    target = kept(env, arm, seed)
    code = ARMS[arm]["commit"]
    if os.path.exists(os.path.join(target, "summary.json")) or code is None:
        return
    path = os.path.join(out, env, arm, f"seed{seed}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(os.path.join(path, "best.zip")):
        where = code_dir(code)
        scripts = os.path.dirname(os.path.abspath(__file__))  # shaped_envs.py, the same for every arm
        child = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": where + os.pathsep + scripts}
        if not zoo_study.launch(path, command(env, arm, seed, path), child, cwd=where):
            return  # the next runs go on; this one is retried (resumed) by the next invocation
    wall = zoo_study.launch_wall(path)
    summary = {"env": env, "arm": arm, "seed": seed, "code": code, "generations": ENVS[env]["generations"],
               "steps_per_member": ENVS[env]["generations"] * STEPS, "population": POPULATION,
               "launch_wall_s": wall, **zoo_study.score(path, ENVS[env].get("test_env", env))}  # fmt: skip
    message = f"defaults study: {env} {arm} seed {seed} (small outputs; test {summary['test_mean']:.1f})"
    zoo_study.keep(path, target, summary, SMALL_FILES, REPO, message if commit else "")
    print(f"{env} {arm:10s} seed {seed}: test {summary['test_mean']:8.1f} ({wall / 60:.1f} min)", flush=True)


# -- the report: from docs/data/defaults alone ------------------------------------------------------


def load(env: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Arm -> seed -> summary."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in ARMS:
        for file in sorted(glob.glob(os.path.join(DATA, env, arm, "seed*", "summary.json"))):
            with open(file, encoding="utf-8") as fh:
                got = json.load(fh)
            runs.setdefault(arm, {})[int(got["seed"])] = got
    return runs


def history(env: str, arm: str, seed: int) -> list[dict[str, Any]]:
    with open(os.path.join(kept(env, arm, seed), "history.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def roots(rows: list[dict[str, Any]]) -> list[int]:
    """Distinct root ancestors in the population after each generation's exploit (from ``parent``).

    A row of generation g names the donor the member copied after g; a member's root is its donor's
    root as it was before that generation's copies.
    """
    by_generation: dict[int, dict[int, Any]] = {}
    for rec in rows:
        by_generation.setdefault(int(rec["generation"]), {})[int(rec["member"])] = rec.get("parent")
    root = list(range(POPULATION))
    counts = []
    for g in sorted(by_generation):
        before = list(root)
        for m, parent in by_generation[g].items():
            if parent is not None:
                root[m] = before[int(parent)]
        counts.append(len(set(root)))
    return counts


def _leaders(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """The member with the best fitness (the objective) and the one with the best mean return in ``rows``."""
    by_objective = max(rows, key=lambda r: -math.inf if r["fitness"] is None else r["fitness"])["member"]
    by_return = max(rows, key=lambda r: np.mean(r["returns"]) if r["returns"] else -math.inf)["member"]
    return int(by_objective), int(by_return)


def objective_lines(env: str, runs: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """For an arm with ``--fitness info:KEY``: how often its final top member differs from the return's."""
    lines = []
    for arm, got in runs.items():
        if "--fitness" not in ARMS[arm]["args"]:
            continue
        differ, generations = [], []
        for seed in sorted(got):
            rows = history(env, arm, seed)
            leaders = [
                _leaders([r for r in rows if r["generation"] == g]) for g in sorted({r["generation"] for r in rows})
            ]
            differ.append(leaders[-1][0] != leaders[-1][1])
            generations += [a != b for a, b in leaders]
        lines.append(
            f"`{arm}`: in {sum(differ)} of {len(differ)} runs the member the objective ranks first in the last "
            f"generation is not the one the (shaped) return ranks first; over all generations of these runs, "
            f"in {sum(generations)} of {len(generations)}."
        )
    return lines


#: The arms that may become the defaults (``pbt-margin`` ran seed 0 only: its history equals ``pbt``'s).
CANDIDATES = ("pbt", "pbt-ready", "pbt-margin3", "mfpbt")
CURRENT = "pbt"  # today's defaults
DECIDING_ENVS = ("Pendulum-v1", "Acrobot-v1")


def verdict(tests: dict[str, dict[str, dict[int, float]]]) -> list[str]:
    """Which arm the defaults follow, by the rule fixed on 2026-12-05 with seeds 0-4 in (before 5-9 ran).

    ``tests`` maps env -> arm -> seed -> test return. An arm *qualifies* when it has all of
    :data:`SEEDS` on both :data:`DECIDING_ENVS`, its mean is at or above ``random``'s on both and
    none of its Pendulum runs collapsed. Today's defaults (``pbt``) stay if they qualify and no
    other qualifying arm has a higher mean on both envs; a change needs evidence on both. Otherwise
    the defaults move to the qualifying arm with the best sum of per-env ranks among those that
    beat them on both (all qualifying arms when ``pbt`` does not qualify), ties to the better
    Pendulum mean. No qualifying arm: say so.
    """
    missing = [
        f"{env} {arm} {len(tests.get(env, {}).get(arm, {}))}/{len(SEEDS)}"
        for env in DECIDING_ENVS
        for arm in (*CANDIDATES, "random")
        if set(tests.get(env, {}).get(arm, {})) < set(SEEDS)
    ]
    if missing:
        return [f"Verdict: not yet, seeds missing ({', '.join(missing)})."]
    mean = {env: {arm: float(np.mean(list(tests[env][arm].values()))) for arm in (*CANDIDATES, "random")}
            for env in DECIDING_ENVS}  # fmt: skip
    floor = ENVS["Pendulum-v1"]["collapse"]
    qualify = [
        arm
        for arm in CANDIDATES
        if all(mean[env][arm] >= mean[env]["random"] for env in DECIDING_ENVS)
        and not any(v < floor for v in tests["Pendulum-v1"][arm].values())
    ]
    said = ", ".join(
        f"`{a}` {mean['Pendulum-v1'][a]:.1f} / {mean['Acrobot-v1'][a]:.1f}" for a in (*CANDIDATES, "random")
    )
    head = f"Means (Pendulum-v1 / Acrobot-v1): {said}. Qualify: {', '.join(f'`{a}`' for a in qualify) or 'none'}."
    if not qualify:
        return [head, "Verdict: no arm is at or above random search on both envs without a Pendulum collapse."]
    if CURRENT in qualify:
        rivals = [a for a in qualify if a != CURRENT and all(mean[e][a] > mean[e][CURRENT] for e in DECIDING_ENVS)]
        if not rivals:
            return [head, f"Verdict: the defaults stay (`{CURRENT}`): no qualifying arm beats it on both envs."]
    else:
        rivals = qualify
    rank = {a: sum(sorted(rivals, key=lambda b: -mean[e][b]).index(a) for e in DECIDING_ENVS) for a in rivals}
    best = min(rivals, key=lambda a: (rank[a], -mean["Pendulum-v1"][a]))
    return [head, f"Verdict: the defaults move to `{best}`."]


def report() -> int:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    envs = [e for e in ENVS if load(e)]
    fig = Figure(figsize=(11, 3.6 * max(1, len(envs))))
    FigureCanvasAgg(fig)
    lines: list[str] = []
    tests: dict[str, dict[str, dict[int, float]]] = {}
    for row, env in enumerate(envs):
        runs = load(env)
        tests[env] = {arm: {s: r["test_mean"] for s, r in got.items()} for arm, got in runs.items()}
        floor = ENVS[env]["collapse"]
        baseline = ENVS[env].get("baseline", BASELINE)
        base = {s: r["test_mean"] for s, r in runs.get(baseline, {}).items()}
        test_env = ENVS[env].get("test_env", env)
        lines += [
            f"### {env}: PPO, population 8, {ENVS[env]['generations'] * STEPS:,} env steps per member",
            "",
            f"Test: the run's final pick on {len(zoo_study.TEST_SEEDS)} held-out episodes of {test_env}. Diff: mean of "
            f"the per-seed difference to `{baseline}` over the seeds both arms have, with a paired bootstrap 95 % "
            f"interval (blank below {zoo_study.MIN_BOOTSTRAP_SEEDS} common seeds). Median member: the population's "
            f"median final member on the first {zoo_study.MEMBER_TEST_EPISODES} of those episodes, mean over seeds."
            + (f" Collapse: final pick below {floor:.0f}." if floor is not None else ""),
            "",
            f"| arm | seeds | test (mean +- sd) | diff to {baseline} [95 % CI] | collapses | median member "
            "| roots left (mean) | exploits per run | min per run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        scores = fig.add_subplot(len(envs), 2, 2 * row + 1)
        lineage = fig.add_subplot(len(envs), 2, 2 * row + 2)
        for i, arm in enumerate(ARMS):
            got = runs.get(arm, {})
            if not got:
                continue
            values = {s: r["test_mean"] for s, r in got.items()}
            v = np.array(list(values.values()))
            sd = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
            d, lo, hi = zoo_study.bootstrap_diff(values, base) if arm != baseline else (math.nan,) * 3
            collapses = "" if floor is None else f"{int(np.sum(v < floor))}/{v.size}"
            counts = [roots(history(env, arm, s)) for s in sorted(got)]
            exploits = [sum(r.get("parent") is not None for r in history(env, arm, s)) for s in sorted(got)]
            diff = "" if math.isnan(d) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            median = np.mean([np.median([m["test_mean"] for m in r["members"]]) for r in got.values()])
            lines.append(
                f"| {arm} | {v.size} | {v.mean():.1f} +- {sd:.1f} | {diff} | {collapses} | {median:.1f} "
                f"| {np.mean([c[-1] for c in counts]):.1f} | {np.mean(exploits):.1f} "
                f"| {np.mean([r['launch_wall_s'] for r in got.values()]) / 60:.1f} |"
            )
            scores.scatter(np.full(v.size, i) + np.linspace(-0.15, 0.15, v.size), v, s=12)
            scores.errorbar(i + 0.3, v.mean(), yerr=sd if v.size > 1 else 0, fmt="k_", capsize=3)
            length = min(len(c) for c in counts)
            lineage.plot(np.arange(length), np.mean([c[:length] for c in counts], axis=0), label=arm)
        names = [a for a in ARMS if a in runs]
        scores.set_xticks([list(ARMS).index(a) for a in names], names, fontsize=8)
        scores.set_ylabel(f"{env}: test return", fontsize=8)
        if floor is not None:
            scores.axhline(floor, color="grey", linestyle=":", linewidth=1)
        lineage.set_xlabel("generation")
        lineage.set_ylabel("distinct root ancestors (mean over seeds)", fontsize=8)
        lineage.legend(fontsize=7)
        lines += [*objective_lines(env, runs), ""]
    lines += [*verdict(tests), ""]
    zoo_study.save_report(fig, FIGURE, DATA, lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument("--envs", default=",".join(ENVS))
    parser.add_argument("--seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}", help="A range (0-9) or a list (0,3).")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "defaults"), help="Run dirs (models).")
    parser.add_argument("--commit", action="store_true", help="Commit each finished run's small outputs.")
    parser.add_argument("--repo", default=ROOT, help="Repository for the small outputs (default: this one).")
    args = parser.parse_args(argv)
    global REPO, DATA, FIGURE
    REPO = os.path.abspath(args.repo)
    DATA = os.path.join(REPO, "docs", "data", "defaults")
    FIGURE = os.path.join(REPO, "docs", "img", "defaults_study.png")
    if args.what == "report":
        return report()
    if "-" in args.seeds:
        first, last = args.seeds.split("-")
        seeds = list(range(int(first), int(last) + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    arms, envs = args.arms.split(","), args.envs.split(",")
    unknown = sorted(set(arms) - set(ARMS)) + sorted(set(envs) - set(ENVS))
    if unknown:
        parser.error(f"unknown arm(s) or env(s) {unknown}; arms: {', '.join(ARMS)}; envs: {', '.join(ENVS)}")
    for seed in seeds:  # seed-major: after each seed every arm has the same seeds
        for env in envs:
            for arm in arms:
                if arm not in ENVS[env].get("arms", MAIN_ARMS):
                    continue
                if seed in ARMS[arm].get("seeds", SEEDS):
                    run_one(os.path.abspath(args.out), env, arm, seed, args.commit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
