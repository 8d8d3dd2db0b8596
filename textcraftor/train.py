"""``python -m textcraftor.train --config FILE [--set key=value ...]``: one TextCraftor run.

``--resume`` continues a run folder from its latest checkpoint with the run's saved
configuration (``RUN/config.json``): ``--set`` overrides apply on top of it, or ``--config
FILE`` (+ overrides) is compared with it. Only more ``train.steps`` and fields that cannot change
the results may differ (``textcraftor.resume``); anything else exits 2 before any model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textcraftor.checkpoint import STATE_FILE, latest_checkpoint
from textcraftor.config import ConfigError, RunConfig, load_run_config
from textcraftor.configio import apply_overrides, read_yaml
from textcraftor.limits import check_model_limits
from textcraftor.resume import check_resume, read_saved_config, record_resume


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m textcraftor.train",
        description="Fine-tune the SD text encoder with differentiable rewards (TextCraftor).",
    )
    parser.add_argument("--config", help="YAML run config (defaults: the tiny preset; with "
                        "--resume: the run's saved config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a field, e.g. train.steps=100")
    parser.add_argument("--output-dir", help="run folder (overrides output_dir)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's latest checkpoint, with its saved "
                        "configuration (only train.steps, at least the checkpoint's step, "
                        "train.keep_checkpoints, train.eval_batch_size and output_dir may "
                        "change)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """What a command line asks for, checked: the config and, for a resume, where from."""

    config: RunConfig
    checkpoint: Path | None = None  # the checkpoint a resume continues from
    checkpoint_step: int = 0
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # recorded on resume


def run_dir(args: argparse.Namespace) -> str:
    """The run folder the command line names: --output-dir, else output_dir of the YAML file
    and overrides, else the default. Raises ConfigError / FileNotFoundError for a bad file."""
    if args.output_dir:
        return args.output_dir
    data = apply_overrides(read_yaml(args.config) if args.config else {}, args.overrides,
                           schema=RunConfig)
    return str(data.get("output_dir") or RunConfig.output_dir)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """A fresh run's config: the YAML file (or defaults) + overrides, the --output-dir."""
    config = load_run_config(args.config, args.overrides)
    return config.with_output_dir(args.output_dir) if args.output_dir else config


def plan_resume(args: argparse.Namespace) -> Plan:
    """The resumed run's config: the saved one + overrides (or --config + overrides, compared
    with it). Raises ConfigError when the folder holds no checkpoint or the config differs in a
    field a resume may not change."""
    folder = run_dir(args)
    checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        raise ConfigError(f"--resume: {folder} holds no checkpoint to continue (no "
                          f"checkpoints/step_*/{STATE_FILE}); run without --resume to start it")
    saved = read_saved_config(folder)
    if args.config:
        requested = load_run_config(args.config, args.overrides)
    else:
        requested = load_run_config(None, args.overrides, base=saved)
    requested = requested.with_output_dir(folder)
    step = int(json.loads((checkpoint / STATE_FILE).read_text())["step"])
    changes = check_resume(saved, requested, step)
    return Plan(requested, checkpoint, step, changes)


def plan(args: argparse.Namespace) -> Plan:
    """Check the command line before any model loads. Raises ConfigError (the message names
    the field) or FileNotFoundError."""
    if args.resume:
        result = plan_resume(args)
    else:
        config = resolve_config(args)
        checkpoint = latest_checkpoint(config.output_dir)
        if checkpoint is not None:
            raise ConfigError(f"{config.output_dir} already holds checkpoints (latest "
                              f"{checkpoint.name}); pass --resume to continue it or choose "
                              "another --output-dir")
        result = Plan(config)
    from textcraftor.sources_check import check_sources, model_problems

    if not model_problems(result.config):  # else check_sources names the model with the rest
        check_model_limits(result.config)  # reads the model's JSON configs only
    check_sources(result.config)  # every model, reward and evaluation weight, before any loads
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        checked = plan(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = checked.config
    # Imported only now: torch/diffusers/transformers take ~10 s to import on a small CPU, and a
    # config mistake or a refused overwrite should be reported without that wait.
    from textcraftor.events import NonFiniteLossError
    from textcraftor.trainer import TextCraftor

    try:
        trainer = TextCraftor(config)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if checked.checkpoint is not None:
        trainer.restore(checked.checkpoint)
        record_resume(config.output_dir, checked.checkpoint_step, checked.changes)
    try:
        final = trainer.fit()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"output_dir": config.output_dir, **final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
