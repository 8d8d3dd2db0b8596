"""How much a ShapesWorld model relies on each attribute word of a prompt.

For single-shape scenes with every attribute named, swap one attribute's word for another value
(the shape, colour, size, position or background) and measure

- ``text_change``: how far the frozen text encoder's hidden states move, ‖ΔH‖ / ‖H‖ averaged
  over the tokens — near 0 means the encoder barely tells the values apart;
- ``unet_error_increase``: the relative rise of the UNet's ε-prediction error on the latent
  cells the shape touches, averaged over a few timesteps — 0 means the UNet ignores the word.

The oracle says what the samples get wrong; this says where in the model the information is
lost, in seconds, without sampling. ``python -m textcraftor.shapes.reliance DIR`` prints it;
``--by-timestep`` prints the rise at each of several timesteps instead of the average.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import pil_to_tensor

from textcraftor.models import Pipeline, load_pipeline
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.cells import LATENT_FACTOR, shape_mask, single_shape_scenes
from textcraftor.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    describe,
    render,
)

SWAPPABLE = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES),
             "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS)}
TIMESTEPS = (100, 300, 500, 700, 900)  # where the ε-error is measured (SD's 1000-step schedule)
PROFILE_TIMESTEPS = (50, 200, 400, 600, 750, 850, 950)  # the finer grid of ``--by-timestep``


def swap(scene: Scene, attribute: str, rng: random.Random) -> Scene:
    """The single-shape ``scene`` with ``attribute`` changed to another value."""
    spec = scene.shapes[0]
    current = scene.background if attribute == "background" else getattr(spec, attribute)
    other = rng.choice([value for value in SWAPPABLE[attribute] if value != current])
    if attribute == "background":
        return replace(scene, background=other)
    return replace(scene, shapes=(replace(spec, **{attribute: other}),))


@torch.no_grad()
def swapped_errors(pipeline: Pipeline, count: int, seed: int,
                   timesteps: tuple[int, ...] = TIMESTEPS
                   ) -> tuple[torch.Tensor, dict[str, tuple[float, torch.Tensor]]]:
    """The UNet's ε-error on the shapes' latent cells at each of ``timesteps`` ([T]) with the
    scenes' own captions, and per attribute (text change, the same errors [T] with that
    attribute's word swapped), over ``count`` single-shape scenes; one noise draw for all."""
    rng = random.Random(seed)
    scenes = single_shape_scenes(count, seed + 3)
    tokens = PromptTokenizer(pipeline.tokenizer)
    images = torch.stack([pil_to_tensor(render(s)) for s in scenes]).float() / 127.5 - 1
    vae, unet, encoder = pipeline.vae, pipeline.unet, pipeline.text_encoder
    latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    cells = (F.max_pool2d(shape_mask(images).float(), LATENT_FACTOR) > 0).float()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))

    def encode(captions: list[str]) -> torch.Tensor:
        return encoder(tokens(captions), return_dict=False)[0]

    def errors(context: torch.Tensor) -> torch.Tensor:
        per_step = []
        for t in timesteps:
            steps = torch.full((count,), t)
            noisy = pipeline.scheduler.add_noise(latents, noise, steps)
            squared = (unet(noisy, steps, encoder_hidden_states=context).sample - noise) ** 2
            per_step.append((squared * cells).sum() / (cells.sum() * squared.shape[1]))
        return torch.stack(per_step)

    right = encode([describe(s) for s in scenes])
    swapped = {}
    for attribute in SWAPPABLE:
        other = encode([describe(swap(s, attribute, rng)) for s in scenes])
        change = (other - right).norm(dim=-1).mean() / right.norm(dim=-1).mean()
        swapped[attribute] = (float(change), errors(other))
    return errors(right), swapped


def attribute_reliance(pipeline: Pipeline, count: int = 128, seed: int = 0
                       ) -> dict[str, dict[str, float]]:
    """{attribute: {"text_change", "unet_error_increase"}} over ``count`` single-shape scenes;
    the errors averaged over ``TIMESTEPS`` before the ratio."""
    right, swapped = swapped_errors(pipeline, count, seed)
    return {attribute: {"text_change": round(change, 4),
                        "unet_error_increase": round(float(other.mean() / right.mean()) - 1, 4)}
            for attribute, (change, other) in swapped.items()}


def reliance_by_timestep(pipeline: Pipeline, count: int = 128, seed: int = 0,
                         timesteps: tuple[int, ...] = TIMESTEPS) -> dict[str, dict[int, float]]:
    """{attribute: {t: relative rise of the ε-error at t}}: where along the noise schedule the
    UNet reads the word. Where the noisy latent still shows an attribute the UNet can read it
    from there, so a word that matters only at high t is decided in the first sampling steps."""
    right, swapped = swapped_errors(pipeline, count, seed, timesteps)
    return {attribute: {t: round(float(e / r) - 1, 4) for t, e, r in zip(timesteps, other, right)}
            for attribute, (_, other) in swapped.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textcraftor.shapes.reliance",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a ShapesWorld pipeline folder, or the preset name")
    parser.add_argument("--by-timestep", action="store_true",
                        help=f"the rise at each of t = {PROFILE_TIMESTEPS} instead of the average")
    parser.add_argument("--count", type=int, default=128, help="single-shape scenes measured")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    pipeline = load_pipeline(args.weights)
    if args.by_timestep:
        result = reliance_by_timestep(pipeline, args.count, timesteps=PROFILE_TIMESTEPS)
    else:
        result = attribute_reliance(pipeline, args.count)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
