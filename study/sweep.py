"""``python -m study.sweep``: a multi-objective TextCraftor study on Ray Tune + Optuna.

Every trial is a Ray Train (DDP) fine-tuning job, tracked as an MLflow child run of the sweep's
parent run; Optuna's trials persist in an RDB storage; ``--resume`` continues an interrupted
sweep without re-running finished trials. No arguments: the embedded default study.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from study.config import StudyConfig, load_study_config, search_variants
from study.console import TrialClock, TrialLines, quiet_driver_logs
from study.interrupt import EXIT_CODES, FINISHED, StopSignals, TrialStatuses
from study.moasha import stopped_trials
from study.objectives import DIRECTIONS, OBJECTIVES, interval_names
from study.overhead import sweep_time, trial_time
from study.resume import ResumeError, canonical_tracking_uri, check_resume
from study.summary import hypervolume, pareto_table, summarize, write_summary
from study.tracking import (
    SweepTracker,
    TrackingError,
    check_tracking_uri,
    flatten,
    resolve_tracking_uri,
    trial_error_text,
)
from textcraftor.config import RunConfig
from textcraftor.configio import ConfigError, to_dict

log = logging.getLogger("study.sweep")
TUNE_DIR = "tune"  # <sweep_dir>/tune: Ray Tune's experiment state
PENDING_POINTS = "pending_points.json"  # metric points not final yet, for a resumed driver


class SweepError(RuntimeError):
    """The sweep cannot start; the message says why and what to do."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="study YAML (default: study/configs/default.yaml, "
                        "ShapesWorld's base model on this machine)")
    parser.add_argument("--num-samples", type=int, help="number of trials (tuner.num_samples)")
    parser.add_argument("--results-dir", help="folder for <name>/summary.json, Ray Tune and "
                        "Optuna state (default: sweeps)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
                        "or sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--address", help="Ray cluster address ('auto' for a running cluster); "
                        "default: start a local Ray")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep of the same name, under the study "
                        "it started with (only tuner.num_samples upwards, tuner.max_concurrent "
                        "and resources.max_failures may change)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a study field, e.g. "
                        "base.train.steps=20 or search.sample.k.high=3")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's process output, Tune's status tables and Ray's driver logs "
                        "on the console (default: one line per trial, the logs in files)")
    return parser.parse_args(argv)


def load_study(args: argparse.Namespace) -> StudyConfig:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"tuner.num_samples={args.num_samples}")
    study = load_study_config(args.config, overrides, results_dir=args.results_dir,
                              tracking_uri=args.tracking_uri)
    if study.remote_results:
        return study
    # Absolute, here: trials run with Tune's per-trial working directory as their cwd.
    return replace(study, results_dir=str(Path(study.results_dir).expanduser().resolve()))


def tune_state(study: StudyConfig) -> tuple[str, bool]:
    """Where Ray Tune keeps the sweep's state, and whether it is there."""
    path = f"{study.storage_dir}/{TUNE_DIR}"
    if not study.remote_results:
        return path, Path(path).exists()
    from ray import tune

    return path, tune.Tuner.can_restore(path)


def check_remote_storage(uri: str) -> None:
    """Every node writes checkpoints there: fail now, not in the first trial."""
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        filesystem.create_dir(path, recursive=True)
        with filesystem.open_output_stream(f"{path}/.write-test") as stream:
            stream.write(b"ok")
        filesystem.delete_file(f"{path}/.write-test")
    except Exception as error:  # credentials, bucket, scheme: pyarrow raises several types
        raise SweepError(f"results storage {uri} is not writable: {error}") from None


def check_sweep_dir(study: StudyConfig, resume: bool) -> Path:
    sweep_dir = study.sweep_dir
    if study.remote_results:
        check_remote_storage(study.storage_dir)
    state, exists = tune_state(study)
    if resume and not exists:
        raise SweepError(f"--resume: no sweep state at {state}; run without --resume first")
    if not resume and exists:
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
# The caches and offline switches among them are the ones the driver's source check read
# (textcraftor.sources_check): workers must look where it looked.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
                 "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "TORCH_HOME", "XDG_CACHE_HOME",
                 "TEXTCRAFTOR_CACHE", "MLFLOW_DISABLE_TELEMETRY", "OMP_NUM_THREADS",
                 "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")


def start_ray(address: str | None, verbose: bool = True) -> None:
    """Connect to the cluster at ``address``, or start a fresh local one (never a stray local
    cluster someone else started).

    A local cluster's address goes into ``RAY_ADDRESS``, in this process and in every Ray
    process of the job (runtime_env): Ray's components that look a cluster up on their own
    (the State API that Ray Train's controller and state actor call, the dashboard client) read
    it first. Without it they scan the machine for GCS processes and, with a second sweep
    running, find two ("Found multiple active Ray instances", ray._private.services). The GCS
    port is chosen here (``RAY_GCS_SERVER_PORT``), since the job's environment is fixed before
    the cluster starts."""
    import ray

    runtime_env = {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    if address:
        check_gcs_reachable(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING,
                     log_to_driver=verbose)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise SweepError(f"no Ray cluster at {address!r}: {error}") from None
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        return
    store = int(os.environ.get("TEXTCRAFTOR_OBJECT_STORE_BYTES", 256 * 2**20))
    port = free_port()
    own = f"{ray.util.get_node_ip_address()}:{port}"
    runtime_env["env_vars"]["RAY_ADDRESS"] = own
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", object_store_memory=store, runtime_env=runtime_env,
                 logging_level=logging.WARNING, log_to_driver=verbose)
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
    started = ray.get_runtime_context().gcs_address
    if started != own:
        ray.shutdown()
        raise SweepError(f"the local Ray cluster started at {started}, not at {own} as asked "
                         "(RAY_GCS_SERVER_PORT); its components could not find it")
    os.environ["RAY_ADDRESS"] = started


def ray_logs_dir() -> str:
    """This driver's Ray session log folder (a local cluster's; Ray has no public API for it:
    the node object is private, so a fallback names it)."""
    import ray

    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except AttributeError:
        return "the logs/ folder of the Ray session (/tmp/ray/session_latest on the head)"


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def check_model_weights(study: StudyConfig) -> None:
    """Every model, reward and evaluation weight the trials will load, resolved here before Ray
    starts (textcraftor.sources_check): a missing folder, or weights neither cached nor
    downloadable, is one SourceError listing them all, instead of workers retrying downloads
    for minutes. The ShapesWorld weights' checksums are verified here too, not in every trial.
    Beyond base's active rewards: the quality score's (built by every trial's evaluator) and
    every searched weight that can be positive."""
    from textcraftor.limits import check_model_limits
    from textcraftor.sources_check import check_sources

    extra = {n: f"objectives.quality_weights.{n}" for n in study.objectives.quality_weights}
    for path, distribution in study.search.items():
        if path.startswith("reward.weights."):
            values = distribution.choices or (distribution.high,)
            if any(isinstance(v, (int, float)) and v > 0 for v in values):
                extra.setdefault(path.removeprefix("reward.weights."), f"search.{path}")

    def check_limits(run: RunConfig, drawn: str) -> None:
        # what the scheduler, UNet and VAE refuse (num_steps, direct_t, resolution), from
        # their configs only: a trial would otherwise load every model first and then die
        try:
            check_model_limits(run)
        except ConfigError as error:
            raise ConfigError(f"base.{error}{drawn}") from None

    check_sources(study.base, extra, prefix="base.")
    check_limits(study.base, "")
    # every searched choice or range end, as the trial that draws it would load it; a searched
    # weight, scale or λ changes no source beyond ``extra`` (each probe of an uncached hub
    # file can cost seconds online, so each source plan is checked once)
    for path, value, run in search_variants(study.search, study.base):
        if path.startswith(("model.", "reward.")) and not path.startswith(
                ("reward.weights.", "reward.scales.", "reward.clip_constraint")):
            check_sources(run, extra, prefix="base.")
        check_limits(run, f" (when search.{path} draws {value!r})")


def check_gcs_reachable(address: str, timeout_s: float = 10.0) -> None:
    """``ray.init`` retries an unreachable host:port for minutes: probe it first."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto" and friends: ray.init fails fast itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise SweepError(f"no Ray cluster at {address!r}: {error}") from None


def check_resources(study: StudyConfig, address: str | None) -> bool:
    """A trial that cannot fit would wait forever. Locally that is an error; on a cluster
    (``address``) the autoscaler is asked for one trial's worth and trials wait for it.
    Returns whether resources were requested (release them at the end)."""
    import ray

    r = study.resources
    total = ray.cluster_resources()
    need = {"CPU": 0.0, "GPU": 0.0}
    for bundle in r.bundles():
        for name, amount in bundle.items():
            need[name] = need.get(name, 0.0) + amount
    short = {k: v for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if not short:
        return False
    needs = " and ".join(f"{v:g} {k}" for k, v in need.items() if v or k in short)
    has = " and ".join(f"{total.get(k, 0.0):g} {k}" for k in need if need[k] or k in short)
    if address is None:
        raise SweepError(
            f"one trial needs {needs} (trial_cpus + trial_resources + max(1, num_workers) × "
            f"per-worker resources) but the cluster has {has}; lower resources.num_workers / "
            "cpus_per_worker / gpus_per_worker or add nodes")
    from ray.autoscaler.sdk import request_resources

    log.warning("one trial needs %s but the cluster has %s now: asking the autoscaler for it; "
                "trials wait until nodes join (without an autoscaler they wait forever)",
                needs, has)
    request_resources(bundles=r.bundles())
    return True


def make_searcher(study: StudyConfig):
    """Optuna (define-by-run, persistent storage) behind Tune's concurrency limit."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.config import grid_points
    from study.grid import TuneGridSampler
    from study.resume import StudySearch
    from study.space import DefineByRun, reference_point

    t = study.tuner
    # the random start: TPE's and GP's start-up trials, NSGA-II's first generation
    option = {"tpe": "n_startup_trials", "gp": "n_startup_trials",
              "nsga2": "population_size"}.get(t.sampler)
    options = {option: t.random_trials()} if option else {}
    samplers = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                "nsga2": optuna.samplers.NSGAIISampler, "random": optuna.samplers.RandomSampler,
                "grid": partial(TuneGridSampler, grid_points(study.search))}
    storage_url = t.storage or f"sqlite:///{study.sweep_dir / 'optuna.db'}"
    names = list(study.objectives.names)
    searcher = OptunaSearch(
        DefineByRun(study),
        metric=names if len(names) > 1 else names[0],
        mode=[DIRECTIONS[n] for n in names] if len(names) > 1 else DIRECTIONS[names[0]],
        sampler=samplers[t.sampler](seed=t.seed, **options),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=study.name,
        points_to_evaluate=[reference_point(study)] if t.reference_first else None,
    )
    # the objectives by name in the storage, for optuna-dashboard and optuna.load_study
    # (OptunaSearch created the study above; the name API is marked experimental)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.load_study(study_name=study.name, storage=storage_url).set_metric_names(names)
    if t.repeats > 1:  # each configuration tried with t.repeats training seeds, told as a mean
        from study.repeats import Repeats

        searcher = Repeats(searcher, repeat=t.repeats)
    return StudySearch(searcher, t.max_concurrent, study.sweep_dir)


def make_trainable(study: StudyConfig):
    from ray import tune

    from study.trial import run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, study=to_dict(study)),
                                    study.resources.trial_bundle())
    # what Tune's console tables show of a result (its error and restart notices print the
    # last one): the step and the objectives, not every timing field and the step history
    trainable._progress_metrics = ["step", *study.objectives.names]
    return trainable


def make_tuner(study: StudyConfig, callbacks: list, resume: bool, verbose: bool = True):
    from ray import tune

    if resume:
        tuner = tune.Tuner.restore(tune_state(study)[0], trainable=make_trainable(study),
                                   resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        # Tune restores the callbacks pickled at the first start (that driver's objects, with
        # its MLflow client); this driver's callbacks take their place.
        tuner._local_tuner.get_run_config().callbacks = callbacks  # None over ray://
        tuner._local_tuner.get_run_config().verbose = 2 if verbose else 0
        tuner._local_tuner.get_run_config().failure_config = trial_failures(study)
        return tuner
    scheduler = None
    if study.tuner.scheduler == "moasha":
        from study.moasha import MultiObjectiveASHA, board_name

        t = study.tuner
        scheduler = MultiObjectiveASHA(study.objectives.names, t.rungs, t.reduction_factor,
                                       study.sweep_dir, board=board_name(study.name))
    if study.tuner.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=study.objectives.names[0],
                                  mode=DIRECTIONS[study.objectives.names[0]],
                                  time_attr="training_iteration")
    return tune.Tuner(
        make_trainable(study),
        tune_config=tune.TuneConfig(search_alg=make_searcher(study), scheduler=scheduler,
                                    num_samples=study.tuner.num_trials,
                                    # in-process trials: the next trial runs in the process
                                    # the last one used, its imports done
                                    reuse_actors=study.resources.in_process),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=study.storage_dir,
                                  callbacks=callbacks, verbose=2 if verbose else 0,
                                  failure_config=trial_failures(study),
                                  # in-process trials' checkpoints (Ray Train keeps its own)
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )


def trial_failures(study: StudyConfig):
    """Tune's restarts of a failed trial: none when Ray Train restarts its worker group
    (``resources.max_failures`` there), that many for in-process trials, from the trial's last
    checkpoint."""
    from ray import tune

    r = study.resources
    return tune.FailureConfig(max_failures=r.max_failures if r.in_process else 0)


def trial_records(results, study: StudyConfig, tracker: SweepTracker,
                  statuses: TrialStatuses, clock: TrialClock | None = None
                  ) -> list[dict[str, Any]]:
    """Every trial Tune knows of as a summary record: TERMINATED or ERROR when it ran to its
    end, STOPPED when MO-ASHA stopped it at a rung (``stopped_at_step``), INTERRUPTED when it
    started and the sweep was stopped, NOT_STARTED when it never started."""
    from study.dial_table import dial_record
    from study.space import REPEAT_INDEX, trial_params

    records = []
    stopped = stopped_trials(study.sweep_dir)
    for trial in results._experiment_analysis.trials:
        last = trial.last_result or {}
        started = tracker.run_id(trial.trial_id) is not None  # a child run: it started once
        status = statuses.status(trial.trial_id, trial.status, started)
        if status == "TERMINATED" and trial.trial_id in stopped:
            status = "STOPPED"  # MO-ASHA stopped it at a rung: not a failure, not on the front
        records.append({
            "trial_id": trial.trial_id,
            "status": status,
            "stopped_at_step": stopped.get(trial.trial_id),
            "params": trial_params(trial.config, study),
            "repeat": int(trial.config.get(REPEAT_INDEX, 0)),  # tuner.repeats: its seed offset
            "objectives": {o: _finite_or_none(last.get(o)) for o in study.objectives.names},
            # each objective's 95 % bootstrap interval at the last evaluation (study.objectives)
            "intervals": {o: [_finite_or_none(last.get(k)) for k in interval_names(o)]
                          for o in study.objectives.names},
            "steps": last.get("step"),
            "train_time_s": last.get("train_time_s"),
            "startup_s": last.get("startup_s"),
            "trial_wall_s": last.get("time_total_s"),
            # study.overhead.trial_time: the trial's measured parts (None: never reported its end)
            "time": trial_time(last, clock.started.get(trial.trial_id),
                               clock.ended.get(trial.trial_id),
                               clock.last_started.get(trial.trial_id)) if clock else None,
            "error": _error(trial),
            # the inference dials after its last step (study.dial_table): best setting, or error
            "dials": dial_record(last.get("dials")),
            "mlflow_run_id": tracker.run_id(trial.trial_id),
            "run_dir": str(study.sweep_dir / "trials" / trial.trial_id),
        })
    if study.tuner.repeats > 1:  # a configuration's repeats: the same params, seeds 0, 1, …
        first: dict[str, str] = {}
        for record in sorted(records, key=lambda r: (r["repeat"], r["trial_id"])):
            key = json.dumps(record["params"], sort_keys=True, default=str)
            record["repeat_of"] = first.setdefault(key, record["trial_id"])
    return sorted(records, key=lambda r: r["trial_id"])


def baseline_record(tracker: SweepTracker) -> dict[str, Any] | None:
    """The baseline's status and objectives, for summary.json."""
    run = tracker.safely(tracker.baseline_run)
    if run is None:
        return None
    metrics = run.data.metrics
    return {"status": run.info.status, "mlflow_run_id": run.info.run_id,
            "objectives": {k: metrics.get(k) for k in OBJECTIVES},
            "intervals": {k: [metrics.get(end) for end in interval_names(k)] for k in OBJECTIVES},
            "error": run.data.tags.get("error")}


def compare_to_baseline(summary: dict[str, Any], study: StudyConfig) -> None:
    """Each trial that ran to its end (or to its MO-ASHA rung) gets ``vs_baseline``: its last
    evaluation against the baseline's, paired (``study.paired``); None without either table."""
    from study.baseline import BASELINE_ID
    from study.paired import last_evaluation, paired_to_baseline

    baseline = last_evaluation(study.sweep_dir / BASELINE_ID)
    for trial in summary["trials"]:
        table = (last_evaluation(Path(trial["run_dir"]))
                 if trial["status"] in ("TERMINATED", "STOPPED") else None)
        trial["vs_baseline"] = (paired_to_baseline(table, baseline, study.objectives.names)
                                if table is not None and baseline is not None else None)


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and value == value else None


def _error(trial) -> str | None:
    lines = trial_error_text(trial).strip().splitlines()
    return lines[-1] if lines else None


def saved_study(study: StudyConfig, tracking_uri: str) -> dict[str, Any]:
    """The study as the sweep folder keeps it (study_config.json): plain data, with the MLflow
    store it tracks into made explicit."""
    return to_dict(replace(study, tracking_uri=canonical_tracking_uri(tracking_uri)))


def run_sweep(study: StudyConfig, address: str | None = None, resume: bool = False,
              stop: StopSignals | None = None, verbose: bool = True) -> dict:
    """Check everything, start Ray, run (or resume) the sweep; returns the summary. ``stop``:
    the driver's signal handling (``Tuner.fit()`` stops on SIGINT/SIGTERM and the summary says
    so); a signal outside ``fit()`` raises KeyboardInterrupt, with the MLflow runs closed.
    ``verbose`` False: the quiet console of ``study.console``."""
    marks = {"started": time.time()}  # study.overhead.sweep_time's timestamps
    stop = stop or StopSignals()
    uri = resolve_tracking_uri(study.tracking_uri)
    check_tracking_uri(uri)
    check_model_weights(study)
    if resume and (address or "").startswith("ray://"):
        raise SweepError("--resume needs the driver on the cluster (ray job submit), not a "
                         "Ray Client address (ray://): Tune keeps a client's Tuner remote")
    sweep_dir = check_sweep_dir(study, resume)
    changes = check_resume(sweep_dir, saved_study(study, uri), resume)  # before Ray starts
    random_search = study.tuner.random_search_warning()
    if random_search:
        log.warning("%s", random_search)
    if not verbose:
        driver_log = quiet_driver_logs(sweep_dir)
    start_ray(address, verbose)
    if not verbose:
        print(f"Ray's process logs: {ray_logs_dir()}; Ray's driver logs: {driver_log} "
              "(--verbose puts them on the console)", flush=True)
    requested = check_resources(study, address)
    tracker = SweepTracker(uri, study.experiment, study.name)
    try:
        summary = _track_and_tune(study, tracker, resume, uri, stop, changes, verbose, marks)
    except KeyboardInterrupt:
        tracker.safely(lambda: tracker.close_orphans("KILLED"))
        tracker.safely(lambda: tracker.finish(tracker.parent_id, "KILLED"))
        raise
    finally:
        if requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])  # let the autoscaler scale down
    write_summary(sweep_dir / "summary.json", summary)
    if study.remote_results:
        upload(sweep_dir / "summary.json", f"{study.storage_dir}/summary.json")
    table = pareto_table(summary)
    complete = (not summary["unfinished"] and not summary["interrupted_by"]
                and summary["num_trials"] >= summary["expected_trials"])
    parent = tracker.parent_id
    tracker.safely(lambda: tracker.client.log_artifact(parent, str(sweep_dir / "summary.json")))
    tracker.safely(lambda: tracker.client.log_text(parent, table, "pareto.txt"))
    tracker.safely(lambda: tracker.close_orphans("KILLED"))  # the interrupted trials' runs
    tracker.safely(lambda: tracker.finish(parent, "FINISHED" if complete else "KILLED"))
    if tracker.errors and summary["tracking_errors"] != tracker.errors:
        summary["tracking_errors"] = list(tracker.errors)
        write_summary(sweep_dir / "summary.json", summary)
    print(table)
    if not complete:
        counts = ", ".join(f"{n} {s}" for s, n in summary["status_counts"].items()
                           if s not in FINISHED)
        missing = summary["expected_trials"] - summary["num_trials"]
        print(f"\n{summary['unfinished']} trial(s) unfinished ({counts or 'none'}), {missing} "
              "not created yet: continue with --resume", file=sys.stderr)
    if tracker.errors:
        print(f"warning: MLflow tracking lost during the sweep ({tracker.errors[0]}); "
              f"summary.json has every trial", file=sys.stderr)
    return summary


def _track_and_tune(study: StudyConfig, tracker: SweepTracker, resume: bool, uri: str,
                    stop: StopSignals, changes: dict[str, tuple[Any, Any]],
                    verbose: bool, marks: dict[str, float]) -> dict[str, Any]:
    from study.baseline import run_baseline
    from study.resume import RESUMES, STUDY_CONFIG
    from study.space import trial_params
    from study.tracking import MlflowTrialCallback

    parent = tracker.parent_id
    if not resume:
        tracker.safely(lambda: tracker.log_params(parent, flatten(to_dict(study))))
    if not resume or changes:  # the parent run shows the study the sweep runs under
        tracker.safely(lambda: tracker.client.log_artifact(parent, str(study.sweep_dir
                                                                       / STUDY_CONFIG)))
    if changes:
        tracker.safely(lambda: tracker.client.log_artifact(parent, str(study.sweep_dir
                                                                       / RESUMES)))
    marks["baseline_started"] = time.time()
    baseline_parts: dict[str, float] = {}
    run_baseline(study, tracker, baseline_parts)
    marks["baseline_ended"] = time.time()
    callback = MlflowTrialCallback(
        tracker, lambda config: {**trial_params(config, study), "base": to_dict(study.base)},
        lambda trial_id: study.sweep_dir / "trials" / trial_id,
        pending_file=study.sweep_dir / PENDING_POINTS,
        stopped_at=lambda trial_id: stopped_trials(study.sweep_dir).get(trial_id))
    statuses = TrialStatuses()
    clock = TrialClock()
    callbacks = [callback, statuses, clock]
    if not verbose:
        callbacks.append(TrialLines(study.objectives.names,
                                    lambda config: trial_params(config, study),
                                    lambda trial_id: stopped_trials(study.sweep_dir).get(trial_id)))
    tuner = make_tuner(study, callbacks, resume, verbose)
    marks["fit_started"] = time.time()
    with stop.fitting():
        results = tuner.fit()
    marks["fit_ended"] = time.time()
    summary = summarize(trial_records(results, study, tracker, statuses, clock),
                        study.objectives.names)
    summary.update({"name": study.name, "num_samples": study.tuner.num_samples,
                    # Tune trials of the whole study: num_samples × tuner.repeats
                    "repeats": study.tuner.repeats, "expected_trials": study.tuner.num_trials,
                    # how much of the study the sampler drew at random (Optuna's start-up)
                    "sampler": {"name": study.tuner.sampler,
                                "random_trials": min(study.tuner.random_trials(),
                                                     study.tuner.num_samples),
                                "random_search": study.tuner.random_search_warning() is not None},
                    "unfinished": sum(t["status"] not in (*FINISHED, "STOPPED")
                                      for t in summary["trials"]),
                    "interrupted_by": stop.received.name if stop.received else None,
                    "mlflow_parent_run_id": parent,
                    "tracking_uri": uri, "experiment": study.experiment,
                    "overhead": sweep_time({**marks, "ended": time.time()}, [
                        (clock.started[t], clock.ended[t]) for t in clock.started
                        if t in clock.ended], [t["time"] for t in summary["trials"]],
                        baseline_parts),
                    "baseline": baseline_record(tracker),
                    "tracking_errors": list(tracker.errors)})
    summary["steps_trained"] = sum(t["steps"] for t in summary["trials"]
                                   if isinstance(t.get("steps"), int))
    summary["front"] = front_record(summary, study.objectives.names)
    compare_to_baseline(summary, study)
    if study.tuner.repeats > 1:
        from study.repeats import repeat_groups

        summary["repeat_groups"] = repeat_groups(summary["trials"], study.objectives.names)
    return summary


def front_record(summary: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The Pareto front's size and hypervolume against the untuned baseline's objectives as the
    reference point (``study.summary.hypervolume``; None without a finished baseline)."""
    points = [[t["objectives"][o] for o in names] for t in summary["trials"] if t["pareto"]]
    base = (summary.get("baseline") or {}).get("objectives") or {}
    reference = [base.get(o) for o in names]
    known = all(isinstance(v, (int, float)) and math.isfinite(v) for v in reference)
    return {"size": len(points), "reference": reference if known else None,
            "hypervolume": hypervolume(points, reference) if known else None}


def upload(local: Path, uri: str) -> None:
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    with filesystem.open_output_stream(path) as stream:
        stream.write(local.read_bytes())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Ray Train gives a worker group 60 s to start; on a busy small machine importing torch in
    # each worker can take longer (the resources themselves are checked before the sweep).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    # Ray Train's controller polls its workers every 2 s by default: each report waited for
    # the next poll (3.6 s per default-study trial) and so did the end (6.9 s of teardown).
    # At 0.5 s: 0.2 s and 2.3 s (study.bench, one run each; study/overhead.py's parts).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # A tracking server that went away must not stall the sweep for minutes per call
    # (MLflow's default: 7 retries with exponential back-off); see SweepTracker.safely.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    args = parse_args(argv)
    with StopSignals() as stop:
        try:
            study = load_study(args)
            summary = run_sweep(study, args.address, args.resume, stop, args.verbose)
        except (ConfigError, FileNotFoundError, SweepError, TrackingError,
                ResumeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            name = stop.received.name if stop.received else "SIGINT"
            print(f"error: interrupted by {name} (at once, outside Tune's loop or at a second "
                  "signal); continue with --resume", file=sys.stderr)
            return stop.exit_code or EXIT_CODES[signal.SIGINT]
    print(f"\nsummary: {study.sweep_dir / 'summary.json'}")
    if stop.exit_code is not None:
        print(f"error: interrupted by {stop.received.name}: {summary['unfinished']} trial(s) "
              "unfinished; continue with --resume", file=sys.stderr)
        return stop.exit_code
    if summary["unfinished"] or summary["num_trials"] < summary["expected_trials"]:
        print("error: the sweep stopped before all its trials ended; continue with --resume",
              file=sys.stderr)
        return 1
    if summary["num_trials"] and not summary["status_counts"].get("TERMINATED"):
        print("error: no trial completed; see the errors in summary.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
