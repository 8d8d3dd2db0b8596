"""Where a sweep's wall-clock time goes, from timestamps taken where each part happens (no Ray,
no torch: the analysis reads the part names; ``study.console.TrialClock`` takes the driver's).

A trial, from Tune starting it to Tune seeing it end, is cut into measured parts:

- ``retried_s``: attempts that failed and that Tune restarted (in-process trials), from its
  first start to its last;
- ``actor_start_s``: Tune's (last) trial start (driver) → the trial function running (its
  actor);
- ``worker_start_s``: the trial function → its Ray Train workers entering the training
  function (Train controller, placement group, worker processes);
- ``import_s``: the workers importing the method (diffusers, transformers, open_clip; torch
  comes earlier, with Ray Train's torch module, in ``worker_start_s``);
- ``load_s``: building the run: pipeline, rewards, prompts, optimizer, a checkpoint restored;
- ``train_s``: inside optimizer steps (``step_s`` summed);
- ``eval_s``: evaluations (held-out images, rewards, diversity, KID/FID) and their files;
- ``dial_s``: the inference dials after the last step (``study.dial_table``; 0 when not measured);
- ``checkpoint_s``: checkpoints written (weights, optimizer, evaluation files);
- ``report_s``: inside ``ray.train.report`` (the Train controller round trip, the checkpoint
  upload) and waiting for MO-ASHA's decision;
- ``other_in_trial_s``: the rest of the workers' time (step bookkeeping, metrics files);
- ``teardown_s``: the workers' last report → Tune seeing the trial end (worker group and actor
  shut down, the driver's callbacks).

The sweep adds ``setup_s`` (checks, Ray start), ``baseline_s`` (the untuned model's
evaluation: a Ray task, itself cut into ``baseline_parts`` import_s, load_s, eval_s),
``between_trials_s`` (time inside ``Tuner.fit`` when no trial runs) and
``wrap_up_s`` (summary, MLflow). Times are wall-clock seconds (``time.time``; on a cluster the
nodes' clocks must agree). ``attributed_fraction`` is the measured parts' share of the sweep's
wall: ``other_in_trial_s`` and untimed trials are its residual (None when trials overlap: then
the trials' parts are trial-seconds, not shares of the wall). ``train_eval_fraction_of_sweep``
is the share of the wall spent training and evaluating: the trials' ``train_s``, ``eval_s`` and
``dial_s`` and the baseline's ``eval_s`` (the work a sweep exists to do; the rest is its fixed
cost).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# the parts of a trial, in the order they happen (the report stacks them in this order)
TRIAL_PARTS = ("retried_s", "actor_start_s", "worker_start_s", "import_s", "load_s", "train_s",
               "eval_s", "dial_s", "checkpoint_s", "report_s", "other_in_trial_s", "teardown_s")
SWEEP_PARTS = ("setup_s", "baseline_s", "trials_s", "between_trials_s", "wrap_up_s")


def trial_time(last_result: Mapping[str, Any], tune_started: float | None,
               tune_ended: float | None, tune_last_started: float | None = None
               ) -> dict[str, float] | None:
    """The measured parts of one trial (seconds, ``TRIAL_PARTS``), ``wall_s`` and
    ``started_at`` (Tune's start, epoch seconds), from its last result's timing
    (``study.trial.RayTrainReporter``) and the driver's ``TrialClock`` (``tune_last_started``:
    Tune's last start of it, when it restarted the trial); None when the trial never reported
    its end (it failed or was interrupted)."""
    inside = last_result.get("worker_wall_s")
    began = last_result.get("trial_started_at")
    if inside is None or began is None or tune_started is None or tune_ended is None:
        return None
    last_start = tune_last_started if tune_last_started is not None else tune_started
    parts = {"retried_s": last_start - tune_started, "actor_start_s": began - last_start,
             **{k: float(last_result.get(k, 0.0)) for k in (
                 "worker_start_s", "import_s", "load_s", "eval_s", "dial_s", "checkpoint_s",
                 "report_s")},
             "train_s": float(last_result.get("train_time_s", 0.0))}
    measured_inside = sum(parts[k] for k in parts if k not in ("retried_s", "actor_start_s"))
    parts["other_in_trial_s"] = inside - measured_inside
    parts["teardown_s"] = tune_ended - (began + inside)
    return {**{k: parts[k] for k in TRIAL_PARTS}, "wall_s": tune_ended - tune_started,
            "started_at": tune_started}


def sweep_time(marks: Mapping[str, float], intervals: Sequence[tuple[float, float]],
               trials: Sequence[Mapping[str, float] | None],
               baseline_parts: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The sweep's wall cut into ``SWEEP_PARTS`` and the trials' parts summed. ``marks``:
    started, baseline_started, baseline_ended, fit_started, fit_ended, ended (``time.time``);
    ``intervals``: each trial's (Tune start, Tune end); ``trials``: ``trial_time`` of each;
    ``baseline_parts``: the baseline task's import_s, load_s, eval_s (empty or None when the
    baseline was not evaluated by this driver, e.g. on a resume)."""
    wall = marks["ended"] - marks["started"]
    covered = _union_length(intervals)
    fit = marks["fit_ended"] - marks["fit_started"]
    parts = {
        "setup_s": (marks["baseline_started"] - marks["started"])
        + (marks["fit_started"] - marks["baseline_ended"]),
        "baseline_s": marks["baseline_ended"] - marks["baseline_started"],
        "trials_s": covered,
        "between_trials_s": fit - covered,
        "wrap_up_s": marks["ended"] - marks["fit_ended"],
    }
    known = [t for t in trials if t is not None]
    summed = {k: sum(t[k] for t in known) for k in TRIAL_PARTS}
    overlapping = sum(stop - start for start, stop in intervals) - covered > 1e-6
    # measured: the sweep's own parts, and each timed trial but its residual; an untimed trial
    # (failed, interrupted) is unattributed, and so is everything when trials overlap
    measured = (parts["setup_s"] + parts["baseline_s"] + parts["between_trials_s"]
                + parts["wrap_up_s"] + sum(t["wall_s"] - t["other_in_trial_s"] for t in known))
    baseline = dict(baseline_parts or {})
    work = (summed["train_s"] + summed["eval_s"] + summed.get("dial_s", 0.0)
            + baseline.get("eval_s", 0.0))
    return {
        "sweep_wall_s": wall,
        "parts": parts,
        "baseline_parts": baseline,
        "trial_parts_summed": summed,
        "trials_timed": len(known),
        "train_fraction_of_sweep": summed["train_s"] / wall if wall > 0 else None,
        "train_eval_fraction_of_sweep": work / wall if wall > 0 else None,
        "startup_s_per_trial": _mean([_startup(t) for t in known]),
        # the first trial's process may import the method; later ones may reuse it
        "startup_s_per_trial_after_first": _mean([_startup(t) for t in sorted(
            known, key=lambda t: t.get("started_at", 0.0))[1:]]),
        "attributed_fraction": (measured / wall if wall > 0 and not overlapping else None),
    }


def _startup(trial: Mapping[str, float]) -> float:
    """Tune's start of the trial → its first training step can begin."""
    return trial["actor_start_s"] + trial["worker_start_s"] + trial["import_s"] + trial["load_s"]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _union_length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlaps, as with concurrent trials, once)."""
    total, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total
