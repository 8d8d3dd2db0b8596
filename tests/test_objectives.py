"""The study's objectives in one module: names, metrics, directions, and what a missing metric
becomes."""

import math

from study.objectives import (
    DIRECTIONS,
    OBJECTIVE_FIELDS,
    OBJECTIVE_METRICS,
    OBJECTIVES,
    PER_PROMPT_COLUMNS,
    interval_names,
    study_intervals,
    study_objectives,
)
from textcraftor.rewards import REWARD_SCALES, loss_scales


def test_each_objective_reads_its_evaluation_metric():
    metrics = {"eval/quality": 61.5, "eval/diversity": 0.08, "eval/alignment": 0.75,
               "eval/diversity_lpips": 0.5, "eval/train_objective": 140.0}
    assert study_objectives(metrics) == {"quality": 61.5, "diversity": 0.08, "alignment": 0.75}
    assert set(OBJECTIVES) == set(OBJECTIVE_METRICS) == set(DIRECTIONS) == set(PER_PROMPT_COLUMNS)
    assert PER_PROMPT_COLUMNS == {"quality": "quality", "diversity": "diversity",
                                  "alignment": "alignment"}


def test_each_objective_has_its_interval_ends():
    metrics = {"eval/quality": 61.5, "eval/quality_ci_low": 60.0, "eval/quality_ci_high": 63.0}
    found = study_intervals(metrics)
    assert (found["quality_ci_low"], found["quality_ci_high"]) == (60.0, 63.0)
    assert math.isnan(found["alignment_ci_low"])  # not computed: NaN, never 0
    assert set(OBJECTIVE_FIELDS) == set(OBJECTIVES) | set(found)
    assert interval_names("diversity") == ("diversity_ci_low", "diversity_ci_high")


def test_a_metric_the_evaluation_did_not_compute_is_nan_not_zero():
    values = study_objectives({"eval/quality": 3.0})
    assert values["quality"] == 3.0 and math.isnan(values["diversity"])
    assert all(math.isnan(v) for v in study_objectives({}).values())


def test_loss_scales_put_the_runs_scales_over_the_reference_ones():
    merged = loss_scales({"aesthetic": 0.5})
    assert merged["aesthetic"] == 0.5
    assert {k: v for k, v in merged.items() if k != "aesthetic"} == {
        k: v for k, v in REWARD_SCALES.items() if k != "aesthetic"}
    assert loss_scales(None) == REWARD_SCALES and loss_scales(None) is not REWARD_SCALES
