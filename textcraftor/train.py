"""``python -m textcraftor.train --config FILE [--set key=value ...]``: one TextCraftor run."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from textcraftor.checkpoint import latest_checkpoint
from textcraftor.config import ConfigError, RunConfig, load_run_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m textcraftor.train",
        description="Fine-tune the SD text encoder with differentiable rewards (TextCraftor).",
    )
    parser.add_argument("--config", help="YAML run config (defaults: the tiny preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a field, e.g. train.steps=100")
    parser.add_argument("--output-dir", help="run folder (overrides output_dir)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's latest checkpoint")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    config = load_run_config(args.config, args.overrides)
    return config.with_output_dir(args.output_dir) if args.output_dir else config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = resolve_config(args)
        # every model, reward and evaluation weight, before any model loads
        from textcraftor.sources_check import check_sources

        check_sources(config)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    checkpoint = latest_checkpoint(config.output_dir)
    if checkpoint is not None and not args.resume:
        print(f"error: {config.output_dir} already holds checkpoints (latest {checkpoint.name}); "
              "pass --resume to continue it or choose another --output-dir", file=sys.stderr)
        return 2
    # Imported only now: torch/diffusers/transformers take ~10 s to import on a small CPU, and a
    # config mistake or a refused overwrite should be reported without that wait.
    from textcraftor.trainer import NonFiniteLossError, TextCraftor

    try:
        trainer = TextCraftor(config)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if checkpoint is not None:
        trainer.restore(checkpoint)
    try:
        final = trainer.fit()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"output_dir": config.output_dir, **final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
