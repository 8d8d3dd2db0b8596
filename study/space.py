"""The search space as Optuna's define-by-run function, the first trial (the base config's
values), and a trial's hyperparameters → its RunConfig.

A hyperparameter's name is its run-config path (``reward.weights.aesthetic``, ``sample.k``)
in the YAML, Optuna, Tune, MLflow, ``summary.json`` and the analysis alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from study.config import ESTIMATOR_PATH, StudyConfig
from textcraftor.config import RunConfig, estimator_of, for_estimator
from textcraftor.configio import from_dict, get_path, path_annotation, set_path, to_dict

# a repeat's index in its Tune config (tuner.repeats): the key Tune's Repeater sets (TRIAL_INDEX)
REPEAT_INDEX = "__trial_index__"


class DefineByRun:
    """Optuna define-by-run space: suggests each searched path. A class, not a closure: Tune
    pickles the searcher with its experiment state."""

    def __init__(self, study: StudyConfig):
        self.space = []  # (path, kind, distribution as plain values)
        self.base_estimator = study.base.sample.truncation
        for path, distribution in study.search.items():
            kind = distribution.kind(path_annotation(RunConfig, path))
            self.space.append((path, kind, distribution.low, distribution.high,
                               distribution.log, distribution.choices))

    def __call__(self, trial) -> dict[str, Any]:
        # the estimator first: the paths only one estimator reads are suggested only when the
        # trial runs it (Optuna's conditional space; the others keep their defaults)
        estimator = self.base_estimator
        for entry in self.space:
            if entry[0] == ESTIMATOR_PATH:
                estimator = self._suggest(trial, *entry)
        for entry in self.space:
            if entry[0] != ESTIMATOR_PATH and estimator_of(entry[0]) in (None, estimator):
                self._suggest(trial, *entry)
        return {}

    @staticmethod
    def _suggest(trial, path, kind, low, high, log, choices) -> Any:
        if kind == "categorical":
            return trial.suggest_categorical(path, list(choices))
        if kind == "int":
            return trial.suggest_int(path, int(low), int(high), log=log)
        return trial.suggest_float(path, float(low), float(high), log=log)


def reference_point(study: StudyConfig) -> dict[str, Any]:
    """The first trial: the base config's value of every searched path (checked to lie in its
    distribution when the study loads)."""
    data = to_dict(study.base)
    point = {}
    for path, distribution in study.search.items():
        if estimator_of(path) not in (None, study.base.sample.truncation):
            continue  # not read by the base's estimator: not suggested in its trial
        value = get_path(data, path, RunConfig)
        kind = distribution.kind(path_annotation(RunConfig, path))
        point[path] = int(value) if kind == "int" else float(value) if kind == "float" else value
    return point


def study_run_config(study: StudyConfig) -> RunConfig:
    """``base`` as every run of the study evaluates it: its quality score (eval/quality, per
    image and per prompt) with the study's fixed ``objectives.quality_weights``, its alignment
    and diversity (eval/alignment, eval/diversity) as ``objectives.alignment`` and
    ``objectives.diversity`` say, and its held-out prompts split off
    with the base's seed (``data.split_seed``), whatever seed a trial trains with (a repeat, a
    searched ``train.seed``): every run is compared on the same prompts."""
    base = study.base
    return replace(base, eval=replace(base.eval, quality_weights=study.objectives.quality_weights,
                                      alignment=study.objectives.alignment,
                                      diversity_metric=study.objectives.diversity),
                   data=replace(base.data, split_seed=base.held_out_split_seed()))


def trial_run_config(study: StudyConfig, params: Mapping[str, Any], output_dir: str | Path
                     ) -> RunConfig:
    """The RunConfig one trial trains with: ``study_run_config`` with the trial's value at each
    searched path, validated like a YAML value (ConfigError naming the field)."""
    data = to_dict(study_run_config(study))
    if ESTIMATOR_PATH in params:  # fields only the base's estimator reads: back to default
        data = for_estimator(data, params[ESTIMATOR_PATH])
    for path in study.search:
        if path not in params and estimator_of(path) is not None:
            continue  # a field of an estimator this trial does not run: never suggested
        data = set_path(data, path, params[path], RunConfig)
    run = from_dict(RunConfig, data)
    train = run.train
    repeat = int(params.get(REPEAT_INDEX, 0))  # tuner.repeats: each repeat its own seed
    if repeat:
        train = replace(train, seed=train.seed + repeat)
    for fault in study.fault_injection:
        if fault.nan_at_step and fault.matches(params):
            train = replace(train, inject_nan_at=fault.nan_at_step)
    return replace(run, train=train, output_dir=str(output_dir))


def trial_params(config: Mapping[str, Any], study: StudyConfig) -> dict[str, Any]:
    """The searched values of a trial's Tune config, by path."""
    return {path: config[path] for path in study.search if path in config}
