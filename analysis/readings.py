"""Short written readings of the study's figures, computed from the data (the notebooks and the
report end with them). Each returns Markdown; none states a number it did not compute."""

from __future__ import annotations

import math

import pandas as pd

from analysis.effects import beats_baseline, linear_effects, objectives_at_step
from analysis.runs import CONSTRAINT, StudyRuns, k_column, sweep_summary


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _spearman(frame: pd.DataFrame, x: str, y: str) -> float | None:
    data = frame[[x, y]].dropna() if {x, y} <= set(frame.columns) else frame.iloc[0:0]
    if len(data) < 3 or data[x].nunique() < 2 or data[y].nunique() < 2:
        return None
    return float(data[x].rank().corr(data[y].rank()))


def _direction(rho: float | None) -> str:
    if rho is None:
        return "too few finished trials with distinct values (< 3) to read a trend"
    strength = "strong" if abs(rho) >= 0.7 else "weak" if abs(rho) >= 0.3 else "none"
    trend = "no trend" if strength == "none" else f"{'rises' if rho > 0 else 'falls'} ({strength})"
    return f"{trend}, Spearman ρ = {rho:+.2f}"


def status_line(study: StudyRuns) -> str:
    counts = study.trials["status"].value_counts().to_dict()
    parts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return f"{len(study.trials)} trial(s): {parts}."


def _baseline_value(study: StudyRuns, column: str) -> float | None:
    base = study.baseline
    if base.empty or column not in base or base[column].isna().all():
        return None
    return float(base[column].dropna().iloc[0])


def _versus_baseline(study: StudyRuns, row: pd.Series, column: str) -> str:
    base = _baseline_value(study, column)
    value = row.get(column)
    if base is None or value is None or not math.isfinite(value):
        return f"{column} {_fmt(value)} (no baseline value)"
    change = (value - base) / abs(base) * 100 if base else math.nan
    return f"{column} {_fmt(value)} against the baseline's {_fmt(base)} ({change:+.1f} %)"


def weights_vs_constraint(study: StudyRuns) -> str:
    """Open question 1: how the reward weights w and the CLIP constraint λ (and the other
    searched fields) move each objective, with 95 % intervals (``analysis.effects``), and which
    configurations beat the untuned model on every objective (paired, ``summary.json``)."""
    objectives = [o for o in study.objectives if o in study.runs]
    lines = [status_line(study)]
    frame, step = objectives_at_step(study, objectives)
    params = [p for p in study.hyperparameters(varying=True) if p in frame]
    effects = linear_effects(frame, params, objectives) if params else pd.DataFrame()
    if effects.empty:
        lines.append(f"- Too few trials with every objective at a common step ({len(frame)}) "
                     "to fit each objective on the hyperparameters.")
    else:
        lines.append(f"- At step {step}, which all {int(effects['num_trials'].max())} "
                     "configurations reached: each objective fitted on "
                     f"{', '.join(f'`{p}`' for p in params)} together (least squares); each "
                     "hyperparameter's effect across its drawn range, the others held, "
                     "[95 % bootstrap interval over the trials]:")
        for param in params:
            own = effects[effects["hyperparameter"] == param]
            if own.empty:
                continue
            first = own.iloc[0]
            moves = "; ".join(
                f"{r.objective} {r.over_range:+.3g} [{r.range_ci_low:+.3g}, "
                f"{r.range_ci_high:+.3g}] ({r.effect})" for r in own.itertuples())
            lines.append(f"  - `{param}` from {_fmt(first['low'])} to {_fmt(first['high'])}: "
                         f"{moves}.")
    summary = sweep_summary(study)
    verdicts = beats_baseline(summary, objectives)
    if not verdicts.empty:
        best = verdicts[verdicts["better_on_all"]]
        named = ", ".join(f"{row['trial_id']} ("
                          + ", ".join(f"{p}={_fmt(row[p])}" for p in params if p in row) + ")"
                          for _, row in best.iterrows())
        lines.append(f"- Better than the untuned model on all of {', '.join(objectives)} "
                     f"(paired 95 % intervals at each trial's last evaluation): {len(best)} of "
                     f"{len(verdicts)} configuration(s){': ' + named if named else ''}.")
        fair = verdicts[verdicts["not_worse"] & ~verdicts["better_on_all"]]
        lines.append(f"- Better on some objective and worse on none: {len(fair)} more"
                     + (": " + ", ".join(fair["trial_id"]) if len(fair) else "") + ".")
    finished = study.finished
    front = finished[finished["pareto"]]
    if not front.empty and CONSTRAINT in front:
        lines.append(f"- {len(front)} trial(s) on the Pareto front, with λ from "
                     f"{_fmt(float(front[CONSTRAINT].min()))} to "
                     f"{_fmt(float(front[CONSTRAINT].max()))}.")
    base_div = _baseline_value(study, "diversity")
    if base_div is not None and "diversity" in finished and not finished.empty:
        lost = finished[finished["diversity"] < 0.9 * base_div]
        lines.append(f"- {len(lost)} of {len(finished)} trial(s) lost more than 10 % of the "
                     "baseline's intra-prompt diversity at their last evaluation (a sign of "
                     "mode collapse).")
    return "\n".join(lines)


def truncation_depth(study: StudyRuns) -> str:
    """How the truncation depth K trades quality against cost."""
    finished = study.finished
    lines = [status_line(study)]
    k = k_column(finished)
    if k is None or finished.empty:
        return "\n".join([*lines, "- No finished trial searched K (sample.k or sample.k_max)."])
    lines.append(f"- Against K (`{k}`): quality: "
                 f"{_direction(_spearman(finished, k, 'quality'))}.")
    step_time = (study.steps[study.steps["key"] == "step_s"].groupby("run_id")["value"]
                 .median())
    timed = finished.join(step_time.rename("median_step_s"), on="run_id")
    per_k = timed.groupby(k)["median_step_s"].median().dropna()
    if len(per_k) >= 2:
        low, high = per_k.index.min(), per_k.index.max()
        lines.append(f"- Median step time {_fmt(float(per_k[low]))} s at K = {_fmt(low)} and "
                     f"{_fmt(float(per_k[high]))} s at K = {_fmt(high)} "
                     f"(× {per_k[high] / per_k[low]:.2f}).")
    elif len(per_k) == 1:
        lines.append(f"- Only K = {_fmt(per_k.index[0])} was timed: no cost trend.")
    if "peak_memory_mb" in timed and timed["peak_memory_mb"].notna().any():
        memory = timed.groupby(k)["peak_memory_mb"].max().dropna()
        lines.append("- Peak memory per K (MiB): " + ", ".join(
            f"K={_fmt(value)}: {_fmt(float(v))}" for value, v in memory.items()) + ".")
    return "\n".join(lines)


def dials(table, objectives: list[str] | tuple[str, ...]) -> str:
    """One trial's inference dials (``analysis.runs.DialTable``): per M, how a moves each
    objective from the untuned model (a = 0) to a = 1, with 95 % intervals; the best setting
    against the trial's own point (a = 1, M = T), paired."""
    points = table.points
    untuned = points[points["alpha"] == 0.0]
    lines = [f"Trial {table.trial_id}: {len(points)} dial settings, "
             f"{_fmt(float(points['num_prompts'].iloc[0]))} prompts × "
             f"{_fmt(float(points['num_seeds'].iloc[0]))} seeds each"
             + (f", measured in {table.wall_s:.1f} s" if table.wall_s else "") + "."]

    def cell(row, name: str) -> str:
        low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
        text = _fmt(float(row[name]))
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            text += f" [{_fmt(float(low))}, {_fmt(float(high))}]"
        return text

    for steps, group in sorted(points[points["alpha"] > 0].groupby("finetuned_steps"),
                               key=lambda g: g[0]):
        top = group.sort_values("alpha").iloc[-1]
        moves = "; ".join(f"{o} {cell(untuned.iloc[0], o)} → {cell(top, o)}"
                          for o in objectives if o in points and not untuned.empty)
        lines.append(f"- M = {steps} of T = {table.num_steps}, a = 0 → {_fmt(float(top['alpha']))}:"
                     f" {moves}.")
    best = table.best
    if best:
        own = best.get("vs_own") or {}
        lines.append(f"- Best setting ({best['rule']}): a = {_fmt(float(best['alpha']))}, "
                     f"M = {best['finetuned_steps']}.")
        if (best["alpha"], best["finetuned_steps"]) == (1.0, table.num_steps):
            lines.append("- That is the trial's own point (a = 1, M = T): no dial setting "
                         "improves on it under this rule.")
            return "\n".join(lines)
        lines.append("- Best minus the trial's own point (a = 1, M = T), paired: " + "; ".join(
            f"{o} {own[o]['difference']:+.3g} [{own[o]['ci_low']:+.3g}, "
            f"{own[o]['ci_high']:+.3g}] ({own[o]['verdict']})"
            for o in objectives if "difference" in own.get(o, {})) + ".")
    return "\n".join(lines)


def prompt_vs_direct(table: pd.DataFrame) -> str:
    """What ``python -m study.compare_modes``'s table (``comparison.json``, indexed by mode, with
    a ``base`` row) says, computed from it."""
    base = table.loc["base"]
    lines = []
    for mode in (m for m in table.index if m != "base"):
        row = table.loc[mode]
        parts = [f"**{mode}** ({int(row['steps'])} steps, {row['train_seconds']:.0f} s of "
                 f"training)"]
        for metric in ("aesthetic", "clip", "oracle_all", "diversity_attributes"):
            if pd.notna(row.get(metric)) and pd.notna(base.get(metric)):
                parts.append(f"{metric} {base[metric]:.3f} → {row[metric]:.3f} "
                             f"({row[metric] - base[metric]:+.3f})")
        lines.append("- " + "; ".join(parts))
    tuned = table.drop(index="base")
    if len(tuned) == 2 and tuned["aesthetic"].notna().all():
        best = tuned["aesthetic"].idxmax()
        cheaper = tuned["train_seconds"].idxmin()
        lines.append(f"\nOn the same number of steps, **{best}** reached the higher held-out "
                     f"aesthetic reward; **{cheaper}** trained faster "
                     f"({tuned['train_seconds'].min():.0f} s against "
                     f"{tuned['train_seconds'].max():.0f} s). One run per mode (N = 1 seed): "
                     "differences inside the evaluation noise are not evidence.")
    return "\n".join(lines)
