"""The analysis package against a real tiny sweep's MLflow store: tidy tables, the per-category
breakdown, the HTML report opened in headless Chromium, the five notebooks executed top to
bottom, and the runs served by a real ``mlflow server`` over its REST API."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import pytest
from sweep_helpers import E2E_PARAMS, mlflow_server, rest

from analysis.runs import AnalysisError, by_category, load_runs, prompt_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "textcraftor-study"


@pytest.fixture(scope="module")
def store(tiny_sweep):
    tmp, summary, _ = tiny_sweep
    return f"sqlite:///{tmp / 'mlflow.db'}", tmp, summary


def test_runs_table_keeps_failed_trials_and_the_baseline(store):
    uri, _, summary = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    assert len(study.trials) == 3 and len(study.baseline) == 1
    assert sorted(study.trials["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    failed = study.trials[study.trials["status"] == "FAILED"].iloc[0]
    assert "non-finite loss" in failed["error"]
    assert not failed["pareto"]  # never on the front, never dropped
    base = study.baseline.iloc[0]
    assert base["status"] == "FINISHED"
    for name in ("quality", "diversity", "eval/aesthetic", "eval/clip", "eval/diversity_clip",
                 "eval/kd_random_features", "eval/fd_random_features", "eval/num_images"):
        assert name in study.runs and study.runs[name].notna().all() or name in base, name
    # the baseline is its own reference: KID/FID ≈ 0 at N = 4 prompts × 2 seeds
    assert base["eval/num_images"] == 8
    assert abs(base["eval/kd_random_features"]) < 1e-3
    assert abs(base["eval/fd_random_features"]) < 1e-3
    # the searched run-config paths, named as in the YAML; the K column is the searched K,
    # never the step metric of the K drawn (train/k_drawn)
    assert study.hyperparameters() == sorted(E2E_PARAMS)
    for trial in summary["trials"]:
        row = study.runs[study.runs["trial_id"] == trial["trial_id"]].iloc[0]
        assert {p: row[p] for p in E2E_PARAMS} == trial["params"]
    # same Pareto decisions as the sweep's own summary
    pareto = {t["trial_id"]: t["pareto"] for t in summary["trials"]}
    assert {r.trial_id: bool(r.pareto) for r in study.trials.itertuples()} == pareto
    loss = study.steps[(study.steps["key"] == "loss")]
    assert set(loss.groupby("run_id")["step"].max()) <= {1, 4}
    assert 4 in set(loss["step"])


def test_error_bars_are_each_runs_interval_ends(store):
    """The plots' error bars: each finished run's distance down and up to its 95 % interval
    ends, as logged to MLflow; the runs' table carries the ends beside each objective."""
    from analysis.plots import error_bars

    uri, _, summary = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    finished = study.runs[study.runs["status"] == "FINISHED"]
    for objective in ("quality", "diversity"):
        bars = error_bars(finished, objective)
        assert bars.shape == (2, len(finished)) and (bars >= 0).all()
        low = finished[objective] - bars[0]
        assert low.to_numpy() == pytest.approx(finished[f"{objective}_ci_low"].to_numpy())
    assert error_bars(finished.drop(columns=["quality_ci_low"]), "quality") is None


def test_category_breakdown_covers_the_heldout_categories(store):
    uri, _, _ = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    prompts = prompt_table(study)
    assert set(prompts["kind"]) == {"baseline", "trial"}
    assert prompts.groupby("run_id").size().eq(4).all()  # 4 held-out prompts each
    assert prompts["category"].notna().all()
    table = by_category(prompts)
    assert set(table["category"]) == set(prompts["category"])
    assert {"quality", "diversity", "num_prompts"} <= set(table.columns)
    assert table["diversity"].gt(0).all()
    assert table.groupby("trial_id")["num_prompts"].sum().eq(4).all()


def test_per_category_quality_averages_to_each_runs_quality_objective(store):
    """The per-prompt table's quality is the study's (fixed weights, the same for every run),
    so each run's category means, weighted by their prompt counts, give its quality objective
    (before, they were each run's own training objective: 112 and 149 beside 58.97)."""
    uri, _, _ = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    prompts = prompt_table(study)
    table = by_category(prompts)
    finished = study.runs[study.runs["status"] == "FINISHED"]
    assert len(finished) == 3  # the baseline and two trials
    for _, run in finished.iterrows():
        own = table[table["trial_id"] == run["trial_id"]]
        weighted = (own["quality"] * own["num_prompts"]).sum() / own["num_prompts"].sum()
        assert weighted == pytest.approx(run["quality"], rel=1e-5), run["trial_id"]
        assert "train_objective" in prompts.columns


def test_bad_input_is_named(tmp_path):
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    with pytest.raises(AnalysisError, match="no MLflow experiment 'nope'.*experiments there"):
        load_runs(uri, "nope")
    experiment = client.create_experiment("empty")
    with pytest.raises(AnalysisError, match="no trial or baseline runs"):
        load_runs(uri, "empty")
    # a trial that never reported an objective is shown with what is missing
    tags = {"textcraftor.kind": "trial", "textcraftor.sweep": "s", "textcraftor.trial_id": "t"}
    run = client.create_run(experiment, tags=tags)
    client.log_metric(run.info.run_id, "quality", 1.0)
    study = load_runs(uri, "empty")
    row = study.trials.iloc[0]
    assert row["status"] == "RUNNING" and row["missing"] == "diversity" and not row["pareto"]


def test_every_finished_trial_logged_its_dials(store):
    """Each trial that finished its training measured its inference dials (the small study's
    grid: a ∈ {0, 0.5, 1} × M ∈ {k_train, all}, a = 0 once) and logged them to its run. Its
    (a = 1, M = T) point is the trial's own last evaluation, reused as is; its a = 0 point is
    the untuned model under the trial's sampling (the baseline's where those are the base's).
    The summary names the best setting, one of the points, with its paired difference to the
    trial's own point."""
    from analysis.runs import dial_tables

    uri, _, summary = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    tables = dial_tables(study)
    finished = [t for t in summary["trials"] if t["status"] == "TERMINATED"]
    assert sorted(tables) == sorted(t["trial_id"] for t in finished) and finished
    base = study.baseline.iloc[0]
    for trial in finished:
        dials = tables[trial["trial_id"]]
        points = dials.points
        t = trial["params"]["sample.num_steps"]
        k = trial["params"]["sample.k"] if trial["params"]["sample.truncation"] == "last_k" else 2
        expected = {(0.0, t), *{(a, m) for a in (0.5, 1.0) for m in (k, t)}}
        assert set(zip(points["alpha"], points["finetuned_steps"])) == expected
        assert len(points) == len(expected) == trial["dials"]["num_points"]
        assert points["num_prompts"].eq(4).all() and points["num_seeds"].eq(2).all()
        own = points[(points["alpha"] == 1.0) & (points["finetuned_steps"] == t)].iloc[0]
        for name in ("quality", "diversity", "alignment"):
            assert own[name] == pytest.approx(trial["objectives"][name], abs=1e-9), name
            assert own[f"{name}_ci_low"] <= own[name] <= own[f"{name}_ci_high"], name
        untuned = points[points["alpha"] == 0.0].iloc[0]
        if (trial["params"]["sample.guidance_scale"], t) == (5.0, 4):
            assert untuned["quality"] == pytest.approx(base["quality"], abs=1e-4)
        best = trial["dials"]["best"]
        assert best == dials.best
        chosen = points[(points["alpha"] == best["alpha"])
                        & (points["finetuned_steps"] == best["finetuned_steps"])]
        assert len(chosen) == 1
        assert chosen.iloc[0]["quality"] == pytest.approx(best["objectives"]["quality"])
        for name in ("quality", "diversity", "alignment"):
            versus = best["vs_own"][name]
            assert versus["difference"] == pytest.approx(
                best["objectives"][name] - own[name], abs=1e-6)
            assert versus["ci_low"] <= versus["difference"] <= versus["ci_high"]


@pytest.fixture(scope="module")
def dial(store, run_module):
    """``python -m study.dials`` on the best trial at another grid (a ∈ {0, 1}, M = all), run
    once: it measures the trial's checkpoint again and logs the table to its MLflow run, in
    place of the one the sweep logged."""
    uri, _, _ = store
    result = run_module("study.dials", "--tracking-uri", uri, "--experiment", EXPERIMENT,
                        "--sweep", "e2e", "--alphas", "0,1", "--finetuned-steps", "all",
                        timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def test_dial_command_remeasures_the_trial_and_logs_once(store, dial, run_module):
    """a = 1, M = T re-measures the trial's last checkpoint: it must give what the sweep logged
    (same prompts, seeds and metric networks in another process). The table is logged once: a
    second call with the same grid measures nothing."""
    from analysis.report import best_trial
    from analysis.runs import dial_tables

    uri, _, summary = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    assert dial["trial_id"] == best_trial(study)
    table = dial_tables(study)[dial["trial_id"]].points
    assert table["alpha"].tolist() == [0.0, 1.0]
    trial = study.trials[study.trials["trial_id"] == dial["trial_id"]].iloc[0]
    for column in ("quality", "diversity", "alignment"):
        assert table[column].iloc[1] == pytest.approx(trial[column], abs=1e-4), column
        assert table[column].tolist() == [row[column] for row in dial["points"]]
    again = run_module("study.dials", "--tracking-uri", uri, "--experiment", EXPERIMENT,
                       "--sweep", "e2e", "--alphas", "0,1", "--finetuned-steps", "all",
                       "--trial", dial["trial_id"])
    assert again.returncode == 0 and "logged already" in again.stderr, again.stderr[-2000:]
    client = mlflow.tracking.MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(trial["run_id"], "dials")] == [
        "dials/dials.json"]


def test_dial_command_bad_input_is_named_before_any_model(store, run_module):
    uri, _, _ = store
    for args, message in (
            (["--alphas", "0,1.5"], "--alphas: 1.5 lies outside [0, 1]"),
            (["--alphas", "a,b"], "--alphas: 'a,b' is not a comma-separated list"),
            (["--finetuned-steps", "0"], "--finetuned-steps: '0' is neither an int >= 1"),
            (["--finetuned-steps", "99", "--trial", "best"],
             "finetuned_steps: 99 lies outside [1, T="),
            (["--trial", "nope"], "--trial: no trial 'nope'; trials: ["),
            (["--sweep", "other"], "--sweep: no trial runs of sweep 'other'")):
        result = run_module("study.dials", "--tracking-uri", uri, "--experiment",
                            EXPERIMENT, "--sweep", "e2e", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def chromium_image_check(report: Path) -> dict:
    """Open a copy of the report (same folder, so the same relative image paths) in headless
    Chromium with a script that records, after load, how many images decoded."""
    probe = report.with_name("probe.html")
    script = ("<script>window.addEventListener('load', () => {const i = [...document.images];"
              "document.body.setAttribute('data-check', JSON.stringify({total: i.length, "
              "loaded: i.filter(x => x.complete && x.naturalWidth > 0).length}));});</script>")
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs it)"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={report.parent / '.chromium'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"data-check=\"([^\"]+)\"", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_report_opens_in_chromium_with_every_image(store, dial, run_module, tmp_path):
    uri, _, _ = store
    out = tmp_path / "report"
    result = run_module("analysis.report", "--tracking-uri", uri, "--experiment", EXPERIMENT,
                        "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    page = (out / "report.html").read_text()
    for figure in ("quality_vs_diversity", "objectives_vs_params", "training_curves",
                   "cost_vs_k", "samples", "by_category", f"dials_{dial['trial_id']}",
                   "time_breakdown", "pairwise_fronts", "parallel_objectives"):
        assert (out / "figures" / f"{figure}.png").is_file(), figure
        assert (out / "figures" / f"{figure}.svg").is_file(), figure
        assert f"figures/{figure}.png" in page
    assert "FAILED" in page and "Pareto front" in page and "By category" in page
    # every finished trial against the baseline, paired, with its interval and verdict
    assert "Against the baseline (paired)" in page
    assert page.count("indistinguishable") + page.count("better") + page.count("worse") >= 6
    assert "<th>quality_ci_low</th>" in page  # the tables carry each objective's interval
    for name in E2E_PARAMS:  # the Pareto table's columns: the searched paths, as in the YAML
        assert f"<th>{name}</th>" in page, name
    check = chromium_image_check(out / "report.html")
    assert check["total"] >= 7 and check["loaded"] == check["total"], check


def test_report_on_unknown_experiment_fails_clearly(store, run_module, tmp_path):
    uri, _, _ = store
    result = run_module("analysis.report", "--tracking-uri", uri, "--experiment", "missing",
                        "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "no MLflow experiment 'missing'" in result.stderr


def test_estimator_gains_pool_each_estimators_paired_differences(store):
    """analysis.estimators on the sweep's store: a row per (estimator, score); an estimator
    with one finished trial has that trial's paired quality difference (the sweep's own
    summary), its interval around it; the costs are the trials' logged ones."""
    from analysis.estimators import estimator_gains, estimators_reading, gains_wide

    uri, _, summary = store
    study = load_runs(uri, EXPERIMENT, "e2e")
    gains = estimator_gains(study)
    finished = [t for t in summary["trials"] if t["status"] == "TERMINATED"
                and (t.get("vs_baseline") or {}).get("quality")]
    by_estimator: dict[str, list] = {}
    for trial in finished:
        by_estimator.setdefault(trial["params"]["sample.truncation"], []).append(trial)
    assert set(gains["estimator"]) == set(by_estimator)
    for estimator, trials in by_estimator.items():
        quality = gains[(gains["estimator"] == estimator) & (gains["score"] == "quality")]
        assert len(quality) == 1
        row = quality.iloc[0]
        assert row["repeats"] == len(trials) and row["prompts"] == 4
        expected = sum(t["vs_baseline"]["quality"]["difference"] for t in trials) / len(trials)
        assert row["gain"] == pytest.approx(expected, abs=1e-9)
        assert row["gain_ci_low"] <= row["gain"] <= row["gain_ci_high"]
        assert row["unet_passes"] > 0 and row["steps"] > 0
    wide = gains_wide(gains)
    assert set(wide["estimator"]) == set(by_estimator)
    assert "UNet passes" in estimators_reading(gains)


# The notebooks that read a study's MLflow store (05 trains its own runs: test_shapes_preset).
NOTEBOOKS = sorted((REPO / "analysis" / "notebooks").glob("0[1-46]_*.ipynb"))


def test_notebooks_execute_top_to_bottom_and_end_with_a_reading(store, dial, tmp_path):
    import nbformat
    import papermill

    uri, _, _ = store
    assert [n.name for n in NOTEBOOKS] == [
        "01_weights_vs_constraint.ipynb", "02_truncation_depth.ipynb",
        "03_dials.ipynb", "04_model_size.ipynb", "06_estimators.ipynb"]
    env = {"PYTHONPATH": str(REPO)}
    os.environ.update(env)
    for notebook in NOTEBOOKS:
        out = tmp_path / notebook.name
        papermill.execute_notebook(str(notebook), str(out), kernel_name="python3",
                                   parameters={"tracking_uri": uri, "experiment": EXPERIMENT,
                                               "sweep": "e2e"}, cwd=str(REPO), progress_bar=False)
        cells = nbformat.read(out, as_version=4).cells
        code = [c for c in cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code if c.source.strip()), notebook.name
        reading = [o for o in code[-1].outputs if "text/markdown" in o.get("data", {})]
        assert reading, f"{notebook.name}: no reading"
        text = reading[0]["data"]["text/markdown"]
        assert len(text) > 40 and re.search(r"\d", text), text
        figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
        assert figures, f"{notebook.name}: no figure"


def test_mlflow_server_serves_the_sweep_over_rest(store):
    uri, tmp, summary = store
    with mlflow_server(uri, tmp) as (base, _):
        experiment = rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                          + EXPERIMENT)["experiment"]
        runs = rest(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "tags.`textcraftor.sweep` = 'e2e'", "max_results": 100})["runs"]
        kinds = sorted(next(t["value"] for t in r["data"]["tags"]
                            if t["key"] == "textcraftor.kind") for r in runs)
        assert kinds == ["baseline", "sweep", "trial", "trial", "trial"]
        done = [t for t in summary["trials"] if t["status"] == "TERMINATED"]
        for trial in done:
            run_id = trial["mlflow_run_id"]
            history = rest(base, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                           "&metric_key=loss")
            assert [m["step"] for m in history["metrics"]][-1] == 4
            listed = rest(base, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=samples")
            assert "samples/step_0000004.png" in [f["path"] for f in listed["files"]]
            with urllib.request.urlopen(f"{base}/get-artifact?path=samples/step_0000004.png"
                                        f"&run_uuid={run_id}", timeout=30) as response:
                assert response.read(8) == b"\x89PNG\r\n\x1a\n"
            # MLflow's time-stepped images (log_image key/step): the run page's image view
            # steps through the grids; one image per checkpoint step, none twice (the
            # restarted worker group meets step 4's checkpoint again)
            images = rest(base, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=images")
            stamped = sorted(int(f["path"].split("+step+")[1].split("+")[0])
                             for f in images["files"] if f["path"].endswith(".png"))
            checkpoints = sorted(int(f["path"][len("samples/step_"):-len(".png")])
                                 for f in listed["files"])
            assert stamped == checkpoints and 4 in stamped, (stamped, checkpoints)
        baseline = next(r for r in runs if any(t["key"] == "textcraftor.kind" and
                                               t["value"] == "baseline" for t in r["data"]["tags"]))
        images = rest(base, "/api/2.0/mlflow/artifacts/list?run_id="
                      f"{baseline['info']['run_id']}&path=images")
        assert [f["path"].split("+")[:3] for f in images["files"]
                if f["path"].endswith(".png")] == [["images/samples", "step", "0"]]


def test_the_report_reads_what_the_sweep_wrote_with_ray_and_torch_unimportable(store, dial,
                                                                               tmp_path):
    """analysis/ reads MLflow and summary files only: with ``ray`` and ``torch`` made
    unimportable, the report of a finished sweep, the inference dials included (measured by
    ``study.dials`` and read from MLflow), is built."""
    import sys

    uri, _, _ = store
    out = tmp_path / "report"
    code = ("import sys; sys.modules['ray'] = None; sys.modules['torch'] = None; "
            "from analysis.report import main; "
            f"sys.exit(main(['--tracking-uri', {uri!r}, '--experiment', {EXPERIMENT!r}, "
            f"'--out', {str(out)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-4000:]
    page = (out / "report.html").read_text()
    assert "Pareto front" in page and "By category" in page
    assert f"Inference dials: trial {dial['trial_id']}" in page
    for name in E2E_PARAMS:
        assert f"<th>{name}</th>" in page, name
