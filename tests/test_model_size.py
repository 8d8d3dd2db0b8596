"""analysis.model_size: open question 3's table, from each sweep's paired comparisons with its
own untuned baseline (the store-backed path runs in test_analysis's notebook test)."""

from __future__ import annotations

import math

import pandas as pd

from analysis.model_size import best_trial, size_reading

OBJECTIVES = ("quality", "diversity", "alignment")


def trial(trial_id: str, quality: float, diversity_verdict: str = "indistinguishable") -> dict:
    pair = {"difference": quality, "ci_low": quality - 1, "ci_high": quality + 1,
            "verdict": "better" if quality > 1 else "indistinguishable"}
    return {"trial_id": trial_id, "vs_baseline": {
        "quality": pair,
        "diversity": {"difference": -0.1, "ci_low": -0.2, "ci_high": 0.0,
                      "verdict": diversity_verdict},
        "alignment": {"difference": 0.0, "ci_low": -0.1, "ci_high": 0.1,
                      "verdict": "indistinguishable"}}}


def test_the_best_trial_is_the_most_quality_among_those_not_worse_elsewhere():
    trials = [trial("a", 3.0, diversity_verdict="worse"), trial("b", 2.0), trial("c", 1.0),
              {"trial_id": "d", "vs_baseline": None}]
    assert best_trial(trials, OBJECTIVES)["trial_id"] == "b"
    assert best_trial([trials[0]], OBJECTIVES) is None
    assert best_trial([], OBJECTIVES) is None


def row(model: str, parameters: float, objective: str, best: float, low: float) -> dict:
    return {"model": model, "sweep": model, "parameters": parameters, "objective": objective,
            "trials": 8, "best_trial": "t1", "best_gain": best, "best_ci_low": low,
            "best_ci_high": best + 1, "best_verdict": "better" if low > 0 else "indistinguishable",
            "mean_gain": best / 2, "mean_ci_low": math.nan, "mean_ci_high": math.nan,
            "better": 1, "worse": 0, "dial_gain": math.nan, "step_s": 0.5, "step_s_trials": 8}


def test_the_reading_says_each_sizes_gain_with_its_interval_and_which_sizes_it_helps():
    table = pd.DataFrame([row("shapes-s", 0.57e6 + 0.3e6, "quality", 0.5, -0.4),
                          row("shapes", 2.2e6 + 0.3e6, "quality", 3.0, 1.5)])
    text = size_reading(table)
    assert "**`shapes-s`** (0.87 M parameters, 8 finished trials" in text
    assert "quality: best trial (t1) +3 [+1.5, +4] (better)" in text
    assert "excludes 0 for `shapes` of 2." in text
    one = size_reading(table[table["model"] == "shapes"])
    assert "Only one model size here" in one
    assert "run `study/configs/oq3.yaml` once per base model" in size_reading(pd.DataFrame())
