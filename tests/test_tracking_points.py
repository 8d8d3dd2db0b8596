"""MLflow holds exactly one point per (run, metric, step), equal to the trial folder's record,
however reports, worker-group restarts and driver restarts interleave (no Ray here: the Tune
results are fed to the real callback, a real SweepTracker writes a real SQLite store)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from study.tracking import MlflowTrialCallback, SweepTracker, TrialPoints
from study.trial import InjectedCrash, RayTrainReporter, crash_once_before_checkpoint


@dataclass
class TuneTrial:
    """What Tune hands a callback about a trial (its id, config and status)."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=lambda: {"k": 2})
    status: str = "RUNNING"
    error_file: str | None = None


def make_callback(tmp_path: Path, sweep: str = "points") -> MlflowTrialCallback:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "textcraftor-study", sweep)
    return MlflowTrialCallback(tracker, lambda config: dict(config),
                               lambda trial_id: tmp_path / trial_id,
                               pending_file=tmp_path / f"{sweep}-pending.json")


def tune_sink(callback: MlflowTrialCallback, trial: TuneTrial, sent: list[dict]):
    """``ray.train.report`` as TuneReportCallback forwards it: rank 0's metrics, plus the
    checkpoint's path once Ray Train has registered it."""
    def report(metrics, checkpoint=None, checkpoint_dir_name=None):
        result = {**metrics, "training_iteration": len(sent) + 1}
        if checkpoint is not None:
            result["checkpoint_path"] = checkpoint.path
        sent.append(result)
        callback.on_trial_result(len(sent), [], trial, result)

    return report


def mlflow_points(callback: MlflowTrialCallback, trial_id: str) -> dict[str, list]:
    client = callback.tracker.client
    run_id = callback.tracker.run_id(trial_id)
    return {key: client.get_metric_history(run_id, key)
            for key in client.get_run(run_id).data.metrics}


def assert_one_point_each(points: dict[str, list]) -> None:
    for key, history in points.items():
        counts = Counter(m.step for m in history)
        assert all(n == 1 for n in counts.values()), (key, counts)


def test_restarted_worker_group_leaves_one_point_per_step_equal_to_the_run_folder(
        tmp_path, make_trainer):
    """A real tiny run, a real reporter: the worker crashes just before reporting step 4's
    checkpoint (its evaluation and steps 3-4 were already reported), the next worker group
    resumes from step 2 and redoes steps 3-6 with other step times."""
    callback = make_callback(tmp_path)
    trial = TuneTrial("t1")
    callback.on_trial_start(0, [], trial)
    sent: list[dict] = []
    overrides = ("train.steps=6", "train.eval_every=2", "train.save_every=2",
                 "eval.quality_weights={aesthetic: 1}")  # as a study sets it: eval/quality

    def reporter(resumed_from: int | None = None) -> RayTrainReporter:
        made = RayTrainReporter(0, time.time(),
                                report=tune_sink(callback, trial, sent))
        if resumed_from is not None:
            made.timing["resumed_from_step"] = float(resumed_from)
        return made

    first = make_trainer(*overrides, callback=crash_once_before_checkpoint(
        reporter(), 4, tmp_path / "crash-marker", rank=0))
    with pytest.raises(InjectedCrash):
        first.fit()
    first_attempt = {(k, h["step"]): v for r in sent for h in r["step_history"]
                     for k, v in h.items()}
    assert {s for _, s in first_attempt} == {1, 2, 3, 4}  # steps 3-4 reached Tune, uncommitted
    assert [r["step"] for r in sent if "checkpoint_path" in r] == [2]

    second = make_trainer(*overrides, callback=reporter(resumed_from=2))
    second.restore(first.run_dir / "checkpoints" / "step_0000002")
    second.fit()
    callback.on_trial_complete(len(sent), [], trial)

    points = mlflow_points(callback, "t1")
    assert_one_point_each(points)
    record = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text()
              .splitlines()]
    assert [(r["kind"], r["step"]) for r in record] == [
        ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4),
        ("step", 5), ("step", 6), ("eval", 6)]
    in_record = {(k, r["step"]): v for r in record for k, v in r.items()
                 if k not in ("kind", "step")}
    in_mlflow = {(k, m.step): m.value for k, history in points.items() for m in history}
    assert {p: in_mlflow.get(p) for p in in_record} == in_record  # every value, as recorded
    # the redone steps carry the second worker group's times, not the first's
    assert in_mlflow[("step_s", 3)] != first_attempt[("step_s", 3)]
    # objectives belong to the evaluations' steps; timing to the reports' steps
    assert sorted(m.step for m in points["quality"]) == [2, 4, 6]
    assert sorted(m.step for m in points["quality_ci_low"]) == [2, 4, 6]  # with its interval
    assert sorted(m.step for m in points["resumed_from_step"]) == [4, 6]
    # the reporter's timing (study.overhead's parts) at each report's step; its start time
    # (an epoch timestamp) is no metric
    assert {k for k, _ in in_mlflow} - {k for k, _ in in_record} == {
        "quality", "quality_ci_low", "quality_ci_high", "alignment", "alignment_ci_low",
        "alignment_ci_high", "train_time_s", "startup_s", "peak_memory_mb", "resumed_from_step",
        "eval_s", "checkpoint_s", "report_s", "worker_wall_s"}
    run = callback.tracker.client.get_run(callback.tracker.run_id("t1"))
    assert run.info.status == "FINISHED"


def result(step: int, attempt: str, event: str = "eval", history: dict | None = None,
           checkpoint: str | None = None, resumed: int | None = None, **own: float) -> dict:
    """A Tune result as RayTrainReporter sends it: ``history`` maps step → loss."""
    made = {**own, "step": step, "event": event, "attempt": attempt, "worker_nodes": "n1",
            "quality": own.get("eval/quality", 0.0), "diversity": 0.5,
            "step_history": [{"step": s, "loss": v, "step_s": 1.0}
                             for s, v in (history or {}).items()]}
    if checkpoint:
        made["checkpoint_path"] = checkpoint
    if resumed is not None:
        made["resumed_from_step"] = float(resumed)
    return made


def test_repeated_restarts_and_a_driver_restart_log_each_point_once(tmp_path):
    """Two restarts from the same checkpoint, then the driver itself restarts (--resume) and
    the trial fails: the points logged are the last attempt's, once each."""
    callback = make_callback(tmp_path)
    trial = TuneTrial("t2")
    feed = [
        result(2, "a1", history={1: 1.0, 2: 2.0}, **{"eval/quality": 0.2}),
        result(2, "a1", event="checkpoint", checkpoint=str(tmp_path / "c2")),
        result(4, "a1", history={3: 3.0, 4: 4.0}, **{"eval/quality": 0.4}),
        # restarted from step 2: steps 3-4 again, other values
        result(4, "a2", history={3: 30.0, 4: 40.0}, resumed=2, **{"eval/quality": 0.41}),
        # restarted from step 2 again (same resumed_from_step, a new worker group)
        result(3, "a3", event="step", history={3: 300.0}, resumed=2),
        result(4, "a4", history={3: 3000.0, 4: 4000.0}, resumed=2, **{"eval/quality": 0.42}),
        result(4, "a4", event="checkpoint", resumed=2, checkpoint=str(tmp_path / "c4")),
    ]
    callback.on_trial_start(0, [], trial)
    for i, item in enumerate(feed):
        callback.on_trial_result(i, [], trial, item)
    assert callback._points["t2"].pending == {}  # everything up to step 4 is committed
    before = mlflow_points(callback, "t2")
    assert {m.step: m.value for m in before["loss"]} == {1: 1.0, 2: 2.0, 3: 3000.0, 4: 4000.0}

    resumed = make_callback(tmp_path)  # a new driver: --resume
    resumed.on_trial_start(0, [], trial)
    for i, item in enumerate([
        result(4, "a5", event="end", resumed=4, **{"eval/quality": -1.0}),  # a repeat of 4
        result(6, "a5", history={5: 5.0, 6: 6.0}, resumed=4, **{"eval/quality": 0.6}),
    ]):
        resumed.on_trial_result(i, [], trial, item)
    resumed.on_trial_error(2, [], trial)

    points = mlflow_points(resumed, "t2")
    assert_one_point_each(points)
    assert {m.step: m.value for m in points["loss"]} == {
        1: 1.0, 2: 2.0, 3: 3000.0, 4: 4000.0, 5: 5.0, 6: 6.0}
    assert {m.step: m.value for m in points["eval/quality"]} == {2: 0.2, 4: 0.42, 6: 0.6}
    assert {m.step: m.value for m in points["quality"]} == {2: 0.2, 4: 0.42, 6: 0.6}
    assert {m.step: m.value for m in points["resumed_from_step"]} == {4: 2.0, 6: 4.0}
    runs = resumed.tracker.client.search_runs([resumed.tracker.experiment_id])
    children = [r for r in runs if r.data.tags["textcraftor.kind"] == "trial"]
    assert [r.info.status for r in children] == ["FAILED"]


def test_a_driver_stopped_before_it_heard_of_a_commit_loses_no_point(tmp_path):
    """Ray Train committed step 2's checkpoint, but the driver was interrupted before that
    result reached it; the resumed trial starts after step 2 and never sends steps 1-2 again:
    the next driver logs them from the points the first one left pending."""
    trial = TuneTrial("t3")
    first = make_callback(tmp_path)
    first.on_trial_start(0, [], trial)
    first.on_trial_result(1, [], trial, result(2, "a1", history={1: 1.0, 2: 2.0},
                                               **{"eval/quality": 0.2}))
    first.on_trial_result(2, [], trial, result(3, "a1", event="step", history={3: 3.0}))
    assert mlflow_points(first, "t3") == {}  # nothing final yet; SIGINT now

    second = make_callback(tmp_path)  # --resume; the trial restarts from step 2's checkpoint
    second.on_trial_start(0, [], trial)
    second.on_trial_result(1, [], trial, result(4, "a2", history={3: 30.0, 4: 40.0},
                                                resumed=2, **{"eval/quality": 0.4}))
    second.on_trial_complete(2, [], trial)
    points = mlflow_points(second, "t3")
    assert_one_point_each(points)
    assert {m.step: m.value for m in points["loss"]} == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
    assert {m.step: m.value for m in points["quality"]} == {2: 0.2, 4: 0.4}
    assert json.loads((tmp_path / "points-pending.json").read_text()) == {}  # none left


def test_trial_points_keep_the_last_value_and_drop_what_a_restart_redoes():
    points = TrialPoints()
    points.restart("a1", -1)
    points.add(0, {"eval/clip": 0.5})  # an evaluation before the first step
    points.add(1, {"loss": 1.0})
    points.add(1, {"loss": 1.5, "k": 2.0})  # a later report of the same step wins
    assert points.take_final() == {}  # nothing committed yet
    points.restart("a2", -1)  # restarted from scratch: everything is redone
    assert points.pending == {}
    points.add(0, {"eval/clip": 0.5})
    points.add(1, {"loss": 1.25})
    points.add(2, {"loss": 2.0})
    points.commit(1)
    assert points.take_final() == {0: {"eval/clip": 0.5}, 1: {"loss": 1.25}}
    points.add(1, {"loss": 9.0, "peak_memory_mb": 3.0})  # committed step: final at once
    assert points.take_final() == {1: {"peak_memory_mb": 3.0}}  # loss@1 was logged already
    points.restart("a3", 1)
    assert points.pending == {}  # step 2 will be redone
    points.add(2, {"loss": 2.5})
    assert points.take_final(everything=True) == {2: {"loss": 2.5}}
