"""Open question 3 — does tuning the text encoder help models of every size? — read from the
sweeps of one experiment, one sweep per base model (``study/configs/oq3.yaml``).

Every gain is measured against the untuned model *of the same size* on the same held-out
prompts and seeds: each sweep's ``summary.json`` pairs its trials with its own baseline
(``study.paired``). Per base model and objective the table gives the best trial's paired gain
with its 95 % interval, the mean gain over the finished trials with a 95 % bootstrap interval
over trials (``textcraftor.bootstrap.nested_interval``; the trials share their held-out
prompts, so it is the spread over the configurations, not over prompts), how many trials
were better / worse, and the cost of a training step. No model runs here: MLflow only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

import pandas as pd

from analysis.runs import StudyRuns, sweep_summaries
from textcraftor.bootstrap import nested_interval


def best_trial(trials: Sequence[Mapping[str, Any]], objectives: Sequence[str]
               ) -> Mapping[str, Any] | None:
    """The trial with the most quality (else the first objective) among the finished trials
    that are not paired-worse than their baseline on any other objective; None if none."""
    primary = "quality" if "quality" in objectives else objectives[0]
    eligible = [t for t in trials if t.get("vs_baseline")
                and "difference" in (t["vs_baseline"].get(primary) or {})
                and all((t["vs_baseline"].get(o) or {}).get("verdict") != "worse"
                        for o in objectives if o != primary)]
    return max(eligible, key=lambda t: t["vs_baseline"][primary]["difference"], default=None)


def size_gains(study: StudyRuns, objectives: Sequence[str] = ("quality", "diversity",
                                                              "alignment")) -> pd.DataFrame:
    """One row per (base model, objective): model, sweep, parameters (UNet + text encoder),
    trials (finished, N), best_trial, best_gain with best_ci_low/high and best_verdict, mean_gain
    with mean_ci_low/high (over trials), better/worse (trials by paired verdict), dial_gain
    (the best trial's best inference-dial setting against the untuned model, where measured),
    step_s (median seconds per training step over the trials) and step_s_trials (its N)."""
    summaries = sweep_summaries(study)
    rows = []
    for sweep, summary in sorted(summaries.items()):
        runs = study.runs[study.runs["sweep"] == sweep]
        model = runs["model"].dropna().iloc[0] if runs["model"].notna().any() else sweep
        base = runs[runs["kind"] == "baseline"]
        params = math.nan
        if {"model/unet_params", "model/text_encoder_params"} <= set(base.columns) and len(base):
            params = float(base["model/unet_params"].iloc[0]
                           + base["model/text_encoder_params"].iloc[0])
        finished = [t for t in summary.get("trials", []) if t.get("vs_baseline")]
        best = best_trial(finished, objectives)
        per_step = [t["train_time_s"] / t["steps"] for t in summary.get("trials", [])
                    if t.get("train_time_s") and t.get("steps")]
        for name in objectives:
            pairs = [t["vs_baseline"].get(name) or {} for t in finished]
            gains = [p["difference"] for p in pairs if "difference" in p]
            mean = nested_interval(gains) if len(gains) >= 2 else None
            chosen = (best["vs_baseline"].get(name) or {}) if best else {}
            dial = (((best or {}).get("dials") or {}).get("best") or {}).get("vs_untuned") or {}
            rows.append({
                "model": model, "sweep": sweep, "parameters": params, "objective": name,
                "trials": len(gains), "best_trial": best["trial_id"] if best else None,
                "best_gain": chosen.get("difference", math.nan),
                "best_ci_low": chosen.get("ci_low", math.nan),
                "best_ci_high": chosen.get("ci_high", math.nan),
                "best_verdict": chosen.get("verdict"),
                "mean_gain": mean.mean if mean else (gains[0] if gains else math.nan),
                "mean_ci_low": mean.low if mean else math.nan,
                "mean_ci_high": mean.high if mean else math.nan,
                "better": sum(p.get("verdict") == "better" for p in pairs),
                "worse": sum(p.get("verdict") == "worse" for p in pairs),
                "dial_gain": (dial.get(name) or {}).get("difference", math.nan),
                "step_s": median(per_step) if per_step else math.nan,
                "step_s_trials": len(per_step)})
    table = pd.DataFrame(rows)
    return table.sort_values(["parameters", "objective"], ignore_index=True) if len(table) \
        else table


def _interval(value: float, low: float, high: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:+.3g}"
    return f"{value:+.3g} [{low:+.3g}, {high:+.3g}]"


def size_reading(table: pd.DataFrame) -> str:
    """Open question 3 in words, every figure from ``table`` (``size_gains``)."""
    if table.empty:
        return ("No sweep of this experiment logged a summary: run `study/configs/oq3.yaml` "
                "once per base model (its header gives both commands).")
    models = list(dict.fromkeys(table["model"]))
    lines = []
    for model in models:
        rows = table[table["model"] == model]
        first = rows.iloc[0]
        parts = [f"- **`{model}`** ({first['parameters'] / 1e6:.2f} M parameters, "
                 f"{int(first['trials'])} finished trials, "
                 f"{first['step_s']:.2f} s per training step, median of "
                 f"{int(first['step_s_trials'])}):"]
        for _, row in rows.iterrows():
            parts.append(f"{row['objective']}: best trial ({row['best_trial']}) "
                         f"{_interval(row['best_gain'], row['best_ci_low'], row['best_ci_high'])}"
                         f" ({row['best_verdict']}), mean over the trials "
                         f"{_interval(row['mean_gain'], row['mean_ci_low'], row['mean_ci_high'])}"
                         f", {int(row['better'])} better / {int(row['worse'])} worse")
        lines.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]) + ".")
    if len(models) < 2:
        lines.append("\nOnly one model size here: run the same study on the other size into "
                     "this experiment to compare.")
        return "\n".join(lines)
    quality = table[table["objective"] == "quality"]
    helped = [r["model"] for _, r in quality.iterrows()
              if math.isfinite(r["best_ci_low"]) and r["best_ci_low"] > 0]
    lines.append("\nGains are paired against each size's own untuned model (95 % intervals "
                 "over prompts and seeds; the mean's is over the trials, which share their "
                 "prompts). The best of several trials is an optimistic estimate. "
                 f"The best trial's quality gain excludes 0 for "
                 f"{', '.join(f'`{m}`' for m in helped) if helped else 'no size'} of "
                 f"{len(models)}.")
    return "\n".join(lines)
