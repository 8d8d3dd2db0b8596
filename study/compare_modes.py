"""Prompt-based against direct fine-tuning on the same budget — the comparison the paper only
argues. Both runs start from the default study's base run (ShapesWorld) with the same rewards,
optimizer steps, batch, learning rate and seed, and are evaluated on the same held-out prompts
and seeds by sampling from noise; only the training signal differs:

- prompt-based (``last_k``): sample from noise, gradient through the last K DDIM steps;
- direct (``direct``): a real paired image noised to t, x̂0 predicted in one step.

``python -m study.compare_modes --out DIR [--steps N] [--modes last_k,direct]
[--set key=value ...]`` trains the runs, prints the table as JSON and writes it atomically to
``DIR/comparison.json`` (each run's folder beside it: ``DIR/<mode>/``); with one mode it is a
single run against the base model. Notebook ``05_prompt_vs_direct`` reads that file and runs no
model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from textcraftor.atomic import write_text_atomic

# On top of the default study's base run (study/configs/default.yaml: ShapesWorld): evaluate at
# the start (the base row) and the end only, and keep the sample grids for the notebook.
RUN_OVERRIDES = ("train.eval_every=0", "train.sample_grid=true", "train.eval_at_start=true")
# ShapesWorld's own measures (the oracle's; its CLIP's features): trained, exact or both
METRICS = ("aesthetic", "clip", "oracle_all", "oracle_colour", "oracle_shape",
           "oracle_position", "diversity_attributes", "fd_clip")
MODES = ("last_k", "direct")


def compare_modes(out: str | Path, steps: int, overrides: Sequence[str] = (),
                  modes: Sequence[str] = MODES) -> pd.DataFrame:
    """One row per mode (and one ``base`` row): held-out metrics before/after, train seconds."""
    from study.config import load_study_config
    from textcraftor.config import load_run_config
    from textcraftor.configio import to_dict
    from textcraftor.trainer import TextCraftor

    out = Path(out)
    base = to_dict(load_study_config().base)
    rows = []
    for mode in modes:
        config = load_run_config(None, [*RUN_OVERRIDES, *overrides, f"sample.truncation={mode}",
                                        f"train.steps={steps}", f"train.save_every={steps}",
                                        f"output_dir={out / mode}"], base=base)
        step_seconds: list[float] = []

        def on_event(event, into=step_seconds):
            if event.kind == "step":
                into.append(float(event.metrics["step_s"]))

        trainer = TextCraftor(config, callback=on_event, show_progress=False)
        started = time.perf_counter()
        final = trainer.fit()
        if not rows:
            rows.append({"mode": "base", "steps": 0, "train_seconds": 0.0,
                         **{m: final.get(f"baseline/{m}") for m in METRICS}})
        rows.append({"mode": mode, "steps": steps, "train_seconds": round(sum(step_seconds), 1),
                     "wall_seconds": round(time.perf_counter() - started, 1),
                     **{m: final.get(f"eval/{m}") for m in METRICS}})
    table = pd.DataFrame(rows).set_index("mode")
    write_text_atomic(out / "comparison.json",
                      table.reset_index().to_json(orient="records", indent=2))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.compare_modes",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for both runs and the table")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a run-config field for both runs")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated truncation modes to run (default: %(default)s)")
    args = parser.parse_args(argv)
    table = compare_modes(args.out, args.steps, args.overrides, args.modes.split(","))
    print(json.dumps(json.loads(table.reset_index().to_json(orient="records")), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
