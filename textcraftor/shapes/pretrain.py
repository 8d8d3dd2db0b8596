"""``python -m textcraftor.shapes.pretrain --out DIR``: the ShapesWorld base model, trained here.

Four stages on ShapesWorld image–caption pairs, each with a step budget (the same seed and
steps give the same weights) under one wall-clock cap:

1. a small CLIP (``CLIPModel``: text and vision towers) trained contrastively, plus a
   word-identity term (a linear probe, then dropped, must read each caption token from its own
   last hidden state) so that the states the UNet attends to keep their words;
2. an "aesthetic" head (LAION's MLP layout) on the CLIP's image embedding, fitted to the
   programmatic quality score of ``textcraftor.shapes.quality`` on degraded renders;
3. a small VAE (``AutoencoderKL``): 64 px images ↔ 16×16×4 latents, trained on 32 px windows
   that each hold a shape (it is fully convolutional; whole images are mostly background), its
   reconstruction loss (squared + absolute error of the decoded posterior mean) weighted
   towards the shapes' pixels;
4. a small UNet (``UNet2DConditionModel``) on the VAE's latents of a pool of pairs encoded once,
   conditioned on the frozen CLIP text encoder's hidden states: ε-prediction on SD v1.5's
   scaled-linear schedule with offset noise (else the backgrounds collapse to grey), min-SNR-5
   timestep weights and extra weight on the shapes' latent cells, 10 % empty captions so
   classifier-free guidance works.

The output is SD's on-disk layout (``model_index.json``, tokenizer, text_encoder, unet, vae,
scheduler — loadable by ``textcraftor.models.load_pipeline``) in fp16, the whole CLIP in
``clip/`` and the head in ``aesthetic/`` for the rewards, ``card.json`` and ``README.md`` (data,
steps, losses, the base model's oracle accuracy, ``samples.png``) and ``checksums.json``.

Each stage is a module of ``textcraftor.shapes.pretraining``; this one runs them in order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTokenizer

from textcraftor.models import Pipeline, load_pipeline, sd15_scheduler
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.pretraining.aesthetic_stage import QUALITY_DEFINITION, train_aesthetic
from textcraftor.shapes.pretraining.card import write_card
from textcraftor.shapes.pretraining.clip_stage import text_encoder_of, train_clip
from textcraftor.shapes.pretraining.config import IMAGE_SIZE, PretrainConfig
from textcraftor.shapes.pretraining.loop import batches, stage_clock
from textcraftor.shapes.pretraining.oracle_checks import oracle_accuracy, reconstruction_accuracy
from textcraftor.shapes.pretraining.reuse import REUSED_STAGES, link_components, load_components
from textcraftor.shapes.pretraining.unet_stage import train_unet
from textcraftor.shapes.pretraining.vae_stage import train_vae
from textcraftor.shapes.pretraining.weights_layout import save_weights
from textcraftor.shapes.reliance import attribute_reliance
from textcraftor.shapes.world import ShapesDataset
from textcraftor.shapes_weights import preset_of
from textcraftor.tokenizer import build_clip_tokenizer

log = logging.getLogger("textcraftor.shapes.pretrain")


def pretrain(config: PretrainConfig) -> Path:
    """Train the four stages, write the pipeline folder, measure the base model for its card;
    returns the folder (``config.out``)."""
    torch.set_num_threads(config.threads)
    clock = stage_clock(config)
    started = time.monotonic()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = ShapesDataset(seed=config.seed, image_size=IMAGE_SIZE)
    if config.components_from:  # stages 1–3 reused: only the UNet is trained
        source = Path(config.components_from).resolve()
        link_components(out, source)
        tokens = PromptTokenizer(CLIPTokenizer.from_pretrained(out / "tokenizer"))
        clip, head, vae, stats = load_components(source, out)
        clip_stats, aesthetic_stats, vae_stats = (stats[name] for name in REUSED_STAGES)
    else:
        tokens = PromptTokenizer(build_clip_tokenizer(out / "tokenizer"))
        # disjoint item ranges per stage: the stages see different samples of the world
        clip, clip_stats = train_clip(config, clock, tokens,
                                      batches(dataset, config.batch_size, 0))
        head, aesthetic_stats = train_aesthetic(config, clock, clip, dataset)
        vae, vae_stats = train_vae(config, clock,
                                   batches(dataset, config.vae_batch_size, 10**8))
    tokenizer = tokens.tokenizer
    text_encoder = text_encoder_of(clip)
    scheduler = sd15_scheduler()

    def check(unet: UNet2DConditionModel) -> dict:
        pipeline = Pipeline(tokenizer, text_encoder, text_encoder, unet, vae, scheduler,
                            "pretraining")
        return oracle_accuracy(pipeline, 16, config.eval_steps, config.seed)

    unet, unet_stats = train_unet(config, clock, tokens, text_encoder, vae, dataset, check)
    unet_stats["parameters"] = sum(p.numel() for p in unet.parameters())
    save_weights(out, clip, text_encoder, unet, vae, head, scheduler,
                 linked=bool(config.components_from))
    pipeline = load_pipeline(str(out))
    oracle = oracle_accuracy(pipeline, config.eval_prompts, config.eval_steps, config.seed,
                             grid=out / "samples.png")
    ceiling = reconstruction_accuracy(pipeline.vae, config.eval_prompts, config.seed)
    reliance = attribute_reliance(pipeline, 2 * config.eval_prompts, config.seed)
    card = {"data": f"ShapesWorld seed {config.seed}, {IMAGE_SIZE} px, 1–2 shapes per image",
            "config": asdict(config),
            "stages": {"clip": clip_stats, "aesthetic": aesthetic_stats, "vae": vae_stats,
                       "unet": unet_stats},
            "minutes": round((time.monotonic() - started) / 60, 1),
            "oracle": oracle,
            "vae_reconstruction_oracle": ceiling,
            "attribute_reliance": reliance,
            "quality_score": QUALITY_DEFINITION,
            "preset": preset_of(out)}
    if config.components_from:
        card["components_from"] = os.path.relpath(Path(config.components_from).resolve(),
                                                  out.resolve())
    write_card(out, card)
    log.info("wrote %s: %s", out, json.dumps(card["stages"]))
    return out


def main(argv: list[str] | None = None) -> int:
    """The command: ``--out DIR`` and one flag per ``PretrainConfig`` field (a bad value is
    named before any training); returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m textcraftor.shapes.pretrain",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    for name, spec in PretrainConfig.__dataclass_fields__.items():
        if name != "out":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(spec.default),
                                default=spec.default)
    try:
        config = PretrainConfig(**vars(parser.parse_args(argv)))
    except ValueError as error:
        parser.error(str(error))
    pretrain(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
