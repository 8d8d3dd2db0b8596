"""Held-out evaluation: every reward per image, intra-prompt diversity in several views (LPIPS,
CLIP embeddings, and on ShapesWorld the oracle's attributes), and Fréchet/kernel distances of
the images to a reference set (by default the base model's images for the same prompts and
seeds). Runs on one process (rank 0).

A metric is named for what it computes: ``diversity_lpips``, ``fid`` and ``kid`` only with the
trained networks (LPIPS's AlexNet, Inception); offline, with randomly initialised ones, they
are ``diversity_random_features``, ``fd_random_features`` and ``kd_random_features``.
``eval/diversity`` (the study's diversity objective) is one of the diversities, chosen by
``eval.diversity_metric``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from textcraftor.config import RunConfig
from textcraftor.diversity import LPIPSDistance, intra_prompt_diversity
from textcraftor.metrics import (
    clip_image_features,
    cmmd,
    distribution_distances,
    embedding_distance,
    inception_image_features,
    random_image_features,
)
from textcraftor.objective import Objective, weighted_score
from textcraftor.pairs import IMAGE_SUFFIXES
from textcraftor.rewards import Reward
from textcraftor.sources_check import RANDOM_EVAL_PRESETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]  # eval/<reward>, eval/train_objective, eval/quality (with
    #                            eval.quality_weights), eval/diversity_*, eval/fid, eval/kid…
    images: torch.Tensor  # [P*S, 3, H, W] in [0,1], prompt-major (all seeds of prompt 0 first)
    prompts: tuple[str, ...]  # the held-out prompts, P
    seeds: tuple[int, ...]  # the evaluation seeds, S
    categories: tuple[str | None, ...] = ()  # each prompt's category (None: uncategorised), P
    per_prompt: dict[str, list[float]] | None = None  # name → P values (mean over seeds)
    # name → P lists of S values, one per image (per-image scores: rewards, quality, the
    # oracle's all-attribute accuracy; None where unscored): what paired comparisons resample
    per_seed: dict[str, list[list[float | None]]] | None = None

    def table(self, step: int) -> dict:
        """One row per prompt (category, each reward, quality, diversity): what the analysis
        breaks down by category; ``per_seed``: each per-image score, [P][S]."""
        columns = self.per_prompt or {}
        categories = self.categories or (None,) * len(self.prompts)
        rows = [{"prompt": p, "category": c, **{k: v[i] for k, v in columns.items()}}
                for i, (p, c) in enumerate(zip(self.prompts, categories))]
        return {"step": step, "seeds": list(self.seeds), "prompts": rows,
                "per_seed": dict(self.per_seed or {})}


def interval_metrics(per_seed: dict[str, list[list[float | None]]],
                     per_prompt: dict[str, list[float | None]]) -> dict[str, float]:
    """``eval/<name>_ci_low`` and ``eval/<name>_ci_high``: the 95 % two-stage bootstrap interval
    (``textcraftor.bootstrap.nested_interval``) of each per-image score (prompts, then seeds
    inside them, resampled) and of each per-prompt-only value (diversity: prompts resampled);
    ``eval/num_prompts`` and ``eval/num_seeds`` give the N behind them."""
    from textcraftor.bootstrap import nested_interval

    metrics = {}
    found, by_values = {}, {}  # an alias (alignment, diversity) shares its source's values
    for values, key in [*((v, k) for k, v in per_seed.items()),
                        *((v, k) for k, v in per_prompt.items()
                          if k not in per_seed and k.split("_")[0] == "diversity")]:
        if id(values) not in by_values:
            by_values[id(values)] = nested_interval(values)
        found[key] = by_values[id(values)]
    for name, interval in found.items():
        metrics[f"eval/{name}_ci_low"] = interval.low
        metrics[f"eval/{name}_ci_high"] = interval.high
        metrics["eval/num_prompts"] = float(interval.num_prompts)
    if per_seed:
        metrics["eval/num_seeds"] = float(next(iter(found.values())).num_seeds)
    return metrics


def load_reference_images(folder: str | Path, resolution: int) -> torch.Tensor:
    """Every image in ``folder`` (sorted by name), RGB, resized to ``resolution``²: [N,3,R,R]."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import resize

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"eval.reference_dir: no folder {folder}")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"eval.reference_dir: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                         f"{folder}")
    images = [resize(decode_image(str(f), mode=ImageReadMode.RGB), [resolution, resolution],
                     antialias=True) for f in files]
    return torch.stack(images).float() / 255.0


def oracle_metrics(images: torch.Tensor, prompts: Sequence[str], seeds: int,
                   per_prompt: dict[str, list[float]],
                   per_seed: dict[str, list[list[float | None]]] | None = None
                   ) -> dict[str, float]:
    """``eval/oracle_<attribute>``: the ShapesWorld oracle's accuracy over every image whose
    prompt mentions the attribute (not differentiable; attributes no prompt mentions are left
    out), and ``eval/oracle_scored``, the number of images it could score. Each prompt's
    ``oracle_all`` (mean over its seeds; None if unscored) goes into ``per_prompt``, each
    image's (1 or 0; None if unscored) into ``per_seed``. ``eval/diversity_attributes``: per
    prompt, how varied its images are in the attributes it leaves free, read by the oracle
    (``attribute_diversity``: normalised entropy across seeds, 0..1), averaged over the
    prompts that leave something free; per prompt in ``per_prompt``."""
    from textcraftor.shapes.oracle import attribute_diversity, image_readings, mean_alignment

    repeated = [p for p in prompts for _ in range(seeds)]  # images are prompt-major
    readings = image_readings(images, repeated)
    scores = [score for score, _ in readings]
    varied = [attribute_diversity([free for _, free in readings[i * seeds:(i + 1) * seeds]])
              for i in range(len(prompts))]
    per_prompt["diversity_attributes"] = [None if v != v else v for v in varied]
    by_prompt = [mean_alignment(scores[i * seeds:(i + 1) * seeds], [p] * seeds)["all"]
                 for i, p in enumerate(prompts)]
    per_prompt["oracle_all"] = [None if v != v else v for v in by_prompt]  # JSON has no NaN
    if per_seed is not None:
        per_seed["oracle_all"] = [[score["all"] for score in scores[i * seeds:(i + 1) * seeds]]
                                  for i in range(len(prompts))]
    total = mean_alignment(scores, repeated)
    metrics = {f"eval/oracle_{k}": v for k, v in total.items()
               if k not in ("unscored", "out_of_vocabulary") and v == v}
    metrics["eval/oracle_scored"] = float(len(repeated) - total["unscored"])
    known = [v for v in varied if v == v]
    if known:
        metrics["eval/diversity_attributes"] = float(sum(known) / len(known))
    return metrics


class Evaluator:
    """Scores one batch of evaluation images. The metric networks load on first use."""

    def __init__(self, config: RunConfig, objective: Objective, device: torch.device,
                 load_rewards: Callable[[Sequence[str]], dict[str, Reward]]):
        self.config = config
        self.objective = objective
        self.device = device
        self._load_rewards = load_rewards  # names -> {name: frozen reward}
        self._scoring: dict[str, Reward] | None = None
        self._lpips: LPIPSDistance | None = None
        self._image_features: torch.nn.Module | None = None
        self._clip_features: torch.nn.Module | None = None

    def _offline_defaults(self) -> bool:
        return self.config.model.source in RANDOM_EVAL_PRESETS

    @property
    def oracle(self) -> bool:
        return self.config.oracle_on()

    @property
    def scoring_rewards(self) -> dict[str, Reward]:
        """The rewards the evaluation scores that the objective does not hold: the CLIP score
        (scored even at λ = 0) and ``eval.quality_weights``' rewards the run does not train on.
        Built on first use, never part of a training step."""
        if self._scoring is None:
            held = self.objective.rewards
            names = [n for n in dict.fromkeys(("clip", *self.config.eval.quality_weights))
                     if n not in held]
            loaded = self._load_rewards(names) if names else {}
            self._scoring = {name: reward.to(self.device) for name, reward in loaded.items()}
        return self._scoring

    @property
    def clip(self) -> Reward:
        """The CLIP model of the constraint, scored at evaluation even when λ = 0."""
        held = self.objective.rewards
        return held["clip"] if "clip" in held else self.scoring_rewards["clip"]

    @property
    def lpips_pretrained(self) -> bool:
        """LPIPS with its pretrained AlexNet trunk (else a randomly initialised one, offline)."""
        trunk = self.config.eval.lpips_trunk
        return trunk == "pretrained" or (trunk == "auto" and not self._offline_defaults())

    @property
    def features_pretrained(self) -> bool:
        """Inception features for the Fréchet and kernel distances (else a random network)."""
        kind = self.config.eval.features
        return kind == "inception" or (kind == "auto" and not self._offline_defaults())

    @property
    def lpips_name(self) -> str:
        """The LPIPS-form diversity's name: ``diversity_lpips`` only with the trained trunk."""
        return "diversity_lpips" if self.lpips_pretrained else "diversity_random_features"

    def distance_names(self) -> dict[str, str]:
        """The names of the Fréchet and kernel distances: FID and KID with Inception features,
        ``fd_random_features``/``kd_random_features`` with a random network's."""
        if self.features_pretrained:
            return {"fid": "fid", "kid": "kid", "kid_std": "kid_std"}
        return {"fid": "fd_random_features", "kid": "kd_random_features",
                "kid_std": "kd_random_features_std"}

    def diversity_source(self) -> str:
        """The per-prompt diversity the ``diversity`` objective is (``eval.diversity_metric``;
        auto: LPIPS with its trained trunk, else the distance in the run's CLIP image-embedding
        space — never a random trunk's. Not the oracle's attributes: when reward hacking wipes
        out the named shapes, what it reads of their free attributes varies more, not less;
        DESIGN.md)."""
        choice = self.config.eval.diversity_metric
        if choice == "auto":
            choice = "lpips" if self.lpips_pretrained else "clip"
        return {"attributes": "diversity_attributes", "clip": "diversity_clip",
                "lpips": self.lpips_name}[choice]

    @property
    def lpips(self) -> LPIPSDistance:
        if self._lpips is None:
            self._lpips = LPIPSDistance(self.lpips_pretrained).to(self.device)
        return self._lpips

    @property
    def image_features(self) -> torch.nn.Module:
        """Inception pool features for KID/FID (or a small random network, offline)."""
        if self._image_features is None:
            module = (inception_image_features() if self.features_pretrained
                      else random_image_features())
            self._image_features = module.to(self.device)
        return self._image_features

    @property
    def clip_features(self) -> torch.nn.Module:
        """CLIP image embeddings for the diversity view and CMMD."""
        if self._clip_features is None:
            self._clip_features = clip_image_features(self.clip)
        return self._clip_features

    def rewards(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{reward: [B]} for every reward of the objective and the CLIP score; train_objective
        (Σ wᵢ·sᵢ·Rᵢ, the run's own weights) and, with eval.quality_weights, quality (Σ qᵢ·sᵢ·Rᵢ,
        fixed weights: the same for every run compared)."""
        scores = self.objective.score(images, prompts)
        for name, reward in self.scoring_rewards.items():
            scores[name] = reward(images, prompts)
        scores = {k: v.float() for k, v in scores.items()}
        scores["train_objective"] = self.objective.train_objective(scores).float()
        if self.config.eval.quality_weights:
            scores["quality"] = weighted_score(scores, self.config.eval.quality_weights,
                                               self.config.reward.scales).float()
        return scores

    def __call__(self, images: torch.Tensor, scores: dict[str, torch.Tensor],
                 prompts: Sequence[str], seeds: Sequence[int],
                 categories: Sequence[str | None],
                 reference: torch.Tensor | None) -> EvalResult:
        """images: [P·S,3,H,W] prompt-major; scores: {name: [P·S]} from ``rewards``."""
        e, s = self.config.eval, len(seeds)
        metrics = {f"eval/{k}": v.mean().item() for k, v in scores.items()}
        per_prompt = {k: v.reshape(-1, s).mean(dim=1).tolist() for k, v in scores.items()}
        per_seed = {k: v.reshape(-1, s).tolist() for k, v in scores.items()}
        images_on_device = images.to(self.device)
        if e.diversity:
            lpips = intra_prompt_diversity(images_on_device, s, self.lpips)
            metrics[f"eval/{self.lpips_name}"] = lpips.mean().item()
            per_prompt[self.lpips_name] = lpips.tolist()
            clip = intra_prompt_diversity(images_on_device, s,
                                          embedding_distance(self.clip_features))
            metrics["eval/diversity_clip"] = clip.mean().item()
            per_prompt["diversity_clip"] = clip.tolist()
        if self.oracle:
            metrics.update(oracle_metrics(images, prompts, s, per_prompt, per_seed))
        source = self.config.alignment_source()  # eval/alignment: a per-image score renamed
        if source in per_seed:
            per_seed["alignment"], per_prompt["alignment"] = per_seed[source], per_prompt[source]
            metrics["eval/alignment"] = metrics.get(f"eval/{source}", float("nan"))
        source = self.diversity_source()  # eval/diversity: a per-prompt diversity renamed
        if source in per_prompt:
            per_prompt["diversity"] = per_prompt[source]
            metrics["eval/diversity"] = metrics.get(f"eval/{source}", float("nan"))
        metrics.update(interval_metrics(per_seed, per_prompt))
        if e.distribution and reference is not None:
            reference = reference.to(self.device)
            found = distribution_distances(images_on_device, reference, self.image_features,
                                           kid_subset_size=e.kid_subset_size)
            names = self.distance_names()  # FID/KID only with Inception's trained features
            metrics.update({f"eval/{names[k]}": found[k] for k in ("fid", "kid", "kid_std")})
            metrics.update({
                            "eval/cmmd": cmmd(images_on_device, reference, self.clip_features),
                            # the Fréchet distance on the run's own CLIP image embeddings (the
                            # world's CLIP on ShapesWorld): trained weights, unlike offline FID's
                            "eval/fd_clip": distribution_distances(
                                images_on_device, reference, self.clip_features,
                                kid_subset_size=e.kid_subset_size)["fid"],
                            # N beside every value: FID and KID are biased at small N
                            "eval/num_images": float(found["n"]),
                            "eval/num_reference": float(found["n_reference"])})
        return EvalResult(metrics, images.cpu(), tuple(prompts), tuple(seeds),
                          tuple(categories), per_prompt, per_seed)
