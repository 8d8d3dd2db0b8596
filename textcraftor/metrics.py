"""Image-set metrics: FID and KID against a reference set (torchmetrics), CMMD, and the
CLIP-embedding view of intra-prompt diversity (a distance for ``intra_prompt_diversity``).

Every metric here takes float images [N,3,H,W] in [0,1] and an image-feature module; features
are computed once per set, in batches, under ``no_grad``. The default features for reported
numbers are Inception's (``inception_image_features``, downloaded on first construction);
``random_image_features`` is an offline stand-in for tests and smoke runs, whose values are
only comparable with each other.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .rewards.open_clip_reward import OpenClipReward
from .rewards.pickscore import ClipModelSimilarity
from .rewards.preprocess import check_images, to_clip_pixels

# A frozen module: float images [N,3,H,W] in [0,1] (any H, W) → features [N, D].
ImageFeatures = nn.Module

# The fewest images each set needs, per metric.
MIN_IMAGES = {"FID": 2, "KID": 2, "CMMD": 1}

CMMD_SIGMA = 10.0  # Gaussian RBF bandwidth on unit-norm CLIP embeddings (Jayasumana et al. 2024)
CMMD_SCALE = 1000.0  # the paper reports MMD² × 1000


class RandomImageFeatures(nn.Module):
    """A small random conv net (weights fixed by ``seed``): an offline stand-in for Inception.

    Images are resized to ``size``×``size``; features are [N, dim] global-average-pooled
    activations, so they respond to colour and texture."""

    def __init__(self, dim: int = 64, seed: int = 0, size: int = 64) -> None:
        super().__init__()
        self.size = size
        self.num_features = dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 32, kernel_size=3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(64, dim, kernel_size=3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            for layer in self.net:
                if isinstance(layer, nn.Conv2d):  # He init keeps the activations' scale
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> RandomImageFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        pixels = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                               align_corners=False, antialias=True)
        return self.net(pixels * 2 - 1)


def random_image_features(dim: int = 64, seed: int = 0) -> RandomImageFeatures:
    return RandomImageFeatures(dim=dim, seed=seed)


class InceptionImageFeatures(nn.Module):
    """The FID InceptionV3's 2048-d pool features (torchmetrics' port of the TF FID network)."""

    num_features = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3  # imports torch-fidelity

        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                            feature_extractor_weights_path=weights_path)

    def train(self, mode: bool = True) -> InceptionImageFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The network takes uint8 images: round(255·x), the values the images would have as PNG
        files (torchmetrics' ``normalize=True`` truncates instead, which can be off by one)."""
        check_images(images)
        return self.inception((images.clamp(0, 1) * 255).round().to(torch.uint8))


def inception_image_features(weights_path: str | None = None) -> InceptionImageFeatures:
    """Constructing it loads torch-fidelity's InceptionV3 weights: ``weights_path`` or, if None,
    a download into torch hub's cache on first use."""
    return InceptionImageFeatures(weights_path)


class ClipImageFeatures(nn.Module):
    """L2-normalised image embeddings [N, D] of a CLIP reward's image tower (open_clip or
    transformers)."""

    def __init__(self, reward: OpenClipReward | ClipModelSimilarity) -> None:
        super().__init__()
        self.reward = reward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        reward = self.reward
        pixels = to_clip_pixels(images.to(reward.dtype), reward.image_size, reward.mean,
                                reward.std)
        return F.normalize(reward.image_embeddings(pixels), dim=-1)


def clip_image_features(reward: OpenClipReward | ClipModelSimilarity) -> ClipImageFeatures:
    return ClipImageFeatures(reward)


class EmbeddingDistance(nn.Module):
    """Cosine distance 1 − cos(f(a), f(b)) in [0, 2] per image pair: an ``ImageDistance``."""

    def __init__(self, features: ImageFeatures) -> None:
        super().__init__()
        self.features = features

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        embedded = F.normalize(self.features(torch.cat([a, b])).float(), dim=-1)
        first, second = embedded.chunk(2)
        return (1 - (first * second).sum(dim=-1)).clamp(min=0)


def embedding_distance(features: ImageFeatures) -> EmbeddingDistance:
    return EmbeddingDistance(features)


def _device(module: nn.Module, default: torch.device) -> torch.device:
    parameter = next(module.parameters(), None)
    return default if parameter is None else parameter.device


@torch.no_grad()
def extract_features(images: torch.Tensor, features: ImageFeatures,
                     batch_size: int = 64) -> torch.Tensor:
    """float64 features [N, D] of images [N,3,H,W] in [0,1], on the feature module's device."""
    check_images(images)
    device = _device(features, images.device)
    chunks = []
    for batch in images.split(batch_size):
        out = features(batch.to(device))
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise ValueError(f"image features must be [N, D] for N={batch.shape[0]} images, got "
                             f"shape {tuple(out.shape)}")
        chunks.append(out.double())
    return torch.cat(chunks)


class _Precomputed(nn.Identity):
    """Feeds features computed once per set to torchmetrics in place of images; ``num_features``
    spares torchmetrics a dummy 299×299 forward to find the feature size."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


def _check_counts(n: int, n_reference: int, *metrics: str) -> None:
    for metric in metrics:
        minimum = MIN_IMAGES[metric]
        if min(n, n_reference) < minimum:
            raise ValueError(f"{metric} needs at least {minimum} images in each set; got {n} "
                             f"images and {n_reference} reference images")


def distribution_distances(
    images: torch.Tensor,
    reference: torch.Tensor,
    features: ImageFeatures,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID of ``images`` against ``reference`` (both [N,3,H,W] in [0,1]; N may differ).

    Returns ``fid``, ``kid`` (mean over ``kid_subsets`` random subsets of
    min(``kid_subset_size``, n, n_reference) images of each set), ``kid_std``, ``n`` and
    ``n_reference``. KID's subsets are drawn with ``seed``, leaving the global RNG untouched.
    FID on few images is biased upwards; compare values only at equal n and feature module.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n, n_reference = images.shape[0], reference.shape[0]
    _check_counts(n, n_reference, "FID", "KID")
    generated = extract_features(images, features, batch_size)
    real = extract_features(reference, features, batch_size).to(generated.device)
    precomputed = _Precomputed(generated.shape[1])

    fid = FrechetInceptionDistance(feature=precomputed, sync_on_compute=False)
    fid = fid.to(generated.device)
    fid.update(real, real=True)
    fid.update(generated, real=False)

    with warnings.catch_warnings():  # it warns that it keeps all features, which we have anyway
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=precomputed, subsets=kid_subsets,
                                      subset_size=min(kid_subset_size, n, n_reference),
                                      sync_on_compute=False)
    kid.update(real, real=True)
    kid.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws subsets with the global CPU RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "n": n, "n_reference": n_reference}


def cmmd(images: torch.Tensor, reference: torch.Tensor, clip_features: ImageFeatures,
         batch_size: int = 64) -> float:
    """CMMD (Jayasumana et al. 2024): 1000 × MMD² with a Gaussian RBF kernel (σ = 10) between
    the sets' unit-norm CLIP embeddings, biased (V-statistic) estimator, so CMMD(x, x) = 0."""
    _check_counts(images.shape[0], reference.shape[0], "CMMD")
    x = F.normalize(extract_features(images, clip_features, batch_size), dim=-1)
    y = F.normalize(extract_features(reference, clip_features, batch_size), dim=-1).to(x.device)

    def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * CMMD_SIGMA**2)).mean()

    return float(CMMD_SCALE * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)))
