"""The quality dial: evaluate one trial's fine-tuned encoder interpolated with the original,
E(a) = a·E_ft + (1−a)·E_orig, on the trial's own held-out prompts and seeds."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis.runs import AnalysisError, StudyRuns

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def trial_checkpoint(run: Mapping) -> Path:
    """The trial's last checkpoint: the one Ray Train recorded, else the newest in its folder."""
    tagged = run.get("checkpoint")
    if isinstance(tagged, str) and Path(tagged).is_dir():
        return Path(tagged)
    run_dir = run.get("run_dir")
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*")) if run_dir else []
    if not found:
        raise AnalysisError(f"trial {run.get('trial_id')}: no checkpoint (tag {tagged!r}, run "
                            f"folder {run_dir!r}); interpolation needs a finished trial")
    return found[-1]


def evaluate_interpolation(study: StudyRuns, trial_id: str,
                           alphas: Sequence[float] = DEFAULT_ALPHAS,
                           device: str = "cpu") -> pd.DataFrame:
    """One row per alpha: quality (the study's score), each eval metric, diversity."""
    import torch

    from textcraftor.config import RunConfig
    from textcraftor.configio import from_dict
    from textcraftor.trainer import TextCraftor

    rows = study.trials[study.trials["trial_id"] == trial_id]
    if rows.empty:
        raise AnalysisError(f"no trial {trial_id!r}; trials: {sorted(study.trials['trial_id'])}")
    run = rows.iloc[0].to_dict()
    checkpoint = trial_checkpoint(run)
    config_file = Path(run["run_dir"]) / "config.json"
    if not config_file.is_file():
        raise AnalysisError(f"trial {trial_id}: no run config at {config_file}")
    # the trial's own config: its eval.quality_weights are the study's (eval/quality)
    config = from_dict(RunConfig, json.loads(config_file.read_text()))
    with tempfile.TemporaryDirectory() as scratch:  # never write into the trial's folder
        config = replace(config.with_output_dir(scratch),
                         train=replace(config.train, sample_grid=False))
        trainer = TextCraftor(config, device=device, show_progress=False)
        trainer.restore(checkpoint)
        records = []
        for alpha in alphas:
            with torch.no_grad():
                metrics = trainer.evaluate(alpha=float(alpha)).metrics
            records.append({"alpha": float(alpha), "quality": metrics.get("eval/quality"),
                            "diversity": metrics.get("eval/diversity_lpips"), **metrics})
    return pd.DataFrame(records)
