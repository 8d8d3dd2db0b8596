"""End to end: real sweeps on a local Ray cluster into a real SQLite MLflow store and a real
Optuna storage — trials in-process (the default study's ``resources.num_workers: 0``, Tune
reusing the trial process) and as Ray Train jobs with 2 DDP workers (``DDP`` below)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from sweep_helpers import (
    E2E_PARAMS,
    TINY,
    assert_points_match_run_folder,
    child_runs,
    run_sweep,
    stop_process_group,
    sweep_command,
)

pytestmark = pytest.mark.slow
# Each trial a Ray Train worker group of 2 DDP ranks, 2 images each (the default study's 4 per
# step); the worker group restarts from its checkpoint when a rank fails.
DDP = ["--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=0.5",
       "--set", "resources.torch_threads=1", "--set", "base.train.batch_size=2"]

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
        # each hyperparameter under its run-config path, as in the YAML and summary.json
        assert {p for p in run.data.params if not p.startswith("base.")} == set(E2E_PARAMS)
        assert {p: v for p, v in run.data.params.items() if not p.startswith("base.")} == {
            p: str(v) for p, v in trial["params"].items()}
        assert "train/k_drawn" in run.data.metrics  # the K drawn: a name no parameter takes
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][-1] == 4
        # the tiny preset: no oracle, random LPIPS trunk: diversity is the CLIP-space distance
        assert {"quality", "diversity", "eval/quality", "eval/diversity",
                "eval/diversity_clip", "eval/diversity_random_features"} <= set(run.data.metrics)
        assert run.data.metrics["eval/diversity"] == run.data.metrics["eval/diversity_clip"]
        images = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert "samples/step_0000004.png" in images

    # one point per (metric, step), as in each trial's metrics.jsonl; the first trial to reach
    # step 4's checkpoint crashed once there and its worker group resumed from step 2
    restarted = []
    for trial in summary["trials"]:
        points = assert_points_match_run_folder(client, trial["mlflow_run_id"],
                                                Path(trial["run_dir"]))
        if ("resumed_from_step", 4) in points:
            restarted.append((trial["trial_id"], points[("resumed_from_step", 4)]))
    assert (tmp / "sweeps" / "e2e" / ".injected-crash-step-4").is_file()
    assert [r[1] for r in restarted] == [2.0], restarted
    print(f"\nrestarted trial {restarted}: one MLflow point per (metric, step)")

    storage = f"sqlite:///{tmp / 'sweeps' / 'e2e' / 'optuna.db'}"
    trials = optuna.load_study(study_name="e2e", storage=storage).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    # the default study's three objectives: quality, diversity, alignment
    assert summary["objectives"] == ["quality", "diversity", "alignment"]
    assert all(len(t.values) == 3 for t in trials if t.state.name == "COMPLETE")


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tiny_sweep):
    tmp, summary, _ = tiny_sweep
    failed = [t for t in summary["trials"] if t["status"] == "ERROR"]
    assert len(failed) == 1
    assert failed[0]["params"]["reward.weights.aesthetic"] == 1.0  # the base's: the first trial
    assert "step 2" in (failed[0]["error"] or "")
    assert failed[0]["pareto"] is False
    client, _, children = child_runs(tmp, "e2e")
    run = next(r for r in children if r.info.run_id == failed[0]["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["error"]
    # the failed trial kept its last good checkpoint (step 1 is not saved: save_every=2)
    checkpoints = Path(failed[0]["run_dir"]) / "checkpoints"
    assert not any(checkpoints.glob("step_0000002*"))


def trial_logs(trials_dir: Path) -> dict[str, list[dict]]:
    """Each trial folder's metrics.jsonl, parsed (a line being written is left out)."""
    logs = {}
    for path in trials_dir.glob("*/metrics.jsonl"):
        lines = []
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                break
        logs[path.parent.name] = lines
    return logs


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    """On the default study (the shapes preset), with few steps: SIGINT while the second trial
    trains, then --resume with one more trial (tuner.num_samples may grow on a resume)."""
    command = sweep_command(tmp_path, "--num-samples", "2", "--set", "name=resumable")
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sweep_dir = tmp_path / "sweeps" / "resumable"
    trials_dir = sweep_dir / "trials"
    deadline = time.monotonic() + 600
    training = None
    while time.monotonic() < deadline and driver.poll() is None and training is None:
        time.sleep(0.5)
        logs = trial_logs(trials_dir)
        done = [t for t, log in logs.items() if any(r["step"] == 4 for r in log)]
        # the second trial has trained a step: it is running, with three steps, two evaluations
        # and two checkpoint reports (seconds) still to go — waiting for step 3 instead left a
        # window of one step, which a 0.5 s poll missed on a quiet machine
        training = next((t for t, log in logs.items() if done and t not in done
                         and any(r["kind"] == "step" for r in log)), None)
    assert training, "the second trial did not train a step before the deadline"
    os.killpg(driver.pid, signal.SIGINT)
    output, _ = driver.communicate(timeout=180)
    assert driver.returncode == 130, output[-3000:]  # 128 + SIGINT
    assert "interrupted by SIGINT" in output
    summary = json.loads((sweep_dir / "summary.json").read_text())
    statuses = {t["trial_id"]: t["status"] for t in summary["trials"]}
    assert statuses == {**{t: "TERMINATED" for t in done}, training: "INTERRUPTED"}
    assert (summary["interrupted_by"], summary["unfinished"]) == ("SIGINT", 1)
    before = {p.parent.name: p.read_text() for p in trials_dir.glob("*/metrics.jsonl")}
    _, parents, children = child_runs(tmp_path, "resumable")
    assert [r.info.status for r in parents] == ["KILLED"]
    assert {r.data.tags["textcraftor.trial_id"]: r.info.status for r in children} == {
        **{t: "FINISHED" for t in done}, training: "KILLED"}, output[-3000:]

    resumed = run_sweep(tmp_path, "--num-samples", "3", "--set", "name=resumable", "--resume")
    assert "tuner.num_samples: 2 -> 3" in resumed.stderr
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["num_trials"] == 3 and summary["interrupted_by"] is None
    assert [t["status"] for t in summary["trials"]] == ["TERMINATED"] * 3
    trials = optuna.load_study(study_name="resumable", storage=f"sqlite:///{sweep_dir}/optuna.db"
                               ).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3
    client, parents, children = child_runs(tmp_path, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    ids = {t["trial_id"] for t in summary["trials"]}
    assert set(statuses) < ids and {r.data.tags["textcraftor.trial_id"] for r in children} == ids
    assert {t["mlflow_run_id"] for t in summary["trials"]} == {r.info.run_id for r in children}
    [change] = [json.loads(line) for line in (sweep_dir / "study_resumes.jsonl").read_text()
                .splitlines()]
    assert change["changes"] == {"tuner.num_samples": {"saved": 2, "new": 3}}
    _, _, baselines = child_runs(tmp_path, "resumable", kind="baseline")
    assert [r.info.status for r in baselines] == ["FINISHED"]  # evaluated once, not again
    # the default study runs ShapesWorld: the oracle's accuracy is tracked beside the rewards
    for run in [*children, *baselines]:
        for name in ("eval/oracle_colour", "eval/oracle_shape", "eval/oracle_all"):
            assert 0.0 <= run.data.metrics[name] <= 1.0, (run.data.tags, name)
    # the trial finished before the interruption was not run again; the interrupted one went
    # on from its checkpoint; each (metric, step) is in MLflow once, as in metrics.jsonl
    for trial_id in done:
        assert (trials_dir / trial_id / "metrics.jsonl").read_text() == before[trial_id]
    for trial in summary["trials"]:
        assert_points_match_run_folder(client, trial["mlflow_run_id"], Path(trial["run_dir"]))
    steps = [r["step"] for r in trial_logs(trials_dir)[training] if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]
    print(f"\ninterrupted: exit 130, statuses {statuses}; resumed: 3 trials TERMINATED")


def test_two_sweeps_at_once_each_use_their_own_ray(tmp_path):
    """Two drivers on one machine, each with its own local Ray: both finish, and neither's Ray
    components go looking for a cluster and find both ("multiple active Ray instances"). The
    right one runs its trial as a Ray Train job of 2 DDP workers whose rank 0 crashes once
    before step 4's checkpoint: Ray Train restarts the worker group from step 2's."""
    drivers, logs, walls = {}, {}, {}
    started = time.perf_counter()
    extra = {"left": ["--set", "fault_injection=[{dial_error: true}]"],
             "right": [*DDP, "--set", "fault_injection=[{crash_once_at_step: 4}]"]}
    for name in ("left", "right"):
        folder = tmp_path / name
        folder.mkdir()
        logs[name] = open(folder / "driver.log", "w")
        drivers[name] = subprocess.Popen(
            sweep_command(folder, *TINY, "--num-samples", "1", "--set", f"name={name}",
                          *extra[name]),
            cwd=folder, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 1200
        while len(walls) < len(drivers) and time.monotonic() < deadline:
            time.sleep(1)
            walls.update({n: round(time.perf_counter() - started, 1)
                          for n, d in drivers.items() if n not in walls and d.poll() is not None})
    finally:
        for name, driver in drivers.items():
            stop_process_group(driver)
            logs[name].close()
    for name, driver in drivers.items():
        output = (tmp_path / name / "driver.log").read_text()
        assert driver.returncode == 0, output[-4000:]
        assert "multiple active Ray instances" not in output, output[-4000:]
        summary = json.loads((tmp_path / name / "sweeps" / name / "summary.json").read_text())
        assert [t["status"] for t in summary["trials"]] == ["TERMINATED"]
        assert summary["trials"][0]["steps"] == 4
        client, _, [run] = child_runs(tmp_path / name, name)
        points = assert_points_match_run_folder(client, run.info.run_id,
                                                Path(summary["trials"][0]["run_dir"]))
        dials = summary["trials"][0]["dials"]
        if name == "right":  # two ranks in a worker group, restarted from step 2's checkpoint
            # (certain: a worker's reports queue one deep, so step 4's evaluation report, sent
            # before the crash, went out only once the controller had taken step 2's)
            assert points[("resumed_from_step", 4)] == 2.0
            assert summary["trials"][0]["time"]["worker_start_s"] > 0.5
            # rank 0 measured the dials (a = 0 once, a ∈ {0.5, 1} × M ∈ {K, T}), the other
            # rank waited in the last report
            assert dials["num_points"] == 5 and dials["best"]["alpha"] in (0.0, 0.5, 1.0)
            assert [a.path for a in client.list_artifacts(run.info.run_id, "dials")] == [
                "dials/dials.json"]
            assert summary["trials"][0]["time"]["dial_s"] > 0
        else:  # one rank in the Tune trial process: no worker group to start
            assert summary["trials"][0]["time"]["worker_start_s"] < 0.05
            # the dials failed (fault_injection.dial_error): recorded, the trial finished
            assert dials == {"error": "InjectedDialError: injected dial failure "
                                      "(fault_injection.dial_error)"}
            assert run.info.status == "FINISHED"
            assert run.data.tags["textcraftor.dials_error"] == dials["error"]
            assert client.list_artifacts(run.info.run_id, "dials") == []
    print(f"\ntwo sweeps at once: walls {walls} s")


def test_optuna_dashboard_shows_the_study_under_its_names(tiny_sweep):
    """optuna-dashboard (the UI Optuna users already run) reads the sweep's optuna.db as it is:
    the study, its objectives by name, every trial's hyperparameters by run-config path."""
    import shutil
    import sys
    import urllib.request

    from sweep_helpers import E2E_PARAMS, free_port, local_server

    tmp, summary, _ = tiny_sweep
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is not installed (a dev dependency)"
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/studies"
    with local_server([dashboard, f"sqlite:///{tmp / 'sweeps' / 'e2e' / 'optuna.db'}",
                       "--host", "127.0.0.1", "--port", str(port), "--quiet"], base, 60):
        with urllib.request.urlopen(base, timeout=10) as reply:
            studies = json.loads(reply.read())["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "e2e"]
        assert study["directions"] == ["maximize"] * 3
        with urllib.request.urlopen(f"{base}/{study['study_id']}?after=0", timeout=10) as reply:
            detail = json.loads(reply.read())
    assert detail["objective_names"] == ["quality", "diversity", "alignment"]
    assert len(detail["trials"]) == summary["num_trials"] == 3
    for trial in detail["trials"]:
        assert {p["name"] for p in trial["params"]} == set(E2E_PARAMS)


def test_trial_lines_and_the_driver_log_file(tmp_path):
    import io
    import logging
    import math

    from study.console import DRIVER_LOG, TrialLines, quiet_driver_logs

    class Trial:
        def __init__(self, trial_id, config, last_result):
            self.trial_id, self.config, self.last_result = trial_id, config, last_result
            self.error_file = None

    out = io.StringIO()
    lines = TrialLines(("quality", "diversity"), lambda config: config,
                       lambda trial_id: 30 if trial_id == "b" else None, out)
    lines.on_trial_start(0, [], Trial("a", {"sample.k": 3, "train.lr": 1e-4}, None))
    lines.on_trial_complete(0, [], Trial("a", {}, {"step": 60, "quality": 61.234567,
                                                   "diversity": math.nan}))
    lines.on_trial_complete(0, [], Trial("b", {}, {"step": 30, "quality": 58.0}))
    lines.on_trial_error(0, [], Trial("c", {}, None))
    assert out.getvalue().splitlines() == [
        "trial a started: sample.k=3, train.lr=0.0001",
        "trial a finished at step 60: quality=61.23, diversity=nan",
        "trial b stopped by MO-ASHA at step 30: quality=58, diversity=nan",
        "trial c failed: unknown error"]
    path = quiet_driver_logs(tmp_path)
    logging.getLogger("ray.tune.test").warning("an internal warning")
    assert path == tmp_path / DRIVER_LOG and "an internal warning" in path.read_text()
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers, ray_logger.propagate = [], True  # leave the process as it was
    logging.captureWarnings(False)


def test_the_console_is_one_line_per_trial_event_and_the_table(tiny_sweep):
    """Quiet by default: each trial's start and end (or failure) on one line, the Pareto table;
    Ray's process output and driver logs in files, named at start; at most 80 lines."""
    tmp, summary, result = tiny_sweep
    console = (result.stdout + result.stderr).splitlines()
    assert len(console) <= 80, "\n".join(console)
    for trial in summary["trials"]:
        started = [line for line in console if line.startswith(f"trial {trial['trial_id']} "
                                                                "started: ")]
        assert len(started) == 1, started  # a restart has its own line
        ended = "failed: " if trial["status"] == "ERROR" else "finished at step 4: quality="
        assert any(line.startswith(f"trial {trial['trial_id']} {ended}") for line in console)
    restarted = [line for line in console if "failed, restarting from its last checkpoint: "
                 in line]
    assert len(restarted) == 2 and any("InjectedCrash" in line for line in restarted), restarted
    assert not [line for line in console if "Failed to query Ray Train Controller" in line
                or "Reporting training result" in line or "(pid=" in line]
    logs = next(line for line in console if line.startswith("Ray's process logs: "))
    driver_log = tmp / "sweeps" / "e2e" / "logs" / "driver.log"
    assert str(driver_log) in logs and driver_log.is_file()



def test_the_sweep_wall_is_accounted_for_part_by_part(tiny_sweep):
    """summary.json's overhead: the sweep's parts sum to its wall; each trial that reported
    its end is cut into measured parts (study.overhead) that sum to its wall; the failed trial
    (no end) is untimed."""
    from study.overhead import SWEEP_PARTS, TRIAL_PARTS

    _, summary, _ = tiny_sweep
    overhead = summary["overhead"]
    assert list(overhead["parts"]) == list(SWEEP_PARTS)
    assert sum(overhead["parts"].values()) == pytest.approx(overhead["sweep_wall_s"], rel=1e-6)
    assert all(seconds >= 0 for seconds in overhead["parts"].values()), overhead["parts"]
    timed = {t["trial_id"]: t["time"] for t in summary["trials"] if t["time"]}
    failed = [t["trial_id"] for t in summary["trials"] if t["status"] == "ERROR"]
    assert len(timed) == 2 and not set(failed) & set(timed)
    for trial_id, parts in timed.items():
        assert sum(parts[k] for k in TRIAL_PARTS) == pytest.approx(parts["wall_s"])
        for name in ("retried_s", "actor_start_s", "worker_start_s", "import_s", "load_s",
                     "train_s", "eval_s", "checkpoint_s", "report_s", "teardown_s"):
            assert parts[name] >= 0, (trial_id, name, parts)
        assert parts["train_s"] > 0 and parts["eval_s"] > 0
    # the trial that crashed once was restarted by Tune (in-process trials): its failed attempt
    # is its own part; a trial in a fresh process imports the method, one in a reused process
    # (Tune's reuse_actors: the last trial, after the restarted one) does not
    assert sorted(parts["retried_s"] > 0 for parts in timed.values()) == [False, True]
    imports = sorted(parts["import_s"] for parts in timed.values())
    assert imports[0] < 0.05 < imports[-1], imports
    assert overhead["startup_s_per_trial_after_first"] is not None
    assert overhead["baseline_parts"]["eval_s"] > 0
    assert 0 < overhead["train_eval_fraction_of_sweep"] < 1
    assert 0 < overhead["attributed_fraction"] <= 1
    assert overhead["trials_timed"] == 2


def test_every_objective_carries_its_interval_and_each_trial_its_paired_verdict(tiny_sweep):
    """summary.json: the baseline's and each finished trial's objectives with their 95 %
    bootstrap intervals; each finished trial compared with the baseline on the same prompts and
    seeds; MLflow holds the interval ends beside each objective; the printed table shows them."""
    tmp, summary, result = tiny_sweep
    names = summary["objectives"]
    base = summary["baseline"]
    for name in names:
        low, high = base["intervals"][name]
        assert low <= base["objectives"][name] <= high
    finished = [t for t in summary["trials"] if t["status"] == "TERMINATED"]
    client, _, children = child_runs(tmp, "e2e")
    runs = {r.info.run_id: r for r in children}
    for trial in finished:
        for name in names:
            low, high = trial["intervals"][name]
            assert low <= trial["objectives"][name] <= high, (trial["trial_id"], name)
            versus = trial["vs_baseline"][name]
            assert versus["verdict"] in ("better", "worse", "indistinguishable"), versus
            assert versus["ci_low"] <= versus["difference"] <= versus["ci_high"]
            assert versus["num_prompts"] == 4
            metrics = runs[trial["mlflow_run_id"]].data.metrics
            assert metrics[f"{name}_ci_low"] == pytest.approx(low)
        assert trial["vs_baseline"]["quality"]["num_seeds"] == 2  # per image: seeds nested
    failed = [t for t in summary["trials"] if t["status"] == "ERROR"]
    assert failed and all(t["vs_baseline"] is None for t in failed)
    console = result.stdout
    assert "  baseline  FINISHED  " in console
    assert "[95 % bootstrap interval over 4 prompts x 2 seeds]" in console


def test_repeats_train_one_configuration_with_several_seeds_and_optuna_sees_the_mean(tmp_path):
    """tuner.repeats=2, one configuration: two Ray trials with training seeds 0 and 1, one
    Optuna trial whose values are the two trials' means, the group's spread in summary.json."""
    run_sweep(tmp_path, "--num-samples", "1", "--set", "tuner.repeats=2", "--set", "name=rep")
    sweep_dir = tmp_path / "sweeps" / "rep"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert (summary["num_trials"], summary["expected_trials"], summary["repeats"]) == (2, 2, 2)
    trials = summary["trials"]
    assert sorted(t["repeat"] for t in trials) == [0, 1]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 1
    seeds = sorted(json.loads((Path(t["run_dir"]) / "config.json").read_text())["train"]["seed"]
                   for t in trials)
    assert seeds == [seeds[0], seeds[0] + 1]
    # both repeats on the baseline's held-out prompts and seeds: each has its paired verdict
    assert all(v["verdict"] != "unknown" for t in trials for v in t["vs_baseline"].values())
    _, _, children = child_runs(tmp_path, "rep")
    assert sorted(r.data.tags["textcraftor.repeat"] for r in children) == ["0", "1"]
    (group,) = summary["repeat_groups"]
    assert sorted(group["trials"]) == sorted(t["trial_id"] for t in trials)
    names = summary["objectives"]
    (told,) = optuna.load_study(study_name="rep",
                                storage=f"sqlite:///{sweep_dir}/optuna.db").trials
    assert told.state.name == "COMPLETE"
    for name, value in zip(names, told.values):
        mean = sum(t["objectives"][name] for t in trials) / 2
        assert value == pytest.approx(mean) == pytest.approx(group["objectives"][name]["mean"])
        assert group["objectives"][name]["n"] == 2
