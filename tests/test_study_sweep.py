"""End to end: real sweeps on a local Ray cluster into a real SQLite MLflow store and a real
Optuna storage — every trial a Ray Train job with 2 DDP workers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from sweep_helpers import child_runs, run_sweep, sweep_command

pytestmark = pytest.mark.slow

def test_completed_trials_are_tracked_everywhere(tiny_sweep):
    tmp, summary, result = tiny_sweep
    done = [t for t in summary["trials"] if t["status"] == "TERMINATED"]
    assert summary["num_trials"] == 3 and len(done) == 2
    for trial in done:
        assert trial["steps"] == 4
        for name in ("quality", "diversity"):
            assert isinstance(trial["objectives"][name], float)
        assert trial["objectives"]["diversity"] > 0
        assert trial["mlflow_run_id"]
    assert any(t["pareto"] for t in done)
    assert "quality" in result.stdout and "diversity" in result.stdout  # the printed table

    client, parents, children = child_runs(tmp, "e2e")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"summary.json", "pareto.txt", "study_config.json"} <= parent_files
    assert len(children) == 3
    by_id = {r.info.run_id: r for r in children}
    for trial in done:
        run = by_id[trial["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"w_aesthetic", "clip_constraint", "k", "lr"} <= set(run.data.params)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][-1] == 4
        assert {"quality", "diversity", "eval/quality", "eval/diversity_lpips"} <= set(
            run.data.metrics)
        images = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert "samples/step_0000004.png" in images

    storage = f"sqlite:///{tmp / 'sweeps' / 'e2e' / 'optuna.db'}"
    trials = optuna.load_study(study_name="e2e", storage=storage).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert all(len(t.values) == 2 for t in trials if t.state.name == "COMPLETE")


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tiny_sweep):
    tmp, summary, _ = tiny_sweep
    failed = [t for t in summary["trials"] if t["status"] == "ERROR"]
    assert len(failed) == 1
    assert failed[0]["params"]["w_aesthetic"] == 1.0
    assert "step 2" in (failed[0]["error"] or "")
    assert failed[0]["pareto"] is False
    client, _, children = child_runs(tmp, "e2e")
    run = next(r for r in children if r.info.run_id == failed[0]["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["error"]
    # the failed trial kept its last good checkpoint (step 1 is not saved: save_every=2)
    checkpoints = Path(failed[0]["run_dir"]) / "checkpoints"
    assert not any(checkpoints.glob("step_0000002*"))


def study_exists(optuna_db: Path, study_name: str) -> bool:
    """Whether the sweep has created its Optuna study, read without writing: opening the
    storage with Optuna while the sweep creates its schema races it for the version row."""
    if not optuna_db.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"file:{optuna_db}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT 1 FROM studies WHERE study_name = ?", (study_name,)).fetchone()
    except sqlite3.OperationalError:  # no schema yet, or a writer holds the lock
        return False
    return row is not None


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    """On the default study (the shapes preset), with few steps."""
    command = sweep_command(tmp_path, "--num-samples", "2", "--set", "name=resumable")
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    optuna_db = tmp_path / "sweeps" / "resumable" / "optuna.db"
    storage = f"sqlite:///{optuna_db}"
    deadline = time.monotonic() + 400
    finished = []
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(2)
        if not study_exists(optuna_db, "resumable"):
            continue
        trials = optuna.load_study(study_name="resumable", storage=storage).trials
        finished = [t for t in trials if t.state.name == "COMPLETE"]
        if finished:
            break
    assert finished, "no trial finished before the deadline"
    os.killpg(driver.pid, signal.SIGINT)
    output, _ = driver.communicate(timeout=180)
    trials_dir = tmp_path / "sweeps" / "resumable" / "trials"
    before = {p.parent.name: p.read_text() for p in trials_dir.glob("*/metrics.jsonl")}
    finished_before = [trial_id for trial_id, log in before.items()
                       if any(json.loads(line)["step"] == 4 for line in log.splitlines())]
    assert finished_before
    _, _, children = child_runs(tmp_path, "resumable")
    assert all(r.info.status != "RUNNING" for r in children), output[-3000:]

    run_sweep(tmp_path, "--num-samples", "2", "--set", "name=resumable", "--resume")
    summary = json.loads((tmp_path / "sweeps" / "resumable" / "summary.json").read_text())
    assert summary["num_trials"] == 2
    assert [t["status"] for t in summary["trials"]] == ["TERMINATED"] * 2
    trials = optuna.load_study(study_name="resumable", storage=storage).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 2
    _, parents, children = child_runs(tmp_path, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["textcraftor.trial_id"] for r in children}) == 2
    _, _, baselines = child_runs(tmp_path, "resumable", kind="baseline")
    assert [r.info.status for r in baselines] == ["FINISHED"]  # evaluated once, not again
    # the default study runs ShapesWorld: the oracle's accuracy is tracked beside the rewards
    for run in [*children, *baselines]:
        for name in ("eval/oracle_colour", "eval/oracle_shape", "eval/oracle_all"):
            assert 0.0 <= run.data.metrics[name] <= 1.0, (run.data.tags, name)
    # the trials finished before the interruption were not run again
    for trial_id in finished_before:
        assert (trials_dir / trial_id / "metrics.jsonl").read_text() == before[trial_id]
