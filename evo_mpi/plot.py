"""Plot a run: fitness, hyperparameter schedules and the lineage tree, as PNG files.

    python -m evo_mpi.plot RUN_DIR [--out DIR] [--member M] [--dpi N]

Reads only ``RUN_DIR/history.jsonl`` and ``RUN_DIR/config.json``, so it works on
a run in progress (the complete generations so far; for an async run, every
record so far, against env steps and wall time). matplotlib is imported
here only, inside the functions, and renders with the Agg canvas (no display).

Exit codes: 0 plots written, 2 bad input (missing run dir, empty history, bad member).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .lineage import (
    History,
    HistoryError,
    chain,
    champion_member,
    is_async,
    latest_best,
    load,
    read_config,
    read_history,
)
from .records import numbers, parent_step_of, step_of

EXIT_OK = 0
EXIT_USAGE = 2
#: Above this many members, members are told apart by a colour bar instead of a legend.
LEGEND_MAX = 16


def _natural(text: str) -> list[Any]:
    """Sort key comparing the numbers in ``text`` as numbers (architectures like ``160-64``)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def member_colors(population: int) -> list[Any]:
    """One colour per member: tab10/tab20 for small populations, a sampled colormap beyond."""
    from matplotlib import colormaps

    if population <= 10:
        return [colormaps["tab10"](i) for i in range(population)]
    if population <= 20:
        return [colormaps["tab20"](i) for i in range(population)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (population - 1)) for i in range(population)]


#: One colour family per MF-PBT sub-population (fastest first); members are shades within it.
GROUP_CMAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys")


def subpopulations(config: dict[str, Any] | None, population: int) -> list[int] | None:
    """Each member's MF-PBT sub-population from the run's config (None: not an MF-PBT run)."""
    if not config or config.get("selection") != "mfpbt":
        return None
    periods = list(config.get("mfpbt_periods") or [])
    if not periods or population % len(periods):
        return None
    size = population // len(periods)
    return [m // size for m in range(population)]


def run_colors(config: dict[str, Any] | None, population: int) -> list[Any]:
    """Member colours: one colour family per sub-population in an MF-PBT run, else :func:`member_colors`."""
    from matplotlib import colormaps

    groups = subpopulations(config, population)
    if groups is None:
        return member_colors(population)
    size = population // (max(groups) + 1)
    shade = [0.45 + 0.45 * (m % size) / max(1, size - 1) for m in range(population)]
    return [colormaps[GROUP_CMAPS[g % len(GROUP_CMAPS)]](shade[m]) for m, g in enumerate(groups)]


def _member_labels(config: dict[str, Any] | None, population: int) -> list[str]:
    groups = subpopulations(config, population)
    if groups is None:
        return [f"member {m}" for m in range(population)]
    periods = list((config or {}).get("mfpbt_periods") or [])
    return [f"member {m} (sub-pop {g}, every {periods[g]})" for m, g in enumerate(groups)]


def _member_key(
    fig: Any, ax: Any, population: int, colors: list[Any], extra: list[Any], labels: list[str] | None = None
) -> None:
    """A legend naming each member (small populations) or a member colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D

    if population <= LEGEND_MAX:
        names = labels or [f"member {m}" for m in range(population)]
        handles = [Line2D([], [], color=c, label=names[m]) for m, c in enumerate(colors)]
        ax.legend(handles=handles + extra, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return
    norm = BoundaryNorm(np.arange(population + 1) - 0.5, population)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=ListedColormap(colors)), ax=ax, pad=0.01)
    bar.set_ticks(sorted({int(round(t)) for t in np.linspace(0, population - 1, 9)}))
    bar.set_label("member")
    if extra:
        ax.legend(handles=extra, fontsize="small", loc="best")


def _title(hist: History, config: dict[str, Any] | None, what: str) -> str:
    total = config.get("generations") if config else None
    done = hist.generations
    progress = f"{done}/{total} generations" if isinstance(total, int) else f"{done} generations"
    if isinstance(total, int) and done < total:
        progress += " (in progress)"
    env = f"{config.get('env_id')}, " if config and config.get("env_id") else ""
    return f"{what}: {env}{hist.population} members, {progress}"


def _generation_starts(hist: History, config: dict[str, Any] | None) -> np.ndarray:
    """Env steps at the start of each generation, per member (shape like ``hist.timesteps``)."""
    steps = hist.timesteps.astype(np.float64)
    per_gen = config.get("steps_per_generation") if config else None
    first = steps[0] - per_gen if isinstance(per_gen, int) else np.zeros_like(steps[0])
    return np.vstack([np.maximum(first, 0.0)[None, :], steps[:-1]])


def plot_fitness(hist: History, config: dict[str, Any] | None, path: str, member: int, dpi: int) -> None:
    """Fitness per member vs env steps; exploits as x (loser) and a dashed link from the winner."""
    P, G = hist.population, hist.generations
    colors = run_colors(config, P)
    x, y = hist.timesteps.astype(np.float64), hist.fitness
    fig = _new_figure(10 if P <= LEGEND_MAX else 11, 5.5)
    ax = fig.add_subplot()
    _fitness_steps(ax, hist, x, y, colors)
    size = 14 if G * P <= 2000 else 4
    ax.scatter(x.ravel(), y.ravel(), c=[colors[m] for _ in range(G) for m in range(P)], s=size, zorder=3)
    lineage = hist.ancestry(member)
    ax.plot(
        [x[g, s] for g, s in lineage],
        [y[g, s] for g, s in lineage],
        color="black",
        alpha=0.25,
        linewidth=5,
        zorder=1,
        solid_capstyle="round",
    )
    null_losers = _mark_fitness_exploits(ax, hist, x, y)
    ax.autoscale_view()
    ax.set_xlabel("env steps per member")
    ax.set_ylabel("fitness")
    ax.grid(alpha=0.3)
    ax.set_title(_title(hist, config, "fitness"), fontsize="medium")
    _member_key(fig, ax, P, colors, _fitness_key(member, null_losers), _member_labels(config, P))
    fig.savefig(path, dpi=dpi)


def _fitness_steps(ax: Any, hist: History, x: np.ndarray, y: np.ndarray, colors: list[Any]) -> None:
    """Each member's line to its next generation: solid where it kept its weights, dashed from the winner it copied."""
    from matplotlib.collections import LineCollection

    kept: list[Any] = []
    kept_colors: list[Any] = []
    links: list[Any] = []
    link_colors: list[Any] = []
    for g in range(hist.generations - 1):
        for m in range(hist.population):
            src = m if hist.parent[g, m] < 0 else int(hist.parent[g, m])
            seg = [(x[g, src], y[g, src]), (x[g + 1, m], y[g + 1, m])]
            (kept if src == m else links).append(seg)
            (kept_colors if src == m else link_colors).append(colors[m])
    ax.add_collection(LineCollection(kept, colors=kept_colors, linewidths=1.4))
    ax.add_collection(LineCollection(links, colors=link_colors, linewidths=0.8, linestyles="dashed"))


def _mark_fitness_exploits(ax: Any, hist: History, x: np.ndarray, y: np.ndarray) -> bool:
    """An x on each exploit loser (a triangle at the bottom edge when its fitness is null); True if any is null."""
    events = hist.exploits()
    finite = [(g, m) for g, m, _ in events if math.isfinite(y[g, m])]
    ax.scatter([x[g, m] for g, m in finite], [y[g, m] for g, m in finite], marker="x", color="black", s=36, zorder=4)
    nonfinite = [(g, m) for g, m, _ in events if not math.isfinite(y[g, m])]
    if nonfinite:  # a loser with null fitness: marked at the bottom edge
        ax.scatter(
            [x[g, m] for g, m in nonfinite],
            [0.02] * len(nonfinite),
            marker="v",
            color="black",
            s=30,
            transform=ax.get_xaxis_transform(),
            zorder=4,
        )
    return bool(nonfinite)


def _fitness_key(member: int, null_losers: bool) -> list[Any]:
    """Legend entries of the fitness plot besides the members: exploit marks, winner links, the lineage."""
    from matplotlib.lines import Line2D

    extra = [
        Line2D([], [], color="black", marker="x", linestyle="none", label="replaced (exploit loser)"),
        Line2D([], [], color="grey", linewidth=0.8, linestyle="--", label="copied from winner"),
        Line2D([], [], color="black", alpha=0.25, linewidth=5, label=f"lineage of member {member}"),
    ]
    if null_losers:
        extra.append(Line2D([], [], color="black", marker="v", linestyle="none", label="replaced, fitness null"))
    return extra


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_hparams(hist: History, config: dict[str, Any] | None, path: str, member: int, dpi: int) -> None:
    """One panel per searched hyperparameter: value per member vs env steps, exploits marked."""
    P = hist.population
    colors = run_colors(config, P)
    specs = config.get("search_space", {}) if config else {}
    specs = specs if isinstance(specs, dict) else {}
    names = [n for n in hist.names if not str(specs.get(n, "")).startswith("const")]
    ncols = 1 if len(names) <= 2 else 2
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = _new_figure(6.5 * ncols + (2.5 if P <= LEGEND_MAX else 1), 2.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    fig.suptitle(_title(hist, config, "hyperparameters"), fontsize="medium")
    starts = _generation_starts(hist, config)
    ends = hist.timesteps.astype(np.float64)
    lineage = hist.ancestry(member)
    for i, name in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        _hparam_panel(ax, hist, name, specs, starts, ends, lineage, colors)
    for j in range(len(names), nrows * ncols):
        ax = axes[j // ncols][j % ncols]
        ax.set_axis_off()
        if not names:
            ax.text(0.5, 0.5, "no searched hyperparameters", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[-1]:
        ax.set_xlabel("env steps per member")
    _member_key(fig, axes[0][-1], P, colors, _hparams_key(member), _member_labels(config, P))
    fig.savefig(path, dpi=dpi)


def _hparam_panel(
    ax: Any,
    hist: History,
    name: str,
    specs: Mapping[str, Any],
    starts: np.ndarray,
    ends: np.ndarray,
    lineage: Sequence[tuple[int, int]],
    colors: list[Any],
) -> None:
    """Hyperparameter ``name`` of every member as steps over its env steps, the lineage and the exploits."""
    values, levels = _hparam_values(hist, name)
    if levels:
        ax.set_yticks(range(len(levels)), levels)
    for m in range(hist.population):
        edges = np.append(starts[:, m], ends[-1, m])
        ax.stairs(values[:, m], edges, baseline=None, color=colors[m], linewidth=1.3)
    ax.plot(
        [x for g, s in lineage for x in (starts[g, s], ends[g, s])],
        [values[g, s] for g, s in lineage for _ in range(2)],
        color="black",
        alpha=0.25,
        linewidth=5,
        zorder=1,
    )
    _mark_hparam_exploits(ax, hist, values, ends, colors)
    if str(specs.get(name, "")).startswith("loguniform"):
        ax.set_yscale("log")
    ax.set_title(f"{name}  ({specs[name]})" if name in specs else name, fontsize="small")
    ax.grid(alpha=0.3)


def _mark_hparam_exploits(ax: Any, hist: History, values: np.ndarray, ends: np.ndarray, colors: list[Any]) -> None:
    """An x on each exploit loser's value, and a dashed jump from the winner's value to the explored one."""
    for g, loser, winner in hist.exploits():
        at = ends[g, loser]
        ax.scatter([at], [values[g, loser]], marker="x", color="black", s=30, zorder=4)
        if g + 1 < hist.generations:
            ax.plot(
                [at, at],
                [values[g, winner], values[g + 1, loser]],
                color=colors[loser],
                linestyle="--",
                linewidth=0.8,
            )


def _hparams_key(member: int) -> list[Any]:
    """Legend entries of the hyperparameter plot besides the members: exploit marks, explore jumps, the lineage."""
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color="black", marker="x", linestyle="none", label="replaced (exploit loser)"),
        Line2D([], [], color="grey", linewidth=0.8, linestyle="--", label="winner's value -> explored value"),
        Line2D([], [], color="black", alpha=0.25, linewidth=5, label=f"lineage of member {member}"),
    ]


def _hparam_values(hist: History, name: str) -> tuple[np.ndarray, list[str]]:
    """``name``'s value per (generation, member); a categorical one as its index among the sorted levels."""
    raw = [[hist.hparams[g][m].get(name) for m in range(hist.population)] for g in range(hist.generations)]
    present = [v for row in raw for v in row if v is not None]
    if _numeric(present):
        return np.array([numbers(row) for row in raw]), []
    levels = sorted({str(v) for v in present}, key=_natural)  # 48-64 < 64-64 < 160-64
    return np.array([[math.nan if v is None else levels.index(str(v)) for v in row] for row in raw]), levels


def plot_lineage(hist: History, config: dict[str, Any] | None, path: str, member: int, dpi: int) -> None:
    """Lineage tree: nodes (generation, member) coloured by fitness, edges to where weights went."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    P, G = hist.population, hist.generations
    width = min(24.0, max(7.0, 2.5 + 0.35 * G))
    height = min(20.0, max(4.0, 1.5 + 0.28 * P))
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    kept: list[list[tuple[int, int]]] = []
    copied: list[list[tuple[int, int]]] = []
    for g in range(G - 1):
        for m in range(P):
            p = int(hist.parent[g, m])
            (kept if p < 0 else copied).append([(g, m if p < 0 else p), (g + 1, m)])
    ax.add_collection(LineCollection(kept, colors="0.75", linewidths=1.0, zorder=1))
    ax.add_collection(LineCollection(copied, colors="tab:orange", linewidths=1.2, zorder=2))
    lineage = hist.ancestry(member)
    ax.plot([g for g, _ in lineage], [s for _, s in lineage], color="crimson", linewidth=3, alpha=0.8, zorder=3)
    cell = min(width * 72 / max(G, 1), height * 72 / P)  # points per node
    size = float(np.clip((0.45 * cell) ** 2, 4, 90))
    gg, mm = np.meshgrid(np.arange(G), np.arange(P), indexing="ij")
    fit = hist.fitness
    ok = np.isfinite(fit)
    norm = Normalize(*(float(fit[ok].min()), float(fit[ok].max())) if ok.any() else (0.0, 1.0))
    nodes = ax.scatter(gg[ok], mm[ok], c=fit[ok], cmap="viridis", norm=norm, s=size, zorder=4, edgecolors="none")
    ax.scatter(gg[~ok], mm[~ok], marker="x", color="0.45", s=size, zorder=4)
    ax.scatter(
        [g for g, _ in lineage],
        [s for _, s in lineage],
        s=size * 1.8,
        facecolors="none",
        edgecolors="crimson",
        linewidths=1.5,
        zorder=5,
    )
    bar = fig.colorbar(nodes, ax=ax, pad=0.01)
    bar.set_label("fitness")
    ax.set_xlim(-0.5, G - 0.5)
    ax.set_ylim(-0.7, P - 0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if P <= 32:
        ax.set_yticks(range(P))
    ax.set_xlabel("generation")
    ax.set_ylabel("member slot")
    ax.set_title(_title(hist, config, f"lineage (ancestry of member {member} in red)"), fontsize="medium")
    handles = [
        Line2D([], [], color="0.75", label="kept its weights"),
        Line2D([], [], color="tab:orange", label="copied the weights of"),
        Line2D([], [], color="crimson", linewidth=3, label=f"ancestry of member {member}"),
    ]
    if not ok.all():
        handles.append(Line2D([], [], color="0.45", marker="x", linestyle="none", label="fitness null"))
    fig.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=len(handles))
    fig.savefig(path, dpi=dpi)


def plot_async(
    records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], out: str, member: int | None, dpi: int
) -> list[str]:
    """An async run: fitness against env steps and wall time, hyperparameters, the lineage of ``member``.

    Each member has its own intervals, so every record is a point at that member's own step count
    (and wall time); a dashed line joins a donor's record to the loser's next one.
    """
    population = int(config.get("population") or 1 + max(int(r["member"]) for r in records))
    best = latest_best(records) if member is None else member
    run = _AsyncRun(
        records=records,
        population=population,
        best=best,
        path=chain(records, best),  # raises HistoryError for a bad member before anything is written
        colors=member_colors(population),
        by_key={(int(r["member"]), step_of(r)): r for r in records},
        title=f"{config.get('env_id', '')}, {population} members, async, {len(records)} intervals",
    )
    specs = config.get("search_space", {})
    paths = [os.path.join(out, name) for name in ("fitness.png", "hparams.png", "lineage.png")]
    _async_fitness(run).savefig(paths[0], dpi=dpi)
    _async_hparams(run, specs if isinstance(specs, dict) else {}).savefig(paths[1], dpi=dpi)
    _async_lineage(run).savefig(paths[2], dpi=dpi)
    return paths


@dataclass(frozen=True)
class _AsyncRun:
    """What the three figures of an async run share."""

    records: Sequence[Mapping[str, Any]]
    population: int
    best: int
    path: list[tuple[int, int]]
    colors: list[Any]
    by_key: dict[tuple[int, int], Mapping[str, Any]]
    title: str

    def mine(self, m: int) -> list[Mapping[str, Any]]:
        """Member ``m``'s records in interval order."""
        return self.by_member.get(m, [])

    @functools.cached_property
    def by_member(self) -> dict[int, list[Mapping[str, Any]]]:
        """Every member's records in interval order."""
        out: dict[int, list[Mapping[str, Any]]] = {}
        for (m, _), r in sorted(self.by_key.items(), key=lambda item: item[0]):
            out.setdefault(m, []).append(r)
        return out


def _fit(r: Mapping[str, Any]) -> float:
    f = r.get("fitness")
    return float(f) if isinstance(f, (int, float)) else math.nan


def _async_fitness(run: _AsyncRun) -> Any:
    """Fitness against each member's env steps and against wall time; exploits and the lineage marked."""
    from matplotlib.lines import Line2D

    fig = _new_figure(14, 5.5)
    axes = fig.subplots(1, 2, sharey=True)
    by_key, colors = run.by_key, run.colors
    for ax, xkey, label in ((axes[0], "timesteps", "env steps of the member"), (axes[1], "wall", "wall seconds")):

        def x(r: Mapping[str, Any], key: str = xkey) -> float:
            return float(r.get(key) or 0.0)

        for m in range(run.population):
            ax.plot([x(r) for r in run.mine(m)], [_fit(r) for r in run.mine(m)], color=colors[m], marker="o",
                    markersize=3, linewidth=1.2)  # fmt: skip
        for (m, k), r in by_key.items():
            nxt = by_key.get((m, k + 1))
            donor = r.get("parent")
            if isinstance(donor, int) and nxt is not None:
                ax.scatter([x(r)], [_fit(r)], marker="x", color="black", s=30, zorder=4)
                src = by_key.get((donor, int(parent_step_of(r, k))))
                if src is not None:
                    ax.plot([x(src), x(nxt)], [_fit(src), _fit(nxt)], color=colors[m], linestyle="--", linewidth=0.8)
        ax.plot([x(by_key[(s, k)]) for k, s in run.path], [_fit(by_key[(s, k)]) for k, s in run.path], color="black",
                alpha=0.25, linewidth=5, zorder=1)  # fmt: skip
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fitness")
    fig.suptitle(f"fitness: {run.title}", fontsize="medium")
    extra = [
        Line2D([], [], color="black", marker="x", linestyle="none", label="replaced (exploit loser)"),
        Line2D([], [], color="grey", linewidth=0.8, linestyle="--", label="copied from donor's record"),
        Line2D([], [], color="black", alpha=0.25, linewidth=5, label=f"lineage of member {run.best}"),
    ]
    _member_key(fig, axes[1], run.population, colors, extra)
    return fig


def _async_hparams(run: _AsyncRun, specs: Mapping[str, Any]) -> Any:
    """Each searched hyperparameter of every member as steps over its own env steps."""
    names = sorted(
        {n for r in run.records for n in (r.get("hparams") or {}) if not str(specs.get(n, "")).startswith("const")}
    )
    ncols = 1 if len(names) <= 2 else 2
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = _new_figure(6.5 * ncols + 2.5, 2.6 * nrows + 0.6)
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    fig.suptitle(f"hyperparameters: {run.title}", fontsize="medium")
    for i, name in enumerate(names):
        ax = grid[i // ncols][i % ncols]
        for m in range(run.population):
            values = [(r.get("hparams") or {}).get(name) for r in run.mine(m)]
            if not _numeric([v for v in values if v is not None]):
                continue
            ends = [float(r["timesteps"]) for r in run.mine(m)]
            starts = [0.0, *ends[:-1]]
            ax.stairs(numbers(values), [*starts[:1], *ends], color=run.colors[m])
        if str(specs.get(name, "")).startswith("loguniform"):
            ax.set_yscale("log")
        ax.set_title(f"{name}  ({specs[name]})" if name in specs else name, fontsize="small")
        ax.grid(alpha=0.3)
    for ax in grid[-1]:
        ax.set_xlabel("env steps of the member")
    _member_key(fig, grid[0][-1], run.population, run.colors, [])
    return fig


def _async_lineage(run: _AsyncRun) -> Any:
    """Who copied whom, interval by interval, with the chosen member's ancestry in red."""
    fig = _new_figure(10, max(4.0, 1.5 + 0.28 * run.population))
    ax = fig.add_subplot()
    by_key = run.by_key
    for (m, k), r in by_key.items():
        donor = r.get("parent")
        if (m, k + 1) in by_key:
            node: tuple[int, int] = (donor, int(parent_step_of(r, k))) if isinstance(donor, int) else (m, k)
            color, width = ("tab:orange", 1.2) if isinstance(donor, int) else ("0.75", 1.0)
            if node in by_key:
                ax.plot([node[1], k + 1], [node[0], m], color=color, linewidth=width, zorder=1)
    ok = [(k, m, _fit(r)) for (m, k), r in by_key.items() if math.isfinite(_fit(r))]
    nodes = ax.scatter([k for k, _, _ in ok], [m for _, m, _ in ok], c=[f for _, _, f in ok], cmap="viridis", zorder=3)
    ax.plot([k for k, _ in run.path], [s for _, s in run.path], color="crimson", linewidth=3, alpha=0.8, zorder=2)
    fig.colorbar(nodes, ax=ax, pad=0.01).set_label("fitness")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("interval (of each member)")
    ax.set_ylabel("member slot")
    ax.set_title(f"lineage (ancestry of member {run.best} in red): {run.title}", fontsize="medium")
    return fig


def plot_run(run_dir: str, out_dir: str | None = None, member: int | None = None, dpi: int = 120) -> list[str]:
    """Write ``fitness.png``, ``hparams.png`` and ``lineage.png``; return their paths.

    Args:
        run_dir: The run directory (finished or in progress).
        out_dir: Where to write the PNGs (default ``RUN_DIR/plots``).
        member: Whose lineage to highlight (default: the best member of the last generation).
        dpi: Resolution.

    Raises:
        HistoryError: Missing run dir or history, no complete generation, or member out of range.
    """
    config = read_config(run_dir)
    if member is None:
        member = champion_member(run_dir)  # a finished run: the member in best.zip
    if is_async(config):
        assert config is not None
        records = read_history(run_dir)
        if not records:
            raise HistoryError(f"{os.path.join(run_dir, 'history.jsonl')!r} holds no record yet")
        if member is not None and not 0 <= member < int(config.get("population", 0)):
            raise HistoryError(f"member {member} is out of range: the run has members 0..{config.get('population')}")
        out = out_dir or os.path.join(run_dir, "plots")
        os.makedirs(out, exist_ok=True)
        return plot_async(records, config, out, member, dpi)
    hist, config = load(run_dir)
    if member is None:
        member = hist.best_member()
    hist.ancestry(member)  # range check before any file is written
    out = out_dir or os.path.join(run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, draw in (("fitness", plot_fitness), ("hparams", plot_hparams), ("lineage", plot_lineage)):
        path = os.path.join(out, f"{name}.png")
        draw(hist, config, path, member, dpi)
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m evo_mpi.plot",
        description="Plot an evo-mpi run (finished or in progress): fitness.png, hparams.png, lineage.png.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding history.jsonl")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/plots)")
    parser.add_argument(
        "--member", type=int, help="member whose lineage is highlighted (default: best of the last generation)"
    )
    parser.add_argument("--dpi", type=int, default=120, help="resolution of the PNGs (default: 120)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, write the plots, print their paths. Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        paths = plot_run(args.run_dir, args.out, args.member, args.dpi)
    except HistoryError as exc:
        print(f"evo-mpi plot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"evo-mpi plot: cannot write the plots: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in paths:
        print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
