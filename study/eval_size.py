"""How large the held-out evaluation must be for its intervals to be useful: a measurement.

``python -m study.eval_size [--config study.yaml] [--prompts 8 16 32] [--seeds 2 4]
[--seed-offsets 0 2 4 6]`` evaluates the study's untuned base model (its ``base`` run config,
the study's weights) on each (held-out prompts × seeds × first seed) of the grid and prints
one JSON object: per evaluation, each
objective's value and 95 % bootstrap interval (``textcraftor.bootstrap``), the interval's
width, and the evaluation's wall time (seconds on this machine, the model loaded once per
pair and not counted). A benchmark, not a test: the numbers are this machine's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from study.config import load_study_config
from study.objectives import OBJECTIVE_METRICS, interval_names, study_intervals, study_objectives
from study.space import study_run_config

EXTRA_METRICS = ("diversity_attributes", "diversity_clip", "oracle_all")


def measure(study_args: Sequence[str], config: str | None, prompts: Sequence[int],
            seeds: Sequence[int], threads: int, offsets: Sequence[int] = (0,)
            ) -> dict[str, Any]:
    import torch

    from textcraftor.trainer import TextCraftor

    torch.set_num_threads(threads)
    study = load_study_config(config, list(study_args))
    rows = []
    for count, num_seeds, offset in itertools.product(prompts, seeds, offsets):
        # one evaluation per (prompts, seeds, first seed)
        base = study_run_config(study)
        eval_seeds = tuple(range(offset, offset + num_seeds))
        run = replace(base, data=replace(base.data, heldout_count=count,
                                         eval_seeds=eval_seeds))
        with tempfile.TemporaryDirectory() as folder:
            trainer = TextCraftor(run.with_output_dir(folder), show_progress=False)
            started = time.perf_counter()
            result = trainer.evaluate()
            seconds = time.perf_counter() - started
        values = {**study_objectives(result.metrics), **study_intervals(result.metrics)}
        row = {"prompts": count, "seeds": num_seeds, "eval_seeds": list(eval_seeds),
               "images": count * num_seeds, "eval_s": round(seconds, 2)}
        for name in OBJECTIVE_METRICS:
            low, high = (values[k] for k in interval_names(name))
            row[name] = values[name]
            row[f"{name}_ci"] = [low, high]
            row[f"{name}_ci_width"] = high - low
        for name in EXTRA_METRICS:  # beside the objectives, where the evaluation has them
            if f"eval/{name}" in result.metrics:
                row[name] = result.metrics[f"eval/{name}"]
                row[f"{name}_ci"] = [result.metrics.get(f"eval/{name}_ci_low"),
                                     result.metrics.get(f"eval/{name}_ci_high")]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"study": study.name, "objectives": list(OBJECTIVE_METRICS), "threads": threads,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.eval_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="study YAML (default: the embedded default study)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a study field, as for study.sweep")
    parser.add_argument("--prompts", type=int, nargs="+", default=[8, 16, 32],
                        help="held-out prompt counts to measure (default: 8 16 32)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 4],
                        help="evaluation seeds per prompt to measure (default: 2 4)")
    parser.add_argument("--seed-offsets", type=int, nargs="+", default=[0],
                        help="first evaluation seed of each seed set (default 0): 0 2 4 6 "
                             "with --seeds 2 measures seeds 0-1, 2-3, 4-5, 6-7 (the noise floor)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    bad = [n for n in (*args.prompts, *args.seeds) if n < 1]
    if bad or min(args.seeds) < 2:
        parser.error(f"--prompts must be >= 1 and --seeds >= 2 (diversity needs two seeds per "
                     f"prompt); got prompts {args.prompts}, seeds {args.seeds}")
    if min(args.seed_offsets) < 0:
        parser.error(f"--seed-offsets must be >= 0, got {args.seed_offsets}")
    print(json.dumps(measure(args.set, args.config, args.prompts, args.seeds, args.threads,
                             args.seed_offsets), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
