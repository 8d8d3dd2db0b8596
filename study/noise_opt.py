"""Noise optimisation (ReNO, ``textcraftor.noise_opt``) as a point of a sweep: evaluated on the
study's held-out prompts and seeds with its quality weights, alignment and diversity
(``study_run_config``), and logged to the sweep's MLflow parent as a child run of kind
``trial`` — so ``analysis.runs.load_runs`` reads it as a trial and every plot draws it beside
the fine-tuned ones. Its parameter ``method`` = ``noise_opt`` (and the tag
``textcraftor.method``) tells it apart; ``noise_opt.*`` parameters hold its options.

    python -m study.noise_opt --config STUDY.yaml [--set ...] --iterations 50 --lr 5
    python -m study.noise_opt --config STUDY.yaml --log-only RUN_FOLDER

No Ray: it runs in this process, on CUDA when there is one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.objectives import study_intervals, study_objectives
from textcraftor.configio import ConfigError

log = logging.getLogger(__name__)

METHOD_TAG = "textcraftor.method"  # the method a trial run stands for (noise_opt here)
METHOD = "noise_opt"


def read_run_folder(run_dir: Path) -> dict[str, Any]:
    """A noise-optimisation run folder: {"evals": [(step, metrics)], "cost": {...}, "options":
    {...}}. Raises ConfigError when it is not one (or is unfinished)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    from textcraftor.noise_opt import NOISE_OPT_FILE

    if not (run_dir / NOISE_OPT_FILE).is_file() or not any(m["kind"] == "cost" for m in lines):
        raise ConfigError(f"--log-only: {run_dir} is no finished noise-optimisation run folder "
                          f"(needs metrics.jsonl with a cost line and {NOISE_OPT_FILE})")
    strip = ("kind", "step")
    evals = [(int(m["step"]), {k: v for k, v in m.items() if k not in strip})
             for m in lines if m["kind"] == "eval"]
    cost = next(m for m in lines if m["kind"] == "cost")
    saved = json.loads((run_dir / NOISE_OPT_FILE).read_text())
    return {"evals": evals, "cost": {k: v for k, v in cost.items() if k not in strip},
            "cost_step": int(cost["step"]), "options": saved["options"]}


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_params(options: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The child run's parameters: ``method``, ``noise_opt.<option>``, and the run config as
    ``base.*`` (as a trial logs the study's base)."""
    return {"method": METHOD, **{f"noise_opt.{k}": v for k, v in options.items()},
            "base": dict(base)}


def log_run_folder(tracker, run_dir: str | Path, trial_id: str | None = None) -> str:
    """Log a finished noise-optimisation run folder as a trial of ``tracker``'s sweep (a
    ``study.tracking.SweepTracker``): each evaluation's metrics at its step with the study's
    objectives (the step-0 evaluation, the untuned model, also as ``baseline/*``, as a trial
    that evaluates at its start reports it), the cost at the last step, the sample grid and
    per-prompt table. Returns the run id; logging the same ``trial_id`` again reuses its run."""
    from study.tracking import log_stepped_image

    run_dir = Path(run_dir).resolve()
    found = read_run_folder(run_dir)
    trial_id = trial_id or f"{METHOD}-{run_dir.name}"
    base = json.loads((run_dir / "config.json").read_text())
    run_id = tracker.child(trial_id, run_params(found["options"], base), kind="trial",
                           tags={"run_dir": str(run_dir), METHOD_TAG: METHOD})
    logged = tracker.logged_points(run_id)  # logged again: each point still once
    by_step: dict[int, dict[str, float]] = {}
    for step, metrics in found["evals"]:
        points = by_step.setdefault(step, {})
        points.update({**_finite(metrics), **_finite(study_objectives(metrics)),
                       **_finite(study_intervals(metrics))})
        if step == 0:
            points.update({k.replace("eval/", "baseline/"): v for k, v in _finite(metrics).items()})
    by_step.setdefault(found["cost_step"], {}).update(_finite(found["cost"]))
    for step, points in by_step.items():
        fresh = {k: v for k, v in points.items() if (k, step) not in logged}
        if fresh:
            tracker.log_metrics(run_id, fresh, step)
    for folder, suffix in (("samples", ".png"), ("eval", ".json")):
        for path in sorted((run_dir / folder).glob(f"step_*{suffix}")):
            tracker.client.log_artifact(run_id, str(path), artifact_path=folder)
            if folder == "samples":
                log_stepped_image(tracker.client, run_id, path.read_bytes(),
                                  int(path.stem.removeprefix("step_")))
    tracker.finish(run_id, "FINISHED")
    return run_id


def parent_status(tracking_uri: str, experiment: str, sweep: str) -> str | None:
    """The status of the sweep's parent run (None when there is none yet)."""
    from mlflow.tracking import MlflowClient

    from study.tags import KIND_TAG, SWEEP_TAG

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id],
                              f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'sweep'")
    return runs[0].info.status if runs else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from textcraftor.noise_opt import add_options

    parser = argparse.ArgumentParser(prog="python -m study.noise_opt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="study YAML (default: the embedded one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a study field")
    parser.add_argument("--name", help="the run's name (trial id noise_opt-NAME; folder "
                        "<sweep>/noise_opt/NAME); default: it<N>-lr<lr>-reg<w>[-best]")
    parser.add_argument("--log-only", metavar="RUN_FOLDER",
                        help="log an existing noise-optimisation run folder, run nothing")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the study's)")
    add_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from study.config import load_study_config
    from study.space import study_run_config
    from textcraftor.noise_opt import check_config, check_out, options_from

    try:
        study = load_study_config(args.config, args.overrides)
        if args.log_only:
            folder = Path(args.log_only)
            read_run_folder(folder)
        else:
            options = options_from(args)
            name = args.name or (f"it{options.iterations}-lr{options.lr:g}-reg"
                                 f"{options.reg_weight:g}"
                                 + ("-best" if options.select == "best" else ""))
            folder = study.sweep_dir / METHOD / name
            check_out(folder)
            config = study_run_config(study).with_output_dir(folder)
            check_config(config)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from study.tracking import SweepTracker, resolve_tracking_uri

    if not args.log_only:
        from textcraftor.noise_opt import run

        run(config, options)
    uri = resolve_tracking_uri(args.tracking_uri or study.tracking_uri)
    status = parent_status(uri, study.experiment, study.name)
    tracker = SweepTracker(uri, study.experiment, study.name)  # marks the parent RUNNING
    try:
        run_id = log_run_folder(tracker, folder)
    finally:  # a finished sweep stays finished (a new parent: FINISHED once logged); a
        #       running one is its driver's to close
        if status != "RUNNING":
            tracker.client.set_terminated(tracker.parent_id, status or "FINISHED")
    print(json.dumps({"run_dir": str(folder), "run_id": run_id, "sweep": study.name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
