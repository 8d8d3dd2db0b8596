"""The sweep's results: every trial with params, objectives, status and Pareto flag."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import moocore
import numpy as np

from textcraftor.atomic import write_json_atomic


def pareto_flags(points: Sequence[Sequence[float] | None]) -> list[bool]:
    """Non-dominated points (all objectives maximised; ``moocore.is_nondominated``, duplicates
    all kept); ``None`` or a non-finite value (no result) is never Pareto."""
    valid = [i for i, p in enumerate(points)
             if p is not None and all(math.isfinite(v) for v in p)]
    flags = [False] * len(points)
    if valid:
        values = np.asarray([points[i] for i in valid], dtype=float)
        for i, front in zip(valid, moocore.is_nondominated(values, maximise=True,
                                                           keep_weakly=True)):
            flags[i] = bool(front)
    return flags


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The hypervolume (``moocore.hypervolume``, all objectives maximised) the points dominate
    beyond ``reference`` (here: the untuned baseline's objectives), in the objectives' units
    multiplied; points that do not improve on the reference in every objective add nothing,
    so no points, or none better than the baseline, give 0."""
    values = np.asarray(points, dtype=float).reshape(len(points), len(reference))
    better = values[(values > np.asarray(reference, dtype=float)).all(axis=1)]
    if not len(better):
        return 0.0
    return float(moocore.hypervolume(better, ref=np.asarray(reference, dtype=float),
                                     maximise=True))


def summarize(trials: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> dict[str, Any]:
    """``trials``: dicts with trial_id, status, params, metrics (final), error, mlflow_run_id."""
    points = [[t["objectives"][o] for o in objectives] if t["status"] == "TERMINATED"
              and all(t["objectives"].get(o) is not None for o in objectives) else None
              for t in trials]
    for trial, pareto in zip(trials, pareto_flags(points)):
        trial["pareto"] = pareto
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    return {"objectives": list(objectives), "num_trials": len(trials), "status_counts": counts,
            "trials": list(trials)}


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    write_json_atomic(path, summary, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


# a trial's paired verdict against the baseline, as the table marks it
VERDICT_MARKS = {"better": "+", "worse": "-", "indistinguishable": "=", "unknown": "?"}


def pareto_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table: the baseline, then the trials, Pareto ones marked *. Each objective
    reads ``value [low, high] v``: its 95 % bootstrap interval, and the trial's paired verdict
    against the baseline (``VERDICT_MARKS``: + better, - worse, = indistinguishable)."""
    objectives = summary["objectives"]
    trials = summary["trials"]
    params = sorted({k for t in trials for k in t["params"]})
    header = ["", "trial", "status", *objectives, *params]
    rows = [header]
    baseline = summary.get("baseline")
    if baseline:
        rows.append(["", "baseline", baseline["status"],
                     *[_cell(baseline["objectives"].get(o),
                             (baseline.get("intervals") or {}).get(o), None)
                       for o in objectives], *["" for _ in params]])
    for t in sorted(trials, key=lambda t: (not t["pareto"], t["trial_id"])):
        versus = t.get("vs_baseline") or {}
        rows.append(["*" if t["pareto"] else "", t["trial_id"], t["status"],
                     *[_cell(t["objectives"].get(o), (t.get("intervals") or {}).get(o),
                             (versus.get(o) or {}).get("verdict")) for o in objectives],
                     *[_fmt(t["params"].get(p)) for p in params]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    counted = max((v for t in trials for v in (t.get("vs_baseline") or {}).values()
                   if "num_prompts" in v), key=lambda v: v["num_seeds"], default=None)
    if counted:
        lines.append(f"[95 % bootstrap interval over {counted['num_prompts']} prompts x "
                     f"{counted['num_seeds']} seeds]; against the baseline, paired: + better, "
                     "- worse, = indistinguishable")
    lines.extend(dial_lines(trials, objectives))
    return "\n".join(lines)


def dial_lines(trials: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[str]:
    """One line per trial with inference dials (``study.dial_table``): its best setting (a, M), the
    objectives there, and each one's paired difference to the trial's own point (a = 1, all
    steps) with its 95 % interval; or why the dials failed."""
    lines = []
    for t in sorted(trials, key=lambda t: (not t.get("pareto"), t["trial_id"])):
        dials = t.get("dials")
        if not dials:
            continue
        if dials.get("error"):
            lines.append(f"  {t['trial_id']}: dials failed: {dials['error'].splitlines()[-1]}")
            continue
        best = dials.get("best")
        if not best:
            continue
        own = best.get("vs_own") or {}
        if (best["alpha"], best["finetuned_steps"]) == (1.0, dials.get("num_steps")):
            lines.append(f"  {t['trial_id']}: a=1, M=T: its own point")
            continue
        moves = ", ".join(
            f"{o} {_fmt(best['objectives'].get(o))} ({_signed(own[o])})"
            for o in objectives if o in best["objectives"] and "difference" in own.get(o, {}))
        lines.append(f"  {t['trial_id']}: a={best['alpha']:g}, M={best['finetuned_steps']}: "
                     f"{moves}")
    if lines:
        lines.insert(0, "best dial setting per trial (highest quality not worse than the "
                        "untuned model on the rest; in brackets: minus the trial's own a=1, "
                        "all steps, [95 % interval]):")
    return lines


def _signed(difference: Mapping[str, Any]) -> str:
    return (f"{difference['difference']:+.3g} [{difference['ci_low']:+.3g}, "
            f"{difference['ci_high']:+.3g}]")


def _cell(value: Any, interval: Sequence | None, verdict: str | None) -> str:
    text = _fmt(value)
    if value is not None and interval and all(isinstance(v, (int, float)) for v in interval):
        text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
    if verdict:
        text += f" {VERDICT_MARKS.get(verdict, '?')}"
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
