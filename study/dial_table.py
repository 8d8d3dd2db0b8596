"""A trial's inference dials as the study reads them, and its best dial setting.

``textcraftor.dials`` evaluates a grid of settings (a, M) of a finished trial — the
interpolation weight a of E(a) = a·E_ft + (1−a)·E_orig and the number M of last sampling steps
that use it — on the study's held-out prompts and seeds (TextCraftor §3.4, Table 4). Here each
point becomes the study's objectives with their 95 % intervals and the per-prompt (per-image)
values they come from, logged to the trial's MLflow run as ``dials/dials.json``; the report and
notebook 03 read it from there and run no model.

**The best dial setting** of a trial is the point with the highest value of the study's first
objective (quality, when it is one) among the points that are not measurably worse than the
untuned model (the a = 0 point: the same prompts and seeds) on any other objective — each
compared pairwise, 95 % interval of the difference (``study.paired``). The a = 0 point itself
always qualifies, so a trial whose every tuned setting loses alignment or diversity is named
best at a = 0. It is reported with its paired difference to the trial's own point (a = 1, M =
T: what the trial's evaluation measured) on every objective. No Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from study.objectives import (
    PER_PROMPT_COLUMNS,
    interval_names,
    study_intervals,
    study_objectives,
)
from study.paired import paired_to_baseline


def study_points(table: Mapping[str, Any], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """One row per point of a dial table (``textcraftor.dials.dial_table``): alpha,
    finetuned_steps, each objective, its interval ends (``<name>_ci_low``/``_ci_high``),
    num_prompts, num_seeds; ``table``: the point's evaluation table cut to the objectives'
    columns (``objective_table``), what pairing resamples."""
    rows = []
    for point in table["points"]:
        metrics, evaluation = point["metrics"], point["table"]
        values, intervals = study_objectives(metrics), study_intervals(metrics)
        rows.append({"alpha": point["alpha"], "finetuned_steps": point["finetuned_steps"],
                     **{o: values[o] for o in objectives},
                     **{k: intervals[k] for o in objectives for k in interval_names(o)},
                     "num_prompts": len(evaluation["prompts"]),
                     "num_seeds": len(evaluation["seeds"]),
                     "table": objective_table(evaluation, objectives)})
    return rows


def objective_table(evaluation: Mapping[str, Any], objectives: Sequence[str]
                    ) -> dict[str, Any]:
    """An evaluation table (``EvalResult.table``) with only the objectives' columns: each
    prompt's row and, where the table has them, the per-image values (``study.paired``)."""
    columns = [PER_PROMPT_COLUMNS[o] for o in objectives]
    per_seed = evaluation.get("per_seed") or {}
    return {"seeds": list(evaluation["seeds"]),
            "prompts": [{"prompt": r["prompt"], **{c: r[c] for c in columns if c in r}}
                        for r in evaluation["prompts"]],
            "per_seed": {c: per_seed[c] for c in columns if c in per_seed}}


def _point_of(rows: Sequence[Mapping[str, Any]], alpha: float, steps: int
              ) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["alpha"] == alpha and r["finetuned_steps"] == steps), None)


def best_setting(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str],
                 num_steps: int) -> dict[str, Any] | None:
    """The trial's best dial setting (module docstring): {alpha, finetuned_steps, objectives,
    intervals, primary (the objective maximised), vs_untuned and vs_own ({objective: paired
    difference, interval, verdict}), rule}; None without an a = 0 point or a finite primary."""
    primary = "quality" if "quality" in objectives else objectives[0]
    untuned = _point_of(rows, 0.0, num_steps)
    if untuned is None:
        return None
    reference = untuned["table"]
    others = [o for o in objectives if o != primary]
    eligible = []
    for row in rows:
        if not math.isfinite(row[primary]):
            continue
        versus = paired_to_baseline(row["table"], reference, objectives)
        if all(versus[o]["verdict"] != "worse" for o in others):
            eligible.append((row, versus))
    if not eligible:
        return None
    row, versus = max(eligible, key=lambda e: (e[0][primary], -e[0]["alpha"]))
    own = _point_of(rows, 1.0, num_steps)
    return {"alpha": row["alpha"], "finetuned_steps": row["finetuned_steps"],
            "primary": primary,
            "objectives": {o: row[o] for o in objectives},
            "intervals": {o: [row[k] for k in interval_names(o)] for o in objectives},
            "vs_untuned": versus,
            "vs_own": (paired_to_baseline(row["table"], own["table"], objectives)
                       if own is not None else None),
            "rule": f"highest {primary} among the settings not worse than the untuned model "
                    f"(a = 0) on {', '.join(others) or 'no other objective'} (paired 95 % "
                    "intervals)"}


def study_dials(table: Mapping[str, Any], objectives: Sequence[str]) -> dict[str, Any]:
    """What a trial reports and logs: {step, num_steps, wall_s, num_points, points (rows of
    ``study_points``), best (``best_setting``)}."""
    rows = study_points(table, objectives)
    return {"step": table["step"], "num_steps": table["num_steps"], "wall_s": table["wall_s"],
            "num_points": len(rows), "points": rows,
            "best": best_setting(rows, objectives, table["num_steps"])}


def dial_record(dials: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A trial's dials in summary.json: num_points, num_steps (T), wall_s, best (no per-prompt
    values), or {error} when the measurement failed; None when it was not measured."""
    if not dials:
        return None
    if dials.get("error"):
        return {"error": dials["error"]}
    return {"num_points": dials.get("num_points"), "num_steps": dials.get("num_steps"),
            "wall_s": dials.get("wall_s"), "best": dials.get("best")}

