"""``python -m study.components``: pipelines assembled from parts, evaluated on the same prompts
and seeds — the transfer matrix and the orthogonality table (issue 23).

A pipeline is a base model (``model=SOURCE``: a preset such as ``shapes`` or ``shapes-s``, or
a diffusers folder) with, optionally, the text encoder tuned in one run (``text_encoder=RUN``:
a run or checkpoint folder, possibly tuned on another base model with the same text tower —
the paper's SD v1.5 → SDXL transfer) and the UNet (or its LoRA) tuned in another
(``unet=RUN``, tuned on this same base model). Every pipeline is evaluated with one run
config's evaluation (held-out prompts, evaluation seeds, sampling, rewards, quality weights:
``--eval-config``, default the config of the first run named), only ``model.source``
differing, and scored with the study's objectives (``study.objectives``). The untuned pipeline
of every base model named is added when not given. Each pipeline is then paired, objective
by objective, against every other pipeline of the same base model (``study.paired``: the
per-(prompt, seed) differences resampled, 95 % intervals, better / worse /
indistinguishable).

    # transfer: the encoder tuned on S drives M's UNet, and the reverse
    python -m study.components --out transfer.json \\
        --pipeline M/own model=shapes text_encoder=RUN_M \\
        --pipeline M/from-S model=shapes text_encoder=RUN_S \\
        --pipeline S/own model=shapes-s text_encoder=RUN_S \\
        --pipeline S/from-M model=shapes-s text_encoder=RUN_M
    # orthogonality with UNet fine-tuning
    python -m study.components --out orthogonality.json \\
        --pipeline text-encoder model=shapes text_encoder=RUN_TE \\
        --pipeline unet model=shapes unet=RUN_UNET \\
        --pipeline both model=shapes text_encoder=RUN_TE unet=RUN_UNET

The JSON (written atomically) holds each pipeline's objectives with their 95 % intervals, its
per-prompt evaluation table and its paired differences; the console prints the table.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from study.dial_table import objective_table
from study.objectives import OBJECTIVES, interval_names, study_intervals, study_objectives
from study.paired import paired_to_baseline
from textcraftor.atomic import write_json_atomic
from textcraftor.configio import ConfigError, to_dict
from textcraftor.generate import resolve_checkpoint

log = logging.getLogger("study.components")

UNTUNED = "untuned"  # the name given to an added untuned pipeline: "<model>/untuned"
PARTS = ("model", "text_encoder", "unet")


@dataclass(frozen=True)
class PipelineSpec:
    name: str  # the row's name in the table (unique)
    model: str  # model.source of the base model: preset, hub id or diffusers folder
    text_encoder: str | None = None  # run or checkpoint folder whose tuned text encoder is used
    unet: str | None = None  # run or checkpoint folder whose tuned UNet (or LoRA) is used

    @property
    def untuned(self) -> bool:
        return self.text_encoder is None and self.unet is None


def parse_pipeline(words: Sequence[str]) -> PipelineSpec:
    """``["NAME", "model=SOURCE", "text_encoder=RUN", "unet=RUN"]`` → a spec. Raises
    ConfigError naming ``--pipeline``, the word and what is allowed."""
    if not words or "=" in words[0]:
        raise ConfigError(f"--pipeline {' '.join(words)}: the first word is the pipeline's "
                          "name, then model=SOURCE [text_encoder=RUN] [unet=RUN]")
    name, parts = words[0], {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in PARTS or not value:
            raise ConfigError(f"--pipeline {name}: {word!r} is not one of "
                              f"{', '.join(p + '=…' for p in PARTS)}")
        if key in parts:
            raise ConfigError(f"--pipeline {name}: {key} given twice")
        parts[key] = value
    if "model" not in parts:
        raise ConfigError(f"--pipeline {name}: model=SOURCE is required (e.g. model=shapes)")
    return PipelineSpec(name, parts["model"], parts.get("text_encoder"), parts.get("unet"))


def with_untuned(specs: Sequence[PipelineSpec]) -> list[PipelineSpec]:
    """``specs`` with, first for each base model, its untuned pipeline (when not given).
    Raises ConfigError for a repeated name."""
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--pipeline: the name {repeated[0]!r} is given twice")
    models = list(dict.fromkeys(s.model for s in specs))
    added = [PipelineSpec(f"{m}/{UNTUNED}", m) for m in models
             if not any(s.model == m and s.untuned for s in specs)]
    return added + list(specs)


def check_specs(specs: Sequence[PipelineSpec]) -> dict[str, tuple[Path, Any]]:
    """Every run folder named → (its checkpoint, its run config), checked before any model
    loads: the folders exist and hold checkpoints; a UNet is used only on the base model it
    was tuned on; each base model's JSON configs read. Raises FileNotFoundError or
    ConfigError naming the pipeline and the part."""
    from textcraftor.limits import model_limits

    runs: dict[str, tuple[Path, Any]] = {}
    for spec in specs:
        for part in ("text_encoder", "unet"):
            folder = getattr(spec, part)
            if folder is None or folder in runs:
                continue
            try:
                runs[folder] = resolve_checkpoint(folder)
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"--pipeline {spec.name}: {part}={folder}: "
                    f"{str(error).removeprefix(f'--run {folder}: ')}") from None
        if spec.unet is not None:
            config = runs[spec.unet][1]
            tuned_on = config.model.source if config is not None else None
            if tuned_on is not None and tuned_on != spec.model:
                raise ConfigError(f"--pipeline {spec.name}: unet={spec.unet} was tuned on "
                                  f"model.source={tuned_on}, the pipeline's model is "
                                  f"{spec.model}: a tuned UNet fits only its own base model")
            if config is not None and config.model.train_unet == "none":
                raise ConfigError(f"--pipeline {spec.name}: unet={spec.unet} did not tune the "
                                  "UNet (its model.train_unet is none)")
    for model in dict.fromkeys(s.model for s in specs):
        try:
            model_limits(model)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"--pipeline model={model}: {error}") from None
    return runs


def eval_config_of(path: str | None, specs: Sequence[PipelineSpec],
                   runs: Mapping[str, tuple[Path, Any]]):
    """The run config whose evaluation every pipeline shares: ``--eval-config`` (YAML), else
    the config of the first run named. Raises ConfigError when neither gives one."""
    from textcraftor.config import load_run_config

    if path is not None:
        return load_run_config(path)
    for spec in specs:
        for folder in (spec.text_encoder, spec.unet):
            if folder is not None and runs[folder][1] is not None:
                return runs[folder][1]
    raise ConfigError("--eval-config: no run folder with a config.json was named; give a run "
                      "config YAML for the evaluation")


def pipeline_config(base, spec: PipelineSpec, runs: Mapping[str, tuple[Path, Any]],
                    scratch: Path):
    """``base`` (the shared evaluation's run config) for ``spec``: its model.source, the UNet
    run's UNet mode and LoRA rank, no KID/FID (which needs each model's own reference images),
    no sample grid, a scratch output folder."""
    from textcraftor.config import TextEncoderLoraConfig

    # the whole encoder trainable, no LoRA attached: a text-encoder LoRA is merged into it
    model = replace(base.model, source=spec.model, text_encoder_from=None,
                    train_text_encoder=True, text_encoder_lora=TextEncoderLoraConfig())
    if spec.unet is not None and runs[spec.unet][1] is not None:
        tuned = runs[spec.unet][1].model
        model = replace(model, train_unet=tuned.train_unet, lora_rank=tuned.lora_rank)
    else:
        model = replace(model, train_unet="none")
    return replace(base.with_output_dir(scratch), model=model,
                   eval=replace(base.eval, distribution=False),
                   train=replace(base.train, sample_grid=False))


def put_text_encoder(pipeline, spec: PipelineSpec, runs: Mapping[str, tuple[Path, Any]]
                     ) -> None:
    """The tuned text encoder of ``spec.text_encoder`` into ``pipeline``: the whole encoder
    (``generate.transfer_text_encoder``, checked against the tower), or a text-encoder LoRA
    merged into it at scale 1 (``generate.merge_adapter_option``, TexForce's combination when
    the UNet part is another run's LoRA). Raises ConfigError naming the pipeline."""
    import json

    from textcraftor.checkpoint import STATE_FILE
    from textcraftor.generate import (
        merge_adapter_option,
        parse_adapter,
        transfer_text_encoder,
    )
    from textcraftor.lora import TEXT_ENCODER_LORA

    held = json.loads((runs[spec.text_encoder][0] / STATE_FILE).read_text()).get("weights", [])
    try:
        if TEXT_ENCODER_LORA in held:
            merge_adapter_option(pipeline, parse_adapter(spec.text_encoder, "--text-encoder-lora"),
                                 spec.model)
        else:
            transfer_text_encoder(pipeline, spec.text_encoder, spec.model)
    except ConfigError as error:
        raise ConfigError(f"--pipeline {spec.name}: text_encoder={spec.text_encoder}: "
                          f"{error}") from error


def evaluate_pipeline(base, spec: PipelineSpec, runs: Mapping[str, tuple[Path, Any]],
                      objectives: Sequence[str], device: str) -> dict[str, Any]:
    """Assemble and evaluate one pipeline: {name, model, text_encoder, unet, <objective>,
    <objective>_ci_low/_ci_high, num_prompts, num_seeds, wall_s, table (per prompt, for the
    pairing)}."""
    from textcraftor.checkpoint import load_checkpoint
    from textcraftor.trainable import load_unet_weights
    from textcraftor.trainer import TextCraftor

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        config = pipeline_config(base, spec, runs, Path(scratch))
        trainer = TextCraftor(config, device=device, show_progress=False)
        if spec.text_encoder is not None:
            put_text_encoder(trainer.pipeline, spec, runs)
        if spec.unet is not None:
            weights = load_checkpoint(runs[spec.unet][0]).weights
            if "unet" not in weights and "unet_lora" not in weights:
                raise ConfigError(f"--pipeline {spec.name}: unet={spec.unet}: its checkpoint "
                                  "holds no UNet weights")
            load_unet_weights(trainer.pipeline, weights)
        trainer.pipeline.unet.requires_grad_(False).eval()
        result = trainer.evaluate()
    values, intervals = study_objectives(result.metrics), study_intervals(result.metrics)
    return {"name": spec.name, "model": spec.model, "text_encoder": spec.text_encoder,
            "unet": spec.unet, "untuned": spec.untuned, **{o: values[o] for o in objectives},
            **{k: intervals[k] for o in objectives for k in interval_names(o)},
            "num_prompts": len(result.prompts), "num_seeds": len(result.seeds),
            "wall_s": round(time.monotonic() - started, 1),
            "table": objective_table(result.table(0), objectives)}


def pair_rows(rows: Sequence[dict[str, Any]], objectives: Sequence[str]) -> None:
    """Add to each row ``versus``: {other pipeline of the same model: paired differences}."""
    for row in rows:
        row["versus"] = {other["name"]: paired_to_baseline(row["table"], other["table"],
                                                           objectives)
                         for other in rows
                         if other is not row and other["model"] == row["model"]}


def markdown_table(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> str:
    """One line per pipeline: each objective with its 95 % interval, and its paired difference
    to its model's untuned pipeline."""
    head = "| pipeline | model | " + " | ".join(
        f"{o} [95 %] | Δ{o} vs untuned [95 %]" for o in objectives) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(objectives))]
    untuned_of = {r["model"]: r["name"] for r in rows if r["untuned"]}
    for row in rows:
        cells = [row["name"], row["model"]]
        untuned = row["versus"].get(untuned_of.get(row["model"], ""))
        for o in objectives:
            low, high = (row[k] for k in interval_names(o))
            cells.append(f"{row[o]:.3f} [{low:.3f}, {high:.3f}]" if math.isfinite(row[o])
                         else "n/a")
            pair = (untuned or {}).get(o) or {}
            cells.append(f"{pair['difference']:+.3f} [{pair['ci_low']:+.3f}, "
                         f"{pair['ci_high']:+.3f}] {pair['verdict']}"
                         if "difference" in pair else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_components(specs: Sequence[PipelineSpec], eval_config: str | None = None,
                       objectives: Sequence[str] = OBJECTIVES, device: str = "cpu"
                       ) -> dict[str, Any]:
    """Check, then evaluate every pipeline (module docstring); returns {objectives,
    eval_config (the shared run config), pipelines (rows with ``versus``), wall_s}."""
    specs = with_untuned(specs)
    runs = check_specs(specs)
    base = eval_config_of(eval_config, specs, runs)
    started = time.monotonic()
    rows = []
    for spec in specs:
        rows.append(evaluate_pipeline(base, spec, runs, objectives, device))
        log.info("%s: %s", spec.name, {o: round(rows[-1][o], 4) for o in objectives})
    pair_rows(rows, objectives)
    return {"objectives": list(objectives), "eval_config": to_dict(base),
            "pipelines": rows, "wall_s": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.components", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", nargs="+", action="append", default=[], required=True,
                        metavar="WORD", help="NAME model=SOURCE [text_encoder=RUN] [unet=RUN] "
                        "(repeatable)")
    parser.add_argument("--eval-config", help="run config YAML whose evaluation every pipeline "
                        "shares (default: the first named run's config)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES),
                        help="comma-separated study objectives (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="the JSON table to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives:
            raise ConfigError(f"--objectives: {unknown[0] if unknown else args.objectives!r} "
                              f"is not one of {', '.join(OBJECTIVES)}")
        specs = [parse_pipeline(words) for words in args.pipeline]
        table = compare_components(specs, args.eval_config, objectives, args.device)
    except (ConfigError, FileNotFoundError) as error:
        parser.error(str(error))
    write_json_atomic(args.out, table)
    print(markdown_table(table["pipelines"], objectives))
    print(f"wrote {args.out} ({len(table['pipelines'])} pipelines, {table['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
