"""``python -m study.sweep``: a multi-objective TextCraftor study on Ray Tune + Optuna.

Every trial is a Ray Train (DDP) fine-tuning job, tracked as an MLflow child run of the sweep's
parent run; Optuna's trials persist in an RDB storage; ``--resume`` continues an interrupted
sweep without re-running finished trials. No arguments: the embedded default study.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from study.config import StudyConfig, load_study_config
from study.summary import pareto_table, summarize, write_summary
from study.tracking import (
    SweepTracker,
    TrackingError,
    check_tracking_uri,
    flatten,
    resolve_tracking_uri,
    trial_error_text,
)
from textcraftor.configio import ConfigError, to_dict

log = logging.getLogger("study.sweep")
TUNE_DIR = "tune"  # <sweep_dir>/tune: Ray Tune's experiment state


class SweepError(RuntimeError):
    """The sweep cannot start; the message says why and what to do."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="study YAML (default: study/configs/default.yaml, "
                        "the tiny preset on this machine)")
    parser.add_argument("--num-samples", type=int, help="number of trials (tuner.num_samples)")
    parser.add_argument("--results-dir", help="folder for <name>/summary.json, Ray Tune and "
                        "Optuna state (default: sweeps)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
                        "or sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--address", help="Ray cluster address ('auto' for a running cluster); "
                        "default: start a local Ray")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep of the same name")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a study field, e.g. "
                        "base.train.steps=20 or search.k.high=3")
    return parser.parse_args(argv)


def load_study(args: argparse.Namespace) -> StudyConfig:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"tuner.num_samples={args.num_samples}")
    study = load_study_config(args.config, overrides, results_dir=args.results_dir,
                              tracking_uri=args.tracking_uri)
    # Absolute, here: trials run with Tune's per-trial working directory as their cwd.
    return replace(study, results_dir=str(Path(study.results_dir).expanduser().resolve()))


def check_sweep_dir(study: StudyConfig, resume: bool) -> Path:
    sweep_dir = study.sweep_dir
    state = sweep_dir / TUNE_DIR
    if resume and not state.is_dir():
        raise SweepError(f"--resume: no sweep state at {state}; run without --resume first")
    if not resume and state.exists():
        raise SweepError(f"sweep {study.name!r} already exists at {sweep_dir}; pass --resume to "
                         "continue it, or choose another name (--set name=...) or --results-dir")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        probe = sweep_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SweepError(f"results folder {sweep_dir} is not writable: {error}") from None
    return sweep_dir


# Settings the driver's environment carries to every trial and worker process, wherever it runs.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TEXTCRAFTOR_CACHE", "MLFLOW_DISABLE_TELEMETRY",
                 "OMP_NUM_THREADS", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")


def start_ray(address: str | None) -> None:
    """Connect to the cluster at ``address``, or start a fresh local one (never a stray local
    cluster someone else started)."""
    import ray

    runtime_env = {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise SweepError(f"no Ray cluster at {address!r}: {error}") from None
    else:
        store = int(os.environ.get("TEXTCRAFTOR_OBJECT_STORE_BYTES", 256 * 2**20))
        # the dashboard (on 127.0.0.1) serves the State API that Ray Train's clean-up polls
        ray.init(address="local", object_store_memory=store, runtime_env=runtime_env,
                 logging_level=logging.WARNING)


def check_resources(study: StudyConfig) -> None:
    """A trial that cannot fit the cluster would wait forever: say so instead."""
    import ray

    r = study.resources
    total = ray.cluster_resources()
    need_cpu = r.trial_cpus + r.num_workers * r.cpus_per_worker
    need_gpu = r.num_workers * r.gpus_per_worker
    have_cpu, have_gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if need_cpu > have_cpu + 1e-9 or need_gpu > have_gpu + 1e-9:
        raise SweepError(
            f"one trial needs {need_cpu:g} CPU and {need_gpu:g} GPU (trial_cpus + num_workers × "
            f"per-worker resources) but the cluster has {have_cpu:g} CPU and {have_gpu:g} GPU; "
            "lower resources.num_workers / cpus_per_worker / gpus_per_worker or add nodes")


def make_searcher(study: StudyConfig):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.space import DefineByRun, reference_point

    t = study.tuner
    samplers = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "random": optuna.samplers.RandomSampler}
    storage_url = t.storage or f"sqlite:///{study.sweep_dir / 'optuna.db'}"
    names = list(study.objectives.names)
    return OptunaSearch(
        DefineByRun(study),
        metric=names if len(names) > 1 else names[0],
        mode=["max"] * len(names) if len(names) > 1 else "max",
        sampler=samplers[t.sampler](seed=t.seed),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=study.name,
        points_to_evaluate=[reference_point(study)] if t.reference_first else None,
    )


def make_trainable(study: StudyConfig):
    from ray import tune

    from study.trial import run_trial

    return tune.with_resources(tune.with_parameters(run_trial, study=to_dict(study)),
                               {"CPU": study.resources.trial_cpus})


def make_tuner(study: StudyConfig, callbacks: list, resume: bool):
    from ray import tune

    path = study.sweep_dir / TUNE_DIR
    if resume:
        return tune.Tuner.restore(str(path), trainable=make_trainable(study),
                                  resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    scheduler = None
    if study.tuner.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=study.objectives.names[0], mode="max",
                                  time_attr="training_iteration")
    return tune.Tuner(
        make_trainable(study),
        tune_config=tune.TuneConfig(search_alg=make_searcher(study), scheduler=scheduler,
                                    num_samples=study.tuner.num_samples,
                                    max_concurrent_trials=study.tuner.max_concurrent),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(study.sweep_dir),
                                  callbacks=callbacks),
    )


def trial_records(results, study: StudyConfig, tracker: SweepTracker) -> list[dict[str, Any]]:
    """Every trial Tune knows of (finished, failed or unfinished) as a summary record."""
    from study.space import trial_params

    records = []
    for trial in results._experiment_analysis.trials:
        last = trial.last_result or {}
        records.append({
            "trial_id": trial.trial_id,
            "status": trial.status,
            "params": trial_params(trial.config, study),
            "objectives": {o: _finite_or_none(last.get(o)) for o in study.objectives.names},
            "steps": last.get("step"),
            "train_time_s": last.get("train_time_s"),
            "startup_s": last.get("startup_s"),
            "trial_wall_s": last.get("time_total_s"),
            "error": _error(trial),
            "mlflow_run_id": tracker.run_id(trial.trial_id),
            "run_dir": str(study.sweep_dir / "trials" / trial.trial_id),
        })
    return sorted(records, key=lambda r: r["trial_id"])


def overhead(trials: list[dict[str, Any]], sweep_wall_s: float) -> dict[str, float | None]:
    """Where this run of the sweep spent its time: training steps against everything else."""
    def total(key):
        values = [t[key] for t in trials if isinstance(t.get(key), (int, float))]
        return sum(values) if values else None

    train, startup = total("train_time_s"), total("startup_s")
    counted = [t for t in trials if isinstance(t.get("startup_s"), (int, float))]
    return {
        "sweep_wall_s": sweep_wall_s,
        "train_time_s": train,
        "trial_wall_s": total("trial_wall_s"),
        "train_fraction_of_sweep": train / sweep_wall_s if train and sweep_wall_s else None,
        "startup_s_per_trial": startup / len(counted) if counted else None,
    }


def baseline_record(tracker: SweepTracker) -> dict[str, Any] | None:
    """The baseline's status and objectives, for summary.json."""
    run = tracker.baseline_run()
    if run is None:
        return None
    metrics = run.data.metrics
    return {"status": run.info.status, "mlflow_run_id": run.info.run_id,
            "objectives": {k: metrics.get(k) for k in ("quality", "diversity")},
            "error": run.data.tags.get("error")}


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and value == value else None


def _error(trial) -> str | None:
    lines = trial_error_text(trial).strip().splitlines()
    return lines[-1] if lines else None


def run_sweep(study: StudyConfig, address: str | None = None, resume: bool = False) -> dict:
    from study.baseline import run_baseline
    from study.space import trial_params
    from study.tracking import MlflowTrialCallback

    uri = resolve_tracking_uri(study.tracking_uri)
    check_tracking_uri(uri)
    sweep_dir = check_sweep_dir(study, resume)
    start_ray(address)
    check_resources(study)
    tracker = SweepTracker(uri, study.experiment, study.name)
    if not resume:
        tracker.log_params(tracker.parent_id, flatten(to_dict(study)))
        tracker.client.log_dict(tracker.parent_id, to_dict(study), "study_config.json")
    run_baseline(study, tracker)
    callback = MlflowTrialCallback(
        tracker, lambda config: {**trial_params(config, study), "base": to_dict(study.base)},
        lambda trial_id: study.sweep_dir / "trials" / trial_id)
    tuner = make_tuner(study, [callback], resume)
    started = time.perf_counter()
    results = tuner.fit()
    summary = summarize(trial_records(results, study, tracker), study.objectives.names)
    summary.update({"name": study.name, "mlflow_parent_run_id": tracker.parent_id,
                    "tracking_uri": uri, "experiment": study.experiment,
                    "overhead": overhead(summary["trials"], time.perf_counter() - started),
                    "baseline": baseline_record(tracker)})
    write_summary(sweep_dir / "summary.json", summary)
    tracker.client.log_artifact(tracker.parent_id, str(sweep_dir / "summary.json"))
    table = pareto_table(summary)
    tracker.client.log_text(tracker.parent_id, table, "pareto.txt")
    unfinished = [t for t in summary["trials"] if t["status"] not in ("TERMINATED", "ERROR")]
    tracker.close_orphans("KILLED")
    tracker.finish(tracker.parent_id, "KILLED" if unfinished else "FINISHED")
    print(table)
    if unfinished:
        print(f"\n{len(unfinished)} trial(s) unfinished: continue with --resume", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Ray Train gives a worker group 60 s to start; on a busy small machine importing torch in
    # each worker can take longer (the resources themselves are checked before the sweep).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    args = parse_args(argv)
    try:
        study = load_study(args)
        summary = run_sweep(study, args.address, args.resume)
    except (ConfigError, FileNotFoundError, SweepError, TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nsummary: {study.sweep_dir / 'summary.json'}")
    if summary["num_trials"] and not summary["status_counts"].get("TERMINATED"):
        print("error: no trial completed; see the errors in summary.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
