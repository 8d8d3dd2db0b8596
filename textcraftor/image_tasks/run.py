"""``python -m textcraftor.image_tasks``: the base and a tuned text encoder on ShapesWorld's
editing tasks (recolour by img2img, add a shape by inpainting), the same items and seeds for
both, each score with its 95 % interval and the paired gain with its own.

    python -m textcraftor.image_tasks --model shapes --text-encoder-from runs/a \\
        --items 32 --seeds 0,1 --strengths 0.5,0.7,0.9 --out image_tasks/

Writes ``OUT/<task>.json`` (the settings, one entry per strength with its table ``rows`` and
its per-item × seed ``values``) and ``OUT/<task>_s<strength>.png`` (the first items at the
first seed: input, base, tuned). Every option is checked before any weight loads; a bad one
exits 2 with ``error:`` naming it, its value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from textcraftor.atomic import write_json_atomic
from textcraftor.configio import ConfigError

from .config import RESOLUTION, TASKS, TaskConfig, describe, parse_list

if TYPE_CHECKING:  # torch and diffusers load only once the input is checked
    from .evaluate import SettingResult

log = logging.getLogger(__name__)

GRID_ITEMS = 8  # items shown in each setting's image grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m textcraftor.image_tasks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes", help="a ShapesWorld preset")
    parser.add_argument("--text-encoder-from", required=True, metavar="RUN",
                        help="run or checkpoint folder of the tuned text encoder")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument("--items", default="32", help="scenes per task (≥ 1)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated noise seeds per scene")
    parser.add_argument("--strengths", default="0.5,0.7,0.9",
                        help="comma-separated img2img strengths in (0, 1]")
    parser.add_argument("--inpaint-strength", default="1.0", help="inpainting strength")
    parser.add_argument("--num-steps", default="10", help="DDIM steps T of a whole chain")
    parser.add_argument("--guidance-scale", default="5.0", help="classifier-free guidance")
    parser.add_argument("--item-seed", default="0", help="which scenes")
    parser.add_argument("--batch-size", default="16", help="images per pipeline call")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", required=True, help="output folder")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TaskConfig:
    """The checked TaskConfig. Raises ConfigError naming the option, its value and what is
    allowed."""
    return TaskConfig(
        model=args.model, text_encoder_from=args.text_encoder_from,
        tasks=parse_list(args.tasks, "--tasks", str),
        items=_scalar(args.items, "--items", int), seeds=parse_list(args.seeds, "--seeds", int),
        strengths=parse_list(args.strengths, "--strengths", float),
        inpaint_strength=_scalar(args.inpaint_strength, "--inpaint-strength", float),
        num_steps=_scalar(args.num_steps, "--num-steps", int),
        guidance_scale=_scalar(args.guidance_scale, "--guidance-scale", float),
        item_seed=_scalar(args.item_seed, "--item-seed", int),
        batch_size=_scalar(args.batch_size, "--batch-size", int), device=args.device)


def _scalar(text: str, option: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        allowed = "an integer" if kind is int else "a number"
        raise ConfigError(f"{option}: {text!r} is not allowed; allowed: {allowed}") from None


def check_inputs(config: TaskConfig, out: Path) -> None:
    """What the model and the folders refuse, read from JSON configs and the file system only
    (no weights): a model that is not a ShapesWorld preset, T above its scheduler's limit, an
    image side its VAE does not divide, a UNet without the VAE's latent channels, a
    ``--text-encoder-from`` that is not a run or checkpoint folder, an ``--out`` that is a
    file. Raises ConfigError or FileNotFoundError naming the option."""
    from textcraftor.generate import check_text_encoder_source
    from textcraftor.limits import model_limits
    from textcraftor.shapes_weights import SHAPES_PRESETS, is_shapes_preset

    if not is_shapes_preset(config.model):
        raise ConfigError(f"--model: {config.model!r} is not allowed; allowed: "
                          f"{', '.join(SHAPES_PRESETS)} (the tasks are scored by ShapesWorld's "
                          "oracle)")
    limits = model_limits(config.model)
    if config.num_steps > limits.max_num_steps:
        raise ConfigError(f"--num-steps: {config.num_steps} is not allowed; allowed: 1 … "
                          f"{limits.max_num_steps} ({limits.describe_scheduler()})")
    if RESOLUTION % limits.vae_factor:
        raise ConfigError(f"--model: {config.model!r}: its VAE factor {limits.vae_factor} does "
                          f"not divide the world's {RESOLUTION} px")
    _check_unet_channels(config.model)
    check_text_encoder_source(config.text_encoder_from)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} is a file; allowed: a folder (created if "
                          "missing)")


def _check_unet_channels(model: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from textcraftor.models import resolve_source

    where = resolve_source(model)
    unet = UNet2DConditionModel.load_config(where, subfolder="unet")
    vae = AutoencoderKL.load_config(where, subfolder="vae")
    if unet["in_channels"] != vae["latent_channels"]:
        raise ConfigError(f"--model: {model!r}: its UNet takes {unet['in_channels']} channels; "
                          f"these tasks use diffusers' {vae['latent_channels']}-channel path")


def run(config: TaskConfig, out: Path) -> dict[str, Path]:
    """Evaluate every task setting with both encoders; write ``OUT/<task>.json`` and grids;
    returns task → JSON path. Inputs are assumed checked (``check_inputs``)."""
    import torch

    from textcraftor.generate import resolve_checkpoint, transfer_text_encoder
    from textcraftor.models import load_pipeline

    from .evaluate import evaluate_inpaint, evaluate_recolour
    from .items import inpaint_items, recolour_items
    from .pipelines import edit_pipelines

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    recolour = recolour_items(config.items, config.item_seed)
    adding = inpaint_items(config.items, config.item_seed)  # checks every mask
    pipeline = load_pipeline(config.model)
    source = transfer_text_encoder(pipeline, config.text_encoder_from, config.model)
    checkpoint, run_config = resolve_checkpoint(config.text_encoder_from)
    if run_config is not None and run_config.model.train_unet != "none":
        log.warning("%s also tuned the UNet (model.train_unet=%s): only its text encoder is "
                    "used here", config.text_encoder_from, run_config.model.train_unet)
    pipeline.to(device)
    encoders = {"base": edit_pipelines(pipeline, pipeline.original_text_encoder),
                "tuned": edit_pipelines(pipeline, pipeline.text_encoder)}
    meta = {"model": config.model, "text_encoder_from": config.text_encoder_from,
            "checkpoint": str(checkpoint), "tuned_model_source": source, "device": device,
            "num_items": config.items, "seeds": list(config.seeds),
            "config": describe(config)}
    written = {}
    for task in config.tasks:
        if task == "recolour":
            results = [evaluate_recolour(encoders, recolour, s, config)
                       for s in config.strengths]
            prompts = [item.prompt for item in recolour]
        else:
            results = [evaluate_inpaint(encoders, adding, config)]
            prompts = [item.prompt for item in adding]
        settings = [_setting(result, out) for result in results]
        written[task] = write_json_atomic(out / f"{task}.json", {
            "task": task, **meta, "prompts": prompts, "settings": settings})
        for result in results:
            log.info("%s at strength %g: %.1f s", task, result.strength, result.wall_s)
    return written


def _setting(result: SettingResult, out: Path) -> dict:
    """The JSON entry of one setting; saves its image grid beside it."""
    from torchvision.utils import save_image

    grid = f"{result.task}_s{result.strength:g}.png"
    per_item = len(result.images["input"]) // len(next(iter(result.values["base"].values())))
    shown = slice(0, GRID_ITEMS * per_item, per_item)  # the first items, first seed
    columns = [result.images[k][shown] for k in ("input", "base", "tuned")]
    out.mkdir(parents=True, exist_ok=True)
    save_image(_interleave(columns), out / grid, nrow=3, padding=1, pad_value=0.5)
    return {"strength": result.strength, "denoising_steps": result.denoising_steps,
            "wall_s": round(result.wall_s, 2), "grid": grid, "grid_columns":
            ["input", "base", "tuned"], "rows": result.rows,
            "reference": result.reference or {},
            "values": {encoder: {k: v.tolist() for k, v in scores.items()}
                       for encoder, scores in result.values.items()}}


def _interleave(columns):
    import torch

    return torch.stack(columns, dim=1).flatten(0, 1)


def print_table(paths: dict[str, Path]) -> None:
    """One line per task, setting and score: base, tuned, gain [interval], N."""
    for task, path in paths.items():
        data = json.loads(path.read_text())
        for setting in data["settings"]:
            for row in setting["rows"]:
                print(f"{task:8s} s={setting['strength']:<4g} {row['score']:15s} "
                      f"base {row['base']:.3f}  tuned {row['tuned']:.3f}  gain "
                      f"{row['gain']:+.3f} [{row['gain_ci_low']:+.3f}, "
                      f"{row['gain_ci_high']:+.3f}] {row['verdict']:17s} "
                      f"N={row['num_items']}×{row['num_seeds']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    out = Path(args.out)
    try:
        config = config_from_args(args)
        check_inputs(config, out)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        paths = run(config, out)
    except ConfigError as error:  # the tuned encoder does not fit the model (named by both)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_table(paths)
    return 0
