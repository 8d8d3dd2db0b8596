"""MLflow tracking of a sweep: one parent run, one child run per trial, all written from the
driver (a single writer, so a SQLite store never locks). Children are found again by tag on
resume, so nothing is duplicated; runs an interrupted driver left RUNNING are closed.

A trial's metric points reach MLflow only once they are final (MLflow cannot delete a point):
a point waits until a checkpoint at or after its step is committed, or the trial ends, and a
worker group that restarts from a checkpoint drops the points it will redo. So MLflow holds
exactly one point per (run, metric, step), the same as the trial folder's ``metrics.jsonl``;
the price is that steps after the last checkpoint appear in MLflow only when the next one
commits (see ``TrialPoints``)."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from study.config import DEFAULT_TRACKING_URI
from study.objectives import OBJECTIVE_FIELDS
from study.space import REPEAT_INDEX
from study.tags import (
    DIALS_ARTIFACT,
    DIALS_ERROR_TAG,
    KIND_TAG,
    REPEAT_TAG,
    STOPPED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from textcraftor.atomic import write_json_atomic

log = logging.getLogger(__name__)
# Tune's own bookkeeping in every result: not worth a metric in MLflow
_TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
              "time_since_restore", "iterations_since_restore", "done", "step", "config",
              "step_history", "dials",
              "trial_started_at"}  # an epoch timestamp for study.overhead, not a metric


T = TypeVar("T")


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (before any trial) when an HTTP tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError) as error:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {error}") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {folder} is missing or not writable")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if k not in _TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class SweepTracker:
    """The parent run of one sweep and its children, through ``MlflowClient``."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str):
        self.client = MlflowClient(tracking_uri)
        self.uri = tracking_uri
        self.errors: list[str] = []  # why tracking stopped (empty while it works)
        self.sweep_name = sweep_name
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found
                              else self.client.create_experiment(experiment))
        self.parent_id = self._find_or_create_parent()
        self._children: dict[str, str] = {}
        for run in self._search(f"tags.`{KIND_TAG}` = 'trial'"):
            self._children[run.data.tags[TRIAL_TAG]] = run.info.run_id

    def safely(self, action: Callable[[], T]) -> T | None:
        """Run one tracking action; the first failure (e.g. the server went away) is reported
        once and stops tracking for the rest of the sweep. Training never waits on MLflow."""
        if self.errors:
            return None
        try:
            return action()
        except Exception as error:  # any MLflow/HTTP/DB failure: report it, never raise
            self.errors.append(f"{type(error).__name__}: {error}"[:1000])
            message = (f"MLflow tracking lost ({self.uri}): {self.errors[0]}; trials keep "
                       "training, results stay in summary.json and the trial folders")
            log.error(message)
            print(f"warning: {message}", file=sys.stderr, flush=True)
            return None

    def _search(self, condition: str):
        query = f"tags.`{SWEEP_TAG}` = '{self.sweep_name}' and {condition}"
        return self.client.search_runs([self.experiment_id], query, max_results=10000)

    def _find_or_create_parent(self) -> str:
        found = self._search(f"tags.`{KIND_TAG}` = 'sweep'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_name,
                                     tags={SWEEP_TAG: self.sweep_name, KIND_TAG: "sweep"})
        return run.info.run_id

    def child(self, trial_id: str, params: Mapping[str, Any] | None = None,
              kind: str = "trial", tags: Mapping[str, str] | None = None) -> str:
        """The child run of a trial (or of the baseline), created once (with its params and
        tags) and reused on resume."""
        if trial_id not in self._children:
            run = self.client.create_run(
                self.experiment_id, run_name=trial_id,
                tags={SWEEP_TAG: self.sweep_name, TRIAL_TAG: trial_id, KIND_TAG: kind,
                      "mlflow.parentRunId": self.parent_id, **(tags or {})})
            self._children[trial_id] = run.info.run_id
            if params:
                self.log_params(run.info.run_id, flatten(params))
        else:
            self.client.update_run(self._children[trial_id], status="RUNNING")
        return self._children[trial_id]

    def baseline_run(self):
        """The sweep's baseline run (an ``mlflow.entities.Run``), or None."""
        found = self._search(f"tags.`{KIND_TAG}` = 'baseline'")
        if found:
            self._children[found[0].data.tags[TRIAL_TAG]] = found[0].info.run_id
        return found[0] if found else None

    def run_id(self, trial_id: str) -> str | None:
        return self._children.get(trial_id)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def logged_points(self, run_id: str) -> set[tuple[str, int]]:
        """Every (metric, step) the run already holds (a resumed driver must not log them
        again)."""
        metrics = self.client.get_run(run_id).data.metrics
        return {(key, m.step) for key in metrics
                for m in self.client.get_metric_history(run_id, key)}

    def finish(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def close_orphans(self, status: str = "KILLED") -> list[str]:
        """Terminate child runs still RUNNING (their driver is gone); returns their ids."""
        children = [r for kind in ("trial", "baseline")
                    for r in self._search(f"tags.`{KIND_TAG}` = '{kind}'")]
        orphans = [r.info.run_id for r in children
                   if r.info.status == RunStatus.to_string(RunStatus.RUNNING)]
        for run_id in orphans:
            self.client.set_terminated(run_id, status)
        return orphans


@dataclass
class TrialPoints:
    """One trial's metric points between Ray and MLflow: what waits (``pending``, by step, last
    value wins), what is final and what was logged.

    A point is final once a checkpoint at or after its step is committed (a restarted worker
    group resumes from there and never redoes it) or the trial has ended. A restart from step C
    drops the pending points after C: the new worker group redoes those steps, and the run
    folder's metrics.jsonl is trimmed to C the same way. ``logged`` guards against logging a
    (metric, step) twice: across the eval, checkpoint and end reports of one step, and across
    a driver restart (seeded from MLflow).

    Ray Train commits a checkpoint before the driver hears of it, so a driver stopped in
    between would lose the points up to it (the resumed trial starts after it): the pending
    points outlive the driver (``saved``/``restored``, a file in the sweep folder), and the
    resumed trial's ``resumed_from_step`` says which of them are final."""

    committed_step: int = -1  # step of the last committed checkpoint (-1: none yet)
    attempt: str | None = None  # the worker group that sent the last result
    pending: dict[int, dict[str, float]] = field(default_factory=dict)
    logged: set[tuple[str, int]] = field(default_factory=set)

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        if metrics:
            self.pending.setdefault(step, {}).update(metrics)

    def restart(self, attempt: str | None, from_step: int) -> None:
        """A result from worker group ``attempt``; when it is a new group, it resumed from the
        checkpoint at ``from_step`` (-1: from the very start) and redoes every later step."""
        if attempt == self.attempt:
            return
        self.attempt = attempt
        self.pending = {s: m for s, m in self.pending.items() if s <= from_step}
        self.committed_step = max(self.committed_step, from_step)

    def commit(self, step: int) -> None:
        """A checkpoint at ``step`` is committed."""
        self.committed_step = max(self.committed_step, step)

    def saved(self) -> dict[str, Any]:
        """What a later driver needs (``restored``): plain JSON-able data."""
        return {"committed_step": self.committed_step, "attempt": self.attempt,
                "pending": {str(s): m for s, m in self.pending.items()}}

    @classmethod
    def restored(cls, saved: Mapping[str, Any], logged: set[tuple[str, int]]) -> TrialPoints:
        return cls(committed_step=int(saved["committed_step"]), attempt=saved["attempt"],
                   pending={int(s): dict(m) for s, m in saved["pending"].items()},
                   logged=logged)

    def take_final(self, everything: bool = False) -> dict[int, dict[str, float]]:
        """Remove and return the final points not logged yet, by step (``everything``: the
        trial ended, all pending points are final); marks them logged."""
        steps = sorted(s for s in self.pending if everything or s <= self.committed_step)
        final: dict[int, dict[str, float]] = {}
        for step in steps:
            fresh = {k: v for k, v in self.pending.pop(step).items()
                     if (k, step) not in self.logged}
            if fresh:
                final[step] = fresh
                self.logged.update((k, step) for k in fresh)
        return final


def result_points(result: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """The metric points one Tune result carries, by step: each buffered step's metrics
    (``step_history``) and the result's own. The objectives are logged only from evaluation
    results: the other reports repeat the last evaluation's values, which belong to its step."""
    points: dict[int, dict[str, float]] = {}
    for past in result.get("step_history") or []:
        points.setdefault(int(past["step"]), {}).update(numeric_metrics(past))
    own = numeric_metrics(result)
    if result.get("event", "eval") != "eval":
        own = {k: v for k, v in own.items() if k not in OBJECTIVE_FIELDS}
    step = int(result.get("step", result.get("training_iteration", 0)))
    points.setdefault(step, {}).update(own)
    return points


class MlflowTrialCallback(Callback):
    """Tune callback on the driver: params, per-step metrics (each point once, when final; see
    ``TrialPoints``), sample grids, final status."""

    def __init__(self, tracker: SweepTracker, params_of, run_dir_of,
                 pending_file: Path | None = None, stopped_at=None):
        self.tracker = tracker
        self.stopped_at = stopped_at  # trial id → the rung step MO-ASHA stopped it at, or None
        self.params_of = params_of  # trial config → params to log (flat-able mapping)
        self.run_dir_of = run_dir_of  # trial id → the trial's run folder
        self.pending_file = pending_file  # the unfinished trials' TrialPoints, across drivers
        self._logged_checkpoints: set[str] = set()
        self._worker_nodes: dict[str, str] = {}
        self._points: dict[str, TrialPoints] = {}
        self._saved: dict[str, Any] = {}  # from an earlier driver, by trial id
        if pending_file is not None and pending_file.is_file():
            self._saved = json.loads(pending_file.read_text())

    def _run(self, trial) -> str:
        tags = {"run_dir": str(self.run_dir_of(trial.trial_id))}
        if REPEAT_INDEX in trial.config:  # tuner.repeats: which training seed of its group
            tags[REPEAT_TAG] = str(trial.config[REPEAT_INDEX])
        return self.tracker.child(trial.trial_id, self.params_of(trial.config), tags=tags)

    def _trial_points(self, trial_id: str, run_id: str) -> TrialPoints:
        if trial_id not in self._points:  # a resumed driver: what the run holds is final
            logged = self.tracker.logged_points(run_id)
            saved = self._saved.pop(trial_id, None)
            self._points[trial_id] = (TrialPoints.restored(saved, logged) if saved
                                      else TrialPoints(logged=logged))
        return self._points[trial_id]

    def _save_pending(self) -> None:
        """Every unfinished trial's points, for a driver that resumes this sweep."""
        if self.pending_file is None:
            return
        data = {**self._saved, **{t: p.saved() for t, p in self._points.items()}}
        write_json_atomic(self.pending_file, data, indent=None)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.safely(lambda: self._run(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tracker.safely(lambda: self._log_result(trial, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.safely(lambda: self._end(trial, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.safely(lambda: self._end(trial, "FAILED"))

    def _log_points(self, run_id: str, final: Mapping[int, Mapping[str, float]]) -> None:
        for step, metrics in final.items():
            self.tracker.log_metrics(run_id, metrics, step)

    def _log_result(self, trial, result) -> None:
        run_id = self._run(trial)
        points = self._trial_points(trial.trial_id, run_id)
        # a worker group restored from a checkpoint says from which step; else it started over
        points.restart(result.get("attempt"), int(result.get("resumed_from_step", -1)))
        for step, metrics in result_points(result).items():
            points.add(step, metrics)
        step = int(result.get("step", result.get("training_iteration", 0)))
        checkpoint = result.get("checkpoint_path")
        if checkpoint:  # Ray Train registers a checkpoint before Tune sees its result
            points.commit(step)
        self._log_points(run_id, points.take_final())
        self._save_pending()
        if checkpoint:
            self._log_checkpoint(run_id, checkpoint, step)
        if result.get("dials"):
            self._log_dials(run_id, result["dials"])
        nodes = result.get("worker_nodes")
        if nodes and self._worker_nodes.get(trial.trial_id) != nodes:
            self._worker_nodes[trial.trial_id] = nodes
            self.tracker.client.set_tag(run_id, "worker_nodes", nodes)

    def _log_dials(self, run_id: str, dials: Mapping[str, Any]) -> None:
        """The trial's inference dials: the whole table as ``dials/dials.json`` (one write: the
        file or nothing), the best setting as metrics, a failure as the tag ``dials_error``."""
        if dials.get("error"):
            self.tracker.client.set_tag(run_id, DIALS_ERROR_TAG, dials["error"][-4000:])
            return
        self.tracker.client.log_dict(run_id, dict(dials), DIALS_ARTIFACT)
        best = dials.get("best") or {}
        if best:
            self.tracker.client.log_batch(run_id, metrics=[
                Metric(f"dial/best_{k}", float(best[k]), int(time.time() * 1000),
                       int(dials.get("step") or 0)) for k in ("alpha", "finetuned_steps")])

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """An in-process trial's checkpoint, persisted by Tune after its result was seen."""
        self.tracker.safely(lambda: self._commit(trial, checkpoint.path))

    def _commit(self, trial, checkpoint: str) -> None:
        run_id = self._run(trial)
        step = int(trial.last_result.get("step", trial.last_result.get("training_iteration", 0)))
        points = self._trial_points(trial.trial_id, run_id)
        points.commit(step)
        self._log_points(run_id, points.take_final())
        self._save_pending()
        self._log_checkpoint(run_id, checkpoint, step)

    def _log_checkpoint(self, run_id: str, checkpoint: str, step: int) -> None:
        """The sample grid and per-prompt table travel inside the checkpoint: one artifact of
        each per step, samples/step_N.png and eval/step_N.json; the run's tag names the
        newest checkpoint."""
        if checkpoint in self._logged_checkpoints:
            return
        self._logged_checkpoints.add(checkpoint)
        for inside, folder in (("samples.png", "samples"), ("eval.json", "eval")):
            data = self._log_renamed(run_id, checkpoint, inside, folder, step)
            if folder == "samples" and data is not None:
                log_stepped_image(self.tracker.client, run_id, data, step)
        self.tracker.client.set_tag(run_id, "checkpoint", checkpoint)

    def _log_renamed(self, run_id: str, checkpoint: str, inside: str, folder: str,
                     step: int) -> bytes | None:
        """Log the checkpoint's file ``inside`` as ``folder/step_N.<ext>``; returns its bytes
        (None when the checkpoint has no such file)."""
        data = read_storage_file(checkpoint, inside)
        if data is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            named = Path(tmp) / f"step_{step:07d}{Path(inside).suffix}"
            named.write_bytes(data)
            self.tracker.client.log_artifact(run_id, str(named), artifact_path=folder)
        return data

    def _end(self, trial, status: str) -> None:
        """The trial finished or failed: every pending point is final."""
        run_id = self._run(trial)
        self._log_points(run_id, self._trial_points(trial.trial_id, run_id).take_final(True))
        del self._points[trial.trial_id]
        self._save_pending()
        if status == "FAILED":
            # the end: a traceback ends with its exception, and Tune appends one per failure
            # of a trial it restarted ("Failure # 1", "Failure # 2", …)
            self.tracker.client.set_tag(run_id, "error",
                                        trial_error_text(trial)[-4000:] or "unknown")
        stopped = self.stopped_at(trial.trial_id) if self.stopped_at else None
        if status == "FINISHED" and stopped is not None:  # stopped early: not a failure
            self.tracker.client.set_tag(run_id, STOPPED_TAG, str(stopped))
        self.tracker.finish(run_id, status)


SAMPLES_IMAGE_KEY = "samples"  # the sample grids' key in MLflow's time-stepped image view


def log_stepped_image(client, run_id: str, png: bytes, step: int,
                      key: str = SAMPLES_IMAGE_KEY) -> None:
    """Log a PNG as MLflow's time-stepped image (``MlflowClient.log_image(key=, step=)``), so
    the run page's image view steps through training. Once per (key, step): a resumed sweep
    that meets the same checkpoint again adds no second copy."""
    from PIL import Image

    stamped = f"images/{key}+step+{step}+"
    if any(a.path.startswith(stamped) for a in client.list_artifacts(run_id, "images")):
        return
    with Image.open(io.BytesIO(png)) as image:
        client.log_image(run_id, image.convert("RGB"), key=key, step=step)


def read_storage_file(folder: str, name: str) -> bytes | None:
    """A small file of a checkpoint folder on local or shared storage, or a URI (s3://…)."""
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(folder)
        with filesystem.open_input_stream(f"{path.rstrip('/')}/{name}") as stream:
            return stream.read()
    except (OSError, ValueError):  # absent (e.g. no grid saved), or not a known filesystem
        return None


def trial_error_text(trial) -> str:
    """The traceback Tune saved for a failed trial ("" when there is none)."""
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text() if path else ""
    except OSError:
        return ""
