"""ShapesWorld: a miniature procedural text-to-image world (scenes, renders, captions) and an
oracle that reads scenes back from pixels to score prompt alignment."""

from .oracle import alignment, batch_alignment, compare, read_scene
from .world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapesDataset,
    ShapeSpec,
    caption,
    describe,
    parse_prompt,
    render,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "ShapeSpec",
    "ShapesDataset",
    "alignment",
    "batch_alignment",
    "caption",
    "compare",
    "describe",
    "parse_prompt",
    "read_scene",
    "render",
    "sample_scene",
]
