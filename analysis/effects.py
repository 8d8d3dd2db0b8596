"""How the searched hyperparameters move each objective, with intervals: open question 1 read
from a study.

Each trial is one configuration; its objectives are taken at one evaluation step that every
trial reached (under MO-ASHA the rung: stopped and finished trials alike, so the comparison is
not only among the survivors). Each objective is fitted by ordinary least squares on the
hyperparameters together, y = b0 + Σ bⱼ·xⱼ (numpy's ``lstsq``), and each slope's 95 % interval
comes from a percentile bootstrap over the trials (``textcraftor.bootstrap``'s level, resamples
and seed). A slope is given per unit and over the searched range (bⱼ × (max − min) of the
drawn values): how far the objective moves from one end of the range to the other, the other
hyperparameters held fixed. The evaluation noise of each trial's value is inside the trials'
scatter, so it widens the intervals; the training-seed noise is too (one seed per
configuration). Written here, not taken from a library: statsmodels would add a dependency for
one least-squares fit and a bootstrap loop. No Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.runs import StudyRuns
from study.objectives import interval_names
from textcraftor.bootstrap import LEVEL, RESAMPLES, SEED


def common_step(study: StudyRuns, objectives: Sequence[str]) -> int | None:
    """The largest evaluation step at which every trial that evaluated at all has every
    objective (None when no trial has one)."""
    trials = study.steps[(study.steps["kind"] == "trial")
                         & study.steps["key"].isin(list(objectives))]
    if trials.empty:
        return None
    per_trial = trials.groupby("trial_id")["step"].apply(set)
    shared = set.intersection(*per_trial.tolist())
    return max(shared) if shared else None


def objectives_at_step(study: StudyRuns, objectives: Sequence[str],
                       step: int | None = None) -> tuple[pd.DataFrame, int | None]:
    """(one row per trial: trial_id, status, its searched hyperparameters, each objective and
    its interval ends at ``step``; the step). ``step`` None: ``common_step``."""
    step = common_step(study, objectives) if step is None else step
    keys = [k for o in objectives for k in (o, *interval_names(o))]
    points = study.steps[(study.steps["kind"] == "trial") & (study.steps["step"] == step)
                         & study.steps["key"].isin(keys)]
    wide = points.pivot_table(index="trial_id", columns="key", values="value", aggfunc="last")
    params = study.hyperparameters(varying=True)
    frame = study.trials[["trial_id", "status", *params]].merge(
        wide.reset_index(), on="trial_id", how="inner")
    return frame, step


def linear_effects(frame: pd.DataFrame, params: Sequence[str], objectives: Sequence[str],
                   resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
                   ) -> pd.DataFrame:
    """One row per (objective, hyperparameter): slope (per unit), ci_low, ci_high, over_range
    (slope × the range drawn), range_ci_low, range_ci_high, low, high (the range),
    num_trials, and effect: "rises", "falls" (the interval excludes 0) or "no clear effect".
    Trials missing any value are left out; fewer than len(params) + 2 trials give no rows."""
    rows = []
    tail = (1.0 - level) / 2.0
    for objective in objectives:
        data = frame[[*params, objective]].apply(pd.to_numeric, errors="coerce").dropna()
        n = len(data)
        if n < len(params) + 2:
            continue
        x = np.column_stack([np.ones(n), data[list(params)].to_numpy(float)])
        y = data[objective].to_numpy(float)
        slopes = np.linalg.lstsq(x, y, rcond=None)[0][1:]
        rng = np.random.default_rng(seed)
        drawn = rng.integers(n, size=(resamples, n))
        replicates = np.array([np.linalg.lstsq(x[i], y[i], rcond=None)[0][1:] for i in drawn])
        low, high = np.quantile(replicates, [tail, 1.0 - tail], axis=0)
        for j, param in enumerate(params):
            span = float(data[param].max() - data[param].min())
            effect = ("rises" if low[j] > 0 else "falls" if high[j] < 0 else "no clear effect")
            rows.append({"objective": objective, "hyperparameter": param,
                         "slope": float(slopes[j]), "ci_low": float(low[j]),
                         "ci_high": float(high[j]), "over_range": float(slopes[j]) * span,
                         "range_ci_low": float(low[j]) * span,
                         "range_ci_high": float(high[j]) * span,
                         "low": float(data[param].min()), "high": float(data[param].max()),
                         "num_trials": n, "effect": effect})
    return pd.DataFrame(rows)


def beats_baseline(summary: dict | None, objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial with a paired comparison to the untuned model (summary.json's
    ``vs_baseline``, at the trial's last evaluation): trial_id, status, steps, each objective's
    verdict, better_on_all (better on every objective), not_worse (worse on none, better on at
    least one)."""
    rows = []
    for trial in (summary or {}).get("trials", []):
        versus = trial.get("vs_baseline") or {}
        if not versus:
            continue
        verdicts = {o: (versus.get(o) or {}).get("verdict", "unknown") for o in objectives}
        rows.append({"trial_id": trial["trial_id"], "status": trial["status"],
                     "steps": trial.get("steps"), **trial["params"],
                     **{f"{o}_verdict": v for o, v in verdicts.items()},
                     "better_on_all": all(v == "better" for v in verdicts.values()),
                     "not_worse": (all(v in ("better", "indistinguishable")
                                       for v in verdicts.values())
                                   and any(v == "better" for v in verdicts.values()))})
    return pd.DataFrame(rows)
