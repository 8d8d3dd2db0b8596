"""The gradient estimators side by side at a matched cost (``study/configs/estimators.yaml``,
notebook 06): per sweep and estimator, each held-out score's gain over the sweep's own untuned
model, pooled over the estimator's repeats, against what its training cost.

A gain is paired: every trial and its sweep's baseline score the same held-out prompts with the
same noise seeds. Per prompt, a repeat's difference is the mean over the seeds of trial −
baseline; the estimator's gain is the mean over prompts and repeats, and its 95 % interval the
two-stage bootstrap of ``textcraftor.bootstrap.nested_interval`` over [prompts, repeats]
(prompts resampled, then repeats within each): it spans both the prompts and the training
seeds. The level is the mean score of the repeats, with the same interval. Costs are the means
over the repeats of what each trial logged: optimizer steps, UNet passes (the budget's unit),
training seconds (the sum of its steps' wall) and, on CUDA, the steps' peak memory. A
noise-optimisation run logged into the experiment (``study.noise_opt``) is a row of its own,
its cost the optimisation's, spent at inference. No model runs here: MLflow only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.runs import StudyRuns, latest_evaluation, sweep_summaries
from textcraftor.bootstrap import difference_of_groups, nested_interval

# held-out scores: the study's objectives and the two rewards and the oracle's accuracy they
# are made of; diversity is per prompt (across seeds), the others per image
SCORES = ("quality", "aesthetic", "clip", "alignment", "oracle_all", "diversity")


def score_values(table: Mapping[str, Any], name: str) -> np.ndarray | None:
    """One score of an evaluation table (``eval/step_N.json``) per prompt, [P]: the seeds' mean
    of a per-image score, or the per-prompt value; None when the table lacks it."""
    per_seed = table.get("per_seed") or {}
    if name in per_seed:
        return np.nanmean(np.asarray(per_seed[name], dtype=float), axis=1)
    rows = table.get("prompts") or []
    if rows and all(name in row for row in rows):
        return np.asarray([row[name] for row in rows], dtype=float)
    return None


def estimator_of_run(row: Mapping[str, Any]) -> str:
    """A run's gradient estimator: its searched sample.truncation, else its sweep's base's; a
    run of another method logged as a trial (``method``: noise_opt) under the method's name."""
    for key in ("method", "sample.truncation", "estimator"):
        value = row.get(key)
        if isinstance(value, str):
            return value
    return "unknown"


def sweep_evaluations(study: StudyRuns):
    """Per sweep with a baseline evaluation: (sweep, the baseline's evaluation table, {estimator:
    [(trial row, its evaluation table)]} of the finished trials scored on the baseline's seeds,
    {trial id: its summary.json entry})."""
    runs = study.runs
    client = study.client()
    summaries = sweep_summaries(study)
    for sweep, group in runs.groupby("sweep"):
        base = group[group["kind"] == "baseline"]
        reference = latest_evaluation(client, base["run_id"].iloc[0]) if len(base) else None
        if reference is None:
            continue
        trials = group[(group["kind"] == "trial") & (group["status"] == "FINISHED")]
        timing = {str(t["trial_id"]): t for t in (summaries.get(sweep) or {}).get("trials", [])}
        by_estimator: dict[str, list[tuple[Mapping[str, Any], dict]]] = {}
        for _, trial in trials.iterrows():
            table = latest_evaluation(client, trial["run_id"])
            if table is not None and table.get("seeds") == reference.get("seeds"):
                by_estimator.setdefault(estimator_of_run(trial), []).append((trial, table))
        yield sweep, reference, by_estimator, timing


def estimator_gains(study: StudyRuns, scores: Sequence[str] = SCORES) -> pd.DataFrame:
    """One row per (sweep, estimator, score): repeats (N trials), prompts (P), level with
    level_ci_low/high, baseline (the untuned model's mean), gain with gain_ci_low/high (paired,
    over prompts and repeats), and the costs: steps, unet_passes, train_s, peak_memory_bytes
    (NaN off CUDA). Trials that did not finish, and sweeps without a baseline evaluation, are
    left out."""
    rows = []
    for sweep, reference, by_estimator, timing in sweep_evaluations(study):
        for estimator, members in sorted(by_estimator.items()):
            cost = _costs([trial for trial, _ in members], timing)
            for name in scores:
                base_values = score_values(reference, name)
                values = [score_values(table, name) for _, table in members]
                if base_values is None or any(v is None or v.shape != base_values.shape
                                              for v in values):
                    continue
                levels = np.stack(values, axis=1)  # [P, R]
                level = nested_interval(levels)
                gain = nested_interval(levels - base_values[:, None])
                rows.append({"sweep": sweep, "estimator": estimator, "score": name,
                             "repeats": len(values), "prompts": len(base_values),
                             "level": level.mean, "level_ci_low": level.low,
                             "level_ci_high": level.high,
                             "baseline": float(np.nanmean(base_values)),
                             "gain": gain.mean, "gain_ci_low": gain.low,
                             "gain_ci_high": gain.high, **cost})
    return pd.DataFrame(rows)


def estimator_differences(study: StudyRuns, reference: str = "last_k",
                          scores: Sequence[str] = SCORES) -> pd.DataFrame:
    """Each estimator against ``reference`` (the paper's last_k by default) in the same sweep:
    ``differences_between`` of their trials' evaluation tables. Empty when no sweep has a
    finished trial of ``reference`` and of another estimator."""
    rows = []
    for sweep, _, by_estimator, _ in sweep_evaluations(study):
        tables = {e: [table for _, table in members] for e, members in by_estimator.items()}
        rows += [{"sweep": sweep, **row}
                 for row in differences_between(tables, reference, scores)]
    return pd.DataFrame(rows)


def differences_between(tables: Mapping[str, Sequence[Mapping[str, Any]]], reference: str,
                        scores: Sequence[str] = SCORES) -> list[dict[str, Any]]:
    """Per estimator other than ``reference`` and per score: the mean over prompts of (its
    repeats' mean − the reference's repeats' mean) with its 95 % interval
    (``textcraftor.bootstrap.difference_of_groups``: prompts resampled together, each group's
    repeats within them), and the verdict: better / worse / indistinguishable (for diversity
    and every score here, higher is better). ``tables``: {estimator: its trials' evaluation
    tables (``eval/step_N.json``)}, all on the same prompts and seeds. Rows: estimator,
    reference, score, repeats, reference_repeats, prompts, difference, ci_low, ci_high,
    verdict."""
    if reference not in tables:
        return []
    rows = []
    for estimator in sorted(set(tables) - {reference}):
        for name in scores:
            mine = [score_values(t, name) for t in tables[estimator]]
            theirs = [score_values(t, name) for t in tables[reference]]
            values = [v for v in (*mine, *theirs) if v is not None]
            if len(values) < len(mine) + len(theirs) or len({v.shape for v in values}) != 1:
                continue
            interval = difference_of_groups(np.stack(mine, axis=1), np.stack(theirs, axis=1))
            rows.append({"estimator": estimator, "reference": reference, "score": name,
                         "repeats": len(mine), "reference_repeats": len(theirs),
                         "prompts": interval.num_prompts, "difference": interval.mean,
                         "ci_low": interval.low, "ci_high": interval.high,
                         "verdict": interval.verdict("max")})
    return rows


def differences_reading(table: pd.DataFrame) -> str:
    """``estimator_differences`` in words, every figure from ``table``."""
    if table.empty:
        return ("No sweep has finished trials of the reference estimator and of another: no "
                "estimator is compared with it directly.")
    lines = []
    for (sweep, estimator, reference), group in table.groupby(
            ["sweep", "estimator", "reference"], sort=False):
        first = group.iloc[0]
        parts = [f"{row['score']} {row['difference']:+.3g} [{row['ci_low']:+.3g}, "
                 f"{row['ci_high']:+.3g}] ({row['verdict']})" for _, row in group.iterrows()]
        lines.append(f"- **{estimator} − {reference}** ({sweep}; N = {int(first['repeats'])} "
                     f"vs {int(first['reference_repeats'])} repeats × {int(first['prompts'])} "
                     f"prompts): " + "; ".join(parts) + ".")
    lines.append("\nDifferences of the two estimators' repeat means on the same prompts and "
                 "seeds, 95 % intervals (prompts resampled together, each estimator's repeats "
                 "within them): the direct comparison, not the overlap of two gains.")
    return "\n".join(lines)


def _costs(trials: Sequence[Mapping[str, Any]], timing: Mapping[str, Mapping[str, Any]]
           ) -> dict[str, float]:
    """Means over the repeats of the trials' logged costs (NaN where none logged it)."""
    def mean(values: Sequence[Any]) -> float:
        finite = [float(v) for v in values if v is not None and _finite(v)]
        return float(np.mean(finite)) if finite else math.nan

    summary = [timing.get(str(t["trial_id"]), {}) for t in trials]
    # a noise-optimisation run (study.noise_opt) trains nothing: its cost is the optimisation's
    # (cost/*), spent at inference on the evaluation's own images
    return {"steps": mean([s.get("steps") for s in summary]),
            "unet_passes": mean([_first(t, "train/unet_passes_total", "cost/unet_passes")
                                 for t in trials]),
            "train_s": mean([s.get("train_time_s") or t.get("cost/wall_s")
                             for s, t in zip(summary, trials)]),
            "peak_memory_bytes": mean([_first(t, "train/peak_memory_bytes",
                                              "cost/peak_memory_bytes") for t in trials])}


def _first(row: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` whose value in ``row`` is a finite number, else None."""
    return next((row[k] for k in keys if _finite(row.get(k))), None)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def gains_wide(table: pd.DataFrame, scores: Sequence[str] = SCORES) -> pd.DataFrame:
    """``estimator_gains`` as one row per (sweep, estimator): each score's gain written
    "+g [lo, hi]", then the costs."""
    if table.empty:
        return table
    rows = []
    for (sweep, estimator), group in table.groupby(["sweep", "estimator"], sort=False):
        first = group.iloc[0]
        row = {"sweep": sweep, "estimator": estimator, "repeats": int(first["repeats"])}
        for _, score in group.iterrows():
            if score["score"] in scores:
                row[score["score"]] = (f"{score['gain']:+.3g} [{score['gain_ci_low']:+.3g}, "
                                       f"{score['gain_ci_high']:+.3g}]")
        row.update({"steps": first["steps"], "unet_passes": first["unet_passes"],
                    "train_s": first["train_s"], "peak_memory_bytes": first["peak_memory_bytes"]})
        rows.append(row)
    return pd.DataFrame(rows)


def estimators_reading(table: pd.DataFrame) -> str:
    """The comparison in words, every figure from ``table`` (``estimator_gains``)."""
    if table.empty:
        return ("No finished trial with an evaluation here: run study/configs/estimators.yaml "
                "(its header gives both sweeps' commands).")
    lines = []
    for (sweep, estimator), group in table.groupby(["sweep", "estimator"], sort=False):
        first = group.iloc[0]
        parts = []
        for _, row in group.iterrows():
            verdict = ("better" if row["gain_ci_low"] > 0 else "worse" if row["gain_ci_high"] < 0
                       else "indistinguishable")
            parts.append(f"{row['score']} {row['gain']:+.3g} [{row['gain_ci_low']:+.3g}, "
                         f"{row['gain_ci_high']:+.3g}] ({verdict})")
        cost = [f"{first[key]:.0f} {label}" for key, label in
                (("steps", "steps"), ("unet_passes", "UNet passes"),
                 ("train_s", "s of " + ("optimisation" if estimator == "noise_opt"
                                        else "training")))
                if _finite(first[key])]
        lines.append(f"- **{estimator}** ({sweep}; N = {int(first['repeats'])} repeats × "
                     f"{int(first['prompts'])} prompts; {', '.join(cost) or 'no cost logged'}): "
                     + "; ".join(parts) + ".")
    lines.append("\nGains are paired against each sweep's own untuned model, 95 % intervals "
                 "over prompts and repeats. Sweeps with another sampling (policy_gradient's "
                 "η = 1) have their own baseline: compare their gains, not their levels.")
    return "\n".join(lines)
