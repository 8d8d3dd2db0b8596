"""``python -m textcraftor.generate``: images from the base model, a fine-tuned text encoder, or
an interpolation of the two (``--alpha``), optionally with the fine-tuned encoder driving only the
last M of T steps (``--finetuned-steps``; the paper's test setting is 15 of 25). A text-encoder
LoRA and a UNet LoRA, from two different runs, merge into the weights at load
(``--text-encoder-lora RUN[:SCALE]``, ``--unet-lora RUN[:SCALE]``: TexForce's combination)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textcraftor.checkpoint import STATE_FILE, latest_checkpoint
from textcraftor.config import ConfigError, RunConfig, load_run_config
from textcraftor.configio import to_dict
from textcraftor.limits import check_model_limits
from textcraftor.lora import ADAPTER_CONFIG, TEXT_ENCODER_LORA, UNET_LORA

if TYPE_CHECKING:  # torch, diffusers and transformers load only once the input is checked
    import torch

    from textcraftor.models import Pipeline

log = logging.getLogger(__name__)


def load_finetuned(pipeline: Pipeline, checkpoint: str | Path, train_unet: str = "none",
                   lora_rank: int = 4) -> Pipeline:
    """Put a checkpoint's text encoder (and UNet/LoRA) into ``pipeline``; the original encoder
    stays as loaded. A text-encoder LoRA (``text_encoder_lora``) is merged into the trainable
    encoder's weights (its config from the checkpoint's adapter folder); a UNet LoRA stays an
    adapter."""
    from textcraftor.checkpoint import load_checkpoint
    from textcraftor.lora import merge_adapter, read_adapter_folder
    from textcraftor.trainable import load_unet_weights, make_unet_trainable

    state = load_checkpoint(checkpoint)
    if "text_encoder" in state.weights:
        pipeline.text_encoder.load_state_dict(state.weights["text_encoder"])
    if TEXT_ENCODER_LORA in state.weights:
        folder = Path(checkpoint) / TEXT_ENCODER_LORA
        if not (folder / ADAPTER_CONFIG).is_file():
            raise FileNotFoundError(f"{checkpoint}: holds text_encoder_lora weights but no "
                                    f"adapter folder {folder} (its LoRA config)")
        lora_config, _ = read_adapter_folder(folder)
        pipeline.text_encoder = merge_adapter(pipeline.text_encoder, lora_config,
                                              state.weights[TEXT_ENCODER_LORA])
    if "unet_lora" in state.weights:
        make_unet_trainable(pipeline, "lora", lora_rank)
    load_unet_weights(pipeline, state.weights)
    for module in (pipeline.text_encoder, pipeline.unet):
        module.requires_grad_(False).eval()
    return pipeline


def resolve_checkpoint(run_or_checkpoint: str) -> tuple[Path, RunConfig | None]:
    """A checkpoint folder and, when it belongs to a run folder, that run's resolved config.

    Raises FileNotFoundError naming ``--run`` when the path does not exist, is neither a run
    folder nor a checkpoint folder, or is a run without a checkpoint yet."""
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--run {path}: no such folder")
    if (path / "config.json").is_file():  # a run folder: its latest checkpoint
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--run {path}: the run has no checkpoint yet")
        return found, load_run_config(None, base=json.loads((path / "config.json").read_text()))
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--run {path}: neither a run folder (config.json) nor a "
                                f"checkpoint folder ({STATE_FILE})")
    run_config = path.parent.parent / "config.json"
    base = json.loads(run_config.read_text()) if run_config.is_file() else None
    return path, (load_run_config(None, base=base) if base else None)


@dataclass(frozen=True)
class AdapterOption:
    """One ``--text-encoder-lora`` or ``--unet-lora``: a LoRA of a run, merged with a scale."""

    option: str  # the option it came from, for errors
    name: str  # text_encoder_lora | unet_lora: the checkpoint key and adapter folder
    run: str  # the run or checkpoint folder as given
    checkpoint: Path  # its checkpoint folder
    scale: float  # s in W + s·(alpha/r)·B·A (1 = as trained, 0 = the base weights)
    run_config: RunConfig | None  # the run's resolved config (None: a lone checkpoint)


ADAPTER_OPTIONS = {"--text-encoder-lora": TEXT_ENCODER_LORA, "--unet-lora": UNET_LORA}


def parse_adapter(text: str, option: str) -> AdapterOption:
    """``RUN_OR_CHECKPOINT[:SCALE]`` of ``option`` → AdapterOption, checked without loading
    weights: the folder is a run or checkpoint, its checkpoint holds that LoRA (state.json) with
    a config to rebuild it, the scale is a finite number. Raises ConfigError / FileNotFoundError
    naming the option."""
    name = ADAPTER_OPTIONS[option]
    run, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and not Path(text).exists():  # a folder whose name holds ":" stays whole
        run = head
        try:
            scale = float(tail)
        except ValueError:
            raise ConfigError(f"{option}: scale {tail!r} in {text!r} is not a number (give "
                              f"RUN or RUN:SCALE, e.g. {head}:0.8)") from None
        if not math.isfinite(scale):
            raise ConfigError(f"{option}: scale must be a finite number, got {tail} in {text!r}")
    try:
        checkpoint, run_config = resolve_checkpoint(run)
    except FileNotFoundError as error:
        raise FileNotFoundError(str(error).replace("--run", option, 1)) from None
    held = json.loads((checkpoint / STATE_FILE).read_text()).get("weights", [])
    if name not in held:
        raise ConfigError(f"{option} {run}: its checkpoint {checkpoint} holds no {name} (it "
                          f"holds {', '.join(held) or 'no weights'}): give a run trained with "
                          + ("model.text_encoder_lora.rank > 0" if name == TEXT_ENCODER_LORA
                             else "model.train_unet=lora"))
    if not (checkpoint / name / ADAPTER_CONFIG).is_file() and (name != UNET_LORA
                                                                 or run_config is None):
        raise ConfigError(f"{option} {run}: its checkpoint {checkpoint} has no adapter folder "
                          f"{name}/ with {ADAPTER_CONFIG}, and no run config to rebuild it from")
    return AdapterOption(option, name, run, checkpoint, scale, run_config)


def merge_adapter_option(pipeline: Pipeline, adapter: AdapterOption, target: str) -> None:
    """Merge ``adapter``'s LoRA into ``pipeline``'s trainable text encoder or its UNet, at its
    scale (the original text encoder stays as loaded). Raises ConfigError naming the option
    when the adapter does not fit the pipeline of ``target`` (model.source)."""
    from textcraftor.checkpoint import load_checkpoint
    from textcraftor.lora import merge_adapter, read_adapter_folder, unet_lora_config

    folder = adapter.checkpoint / adapter.name
    if (folder / ADAPTER_CONFIG).is_file():
        lora_config, weights = read_adapter_folder(folder)
    else:  # a UNet LoRA of a checkpoint written before adapter folders
        lora_config = unet_lora_config(adapter.run_config.model.lora_rank)
        weights = load_checkpoint(adapter.checkpoint).weights[adapter.name]
    attribute = "text_encoder" if adapter.name == TEXT_ENCODER_LORA else "unet"
    try:
        merged = merge_adapter(getattr(pipeline, attribute), lora_config, weights, adapter.scale)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"{adapter.option} {adapter.run}: its LoRA does not fit the "
                          f"{attribute} of model.source={target}: {error}") from error
    setattr(pipeline, attribute, merged.requires_grad_(False).eval())
    log.info("%s: merged %s of %s at scale %g", adapter.option, adapter.name, adapter.checkpoint,
             adapter.scale)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2]. Raises ConfigError naming ``--seeds`` for anything else."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers "
                          "(e.g. 0,1,2)") from None
    return seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m textcraftor.generate", description=__doc__)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--run", help="run folder or checkpoint folder of a fine-tuned encoder "
                        "(omit for the base model)")
    parser.add_argument("--text-encoder-from", metavar="RUN",
                        help="run or checkpoint folder whose tuned text encoder drives this "
                        "model (another base model's: the same text tower, another UNet)")
    parser.add_argument("--text-encoder-lora", metavar="RUN[:SCALE]",
                        help="run or checkpoint folder whose text-encoder LoRA is merged into "
                        "the text encoder, scaled (default 1; 0 = no change)")
    parser.add_argument("--unet-lora", metavar="RUN[:SCALE]",
                        help="run or checkpoint folder whose UNet LoRA is merged into the UNet, "
                        "scaled (default 1); may come from another run than --text-encoder-lora")
    parser.add_argument("--config", help="YAML run config (model source, sampling)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a field, e.g. sample.num_steps=25")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="a in a·E_ft + (1−a)·E_orig (0 = base, 1 = fine-tuned)")
    parser.add_argument("--finetuned-steps", type=int, default=None,
                        help="M: the (interpolated) fine-tuned encoder drives the last M steps")
    parser.add_argument("--seeds", default="0", help="comma-separated noise seeds per prompt")
    parser.add_argument("--out", required=True, help="output folder for PNG files")
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("give at least one --prompt")
    return args


def check_args(args: argparse.Namespace) -> tuple[RunConfig, Path | None, list[int]]:
    """The config, the checkpoint (or None) and the seeds, every input checked before any model
    loads (--text-encoder-from's folder and the LoRA options too: ``args.adapters``). Raises
    ConfigError naming the option or field, FileNotFoundError for a missing --run,
    --text-encoder-from, --text-encoder-lora, --unet-lora or --config."""
    seeds = parse_seeds(args.seeds)
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise ConfigError(f"--alpha: must be in [0, 1], got {args.alpha}")
    checkpoint, run_config = resolve_checkpoint(args.run) if args.run else (None, None)
    args.adapters = [parse_adapter(value, option) for option in ADAPTER_OPTIONS
                     if (value := getattr(args, option[2:].replace("-", "_"), None))]
    if run_config is None:  # no --run: the model and sampling of the (first) LoRA's run
        run_config = next((a.run_config for a in args.adapters if a.run_config), None)
    base = to_dict(run_config) if run_config is not None and not args.config else None
    config = load_run_config(args.config, args.overrides, base=base)
    t, m = config.sample.num_steps, args.finetuned_steps
    if m is not None and not 0 <= m <= t:
        raise ConfigError(f"--finetuned-steps: must be in [0, sample.num_steps={t}], got {m}")
    check_model_limits(config)  # the model's JSON configs only
    if args.text_encoder_from:
        check_text_encoder_source(args.text_encoder_from)
    if args.unet_lora and config.model.train_unet != "none" and checkpoint is not None:
        raise ConfigError(f"--unet-lora: the --run checkpoint {checkpoint} already brings a "
                          f"trained UNet (model.train_unet={config.model.train_unet}); give "
                          "one of the two")
    return config, checkpoint, seeds


def transfer_text_encoder(pipeline: Pipeline, run_or_checkpoint: str, target: str,
                          option: str = "--text-encoder-from") -> str | None:
    """Put the tuned text encoder of another run (``--text-encoder-from``) into ``pipeline``,
    after ``textcraftor.transfer.check_text_encoder_fits`` (ConfigError naming both models);
    returns that run's model source (None when its folder gives none). A run that trained a
    text-encoder LoRA gives its tuned encoder as its own source's encoder with the LoRA merged
    at scale 1 (``lora_tuned_text_encoder``)."""
    from textcraftor.checkpoint import load_checkpoint
    from textcraftor.models import load_tokenizer
    from textcraftor.transfer import check_text_encoder_fits

    checkpoint, run_config, where = check_text_encoder_source(run_or_checkpoint, option)
    held = load_checkpoint(checkpoint).weights
    weights = held.get("text_encoder")
    source = run_config.model.source if run_config is not None else None
    if weights is None:
        weights = lora_tuned_text_encoder(checkpoint, run_config, held[TEXT_ENCODER_LORA], where)
    source_tokenizer = (load_tokenizer(source, run_config.model.cache_dir,
                                       run_config.model.revision) if source else None)
    check_text_encoder_fits(weights, where, pipeline.text_encoder, pipeline.tokenizer,
                            f"model.source={target}", source_tokenizer)
    pipeline.text_encoder.load_state_dict(weights)
    pipeline.text_encoder.requires_grad_(False).eval()
    return source


def check_text_encoder_source(run_or_checkpoint: str, option: str = "--text-encoder-from"
                              ) -> tuple[Path, RunConfig | None, str]:
    """What ``transfer_text_encoder`` will read, checked from the folders and ``state.json``
    alone (no weights load): the checkpoint, its run's config (None for a lone checkpoint) and
    the ``option`` phrase errors start with. Raises FileNotFoundError (no such run or
    checkpoint) or ConfigError naming ``option``: a checkpoint with neither a text encoder nor
    a text-encoder LoRA, or a LoRA without the run config that names its base encoder or
    without its adapter folder."""
    try:
        checkpoint, run_config = resolve_checkpoint(run_or_checkpoint)
    except FileNotFoundError as error:
        raise FileNotFoundError(str(error).replace("--run", option, 1)) from None
    source = run_config.model.source if run_config is not None else None
    where = f"{option} {run_or_checkpoint} (model.source={source or 'unknown'})"
    held = json.loads((checkpoint / STATE_FILE).read_text()).get("weights", [])
    if "text_encoder" in held:
        return checkpoint, run_config, where
    if TEXT_ENCODER_LORA not in held:
        raise ConfigError(f"{where}: its checkpoint {checkpoint} holds no text encoder and no "
                          f"text-encoder LoRA (it holds {', '.join(held) or 'no weights'})")
    if run_config is None:
        raise ConfigError(f"{where}: {checkpoint} holds a text-encoder LoRA but no run config "
                          f"says which encoder it tuned: give the run folder (or merge it into "
                          f"this pipeline's encoder with generate's --text-encoder-lora)")
    folder = checkpoint / TEXT_ENCODER_LORA
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"{where}: {checkpoint} holds text_encoder_lora weights but no "
                          f"adapter folder {folder} with {ADAPTER_CONFIG} (its LoRA config)")
    return checkpoint, run_config, where


def lora_tuned_text_encoder(checkpoint: Path, run_config: RunConfig | None,
                            lora_weights: Mapping[str, torch.Tensor], where: str
                            ) -> dict[str, torch.Tensor]:
    """The state dict of the encoder a text-encoder-LoRA run tuned: its own model source's
    text encoder (``models.load_text_encoder``) with the checkpoint's LoRA merged at scale 1
    (``lora.merge_adapter``: W + (α/r)·B·A). ``check_text_encoder_source`` has checked the run
    config and the adapter folder; ``where`` begins log lines."""
    from textcraftor.lora import merge_adapter, read_adapter_folder
    from textcraftor.models import load_text_encoder

    folder = checkpoint / TEXT_ENCODER_LORA
    m = run_config.model
    lora_config, _ = read_adapter_folder(folder)
    base = load_text_encoder(m.source, m.cache_dir, m.revision)
    log.info("%s: the run's encoder is %s's with its text-encoder LoRA merged", where, m.source)
    return merge_adapter(base, lora_config, lora_weights).state_dict()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        config, checkpoint, seeds = check_args(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    from textcraftor.generation import sample_images
    from textcraftor.models import load_pipeline
    from textcraftor.sampler import PromptTokenizer
    from textcraftor.trainable import autocast_dtype

    m = config.model
    pipeline = load_pipeline(m.source, m.cache_dir, m.revision)
    if checkpoint is not None:
        load_finetuned(pipeline, checkpoint, m.train_unet, m.lora_rank)
    if args.text_encoder_from:
        try:
            transfer_text_encoder(pipeline, args.text_encoder_from, m.source)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    for adapter in args.adapters:
        try:
            merge_adapter_option(pipeline, adapter, m.source)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if (checkpoint is None and not args.text_encoder_from and not args.text_encoder_lora
            and args.alpha != 0.0):
        log.info("no --run given: the base model (alpha has no effect)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipeline.to(device)
    prompts = [p for p in args.prompt for _ in seeds]
    noise_seeds = [s for _ in args.prompt for s in seeds]
    dtype = autocast_dtype(m.mixed_precision, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        images = sample_images(pipeline, pipeline.text_encoder, PromptTokenizer(
            pipeline.tokenizer, device), prompts, noise_seeds, config.sample, alpha=args.alpha,
            finetuned_steps=args.finetuned_steps)
    save_images(images, prompts, noise_seeds, Path(args.out), args.alpha)
    return 0


def save_images(images: torch.Tensor, prompts, seeds, out: Path, alpha: float) -> list[Path]:
    from torchvision.utils import save_image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, seed) in enumerate(zip(images, seeds)):
        path = out / f"{i:03d}_seed{seed}_alpha{alpha:g}.png"
        save_image(image, path)
        paths.append(path)
    (out / "prompts.json").write_text(json.dumps(
        [{"file": p.name, "prompt": pr, "seed": s} for p, pr, s in zip(paths, prompts, seeds)],
        indent=2))
    return paths


if __name__ == "__main__":
    sys.exit(main())
