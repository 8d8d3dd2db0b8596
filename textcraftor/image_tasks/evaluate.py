"""One task setting evaluated with both text encoders on the same items and noise seeds: the
edited images, the oracle's scores as [items, seeds] per encoder, and the table of means,
intervals and paired gains.

Images run item-major (every seed of item 0, then item 1…) in batches of ``batch_size``; an
image's noise comes from its own seed, so neither the batch nor the other encoder changes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import TaskConfig
from .items import InpaintItem, RecolourItem, scene_images
from .pipelines import EditPipelines, img2img, inpaint, vae_round_trip
from .scores import LOWER_IS_BETTER, inpaint_scores, recolour_scores
from .table import by_item, score_rows

ENCODERS = ("base", "tuned")  # the two text encoders compared, in this order


@dataclass(frozen=True)
class SettingResult:
    """One task at one setting, both encoders."""

    task: str  # recolour or inpaint
    strength: float  # img2img / inpainting strength s
    denoising_steps: int  # int(s·T): the DDIM steps diffusers ran
    values: dict[str, dict[str, np.ndarray]]  # encoder → score → [items, seeds]
    images: dict[str, torch.Tensor]  # "input", then each encoder: [items·seeds, 3, H, W]
    rows: list[dict]  # score_rows(base, tuned): means, intervals, paired gains
    wall_s: float  # seconds for both encoders' sampling and scoring
    reference: dict[str, float] | None = None  # inpaint: the VAE round trip's outside change


def _batched(run: Callable[[slice], torch.Tensor], count: int, batch_size: int
             ) -> torch.Tensor:
    return torch.cat([run(slice(start, min(start + batch_size, count)))
                      for start in range(0, count, batch_size)])


def _jobs(items: Sequence, seeds: Sequence[int]) -> tuple[list, list[int]]:
    """Every (item, seed) pair, item-major."""
    pairs = [(item, seed) for item in items for seed in seeds]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def evaluate_recolour(encoders: Mapping[str, EditPipelines], items: Sequence[RecolourItem],
                      strength: float, config: TaskConfig) -> SettingResult:
    """img2img at ``strength`` on every item × seed with each encoder's pipelines."""
    start = time.perf_counter()
    jobs, seeds = _jobs(items, config.seeds)
    inputs = scene_images([item.source for item in jobs])
    prompts = [item.prompt for item in jobs]
    values, images = {}, {"input": inputs}
    for name, pipes in encoders.items():
        images[name] = _batched(lambda part, p=pipes: img2img(
            p, inputs[part], prompts[part], seeds[part], strength, config.num_steps,
            config.guidance_scale), len(jobs), config.batch_size)
        scores = recolour_scores(images[name], jobs)
        values[name] = {k: by_item(v, len(items), len(config.seeds)) for k, v in scores.items()}
    return SettingResult("recolour", strength, int(strength * config.num_steps), values, images,
                         score_rows(values["base"], values["tuned"]),
                         time.perf_counter() - start)


def evaluate_inpaint(encoders: Mapping[str, EditPipelines], items: Sequence[InpaintItem],
                     config: TaskConfig) -> SettingResult:
    """Inpainting at ``config.inpaint_strength`` on every item × seed with each encoder's
    pipelines; ``reference`` gives the mean outside-the-mask change of the VAE round trip
    alone (no sampling), the least the 4-channel path can change there."""
    start = time.perf_counter()
    jobs, seeds = _jobs(items, config.seeds)
    first = next(iter(encoders.values()))
    side, factor = first.side, first.inpaint.vae_scale_factor
    inputs = scene_images([item.source for item in jobs], side)
    masks = np.stack([item.mask(side, factor) for item in jobs])
    prompts = [item.prompt for item in jobs]
    values, images = {}, {"input": inputs}
    for name, pipes in encoders.items():
        images[name] = _batched(lambda part, p=pipes: inpaint(
            p, inputs[part], torch.from_numpy(masks[part]), prompts[part], seeds[part],
            config.num_steps, config.guidance_scale, config.inpaint_strength),
            len(jobs), config.batch_size)
        scores = inpaint_scores(images[name], inputs, masks, jobs)
        values[name] = {k: by_item(v, len(items), len(config.seeds)) for k, v in scores.items()}
    round_trip = _batched(lambda part: vae_round_trip(first.inpaint.vae, inputs[part]),
                          len(jobs), config.batch_size)
    change = (round_trip - inputs).abs().mean(dim=1).numpy()
    outside = float(np.mean([c[~m].mean() for c, m in zip(change, masks)]))
    strength = config.inpaint_strength
    return SettingResult("inpaint", strength, int(strength * config.num_steps), values, images,
                         score_rows(values["base"], values["tuned"], LOWER_IS_BETTER),
                         time.perf_counter() - start, {"vae_round_trip_outside_change": outside})
