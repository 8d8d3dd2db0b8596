"""The sweep's baseline: the untuned model evaluated on the same held-out prompts and seeds as
every trial, with the same metric names, so every plot and MLflow comparison has its reference
point. It runs once per sweep, as a Ray task with one trial worker's resources."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.config import StudyConfig
from textcraftor.configio import from_dict, to_dict

BASELINE_ID = "baseline"


def evaluate_untuned(run: dict[str, Any], quality_weights: Mapping[str, float],
                     torch_threads: int) -> dict[str, Any]:
    """Evaluate the base pipeline at step 0; writes the sample grid and the per-prompt table into
    the run folder and returns {"metrics", "grid", "table"}."""
    import torch

    from study.trial import build_objective, quality_score
    from textcraftor.config import RunConfig
    from textcraftor.rewards import REWARD_SCALES
    from textcraftor.trainer import TextCraftor, save_grid, write_json_atomic

    torch.set_num_threads(torch_threads)
    config = from_dict(RunConfig, run)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = TextCraftor(config, device=device, show_progress=False,
                          objective=build_objective(config, quality_weights, device))
    result = trainer.evaluate()
    folder = Path(config.output_dir)
    grid = save_grid(result, folder / "samples" / "step_0000000.png")
    table = folder / "eval" / "step_0000000.json"
    write_json_atomic(table, result.table(0))
    scales = {**REWARD_SCALES, **config.reward.scales}
    metrics = dict(result.metrics)
    metrics["quality"] = quality_score(metrics, quality_weights, scales)
    metrics["diversity"] = metrics.get("eval/diversity_lpips", math.nan)
    metrics["model/text_encoder_params"] = float(
        sum(p.numel() for p in trainer.pipeline.text_encoder.parameters()))
    metrics["model/unet_params"] = float(sum(p.numel() for p in trainer.pipeline.unet.parameters()))
    return {"metrics": metrics, "grid": str(grid), "table": str(table)}


def run_baseline(study: StudyConfig, tracker) -> str:
    """Log the baseline as an MLflow child run (kind ``baseline``) unless a finished one exists;
    returns its run id. A failure is recorded (FAILED, with the error) and the sweep goes on."""
    import ray

    existing = tracker.baseline_run()
    if existing is not None and existing.info.status == "FINISHED":
        return existing.info.run_id
    run_dir = study.sweep_dir / BASELINE_ID
    run = study.base.with_output_dir(run_dir)
    run_id = tracker.child(BASELINE_ID, {"base": to_dict(study.base)}, kind="baseline")
    r = study.resources
    task = ray.remote(evaluate_untuned).options(
        num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_retries=0)
    try:
        out = ray.get(task.remote(to_dict(run), dict(study.objectives.quality_weights),
                                  r.torch_threads or max(1, int(r.cpus_per_worker))))
    except Exception as error:  # noqa: BLE001 — recorded, the trials still run
        tracker.client.set_tag(run_id, "error", str(error)[-4000:])
        tracker.finish(run_id, "FAILED")
        return run_id
    tracker.log_metrics(run_id, {k: v for k, v in out["metrics"].items() if math.isfinite(v)},
                        step=0)
    tracker.client.log_artifact(run_id, out["grid"], artifact_path="samples")
    tracker.client.log_artifact(run_id, out["table"], artifact_path="eval")
    tracker.client.set_tag(run_id, "run_dir", str(run_dir))
    tracker.finish(run_id, "FINISHED")
    return run_id
