"""The inference dials of a fine-tuned text encoder, every setting measured with no training.

TextCraftor §3.4 and Table 4: at test time two dials move a tuned encoder's effect.
- the interpolation weight a of E(a) = a·E_ft + (1−a)·E_orig (a = 0: the original encoder,
  a = 1: the fine-tuned one);
- M, how many of the T sampling steps use E(a): the last M; the first T−M use E_orig (the paper
  moves Aesthetics 6.07 → 6.58 and HPSv2 0.2847 → 0.2722 with M alone).

One setting is a ``DialSetting`` (a, M). Every setting's first T−M steps are the base model's
chain (E_orig on every step, the a = 0 chain), so ``dial_images`` runs that chain once, keeps its
latents (and each sample's noise streams) at every switch step T−M, and continues each setting
from there: T + Σ M step-equivalents instead of T per setting, with the same images as
``textcraftor.generation.sample_images`` gives for each setting (a test compares them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from textcraftor.dial_grid import DialSetting, dial_settings
from textcraftor.eval_images import eval_noise_seed
from textcraftor.evaluation import EvalResult
from textcraftor.sampler import (
    SampleNoise,
    decode,
    denoise,
    guidance_context,
    interpolate_context,
    latent_shape,
)

if TYPE_CHECKING:
    from textcraftor.trainer import TextCraftor


@torch.no_grad()
def dial_images(trainer: TextCraftor, prompts: Sequence[str], noise_seeds: Sequence[int],
                settings: Sequence[DialSetting]) -> dict[DialSetting, torch.Tensor]:
    """{setting: [B,3,H,W] in [0,1]} for one batch of prompts (one noise seed each), every
    setting from the one base chain (module docstring). Runs under the trainer's autocast."""
    pipeline, sample = trainer.pipeline, trainer.config.sample
    t, tokens = sample.num_steps, trainer.tokens
    ids, empty = tokens(prompts), tokens([""])[0]
    with trainer.eval_images.autocast():
        original = guidance_context(pipeline.original_text_encoder, ids, empty,
                                    sample.guidance_scale)
        tuned = (guidance_context(pipeline.text_encoder, ids, empty, sample.guidance_scale)
                 if any(s.alpha > 0 for s in settings) else None)
        if pipeline.scheduler.num_inference_steps != t:
            pipeline.scheduler.set_timesteps(t, device=tokens.device)
        noise = SampleNoise(noise_seeds, tokens.device)
        latents = noise.draw(latent_shape(pipeline.vae, pipeline.unet, sample.resolution))
        # the base chain, kept at each switch step T − M (latents, the noise streams there)
        switches = sorted({t - s.finetuned_steps for s in settings if s.alpha > 0} | {t})
        kept, at = {}, 0
        for switch in switches:
            latents = denoise(pipeline.unet, pipeline.scheduler, latents, original, original,
                              t, None, sample.guidance_scale, sample.eta, noise=noise,
                              start=at, stop=switch)
            kept[switch], at = (latents, noise.fork()), switch
        images = {}
        for setting in settings:
            if setting.alpha == 0.0:
                images[setting] = decode(pipeline.vae, kept[t][0]).float()
                continue
            switch = t - setting.finetuned_steps
            start, streams = kept[switch]
            late = interpolate_context(original, tuned, setting.alpha)
            x0 = denoise(pipeline.unet, pipeline.scheduler, start, original, late, switch, None,
                         sample.guidance_scale, sample.eta, noise=streams.fork(),
                         start=switch)
            images[setting] = decode(pipeline.vae, x0).float()
    return images


@dataclass(frozen=True)
class DialPoint:
    """One setting's evaluation on the run's held-out prompts and evaluation seeds."""

    setting: DialSetting
    result: EvalResult  # its metrics (no KID/FID) and per-prompt / per-image tables


def evaluate_dials(trainer: TextCraftor, settings: Sequence[DialSetting],
                   known: Mapping[DialSetting, EvalResult] | None = None
                   ) -> list[DialPoint]:
    """Each setting evaluated as the run's evaluation is (rewards, quality, alignment,
    diversity, their intervals; no KID/FID: each would need its own reference pass), on the
    same held-out prompts × evaluation seeds. ``known``: settings evaluated already (the run's
    own last evaluation), taken as they are. Images are generated in chunks of
    ``train.eval_batch_size``, every setting of a chunk from one base chain, and scored per
    chunk; every setting's images wait on the CPU for its diversity (which needs all of a
    prompt's seeds), and the results keep no images (the dials keep metrics and tables)."""
    known = dict(known or {})
    todo = [s for s in settings if s not in known]
    heldout, seeds = trainer.split.heldout, trainer.config.data.eval_seeds
    prompts = [p.text for p in heldout]
    pairs = [(p, s) for p in prompts for s in seeds]
    batch = trainer.config.train.eval_batch_size
    encoder = trainer.pipeline.text_encoder
    was_training = encoder.training
    encoder.eval()
    try:
        images: dict[DialSetting, list[torch.Tensor]] = {s: [] for s in todo}
        scores: dict[DialSetting, list[dict[str, torch.Tensor]]] = {s: [] for s in todo}
        for begin in range(0, len(pairs), batch):
            chunk = pairs[begin:begin + batch]
            chunk_prompts = [p for p, _ in chunk]
            drawn = dial_images(trainer, chunk_prompts,
                                [eval_noise_seed(s, p) for p, s in chunk], todo)
            for setting, x in drawn.items():
                with trainer.eval_images.autocast():
                    scores[setting].append(trainer.evaluator.rewards(x, chunk_prompts))
                images[setting].append(x.cpu())
        categories = [p.category for p in heldout]
        for setting in todo:
            merged = {k: torch.cat([s[k] for s in scores[setting]]) for k in scores[setting][0]}
            result = trainer.evaluator(torch.cat(images.pop(setting)), merged, prompts, seeds,
                                       categories, reference=None)
            known[setting] = replace(result, images=result.images[:0])
    finally:
        encoder.train(was_training)
    return [DialPoint(s, known[s]) for s in settings]


def dial_table(points: Sequence[DialPoint], step: int, num_steps: int,
               wall_s: float | None = None) -> dict[str, Any]:
    """The dials as plain data: {step, num_steps (T), wall_s, points: [{alpha, finetuned_steps,
    metrics, table}]} (``table``: ``EvalResult.table``, per-prompt rows and per-image values)."""
    return {"step": step, "num_steps": num_steps, "wall_s": wall_s,
            "points": [{**p.setting.as_dict(), "metrics": dict(p.result.metrics),
                        "table": p.result.table(step)} for p in points]}


def measure_dials(trainer: TextCraftor, alphas: Sequence[float],
                  finetuned_steps: Sequence[int | str]) -> dict[str, Any]:
    """The run's dials now (``dial_table``): the grid alphas × finetuned_steps resolved against
    the run's sampling (``dial_settings``); the run's last evaluation, when it was at this step,
    is reused as its own setting (a = 1, M = sample.test_finetuned_steps or T)."""
    started = time.perf_counter()
    sample = trainer.config.sample
    settings = dial_settings(alphas, finetuned_steps, sample)
    own = DialSetting(1.0, sample.test_finetuned_steps or sample.num_steps)
    last = trainer.last_eval
    known = ({own: last} if last is not None and own in settings
             and trainer.last_eval_step == trainer.step else {})
    points = evaluate_dials(trainer, settings, known)
    return dial_table(points, trainer.step, sample.num_steps, time.perf_counter() - started)
