"""The study's figures (matplotlib, no display needed). Each function returns a Figure;
``save_figure`` writes it as PNG and SVG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.runs import k_column
from study.objectives import OBJECTIVE_METRICS, OBJECTIVES, interval_names
from study.overhead import SWEEP_PARTS, TRIAL_PARTS

OBJECTIVE_KEYS = OBJECTIVES
STATUS_MARKERS = {"FINISHED": "o", "FAILED": "x", "RUNNING": "^", "KILLED": "v"}


def save_figure(figure: Figure, folder: str | Path, name: str) -> dict[str, Path]:
    """``folder/name.png`` and ``folder/name.svg``; the figure is closed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for suffix in ("png", "svg"):
        path = folder / f"{name}.{suffix}"
        tmp = folder / f".{name}.tmp.{suffix}"
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format=suffix)
        tmp.replace(path)
        paths[suffix] = path
    plt.close(figure)
    return paths


def _finite(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    present = [c for c in columns if c in frame.columns]
    if len(present) < len(columns):
        return frame.iloc[0:0]
    return frame.dropna(subset=present)


def error_bars(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """[2, N] distances from each value of ``column`` down and up to its 95 % interval ends
    (the runs' ``<column>_ci_low``/``_ci_high``), as matplotlib's ``xerr``/``yerr`` take them;
    0 where a run has no interval; None when no run has one."""
    low, high = interval_names(column)
    if low not in frame or high not in frame or frame[[low, high]].isna().all().all():
        return None
    values = frame[column].to_numpy(float)
    below = np.nan_to_num(values - frame[low].to_numpy(float), nan=0.0)
    above = np.nan_to_num(frame[high].to_numpy(float) - values, nan=0.0)
    return np.vstack([np.clip(below, 0, None), np.clip(above, 0, None)])


def _draw_intervals(axes, frame: pd.DataFrame, x: str, y: str, colour: str) -> None:
    xerr, yerr = error_bars(frame, x), error_bars(frame, y)
    if len(frame) and (xerr is not None or yerr is not None):
        axes.errorbar(frame[x], frame[y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour,
                      elinewidth=0.8, alpha=0.7, capsize=2)


def quality_vs_diversity(runs: pd.DataFrame, x: str = "diversity", y: str = "quality") -> Figure:
    """Every finished trial, the Pareto front joined, the baseline as a star; each with its
    95 % bootstrap interval on both objectives as error bars."""
    figure, axes = plt.subplots(figsize=(6, 4.5))
    trials = _finite(runs[(runs["kind"] == "trial") & (runs["status"] == "FINISHED")], [x, y])
    _draw_intervals(axes, trials, x, y, "tab:gray")
    others = trials[~trials["pareto"]]
    axes.scatter(others[x], others[y], c="tab:gray", label="trial")
    front = trials[trials["pareto"]].sort_values(x)
    axes.plot(front[x], front[y], "o-", c="tab:red", label="Pareto front")
    for _, row in trials.iterrows():
        axes.annotate(str(row["trial_id"])[-5:], (row[x], row[y]), fontsize=7,
                      xytext=(3, 3), textcoords="offset points")
    base = _finite(runs[runs["kind"] == "baseline"], [x, y])
    if not base.empty:
        _draw_intervals(axes, base, x, y, "goldenrod")
        axes.scatter(base[x], base[y], marker="*", s=220, c="gold", edgecolors="black",
                     label="baseline (untuned)", zorder=5)
    failed = runs[(runs["kind"] == "trial") & (runs["status"] != "FINISHED")]
    title = f"{y} against {x}"
    if len(failed):
        title += f"  ({len(failed)} trial(s) not finished: not shown)"
    axes.set(xlabel=f"{x} (across seeds, per prompt; higher = more varied)"
             if x == "diversity" else x, ylabel=y, title=title)
    if error_bars(trials, y) is not None:
        axes.text(0.01, 0.01, "bars: 95 % bootstrap intervals over the held-out prompts",
                  transform=axes.transAxes, fontsize=7, color="dimgray")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return figure


def objectives_vs_params(runs: pd.DataFrame, objectives: Sequence[str],
                         params: Sequence[str]) -> Figure:
    """One panel per (objective, hyperparameter): every trial by status with its objective's
    95 % interval, the baseline level and its interval as a band."""
    rows, cols = len(objectives), max(1, len(params))
    figure, grid = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    trials = runs[runs["kind"] == "trial"]
    base = runs[runs["kind"] == "baseline"]
    for i, objective in enumerate(objectives):
        for j, param in enumerate(params):
            axes = grid[i][j]
            for status, group in trials.groupby("status"):
                if objective in group and param in group:
                    data = _finite(group, [objective, param])
                    axes.scatter(data[param], data[objective], label=status,
                                 marker=STATUS_MARKERS.get(status, "s"))
                    bars = error_bars(data, objective)
                    if bars is not None and len(data):
                        axes.errorbar(data[param], data[objective], yerr=bars, fmt="none",
                                      ecolor="tab:gray", elinewidth=0.8, capsize=2)
            if objective in base and base[objective].notna().any():
                axes.axhline(base[objective].iloc[0], ls="--", c="gold", label="baseline")
                band = error_bars(base, objective)
                if band is not None:
                    level = base[objective].iloc[0]
                    axes.axhspan(level - band[0, 0], level + band[1, 0], color="gold", alpha=0.2)
            axes.set(xlabel=param, ylabel=objective if j == 0 else None)
            axes.grid(alpha=0.3)
    grid[0][0].legend(fontsize=7)
    figure.suptitle("objectives against hyperparameters")
    figure.tight_layout()
    return figure


def training_curves(steps: pd.DataFrame, runs: pd.DataFrame,
                    keys: Sequence[str] = ("loss", "quality", "diversity")) -> Figure:
    """Per-step metrics of the Pareto trials (every finished trial if none is Pareto). The
    study's objectives (fixed weights), not ``eval/train_objective`` (each trial's own
    weights), so the curves and the baseline share one scale."""
    chosen = runs[(runs["kind"] == "trial") & runs["pareto"]]
    if chosen.empty:
        chosen = runs[(runs["kind"] == "trial") & (runs["status"] == "FINISHED")]
    figure, grid = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for axes, key in zip(grid[0], keys):
        for _, run in chosen.iterrows():
            own = steps[steps["run_id"] == run["run_id"]]
            series = own[own["key"] == key]
            if key in OBJECTIVE_KEYS:  # repeated in every report: keep the evaluation points
                evaluated = own.loc[own["key"] == OBJECTIVE_METRICS[key], "step"]
                series = series[series["step"].isin(evaluated)]
            series = series.drop_duplicates("step", keep="last").sort_values("step")
            line, = axes.plot(series["step"], series["value"],
                              marker="." if len(series) < 10 else None, label=str(run["trial_id"]))
            band = _step_interval(own, key, series["step"])
            if band is not None:  # the objective's 95 % interval at each evaluation
                axes.fill_between(band.index, band["low"], band["high"], alpha=0.15,
                                  color=line.get_color())
        base = steps[(steps["kind"] == "baseline") & (steps["key"] == key)]
        if not base.empty:
            axes.axhline(base["value"].iloc[-1], ls="--", c="gold", label="baseline")
            band = _step_interval(steps[steps["kind"] == "baseline"], key, base["step"])
            if band is not None:
                axes.axhspan(band["low"].iloc[-1], band["high"].iloc[-1], color="gold",
                             alpha=0.15)
        axes.set(xlabel="step", ylabel=key, title=key)
        axes.grid(alpha=0.3)
    grid[0][0].legend(fontsize=7)
    figure.suptitle("training curves of the Pareto trials")
    figure.tight_layout()
    return figure


def _step_interval(steps: pd.DataFrame, key: str, at: pd.Series) -> pd.DataFrame | None:
    """A run's ``<key>_ci_low``/``_ci_high`` step metrics at the steps ``at`` (index: step;
    columns low, high), or None when it logged none."""
    low, high = interval_names(key)
    ends = steps[steps["key"].isin((low, high))]
    if ends.empty:
        return None
    wide = ends.pivot_table(index="step", columns="key", values="value", aggfunc="last")
    wide = wide.reindex([s for s in at if s in wide.index]).dropna()
    if wide.empty or not {low, high} <= set(wide.columns):
        return None
    return wide.rename(columns={low: "low", high: "high"})[["low", "high"]]


def dial_curves(dials, objectives: Sequence[str]) -> Figure:
    """One trial's inference dials (``analysis.runs.DialTable``): the first objective against
    each other one, a line per M (the last M of T steps use E(a)) through a = 0 … 1, each point
    with its 95 % intervals on both axes; the untuned model (a = 0), the trial's own point
    (a = 1, M = T) and the best setting (``study.dial_table``) marked."""
    table = dials.points
    primary = "quality" if "quality" in objectives else objectives[0]
    others = [o for o in objectives if o != primary and table[o].notna().any()] or [primary]
    figure, axes = plt.subplots(1, len(others), figsize=(5.2 * len(others), 4.2),
                                squeeze=False)
    untuned = table[table["alpha"] == 0.0]
    best = dials.best or {}
    for axis, other in zip(axes[0], others):
        for index, (steps, group) in enumerate(sorted(table.groupby("finetuned_steps"),
                                                      key=lambda g: g[0])):
            line = pd.concat([untuned, group[group["alpha"] > 0]]).sort_values("alpha")
            colour = f"C{index}"
            axis.plot(line[other], line[primary], "o-", c=colour, ms=4,
                      label=f"M = {steps} of T = {dials.num_steps}")
            axis.errorbar(line[other], line[primary], yerr=error_bars(line, primary),
                          xerr=error_bars(line, other), fmt="none", ecolor=colour,
                          elinewidth=0.6, capsize=1.5, alpha=0.6)
            for _, row in line.iterrows():
                axis.annotate(f"{row['alpha']:g}", (row[other], row[primary]), fontsize=6,
                              xytext=(3, 3), textcoords="offset points")
        own = table[(table["alpha"] == 1.0) & (table["finetuned_steps"] == dials.num_steps)]
        axis.scatter(untuned[other], untuned[primary], marker="s", s=70, facecolors="none",
                     edgecolors="k", label="untuned (a = 0)", zorder=3)
        axis.scatter(own[other], own[primary], marker="D", s=70, facecolors="none",
                     edgecolors="tab:red", label="the trial (a = 1, M = T)", zorder=3)
        if best:
            axis.scatter([best["objectives"].get(other)], [best["objectives"].get(primary)],
                         marker="*", s=160, c="gold", edgecolors="k", zorder=4,
                         label=f"best: a = {best['alpha']:g}, M = {best['finetuned_steps']}")
        axis.set(xlabel=other, ylabel=primary)
        axis.grid(alpha=0.3)
    axes[0][0].set_title(f"inference dials, trial {dials.trial_id} (labels: a)")
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def effect_intervals(effects: pd.DataFrame) -> Figure:
    """Each hyperparameter's effect on each objective across its drawn range, the others held
    (``analysis.effects.linear_effects``), with its 95 % bootstrap interval: one panel per
    objective, a dashed line at no effect."""
    if effects.empty:
        figure, axis = plt.subplots(figsize=(5, 2))
        axis.text(0.5, 0.5, "too few configurations with every objective at a common step\n"
                  "to fit the effects (needs the number of hyperparameters + 2)",
                  ha="center", va="center", fontsize=9)
        axis.set_axis_off()
        return figure
    objectives = list(dict.fromkeys(effects["objective"]))
    figure, axes = plt.subplots(1, max(1, len(objectives)),
                                figsize=(4.2 * max(1, len(objectives)), 3.2), squeeze=False)
    for axis, objective in zip(axes[0], objectives):
        own = effects[effects["objective"] == objective].reset_index(drop=True)
        y = np.arange(len(own))
        axis.errorbar(own["over_range"], y, xerr=[own["over_range"] - own["range_ci_low"],
                                                 own["range_ci_high"] - own["over_range"]],
                      fmt="o", capsize=3, c="tab:blue")
        axis.axvline(0.0, ls="--", c="grey", lw=0.8)
        axis.set_yticks(y, [f"{h}\n{lo:.3g}→{hi:.3g}" for h, lo, hi in
                            zip(own["hyperparameter"], own["low"], own["high"])], fontsize=7)
        axis.set(xlabel=f"change in {objective} across the range", title=objective)
        axis.grid(alpha=0.3)
    figure.suptitle(f"effects, others held (least squares on {int(effects['num_trials'].max())}"
                    " configurations; 95 % bootstrap intervals)", fontsize=9)
    figure.tight_layout()
    return figure


def sample_grids(grids: Sequence[tuple[str, Path]]) -> Figure:
    """Sample grids side by side (same prompts in rows, same seeds in columns)."""
    figure, grid = plt.subplots(1, max(1, len(grids)), figsize=(3.6 * max(1, len(grids)), 4),
                                squeeze=False)
    for axes, (label, path) in zip(grid[0], grids):
        axes.imshow(plt.imread(str(path)))
        axes.set_title(label, fontsize=9)
        axes.axis("off")
    figure.suptitle("held-out prompts (rows) × seeds (columns)")
    figure.tight_layout()
    return figure


def cost_vs_k(runs: pd.DataFrame, steps: pd.DataFrame) -> Figure:
    """Median step time and peak memory of each trial against its truncation depth K."""
    trials = runs[runs["kind"] == "trial"]
    k = k_column(trials)
    trials = trials[trials[k].notna()] if k else trials.iloc[0:0]
    step_time = (steps[steps["key"] == "step_s"].groupby("run_id")["value"].median()
                 .rename("median_step_s"))
    data = trials.join(step_time, on="run_id")
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for status, group in data.groupby("status"):
        marker = STATUS_MARKERS.get(status, "s")
        left.scatter(group[k], group["median_step_s"], marker=marker, label=status)
        if "peak_memory_mb" in group:
            right.scatter(group[k], group["peak_memory_mb"], marker=marker, label=status)
    left.set(xlabel=f"K ({k or 'sample.k'}: steps with gradient)", ylabel="median step time (s)",
             title="step time against K")
    right.set(xlabel=f"K ({k or 'sample.k'}: steps with gradient)", ylabel="peak memory (MiB)",
              title="peak memory against K")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def category_breakdown(table: pd.DataFrame, metrics: Sequence[str] = OBJECTIVE_KEYS) -> Figure:
    """Per prompt category: each study objective for the baseline and each trial (grouped
    bars, with their 95 % intervals over the category's prompts); ``table`` is
    ``analysis.runs.by_category``'s."""
    present = [m for m in metrics if m in table.columns]
    categories = sorted(table["category"].unique())
    runs = list(dict.fromkeys(table["trial_id"]))
    figure, grid = plt.subplots(len(present), 1, figsize=(max(6, 1.2 * len(categories)),
                                                          3 * len(present)), squeeze=False)
    width = 0.8 / max(1, len(runs))
    for axes, metric in zip(grid[:, 0], present):
        for i, run in enumerate(runs):
            own = table[table["trial_id"] == run].set_index("category").reindex(categories)
            bars = error_bars(own.reset_index(), metric)  # 95 % interval over the prompts
            axes.bar([c + i * width for c in range(len(categories))], own[metric], width,
                     yerr=bars, capsize=2, error_kw={"elinewidth": 0.8}, label=str(run))
        axes.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))])
        axes.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3, axis="y")
    grid[0, 0].legend(fontsize=7, ncol=min(4, len(runs)))
    grid[0, 0].set_title("by prompt category")
    figure.tight_layout()
    return figure


def time_breakdown(summary: dict) -> Figure:
    """Where the sweep's wall went (``summary.json``, ``study.overhead``): one stacked bar for
    the sweep (setup, baseline, trials, between trials, wrap-up) and one per timed trial
    (Tune's start → its end, part by part), in seconds."""
    timed = [(t["trial_id"], t["time"]) for t in summary["trials"] if t.get("time")]
    overhead = summary["overhead"]
    rows = [("sweep", {k: overhead["parts"][k] for k in SWEEP_PARTS})] + [
        (f"trial {trial}", {k: parts[k] for k in TRIAL_PARTS}) for trial, parts in timed]
    names = list(dict.fromkeys(k for _, parts in rows for k in parts))
    colours = dict(zip(names, plt.get_cmap("tab20").colors))
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    for y, (_, parts) in enumerate(reversed(rows)):
        left = 0.0
        for name, seconds in parts.items():
            width = max(0.0, seconds)
            axes.barh(y, width, left=left, color=colours[name], label=name)
            left += width
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([label for label, _ in reversed(rows)], fontsize=8)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), [n.removesuffix("_s") for n in unique], fontsize=7, ncol=5,
                loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fraction = overhead.get("attributed_fraction")
    axes.set(xlabel="seconds", title=f"sweep wall {overhead['sweep_wall_s']:.0f} s; measured "
             + (f"{100 * fraction:.0f} %" if fraction is not None else "(trials overlap)")
             + f"; {len(timed)} timed trial(s)")
    axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return figure


def pairwise_fronts(runs: pd.DataFrame, objectives: Sequence[str]) -> Figure:
    """One panel per pair of objectives: every finished trial with its 95 % intervals, the
    trials on the Pareto front over all the objectives in red, the baseline as a star."""
    pairs = [(a, b) for i, a in enumerate(objectives) for b in objectives[i + 1:]]
    figure, grid = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
    trials = _finite(runs[(runs["kind"] == "trial") & (runs["status"] == "FINISHED")],
                     list(objectives))
    base = _finite(runs[runs["kind"] == "baseline"], list(objectives))
    for axes, (x, y) in zip(grid[0], pairs):
        _draw_intervals(axes, trials, x, y, "tab:gray")
        front = trials[trials["pareto"]]
        axes.scatter(trials[~trials["pareto"]][x], trials[~trials["pareto"]][y], c="tab:gray",
                     label="trial")
        axes.scatter(front[x], front[y], c="tab:red", label="Pareto (all objectives)")
        if not base.empty:
            _draw_intervals(axes, base, x, y, "goldenrod")
            axes.scatter(base[x], base[y], marker="*", s=200, c="gold", edgecolors="black",
                         label="baseline", zorder=5)
        axes.set(xlabel=x, ylabel=y)
        axes.grid(alpha=0.3)
    grid[0][0].legend(fontsize=7)
    figure.suptitle("each pair of objectives (bars: 95 % bootstrap intervals)")
    figure.tight_layout()
    return figure


def parallel_objectives(runs: pd.DataFrame, objectives: Sequence[str],
                        params: Sequence[str]) -> Figure:
    """Parallel coordinates (``pandas.plotting.parallel_coordinates``) of the hyperparameters
    and objectives of every finished trial and the baseline, each axis scaled to [0, 1] over
    the runs shown (min → 0, max → 1); Pareto trials in red."""
    from pandas.plotting import parallel_coordinates

    columns = [*params, *objectives]
    shown = runs[(runs["kind"] == "baseline")
                 | ((runs["kind"] == "trial") & (runs["status"] == "FINISHED"))]
    shown = _finite(shown, list(objectives))
    frame = shown[[c for c in columns if c in shown]].apply(pd.to_numeric, errors="coerce")
    span = (frame.max() - frame.min()).replace(0, 1.0)
    scaled = (frame - frame.min()) / span
    scaled["run"] = np.where(shown["kind"] == "baseline", "baseline",
                             np.where(shown["pareto"].astype(bool), "Pareto", "trial"))
    figure, axes = plt.subplots(figsize=(1.6 * len(columns) + 2, 4))
    if len(scaled):
        parallel_coordinates(scaled, "run", ax=axes, color=None, alpha=0.8,
                             colormap=None, linewidth=1.5)
    axes.set(ylabel="scaled to [0, 1] over the runs shown",
             title="hyperparameters and objectives, each run one line")
    figure.tight_layout()
    return figure
