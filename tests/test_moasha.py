"""MO-ASHA (study.moasha): NSGA-II's ranking by front and crowding distance, the promotion rule
at a rung, the state a resumed sweep reads back, the config's checks, and a resume under another
scheduler refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler
from sweep_helpers import SMALL_STUDY

from study.config import load_study_config
from study.moasha import (
    STATE_FILE,
    MultiObjectiveASHA,
    crowding_distance,
    keeps,
    rank_order,
    stopped_trials,
)
from study.resume import ResumeError, check_resume
from textcraftor.configio import ConfigError, to_dict

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_crowding_distance_is_the_neighbours_gap_over_the_range_with_infinite_ends():
    front = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    distance = crowding_distance(front)
    assert math.isinf(distance[0]) and math.isinf(distance[3])
    # point 1: neighbours 0 and 2 -> (3-0)/4 in x, (4-1)/4 in y
    assert distance[1] == pytest.approx(3 / 4 + 3 / 4)
    assert distance[2] == pytest.approx((4 - 1) / 4 + (3 - 0) / 4)
    assert np.isinf(crowding_distance(front[:2])).all()


def test_rank_order_is_front_first_then_crowding_then_input_order():
    points = [[1.0, 1.0],  # front 2 (dominated by 2 and 3)
              [0.0, 4.0], [2.0, 2.0], [2.1, 1.9], [4.0, 0.0],  # front 1
              [math.nan, 9.0]]  # no result: last
    order = rank_order(points)
    assert order[:2] in ([1, 4], [4, 1])  # the extremes (infinite crowding) first
    # of 2 and 3, the one with more room: 2 (neighbours 1 and 3) against 3 (neighbours 2 and 4)
    assert set(order[2:4]) == {2, 3} and order[4:] == [0, 5]
    assert rank_order([[3.0], [1.0], [2.0]]) == [0, 2, 1]  # one objective: plain ASHA order


@pytest.mark.parametrize(("recorded", "eta", "kept"), [(1, 3, 1), (2, 3, 1), (3, 3, 1),
                                                       (6, 3, 2), (9, 3, 3), (4, 2, 2)])
def test_a_rung_keeps_the_best_n_over_eta_and_at_least_one(recorded, eta, kept):
    assert [keeps(p, recorded, eta) for p in range(recorded)] == [p < kept
                                                                  for p in range(recorded)]


class Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def result(step, quality, diversity, event="eval"):
    return {"event": event, "step": step, "quality": quality, "diversity": diversity}


def test_decisions_at_rungs_and_the_state_a_restarted_driver_reads(tmp_path):
    scheduler = MultiObjectiveASHA(("quality", "diversity"), (2, 4), 2, tmp_path)
    # Tune is always told CONTINUE (the trial stops itself); not a rung, or not an evaluation:
    # nothing is recorded
    assert scheduler.on_trial_result(None, Trial("a"), result(1, 0.0, 0.0)) == CONTINUE
    assert scheduler.on_trial_result(None, Trial("a"), result(2, 0.0, 0.0, "step")) == CONTINUE
    assert not (tmp_path / STATE_FILE).exists()
    assert scheduler.on_trial_result(None, Trial("a"), result(2, 5.0, 0.5)) == CONTINUE
    assert stopped_trials(tmp_path) == {}  # the first at a rung goes on
    assert scheduler.on_trial_result(None, Trial("b"), result(2, 4.0, 0.4)) == CONTINUE
    assert stopped_trials(tmp_path) == {"b": 2}  # dominated by a: stopped
    assert scheduler.decide("c", 2, [6.0, 0.6]) == CONTINUE  # the best so far
    # a worker group restarted from a checkpoint reports rung 2 again: the same decisions
    assert scheduler.decide("c", 2, [0.0, 0.0]) == CONTINUE
    assert scheduler.decide("b", 2, [9.0, 9.0]) == STOP
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["records"]["2"] == {"a": [5.0, 0.5], "b": [4.0, 0.4], "c": [6.0, 0.6]}
    # a new driver (a resumed sweep) reads the records back and goes on from them
    resumed = MultiObjectiveASHA(("quality", "diversity"), (2, 4), 2, tmp_path)
    assert resumed.decide("d", 2, [4.5, 0.45]) == STOP  # third of four
    assert resumed.decide("a", 4, [5.0, 0.7]) == CONTINUE
    assert stopped_trials(tmp_path) == {"b": 2, "d": 2}
    assert "2 stopped" in resumed.debug_string()


def test_three_objectives_and_a_missing_objective(tmp_path):
    scheduler = MultiObjectiveASHA(("quality", "diversity", "clip"), (3,), 3, tmp_path)
    assert scheduler.decide("a", 3, [1.0, 1.0, 1.0]) == CONTINUE
    # mutually non-dominated with a, three points on one front: all extremes (infinite
    # crowding), so input order decides, and 3 // 3 = 1 goes on
    assert scheduler.decide("b", 3, [2.0, 0.0, 0.0]) == STOP
    assert scheduler.decide("c", 3, [0.0, 2.0, 0.0]) == STOP
    # a trial whose evaluation gave no value for an objective ranks last
    scheduler.on_trial_result(None, Trial("e"), {"event": "eval", "step": 3, "quality": 9.0})
    assert stopped_trials(tmp_path)["e"] == 3


def test_the_decision_reaches_the_trial_through_the_named_board(tmp_path):
    """The scheduler posts on the RungDecisions actor; a worker's wait_for_decision reads it;
    a decision that never comes lets the trial go on after the timeout."""
    import ray

    from study.moasha import wait_for_decision

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        scheduler = MultiObjectiveASHA(("quality",), (2,), 2, tmp_path, board="board-test")
        scheduler.decide("a", 2, [1.0])
        scheduler.decide("b", 2, [0.5])
        assert wait_for_decision("board-test", "a", 2, timeout_s=30) == CONTINUE
        assert wait_for_decision("board-test", "b", 2, timeout_s=30) == STOP
        assert wait_for_decision("board-test", "z", 2, timeout_s=0.5) == CONTINUE
        import pickle

        assert pickle.loads(pickle.dumps(scheduler))._board_handle is None
    finally:
        ray.shutdown()


@pytest.mark.parametrize(("overrides", "message"), [
    (["tuner.rungs=[20]"], "tuner.rungs[0]: 20 is not an evaluation step below "
                           "base.train.steps=4 (multiples of base.train.eval_every=2): one of [2]"),
    (["tuner.rungs=[2, 2]"], "tuner.rungs: 2 rungs but only 1 evaluation steps"),
    (["base.train.steps=8", "tuner.rungs=[4, 2]"], "tuner.rungs: [4, 2]: give distinct steps"),
    (["tuner.reduction_factor=1.5"], "tuner.reduction_factor: must be >= 2"),
    (["base.train.eval_every=0"], "base.train.eval_every=0 gives none: lower eval_every"),
])
def test_bad_moasha_settings_are_named_before_any_trial(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_study_config(SMALL_STUDY, ["tuner.scheduler=moasha", *overrides])
    assert message in str(error.value)


def test_rungs_default_to_every_evaluation_step_and_belong_to_moasha():
    study = load_study_config(SMALL_STUDY, ["tuner.scheduler=moasha", "base.train.steps=8"])
    assert study.tuner.rungs == (2, 4, 6)
    with pytest.raises(ConfigError, match="tuner.rungs: applies to scheduler moasha, not 'fifo'"):
        load_study_config(SMALL_STUDY, ["tuner.rungs=[2]"])


def test_a_sweep_resumed_under_another_scheduler_is_refused(tmp_path):
    check_resume(tmp_path, to_dict(load_study_config(SMALL_STUDY, [])), resume=False)
    with pytest.raises(ResumeError) as error:
        check_resume(tmp_path, to_dict(load_study_config(SMALL_STUDY,
                                                         ["tuner.scheduler=moasha"])),
                     resume=True)
    assert "tuner.scheduler: saved 'fifo', now 'moasha'" in str(error.value)


@pytest.mark.slow
def test_a_moasha_sweep_stops_trials_at_the_rung_and_records_them_everywhere(tmp_path):
    """A real sweep (tiny preset, 4 trials of 4 steps, one rung at step 2, η = 10: only the best
    so far goes on): every stopped trial trained to the rung only and is STOPPED in
    summary.json (not a failure, never on the front), PRUNED in Optuna with the rung as a user
    attribute, FINISHED in MLflow with the stopped_at_step tag, and STOPPED in the analysis."""
    import optuna
    from sweep_helpers import SMALL, TINY, child_runs, run_sweep

    from analysis.runs import load_runs
    from study.tags import STOPPED_TAG

    run_sweep(tmp_path, *SMALL, *TINY, "--num-samples", "4", "--set", "name=mo",
              "--set", "tuner.scheduler=moasha", "--set", "tuner.reduction_factor=10")
    sweep = tmp_path / "sweeps" / "mo"
    summary = json.loads((sweep / "summary.json").read_text())
    stopped = stopped_trials(sweep)
    assert stopped and set(stopped.values()) == {2}, stopped
    records = {t["trial_id"]: t for t in summary["trials"]}
    assert len(records) == 4 and summary["unfinished"] == 0
    for trial_id, record in records.items():
        if trial_id in stopped:
            assert record["status"] == "STOPPED" and record["stopped_at_step"] == 2
            assert record["steps"] == 2 and not record["pareto"] and record["error"] is None
        else:
            assert record["status"] == "TERMINATED" and record["steps"] == 4
    assert summary["steps_trained"] == sum(r["steps"] for r in records.values())
    assert summary["front"]["size"] == sum(r["pareto"] for r in records.values()) >= 1
    assert summary["front"]["hypervolume"] is not None and summary["front"]["hypervolume"] >= 0
    assert summary["front"]["reference"] == [summary["baseline"]["objectives"][o]
                                             for o in summary["objectives"]]
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{sweep / 'optuna.db'}")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == len(stopped)
    assert all(t.user_attrs["stopped_at_step"] == 2 for t in pruned)
    _, _, children = child_runs(tmp_path, "mo")
    tagged = {r.data.tags["textcraftor.trial_id"]: r for r in children
              if STOPPED_TAG in r.data.tags}
    assert set(tagged) == set(stopped)
    assert all(r.info.status == "FINISHED" for r in children)
    runs = load_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "textcraftor-study", "mo")
    shown = runs.trials.set_index("trial_id")
    for trial_id in records:
        assert shown.loc[trial_id, "status"] == ("STOPPED" if trial_id in stopped
                                                 else "FINISHED")
        assert not (trial_id in stopped and shown.loc[trial_id, "pareto"])
