"""``python -m study.dials``: a finished trial's inference dials, measured and logged.

Every trial that finishes its training measures its dials itself (the study's ``dials``); this
command measures them for a trial that has none, or at another grid: the trial's last checkpoint
with E(a) = a·E_ft + (1−a)·E_orig driving the last M of T sampling steps (TextCraftor §3.4,
Table 4), at each a × M, on the trial's own held-out prompts and evaluation seeds, scored as
every run of the study is (``study.dial_table``). The table is logged to the trial's MLflow run as
``dials/dials.json``, where the report and notebook 03 read it (they run no model). A table
already logged for the same checkpoint and grid is not measured again (``--force`` does).

    python -m study.dials --tracking-uri sqlite:///mlflow.db \\
        --experiment textcraftor-study [--sweep default] [--trial best] \\
        [--alphas 0,0.25,0.5,0.75,1] [--finetuned-steps k_train,half,all] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from study.config import DEFAULT_TRACKING_URI, DialConfig
from study.objectives import OBJECTIVES, interval_names
from study.summary import pareto_flags
from study.tags import DIALS_ARTIFACT as ARTIFACT
from study.tags import KIND_TAG, SWEEP_TAG, TRIAL_TAG
from textcraftor.dial_grid import FINETUNED_STEP_NAMES

log = logging.getLogger("study.dials")


class DialError(RuntimeError):
    """The dials cannot be measured (no such experiment, sweep or trial; no checkpoint)."""


def parse_grid(alphas: str, finetuned_steps: str) -> DialConfig:
    """``--alphas 0,0.5,1 --finetuned-steps k_train,5,all`` → a checked ``DialConfig``. Raises
    ValueError naming the option, the value and what is allowed."""
    try:
        weights = tuple(float(a) for a in alphas.split(","))
    except ValueError:
        raise ValueError(f"--alphas: {alphas!r} is not a comma-separated list of numbers "
                         "(e.g. 0,0.5,1)") from None
    bad = [a for a in weights if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"--alphas: {bad[0]} lies outside [0, 1] (0 = the original encoder, "
                         "1 = the fine-tuned one)")
    steps: list[int | str] = []
    for entry in finetuned_steps.split(","):
        entry = entry.strip()
        if entry in FINETUNED_STEP_NAMES:
            steps.append(entry)
        elif entry.isdigit() and int(entry) >= 1:
            steps.append(int(entry))
        else:
            raise ValueError(f"--finetuned-steps: {entry!r} is neither an int >= 1 nor one of "
                             f"{FINETUNED_STEP_NAMES}")
    return DialConfig(alphas=weights, finetuned_steps=tuple(steps))


def trial_runs(client: MlflowClient, experiment: str, sweep: str | None) -> list[Run]:
    """The trial runs of ``sweep`` (default: the experiment's newest sweep)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise DialError(f"--experiment: no MLflow experiment {experiment!r} in this store")
    if sweep is None:
        sweeps = client.search_runs([found.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if not sweeps:
            raise DialError(f"experiment {experiment!r} holds no sweep")
        sweep = sweeps[0].data.tags[SWEEP_TAG]
    runs = client.search_runs([found.experiment_id], f"tags.`{KIND_TAG}` = 'trial' and "
                              f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=10_000)
    if not runs:
        raise DialError(f"--sweep: no trial runs of sweep {sweep!r} in experiment "
                        f"{experiment!r}")
    return runs


def best_trial(runs: Sequence[Run]) -> Run:
    """The highest-quality finished trial on the Pareto front of the study's objectives."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    names = [o for o in OBJECTIVES if all(o in r.data.metrics for r in finished)]
    if not finished or "quality" not in names:
        raise DialError("no finished trial with a quality objective: nothing to dial")
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
        raise DialError(f"trial {tags.get(TRIAL_TAG)}: no checkpoint (tag {tagged!r}, "
                        f"run folder {run_dir!r}); the dials need a finished trial")
    return found[-1]


def measure_checkpoint_dials(run_config: dict[str, Any], checkpoint: Path, grid: DialConfig,
                             objectives: Sequence[str], device: str = "cpu") -> dict[str, Any]:
    """The dials of the trial's checkpoint (``study.dial_table.study_dials``). ``run_config``:
    the trial's run config (its evaluation is the study's). An M outside [1, T] of this trial
    is a ValueError naming it. Nothing is written into the trial's folder."""
    from study.dial_table import study_dials
    from textcraftor.config import RunConfig
    from textcraftor.configio import from_dict
    from textcraftor.dial_grid import dial_settings
    from textcraftor.dials import measure_dials
    from textcraftor.trainer import TextCraftor

    config = from_dict(RunConfig, dict(run_config))
    dial_settings(grid.alphas, grid.finetuned_steps, config.sample)  # bad M: before the model
    with tempfile.TemporaryDirectory() as scratch:
        config = replace(config.with_output_dir(scratch),
                         train=replace(config.train, sample_grid=False))
        trainer = TextCraftor(config, device=device, show_progress=False)
        trainer.restore(checkpoint)
        return study_dials(measure_dials(trainer, grid.alphas, grid.finetuned_steps),
                           objectives)


def logged_table(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The dials already logged to a trial's run, or None."""
    names = [a.path for a in client.list_artifacts(run_id, Path(ARTIFACT).parent.as_posix())]
    if ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as into:
        return json.loads(Path(client.download_artifacts(run_id, ARTIFACT, into)).read_text())


def measure(client: MlflowClient, run: Run, grid: DialConfig, device: str = "cpu",
            force: bool = False) -> dict[str, Any]:
    """Measure the dials of trial ``run`` and log them as ``dials/dials.json`` (unless the same
    checkpoint and grid are logged already); returns the logged table (``study_dials`` with
    trial_id, mlflow_run_id, checkpoint, alphas, finetuned_steps)."""
    checkpoint = trial_checkpoint(run)
    run_id = run.info.run_id
    asked = {"checkpoint": str(checkpoint), "alphas": list(grid.alphas),
             "finetuned_steps": list(grid.finetuned_steps)}
    before = None if force else logged_table(client, run_id)
    if before is not None and all(before.get(k) == v for k, v in asked.items()):
        log.info("trial %s: the dials of %s are logged already", before["trial_id"], checkpoint)
        return before
    config_file = Path(run.data.tags.get("run_dir", "")) / "config.json"
    if not config_file.is_file():
        raise DialError(f"trial {run.data.tags.get(TRIAL_TAG)}: no run config at "
                        f"{config_file}")
    objectives = [o for o in OBJECTIVES if o in run.data.metrics] or list(OBJECTIVES)
    dials = measure_checkpoint_dials(json.loads(config_file.read_text()), checkpoint, grid,
                                     objectives, device)
    table = {"trial_id": run.data.tags.get(TRIAL_TAG), "mlflow_run_id": run_id, **asked,
             **dials}
    client.log_dict(run_id, table, ARTIFACT)  # one artifact write: the file or nothing
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.dials", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                 DEFAULT_TRACKING_URI))
    parser.add_argument("--experiment", default="textcraftor-study")
    parser.add_argument("--sweep", help="one sweep of the experiment (default: the newest)")
    parser.add_argument("--trial", default="best", help="a trial id, or 'best' (the highest "
                        "quality on the Pareto front)")
    grid = DialConfig()
    parser.add_argument("--alphas", default=",".join(str(a) for a in grid.alphas),
                        help="interpolation weights a in [0, 1] (default: %(default)s)")
    parser.add_argument("--finetuned-steps", default=",".join(map(str, grid.finetuned_steps)),
                        help="M, the last M sampling steps use E(a): ints in [1, T] or "
                        f"{', '.join(FINETUNED_STEP_NAMES)} (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force", action="store_true", help="measure again even if logged")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        grid = parse_grid(args.alphas, args.finetuned_steps)
        client = MlflowClient(args.tracking_uri)
        runs = trial_runs(client, args.experiment, args.sweep)
        if args.trial == "best":
            run = best_trial(runs)
        else:
            chosen = [r for r in runs if r.data.tags.get(TRIAL_TAG) == args.trial]
            if not chosen:
                known = sorted(r.data.tags.get(TRIAL_TAG, "?") for r in runs)
                raise DialError(f"--trial: no trial {args.trial!r}; trials: {known}")
            run = chosen[0]
        table = measure(client, run, grid, args.device, args.force)
    except (DialError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    columns = ("alpha", "finetuned_steps",
               *[k for o in OBJECTIVES for k in (o, *interval_names(o))],
               "num_prompts", "num_seeds")
    print(json.dumps({"trial_id": table["trial_id"], "checkpoint": table["checkpoint"],
                      "points": [{c: row.get(c) for c in columns if c in row}
                                 for row in table["points"]],
                      "best": table["best"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
