"""textcraftor.bootstrap: two-stage (prompts, then seeds) percentile intervals, and paired
differences, checked against what sampling theory says they must do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from textcraftor.bootstrap import (
    Interval,
    difference_of_groups,
    nested_interval,
    paired_difference,
)


def study_like(rng, prompts=16, seeds=4, between=1.0, within=0.3, shift=0.0):
    """Scores [P, S]: a random effect per prompt plus noise per seed."""
    return (shift + rng.normal(0.0, between, size=(prompts, 1))
            + rng.normal(0.0, within, size=(prompts, seeds)))


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = [(i.low <= 0.0 <= i.high) for i in
               (nested_interval(study_like(rng), resamples=1000) for _ in range(300))]
    # percentile bootstrap over 16 prompts runs a little narrow; 300 draws: ±2.5 points
    assert 0.87 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_prompts_are_the_unit_so_the_width_follows_the_spread_of_prompt_means():
    rng = np.random.default_rng(2)
    values = study_like(rng, prompts=64, seeds=4, between=1.0, within=0.01)
    interval = nested_interval(values)
    standard_error = values.mean(axis=1).std(ddof=1) / math.sqrt(64)
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * standard_error, rel=0.2)
    # resampling images as if independent would be half as wide (4 seeds per prompt, shared)
    flat = nested_interval(values.reshape(-1))
    assert flat.high - flat.low < 0.7 * (interval.high - interval.low)
    assert interval.mean == pytest.approx(values.mean())
    assert (interval.num_prompts, interval.num_seeds) == (64, 4)


def test_pairing_cancels_what_two_runs_on_the_same_prompts_share():
    rng = np.random.default_rng(3)
    baseline = study_like(rng, prompts=16, seeds=2, between=2.0, within=0.05)
    run = baseline + 0.2 + rng.normal(0.0, 0.05, size=baseline.shape)
    difference = paired_difference(run, baseline)
    assert difference.low > 0 and difference.verdict("max") == "better"
    assert difference.verdict("min") == "worse"
    assert difference.mean == pytest.approx(0.2, abs=0.03)
    # unpaired, the two intervals overlap: the prompt effect (sd 2) swamps a 0.2 shift
    mine, theirs = nested_interval(run), nested_interval(baseline)
    assert mine.low < theirs.high
    same = paired_difference(baseline + rng.normal(0, 0.05, baseline.shape), baseline)
    assert same.verdict() == "indistinguishable"


def test_nan_entries_are_left_out_and_the_result_is_reproducible():
    values = [[1.0, None], [0.0, 1.0], [None, None], [1.0, 1.0]]
    first, again = nested_interval(values), nested_interval(values)
    assert first == again  # the resampling's seed is fixed
    assert first.mean == pytest.approx(4 / 5)
    assert 0.0 <= first.low <= first.mean <= first.high <= 1.0
    empty = nested_interval([[None, None]])
    assert math.isnan(empty.mean) and empty.verdict() == "unknown"
    assert nested_interval(np.ones(5)) == Interval(1.0, 1.0, 1.0, 5, 1)


def test_bad_shapes_and_levels_are_named():
    with pytest.raises(ValueError, match=r"values must be \[prompts\] or \[prompts, seeds\], "
                                         r"got shape \(2, 2, 2\)"):
        nested_interval(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 95"):
        nested_interval([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match=r"same prompts and seeds: shapes \(3, 2\) and \(2, 2\)"):
        paired_difference(np.zeros((3, 2)), np.zeros((2, 2)))


def two_groups(rng, prompts=16, repeats=(2, 2), between=2.0, within=0.3, shift=0.0):
    """Two groups of training repeats on the same prompts, [P, R1] and [P, R2]: a prompt
    effect both share, plus each repeat's own noise; the first shifted by ``shift``."""
    prompt = rng.normal(0.0, between, size=(prompts, 1))
    return (prompt + shift + rng.normal(0.0, within, size=(prompts, repeats[0])),
            prompt + rng.normal(0.0, within, size=(prompts, repeats[1])))


def test_a_difference_of_groups_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(5)
    covered = [(i.low <= 0.0 <= i.high) for i in
               (difference_of_groups(*two_groups(rng, repeats=(3, 2)), resamples=1000)
                for _ in range(300))]
    assert 0.85 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_groups_on_the_same_prompts_cancel_the_prompts_and_count_the_repeats():
    rng = np.random.default_rng(6)
    first, second = two_groups(rng, prompts=32, between=2.0, within=0.05, shift=0.3)
    difference = difference_of_groups(first, second)
    assert difference.verdict("max") == "better" and difference.low > 0.2
    assert difference.mean == pytest.approx(first.mean() - second.mean())
    assert (difference.num_prompts, difference.num_seeds) == (32, 2)
    # each group's own interval is as wide as the prompt effect (sd 2): they overlap
    assert nested_interval(first).low < nested_interval(second).high
    # noisier repeats (training seeds that disagree) widen the interval
    noisy = difference_of_groups(*two_groups(np.random.default_rng(6), prompts=32, between=2.0,
                                             within=1.0, shift=0.3))
    assert noisy.high - noisy.low > 3 * (difference.high - difference.low)


def test_one_repeat_each_is_the_paired_difference_and_bad_shapes_are_refused():
    rng = np.random.default_rng(7)
    first, second = (rng.normal(size=12), rng.normal(size=12))
    assert difference_of_groups(first, second) == paired_difference(first, second)
    with pytest.raises(ValueError, match="the same number of prompts: 12 and 11"):
        difference_of_groups(first, second[:11])
    with pytest.raises(ValueError, match=r"\[prompts\] or \[prompts, seeds\]"):
        difference_of_groups(np.zeros((2, 2, 2)), np.zeros((2, 2)))
    nan = difference_of_groups([[1.0, math.nan], [math.nan, math.nan]], [[0.0], [0.0]])
    assert nan.mean == pytest.approx(1.0)  # the all-NaN prompt is left out
