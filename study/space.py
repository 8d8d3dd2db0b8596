"""Search space → Optuna define-by-run function, the reference point, and trial → RunConfig."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from study.config import StudyConfig
from textcraftor.config import RunConfig

# The reference recipe (DESIGN.md): unit weights on the reference's loss scales, λ = 1,
# the last 5 steps with gradient, lr 1e-6.
REFERENCE_POINT = {"clip_constraint": 1.0, "k": 5, "lr": 1e-6}
REFERENCE_WEIGHT = 1.0


class DefineByRun:
    """Optuna define-by-run space: suggests each searched parameter, returns the fixed ones.
    A class, not a closure: Tune pickles the searcher with its experiment state."""

    def __init__(self, study: StudyConfig):
        self.searched = {n: (p.low, p.high, p.log) for n, p in study.search.searched().items()}
        self.fixed = {n: p.value for n, p in study.search.params().items() if not p.searched}

    def __call__(self, trial) -> dict[str, Any]:
        for name, (low, high, log) in self.searched.items():
            if name == "k":
                trial.suggest_int(name, int(low), int(high), log=log)
            else:
                trial.suggest_float(name, low, high, log=log)
        return dict(self.fixed)


def reference_point(study: StudyConfig) -> dict[str, float]:
    """The reference setting, clipped into the searched ranges (searched parameters only)."""
    point = {}
    for name, param in study.search.searched().items():
        value = REFERENCE_POINT.get(name, REFERENCE_WEIGHT)
        value = min(max(value, param.low), param.high)
        point[name] = int(round(value)) if name == "k" else float(value)
    return point


def trial_run_config(study: StudyConfig, params: Mapping[str, Any], output_dir: str | Path
                     ) -> RunConfig:
    """The RunConfig one trial trains with: ``base`` with the trial's hyperparameters."""
    base = study.base
    values = {n: p.value for n, p in study.search.params().items() if not p.searched}
    values.update(params)
    weights = {**base.reward.weights}
    weights.update({n: float(values[f"w_{n}"]) for n in study.search.reward_weights})
    reward = replace(base.reward, weights=types.MappingProxyType(weights),
                     clip_constraint=float(values["clip_constraint"]))
    k = int(values["k"])
    if base.sample.truncation == "last_k":
        sample = replace(base.sample, k=k)
    elif base.sample.truncation == "direct":  # one UNet call from a noised paired image: no K
        sample = base.sample
    else:  # K is the upper end of the random draw
        sample = replace(base.sample, k_max=k, k_min=min(base.sample.k_min, k))
    train = replace(base.train, lr=float(values["lr"]))
    for fault in study.fault_injection:
        if fault.nan_at_step and fault.matches(values):
            train = replace(train, inject_nan_at=fault.nan_at_step)
    return replace(base, reward=reward, sample=sample, train=train, output_dir=str(output_dir))


def trial_params(config: Mapping[str, Any], study: StudyConfig) -> dict[str, Any]:
    """The hyperparameters of a trial's Tune config (searched and fixed), by flat name."""
    return {name: config[name] for name in study.search.params() if name in config}
