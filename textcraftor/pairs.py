"""Image–caption pairs for direct fine-tuning (``sample.truncation=direct``): ShapesWorld's
unlimited stream, or a folder of images each with a same-name ``.txt`` caption."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

SHAPES_PAIRS = "shapes"  # data.pairs value: ShapesWorld pairs
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class PairSource(Protocol):
    def batch(self, start: int, count: int) -> tuple[torch.Tensor, list[str]]:
        """Pairs start..start+count-1: images [count,3,R,R] float in [0,1], captions."""
        ...


class ShapesPairs:
    """ShapesWorld renders and captions from a dataset seed no pretraining stage used."""

    def __init__(self, resolution: int, seed: int = 0) -> None:
        from textcraftor.shapes.world import ShapesDataset

        self.dataset = ShapesDataset(seed=seed + 11, image_size=resolution)

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, list[str]]:
        images, captions, _ = self.dataset.batch(start, count)
        return images.float() / 255.0, captions


class FolderPairs:
    """Every image in a folder (sorted by name) with the caption in ``<stem>.txt``, centre-
    cropped and resized to ``resolution``²; indices wrap around the folder."""

    def __init__(self, folder: str | Path, resolution: int) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"data.pairs: no folder {self.folder}")
        self.images = sorted(f for f in self.folder.iterdir()
                             if f.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise ValueError(f"data.pairs: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                             f"{self.folder}")
        uncaptioned = [f.name for f in self.images if not f.with_suffix(".txt").is_file()]
        if uncaptioned:
            raise ValueError(f"data.pairs: {len(uncaptioned)} image(s) without a caption file "
                             f"(<name>.txt beside the image), e.g. {uncaptioned[0]}")
        self.captions = [f.with_suffix(".txt").read_text("utf-8").strip() for f in self.images]
        empty = [f.name for f, c in zip(self.images, self.captions) if not c]
        if empty:
            raise ValueError(f"data.pairs: empty caption for {empty[0]}")
        self.resolution = resolution

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, list[str]]:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.functional import center_crop, resize

        picks = [(start + i) % len(self.images) for i in range(count)]
        images = []
        for i in picks:
            image = decode_image(str(self.images[i]), mode=ImageReadMode.RGB)
            side = min(image.shape[1:])
            image = resize(center_crop(image, [side, side]), [self.resolution] * 2,
                           antialias=True)
            images.append(image)
        return torch.stack(images).float() / 255.0, [self.captions[i] for i in picks]


def load_pairs(pairs: str, resolution: int, seed: int = 0) -> PairSource:
    if pairs == SHAPES_PAIRS:
        return ShapesPairs(resolution, seed)
    return FolderPairs(pairs, resolution)
