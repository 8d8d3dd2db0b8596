"""Intra-prompt diversity: mean pairwise perceptual distance among the S images of one prompt
(different noise seeds), averaged over prompts — never pooled across prompts, where differences
between prompts would hide a collapse within each."""

from __future__ import annotations

from collections.abc import Callable

import torch

# distance(a, b) for two image batches [N,3,H,W] in [0,1] → [N]
ImageDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LPIPSDistance(torch.nn.Module):
    """LPIPS (AlexNet) on images in [0,1]. ``pretrained_trunk=False`` uses a random trunk with the
    shipped linear heads — it works offline, for tests only; real use downloads torchvision's
    AlexNet weights. The random trunk is drawn from a fixed seed, so every process (each trial,
    the baseline, the analysis) measures with the same network."""

    def __init__(self, pretrained_trunk: bool = True, net: str = "alex", seed: int = 0):
        super().__init__()
        import lpips

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = lpips.LPIPS(net=net, pnet_rand=not pretrained_trunk, verbose=False)
        self.model.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b, normalize=True).flatten()


def intra_prompt_diversity(images: torch.Tensor, images_per_prompt: int,
                           distance: ImageDistance) -> torch.Tensor:
    """images: [P·S, 3, H, W], prompt-major (the S images of prompt 0 first).

    Returns [P]: for each prompt, the mean distance over its S·(S−1)/2 image pairs.
    """
    s = images_per_prompt
    if s < 2:
        raise ValueError(f"diversity needs at least 2 images per prompt (seeds), got {s}")
    if images.shape[0] % s:
        raise ValueError(f"{images.shape[0]} images do not split into groups of {s} per prompt")
    groups = images.reshape(-1, s, *images.shape[1:])
    i, j = torch.triu_indices(s, s, offset=1)
    first = groups[:, i].flatten(0, 1)
    second = groups[:, j].flatten(0, 1)
    return distance(first, second).reshape(groups.shape[0], -1).mean(dim=1)
