"""The sweep's baseline: the untuned model evaluated on the same held-out prompts and seeds as
every trial, with the same metric names, so every plot and MLflow comparison has its reference
point. It runs once per sweep, as a Ray task with one trial worker's resources."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from study.config import StudyConfig
from study.objectives import study_intervals, study_objectives
from study.summary import write_summary
from study.tracking import log_stepped_image
from textcraftor.configio import from_dict, to_dict

BASELINE_ID = "baseline"


def evaluate_untuned(run: dict[str, Any], torch_threads: int) -> dict[str, Any]:
    """Evaluate the base pipeline at step 0 (on whichever node Ray chose); returns {"metrics",
    "grid_png": PNG bytes, "table": the per-prompt table, "time": seconds spent importing the
    method (import_s), building the run (load_s) and evaluating (eval_s)} for the driver to
    store and log."""
    entered = time.time()
    import torch

    from textcraftor.config import RunConfig
    from textcraftor.run_folder import save_grid
    from textcraftor.trainer import TextCraftor

    imported = time.time()
    torch.set_num_threads(torch_threads)
    config = from_dict(RunConfig, run)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = TextCraftor(config, device=device, show_progress=False)
    built = time.time()
    result = trainer.evaluate()
    timing = {"import_s": imported - entered, "load_s": built - imported,
              "eval_s": time.time() - built}
    with tempfile.TemporaryDirectory() as folder:
        grid_png = save_grid(result, Path(folder) / "grid.png").read_bytes()
    metrics = dict(result.metrics)
    metrics.update(study_objectives(metrics))  # eval.quality_weights: the study's
    metrics.update(study_intervals(metrics))
    metrics["model/text_encoder_params"] = float(
        sum(p.numel() for p in trainer.pipeline.text_encoder.parameters()))
    metrics["model/unet_params"] = float(sum(p.numel() for p in trainer.pipeline.unet.parameters()))
    return {"metrics": metrics, "grid_png": grid_png, "table": result.table(0), "time": timing}


def run_baseline(study: StudyConfig, tracker, timing: dict[str, float] | None = None
                 ) -> str | None:
    """Log the baseline as an MLflow child run (kind ``baseline``) unless a finished one exists;
    returns its run id. A failure is recorded (FAILED, with the error) and the sweep goes on.
    ``timing`` (when given, and the baseline is evaluated now) receives the task's
    ``evaluate_untuned`` time parts."""
    import ray

    existing = tracker.safely(tracker.baseline_run)
    if existing is not None and existing.info.status == "FINISHED":
        return existing.info.run_id
    run_dir = study.sweep_dir / BASELINE_ID
    from study.space import study_run_config

    run = study_run_config(study).with_output_dir(run_dir)  # scored with the study's weights
    run_id = tracker.safely(lambda: tracker.child(BASELINE_ID, {"base": to_dict(study.base)},
                                                  kind="baseline"))
    r = study.resources
    task = ray.remote(evaluate_untuned).options(
        num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_retries=0)
    try:
        out = ray.get(task.remote(to_dict(run), r.torch_threads or max(1, int(r.cpus_per_worker))))
    except Exception as error:  # recorded; the trials still run
        message = str(error)[-4000:]
        if run_id is not None:
            tracker.safely(lambda: tracker.client.set_tag(run_id, "error", message))
            tracker.safely(lambda: tracker.finish(run_id, "FAILED"))
        return run_id
    if timing is not None:
        timing.update(out["time"])
    grid = run_dir / "samples" / "step_0000000.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    grid.write_bytes(out["grid_png"])
    table = run_dir / "eval" / "step_0000000.json"
    write_summary(table, out["table"])
    if run_id is None:  # tracking is lost: the files above are the record
        return None

    def log() -> None:
        metrics = {k: v for k, v in out["metrics"].items() if math.isfinite(v)}
        tracker.log_metrics(run_id, metrics, step=0)
        tracker.client.log_artifact(run_id, str(grid), artifact_path="samples")
        log_stepped_image(tracker.client, run_id, out["grid_png"], step=0)
        tracker.client.log_artifact(run_id, str(table), artifact_path="eval")
        tracker.client.set_tag(run_id, "run_dir", str(run_dir))
        tracker.finish(run_id, "FINISHED")

    tracker.safely(log)
    return run_id
