"""Each run against the untuned baseline, objective by objective, on the same prompts and seeds.

Both evaluations score the same held-out prompts with the same noise seeds, so a run's
difference to the baseline is measured pairwise: a per-image objective (quality) by its
per-(prompt, seed) differences, a per-prompt one (diversity across seeds) by its per-prompt
differences, resampled by ``textcraftor.bootstrap.paired_difference``. The verdict is
``better``, ``worse`` or ``indistinguishable`` (the 95 % interval of the difference holds 0).
No Ray, no torch: the driver writes it into ``summary.json`` and the analysis reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from study.objectives import DIRECTIONS, PER_PROMPT_COLUMNS
from textcraftor.bootstrap import paired_difference


def objective_values(table: Mapping[str, Any], name: str) -> list | None:
    """An objective's values in one evaluation table (``eval/step_N.json``): [P][S] per image
    when the table has them (``per_seed``), else [P] per prompt; None when it has neither."""
    column = PER_PROMPT_COLUMNS[name]
    per_seed = table.get("per_seed") or {}
    if column in per_seed:
        return per_seed[column]
    rows = table.get("prompts") or []
    if rows and all(column in row for row in rows):
        return [row[column] for row in rows]
    return None


def paired_to_baseline(run: Mapping[str, Any], baseline: Mapping[str, Any],
                       objectives: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{objective: {difference, ci_low, ci_high, verdict, num_prompts, num_seeds}} of run −
    baseline, from their evaluation tables. An objective either table lacks, or tables over
    different prompts or seeds, give verdict ``unknown`` (with the reason) rather than a
    comparison of unpaired values."""
    found = {}
    for name in objectives:
        mine, theirs = objective_values(run, name), objective_values(baseline, name)
        reason = None
        if mine is None or theirs is None:
            reason = "no per-prompt values"
        elif ([r.get("prompt") for r in run.get("prompts", [])]
              != [r.get("prompt") for r in baseline.get("prompts", [])]
              or run.get("seeds") != baseline.get("seeds")):
            reason = "other prompts or seeds than the baseline's"
        if reason is not None:
            found[name] = {"verdict": "unknown", "reason": reason}
            continue
        interval = paired_difference(mine, theirs)
        found[name] = {"difference": interval.mean, "ci_low": interval.low,
                       "ci_high": interval.high, "verdict": interval.verdict(DIRECTIONS[name]),
                       "num_prompts": interval.num_prompts, "num_seeds": interval.num_seeds}
    return found


def last_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's last evaluation table (``eval/step_N.json`` of the highest N), or None
    when it has none (or the folder is on another machine)."""
    tables = sorted((Path(run_dir) / "eval").glob("step_*.json"))
    return json.loads(tables[-1].read_text()) if tables else None
