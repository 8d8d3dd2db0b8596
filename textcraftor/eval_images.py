"""The evaluation's images: held-out prompts × evaluation seeds from the current (or an
interpolated) encoder over the full DDIM chain, scored in batches on the device, and the
KID/FID reference set (a folder, or the base model's images for the same prompts and seeds)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from textcraftor.config import RunConfig
from textcraftor.evaluation import Evaluator, load_reference_images
from textcraftor.generation import sample_images
from textcraftor.models import Pipeline
from textcraftor.sampler import PromptTokenizer

log = logging.getLogger(__name__)


def eval_noise_seed(seed: int, prompt: str) -> int:
    """Noise seed of one evaluation image: depends on the seed and the prompt text only."""
    return random.Random(f"eval:{seed}:{prompt}").getrandbits(62)


class EvalImages:
    """Generates and scores the evaluation images of one run; caches the reference set (on the
    CPU: it is held for the whole run)."""

    def __init__(self, config: RunConfig, pipeline: Pipeline, tokens: PromptTokenizer,
                 evaluator: Evaluator, autocast: Callable[[], AbstractContextManager]):
        self.config = config
        self.pipeline = pipeline
        self.tokens = tokens
        self.evaluator = evaluator
        self.autocast = autocast
        self.reference_images: torch.Tensor | None = None  # KID/FID reference, on the CPU

    def generate(self, prompts: Sequence[str], noise_seeds: Sequence[int],
                 alpha: float = 1.0) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] from the current encoder, or its interpolation with the
        original (``alpha``), with no gradient, over the full chain."""
        with self.autocast():
            return sample_images(self.pipeline, self.pipeline.text_encoder, self.tokens, prompts,
                                 noise_seeds, self.config.sample, alpha=alpha)

    def images(self, prompts: Sequence[str], seeds: Sequence[int], alpha: float,
               score: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[P·S,3,H,W] prompt-major, and {reward: [P·S]} (when ``score``), on the device: the
        metrics run there; only the result and the cached reference go to the CPU."""
        pairs = [(p, s) for p in prompts for s in seeds]
        batch = self.config.train.eval_batch_size
        images, scores = [], []
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            chunk_prompts = [p for p, _ in chunk]
            x = self.generate(chunk_prompts, [eval_noise_seed(s, p) for p, s in chunk], alpha)
            if score:
                with self.autocast():
                    scores.append(self.evaluator.rewards(x, chunk_prompts))
            images.append(x)
        merged = {k: torch.cat([s[k] for s in scores]) for k in scores[0]} if scores else {}
        return torch.cat(images), merged

    def reference(self, images: torch.Tensor, alpha: float, untuned: bool,
                  prompts: Sequence[str]) -> torch.Tensor | None:
        """The KID/FID reference: a folder, or the base model's images for the evaluation prompts
        and seeds — generated once; ``untuned`` (step 0, nothing restored, alpha 1): they are
        ``images`` themselves."""
        e = self.config.eval
        if not e.distribution:
            return None
        if self.reference_images is None:
            if e.reference_dir:
                self.reference_images = load_reference_images(e.reference_dir,
                                                              self.config.sample.resolution)
            elif untuned and alpha == 1.0:
                self.reference_images = images.cpu()
            else:
                if self.config.model.train_unet != "none":
                    log.warning("KID/FID reference generated after step 0 with a fine-tuned UNet: "
                                "it is not the base model's images")
                reference, _ = self.images(prompts, self.config.data.eval_seeds, alpha=0.0,
                                           score=False)
                self.reference_images = reference.cpu()
        return self.reference_images
