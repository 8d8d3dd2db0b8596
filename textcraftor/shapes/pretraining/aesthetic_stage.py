"""Stage 2: an "aesthetic" head (LAION's MLP layout) on the CLIP's unit-norm image embedding,
fitted to the programmatic quality score of ``textcraftor.shapes.quality`` on degraded renders
(the score is the ground truth; the head makes it a differentiable reward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur
from transformers import CLIPModel

from textcraftor.rewards.aesthetic import AestheticHead
from textcraftor.shapes.pretraining.clip_stage import clip_pixels
from textcraftor.shapes.pretraining.config import WIDTH, PretrainConfig
from textcraftor.shapes.pretraining.loop import Clock, adamw, descend, run_stage
from textcraftor.shapes.quality import quality_score
from textcraftor.shapes.world import ShapesDataset

QUALITY_DEFINITION = ("textcraftor.shapes.quality.quality_score: 10 × (0.35 contrast + 0.25 "
                      "saturation + 0.25 centring + 0.15 cleanliness), each term in [0, 1]")


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur, noise, fading and shifts, so that the quality scores span their range."""
    out = []
    for image in images:
        draw = torch.rand(5, generator=generator)
        if draw[0] < 0.5:
            sigma = 0.3 + 2.0 * float(draw[1])
            image = gaussian_blur(image[None], kernel_size=9, sigma=sigma)[0]
        if draw[2] < 0.5:
            image = image.lerp(image.mean(dim=0, keepdim=True).expand_as(image), float(draw[3]))
        if draw[4] < 0.5:
            image = image + 0.15 * float(draw[1]) * torch.randn(image.shape, generator=generator)
        out.append(image.clamp(0, 1))
    return torch.stack(out)


def train_aesthetic(config: PretrainConfig, clock: Clock, clip: CLIPModel,
                    dataset: ShapesDataset) -> tuple[AestheticHead, dict]:
    """The head on unit-norm CLIP image embeddings → ``quality_score``, like LAION's predictor;
    10 % of the images held out for the card's correlation."""
    generator = torch.Generator().manual_seed(config.seed + 3)
    embeddings, scores = [], []
    with torch.no_grad():
        for start in range(0, config.aesthetic_images, 256):
            count = min(256, config.aesthetic_images - start)
            images, _, _ = dataset.batch(3 * 10**8 + start, count)
            images = degrade(images.float() / 255.0, generator)
            scores.append(quality_score(images))
            features = clip.get_image_features(pixel_values=clip_pixels(images))
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
            embeddings.append(F.normalize(features, dim=-1))
    x, y = torch.cat(embeddings), torch.cat(scores)
    split = len(x) * 9 // 10
    torch.manual_seed(config.seed + 3)
    head = AestheticHead(input_dim=WIDTH)
    optimizer, lr = adamw(head, config.lr, config.aesthetic_steps)

    def step(_: int) -> float:
        pick = torch.randint(0, split, (256,), generator=generator)
        loss = F.mse_loss(head(x[pick]).squeeze(-1), y[pick])
        return descend(loss, optimizer, lr)

    head.train()
    stats = run_stage("aesthetic", config.aesthetic_steps, clock, step)
    head.eval().requires_grad_(False)
    predicted, actual = head(x[split:]).squeeze(-1), y[split:]
    stats["heldout_pearson"] = float(torch.corrcoef(torch.stack([predicted, actual]))[0, 1])
    stats["heldout_mae"] = float((predicted - actual).abs().mean())
    stats["score_range"] = [float(y.min()), float(y.max())]
    return head, stats
