"""Repeats: each sampled configuration trained with ``tuner.repeats`` training seeds.

Tune's ``Repeater`` groups the trials of one suggestion and tells the searcher their mean, but
for one metric only; ``Repeats`` is that ``Repeater`` telling every objective's mean (NaN-mean
over the repeats that finished), so a multi-objective Optuna study sees one trial per
configuration. Each repeat's Tune config carries its index (``TRIAL_INDEX``); the trial adds it
to ``train.seed`` (``study.space.trial_run_config``). ``repeat_groups`` summarises the groups
for ``summary.json``: per configuration, each objective's mean, sample standard deviation and
N, and the Pareto flags among the groups' means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.search import Repeater


class Repeats(Repeater):
    """``Repeater`` for several metrics: the searcher hears each metric's mean."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        group = self._trial_id_to_group[trial_id]
        metrics = self.searcher.metric
        names = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        values = tuple(float(result[n]) if result and result.get(n) is not None else math.nan
                       for n in names)
        group.report(trial_id, values)
        if group.finished_reporting():
            scores = np.asarray(group.scores(), dtype=float).reshape(-1, len(names))
            if np.isnan(scores).all(axis=0).any():  # an objective no repeat measured
                self.searcher.on_trial_complete(group.primary_trial_id, None, error=True)
                return
            means = np.nanmean(scores, axis=0)
            self.searcher.on_trial_complete(  # measured: not a failure, whichever ended last
                group.primary_trial_id, result={n: float(m) for n, m in zip(names, means)},
                error=False)


def repeat_groups(trials: Sequence[Mapping[str, Any]], objectives: Sequence[str]
                  ) -> list[dict[str, Any]]:
    """Per group of repeats (``repeat_of``): its params, trial ids, and for each objective the
    mean, the sample standard deviation (None below 2 values) and N over the repeats that ran to
    their end (TERMINATED); ``pareto``: non-dominated among the groups' means."""
    from study.summary import pareto_flags

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for trial in trials:
        groups.setdefault(trial.get("repeat_of") or trial["trial_id"], []).append(trial)
    found = []
    for first, members in sorted(groups.items()):
        done = [t for t in members if t["status"] == "TERMINATED"]
        stats = {}
        for name in objectives:
            values = [t["objectives"][name] for t in done
                      if isinstance(t["objectives"].get(name), (int, float))]
            stats[name] = {"mean": float(np.mean(values)) if values else None,
                           "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                           "n": len(values)}
        found.append({"repeat_of": first, "params": dict(members[0]["params"]),
                      "trials": sorted(t["trial_id"] for t in members), "objectives": stats})
    points = [[g["objectives"][n]["mean"] for n in objectives]
              if all(g["objectives"][n]["mean"] is not None for n in objectives) else None
              for g in found]
    for group, pareto in zip(found, pareto_flags(points)):
        group["pareto"] = pareto
    return found
