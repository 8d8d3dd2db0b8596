"""study.overhead: a trial's and a sweep's wall cut into measured parts."""

from __future__ import annotations

import pytest

from study.overhead import SWEEP_PARTS, TRIAL_PARTS, sweep_time, trial_time


def timed_result(**extra):
    return {"trial_started_at": 102.0, "worker_wall_s": 50.0, "worker_start_s": 6.0,
            "import_s": 4.0, "load_s": 3.0, "train_time_s": 25.0, "eval_s": 6.0,
            "checkpoint_s": 1.0, "report_s": 2.0, **extra}


def test_a_trial_is_cut_into_its_measured_parts_and_a_residual():
    parts = trial_time(timed_result(), tune_started=100.0, tune_ended=155.0)
    assert list(parts) == [*TRIAL_PARTS, "wall_s", "started_at"]
    assert parts["started_at"] == 100.0
    assert parts["actor_start_s"] == 2.0  # Tune's start → the trial function
    assert parts["train_s"] == 25.0 and parts["eval_s"] == 6.0
    assert parts["dial_s"] == 0.0  # not measured: no dials reported
    assert parts["other_in_trial_s"] == pytest.approx(50.0 - (6 + 4 + 3 + 25 + 6 + 1 + 2))
    assert parts["teardown_s"] == pytest.approx(155.0 - (102.0 + 50.0))
    assert parts["wall_s"] == 55.0
    assert sum(parts[k] for k in TRIAL_PARTS) == pytest.approx(parts["wall_s"])
    # no end reported (failed, interrupted), or unseen by the driver: untimed
    assert trial_time({"trial_started_at": 1.0}, 0.0, 9.0) is None
    # Tune restarted it at 90 (an in-process trial): the failed attempt is its own part
    again = trial_time(timed_result(trial_started_at=92.0), 80.0, 145.0, tune_last_started=90.0)
    assert (again["retried_s"], again["actor_start_s"]) == (10.0, 2.0)
    assert sum(again[k] for k in TRIAL_PARTS) == pytest.approx(again["wall_s"]) == 65.0
    assert parts["retried_s"] == 0.0
    assert trial_time(timed_result(), None, 155.0) is None


def test_the_sweep_wall_is_setup_baseline_trials_gaps_and_wrap_up():
    marks = {"started": 0.0, "baseline_started": 5.0, "baseline_ended": 20.0,
             "fit_started": 22.0, "fit_ended": 140.0, "ended": 143.0}
    first = trial_time(timed_result(), 100.0, 155.0)  # covers 100 → 155 (55 s)
    intervals = [(25.0, 80.0), (82.0, 137.0)]
    # the second trial started later, imported nothing (a reused trial process) and measured
    # its inference dials (5 s)
    second = {**first, "import_s": 0.0, "dial_s": 5.0,
              "other_in_trial_s": first["other_in_trial_s"] + 4.0 - 5.0, "started_at": 200.0}
    timed = [dict(second), dict(first)]
    found = sweep_time(marks, intervals, timed, {"import_s": 4.0, "load_s": 1.0, "eval_s": 9.0})
    assert found["sweep_wall_s"] == 143.0
    assert found["parts"] == {"setup_s": 5.0 + 2.0, "baseline_s": 15.0, "trials_s": 110.0,
                              "between_trials_s": 118.0 - 110.0, "wrap_up_s": 3.0}
    assert list(found["parts"]) == list(SWEEP_PARTS)
    assert sum(found["parts"].values()) == pytest.approx(found["sweep_wall_s"])
    assert found["trial_parts_summed"]["train_s"] == 50.0
    assert found["train_fraction_of_sweep"] == pytest.approx(50.0 / 143.0)
    # training and evaluation: the trials' (2 × 25 + 2 × 6), the dials (5) and the baseline's
    assert found["train_eval_fraction_of_sweep"] == pytest.approx(
        (50.0 + 12.0 + 5.0 + 9.0) / 143.0)
    assert found["baseline_parts"] == {"import_s": 4.0, "load_s": 1.0, "eval_s": 9.0}
    assert found["startup_s_per_trial"] == pytest.approx(2.0 + 6.0 + 3.0 + 4.0 / 2)
    assert found["startup_s_per_trial_after_first"] == pytest.approx(2.0 + 6.0 + 3.0)
    residual = first["other_in_trial_s"] + second["other_in_trial_s"]
    assert found["attributed_fraction"] == pytest.approx((143.0 - residual) / 143.0)
    # an untimed trial is not attributed; overlapping trials give no fraction at all
    assert sweep_time(marks, intervals, timed)["baseline_parts"] == {}  # e.g. on a resume
    untimed = sweep_time(marks, intervals, [first, None])
    assert untimed["startup_s_per_trial_after_first"] is None
    assert untimed["attributed_fraction"] == pytest.approx(
        (143.0 - first["other_in_trial_s"] - 55.0) / 143.0)
    overlapping = sweep_time(marks, [(25.0, 80.0), (60.0, 115.0)], timed)
    assert overlapping["parts"]["trials_s"] == 90.0 and overlapping["attributed_fraction"] is None
