"""``python -m study.interpolation``: the quality dial of one finished trial, measured and logged.

The trial's last checkpoint is evaluated with its text encoder interpolated with the original,
E(a) = a·E_ft + (1−a)·E_orig (TextCraftor §3.4), at each weight a, on the trial's own held-out
prompts and evaluation seeds, and scored as every run of the study is (``study.objectives``).
The table is logged to the trial's MLflow run as ``interpolation/interpolation.json``; the
report and notebook 03 read it from there and run no model. A table already logged for the same
checkpoint and weights is not measured again (``--force`` does).

    python -m study.interpolation --tracking-uri sqlite:///mlflow.db \\
        --experiment textcraftor-study [--sweep default] [--trial best] \\
        [--alphas 0,0.25,0.5,0.75,1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from study.config import DEFAULT_TRACKING_URI
from study.objectives import OBJECTIVES, study_intervals, study_objectives
from study.summary import pareto_flags
from study.tags import INTERPOLATION_ARTIFACT as ARTIFACT
from study.tags import KIND_TAG, SWEEP_TAG, TRIAL_TAG

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
log = logging.getLogger("study.interpolation")


class InterpolationError(RuntimeError):
    """The dial cannot be measured (no such experiment, sweep or trial; no checkpoint)."""


def parse_alphas(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` → (0.0, 0.5, 1.0); each in [0, 1], at least one. Raises ValueError naming
    ``--alphas`` and the value."""
    try:
        alphas = tuple(float(a) for a in text.split(","))
    except ValueError:
        raise ValueError(f"--alphas: {text!r} is not a comma-separated list of numbers "
                         "(e.g. 0,0.5,1)") from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"--alphas: {bad[0]} lies outside [0, 1] (0 = the original encoder, "
                         "1 = the fine-tuned one)")
    return alphas


def trial_runs(client: MlflowClient, experiment: str, sweep: str | None) -> list[Run]:
    """The trial runs of ``sweep`` (default: the experiment's newest sweep)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise InterpolationError(f"--experiment: no MLflow experiment {experiment!r} in this "
                                 "store")
    if sweep is None:
        sweeps = client.search_runs([found.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if not sweeps:
            raise InterpolationError(f"experiment {experiment!r} holds no sweep")
        sweep = sweeps[0].data.tags[SWEEP_TAG]
    runs = client.search_runs([found.experiment_id], f"tags.`{KIND_TAG}` = 'trial' and "
                              f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=10_000)
    if not runs:
        raise InterpolationError(f"--sweep: no trial runs of sweep {sweep!r} in experiment "
                                 f"{experiment!r}")
    return runs


def best_trial(runs: Sequence[Run]) -> Run:
    """The highest-quality finished trial on the Pareto front of the study's objectives."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    names = [o for o in OBJECTIVES if all(o in r.data.metrics for r in finished)]
    if not finished or "quality" not in names:
        raise InterpolationError("no finished trial with a quality objective: nothing to dial")
    front = [r for r, on in zip(finished, pareto_flags(
        [[r.data.metrics[o] for o in names] for r in finished])) if on]
    return max(front, key=lambda r: r.data.metrics["quality"])


def trial_checkpoint(run: Run) -> Path:
    """The trial's last checkpoint: the one Ray Train recorded, else the newest in its folder."""
    tags = run.data.tags
    tagged = tags.get("checkpoint")
    if tagged and Path(tagged).is_dir():
        return Path(tagged)
    run_dir = tags.get("run_dir")
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*")) if run_dir else []
    if not found:
        raise InterpolationError(f"trial {tags.get(TRIAL_TAG)}: no checkpoint (tag {tagged!r}, "
                                 f"run folder {run_dir!r}); the dial needs a finished trial")
    return found[-1]


def evaluate_interpolation(run_config: Mapping[str, Any], checkpoint: Path,
                           alphas: Sequence[float] = DEFAULT_ALPHAS,
                           device: str = "cpu") -> list[dict[str, float]]:
    """One row per a: a, each study objective, and every evaluation metric (``eval/*``) of the
    trial's checkpoint with E(a) = a·E_ft + (1−a)·E_orig. ``run_config``: the trial's run
    config (its ``eval.quality_weights`` are the study's). Nothing is written into the trial's
    folder."""
    import torch

    from textcraftor.config import RunConfig
    from textcraftor.configio import from_dict
    from textcraftor.trainer import TextCraftor

    config = from_dict(RunConfig, dict(run_config))
    with tempfile.TemporaryDirectory() as scratch:
        config = replace(config.with_output_dir(scratch),
                         train=replace(config.train, sample_grid=False))
        trainer = TextCraftor(config, device=device, show_progress=False)
        trainer.restore(checkpoint)
        rows = []
        for alpha in alphas:
            with torch.no_grad():
                metrics = trainer.evaluate(alpha=float(alpha)).metrics
            rows.append({"alpha": float(alpha), **study_objectives(metrics),
                         **study_intervals(metrics), **metrics})
        seeds = len(config.data.eval_seeds)
        prompts = len(trainer.split.heldout)
    return [{**row, "num_prompts": prompts, "num_seeds": seeds} for row in rows]


def logged_table(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The dial table already logged to a trial's run, or None."""
    names = [a.path for a in client.list_artifacts(run_id, Path(ARTIFACT).parent.as_posix())]
    if ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as into:
        return json.loads(Path(client.download_artifacts(run_id, ARTIFACT, into)).read_text())


def measure(client: MlflowClient, run: Run, alphas: Sequence[float], device: str = "cpu",
            force: bool = False) -> dict[str, Any]:
    """Measure the dial of trial ``run`` and log it as ``interpolation/interpolation.json``
    (unless the same checkpoint and weights are logged already); returns the logged table:
    {trial_id, mlflow_run_id, checkpoint, alphas, rows}."""
    checkpoint = trial_checkpoint(run)
    run_id = run.info.run_id
    before = None if force else logged_table(client, run_id)
    if (before is not None and before.get("checkpoint") == str(checkpoint)
            and before.get("alphas") == [float(a) for a in alphas]):
        log.info("trial %s: the dial of %s is logged already", before["trial_id"], checkpoint)
        return before
    config_file = Path(run.data.tags.get("run_dir", "")) / "config.json"
    if not config_file.is_file():
        raise InterpolationError(f"trial {run.data.tags.get(TRIAL_TAG)}: no run config at "
                                 f"{config_file}")
    rows = evaluate_interpolation(json.loads(config_file.read_text()), checkpoint, alphas,
                                  device)
    table = {"trial_id": run.data.tags.get(TRIAL_TAG), "mlflow_run_id": run_id,
             "checkpoint": str(checkpoint), "alphas": [float(a) for a in alphas], "rows": rows}
    client.log_dict(run_id, table, ARTIFACT)  # one artifact write: the file or nothing
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.interpolation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                 DEFAULT_TRACKING_URI))
    parser.add_argument("--experiment", default="textcraftor-study")
    parser.add_argument("--sweep", help="one sweep of the experiment (default: the newest)")
    parser.add_argument("--trial", default="best", help="a trial id, or 'best' (the highest "
                        "quality on the Pareto front)")
    parser.add_argument("--alphas", default=",".join(str(a) for a in DEFAULT_ALPHAS),
                        help="interpolation weights a in [0, 1] (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force", action="store_true", help="measure again even if logged")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        alphas = parse_alphas(args.alphas)
        client = MlflowClient(args.tracking_uri)
        runs = trial_runs(client, args.experiment, args.sweep)
        if args.trial == "best":
            run = best_trial(runs)
        else:
            chosen = [r for r in runs if r.data.tags.get(TRIAL_TAG) == args.trial]
            if not chosen:
                known = sorted(r.data.tags.get(TRIAL_TAG, "?") for r in runs)
                raise InterpolationError(f"--trial: no trial {args.trial!r}; trials: {known}")
            run = chosen[0]
        table = measure(client, run, alphas, args.device, args.force)
    except (InterpolationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    columns = ("alpha", *OBJECTIVES, "num_prompts", "num_seeds")
    print(json.dumps({"trial_id": table["trial_id"], "checkpoint": table["checkpoint"],
                      "rows": [{c: row.get(c) for c in columns} for row in table["rows"]]},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
