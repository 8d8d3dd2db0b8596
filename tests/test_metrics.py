"""Image-set metrics and diversity: invariances (a set against itself, identical images) and
direction (different sets and varied images score higher), offline with random networks."""

from __future__ import annotations

import pytest
import torch

from textcraftor.diversity import LPIPSDistance, intra_prompt_diversity
from textcraftor.metrics import (
    clip_image_features,
    cmmd,
    distribution_distances,
    embedding_distance,
    random_image_features,
)
from textcraftor.rewards import build_tiny_rewards, load_reward

SIZE = 32


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def flat_colours(n: int, seed: int = 1) -> torch.Tensor:
    colours = torch.rand(n, 3, 1, 1, generator=torch.Generator().manual_seed(seed))
    return colours.expand(n, 3, SIZE, SIZE).contiguous()


@pytest.fixture(scope="module")
def clip_reward(tmp_path_factory):
    tiny = build_tiny_rewards(tmp_path_factory.mktemp("tiny_rewards"), seed=0)
    return load_reward("clip", tiny["clip"])


@pytest.fixture(scope="module")
def lpips() -> LPIPSDistance:
    return LPIPSDistance(pretrained_trunk=False)


@pytest.fixture(params=["lpips", "clip"])
def distance(request, lpips, clip_reward):
    return lpips if request.param == "lpips" else embedding_distance(
        clip_image_features(clip_reward))


@pytest.fixture(scope="module")
def features():
    return random_image_features(dim=64, seed=0)


def test_lpips_of_an_image_with_itself_is_zero(lpips):
    images = noise(4)
    assert torch.allclose(lpips(images, images), torch.zeros(4), atol=1e-6)


def test_diversity_of_identical_images_is_zero(distance):
    prompts, seeds = 2, 3
    images = noise(prompts).repeat_interleave(seeds, dim=0)  # each prompt: one image S times
    diversity = intra_prompt_diversity(images, seeds, distance)
    assert diversity.shape == (prompts,)
    assert torch.allclose(diversity, torch.zeros(prompts), atol=1e-6)


def test_diversity_rises_when_images_differ(distance):
    prompts, seeds = 2, 3
    identical = noise(prompts).repeat_interleave(seeds, dim=0)
    varied = torch.cat([noise(prompts * seeds, seed=1)[:seeds], flat_colours(seeds)])
    low = intra_prompt_diversity(identical, seeds, distance)
    high = intra_prompt_diversity(varied, seeds, distance)
    assert (high > low + 1e-4).all(), (low, high)


def test_clip_features_are_unit_vectors(clip_reward):
    embedded = clip_image_features(clip_reward)(noise(3))
    assert torch.allclose(embedded.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_fid_and_kid_of_a_set_with_itself_are_about_zero(features):
    images = noise(16)
    different = distribution_distances(images, flat_colours(16), features)
    for reference in (images, images.flip(0)):  # image order does not matter
        same = distribution_distances(images, reference, features)
        assert abs(same["fid"]) < 1e-6
        assert abs(same["kid"]) < 0.01 * different["kid"], (same, different)


def test_fid_and_kid_grow_for_different_sets(features):
    images = noise(16)
    near = distribution_distances(images, noise(16, seed=5), features)
    far = distribution_distances(images, flat_colours(16), features)
    assert far["fid"] > 10 * near["fid"] > 0
    assert far["kid"] > 10 * abs(near["kid"])


def test_set_sizes_may_differ_and_are_reported(features):
    result = distribution_distances(noise(6), flat_colours(9), features, kid_subset_size=50)
    assert result["n"] == 6 and result["n_reference"] == 9
    assert set(result) == {"fid", "kid", "kid_std", "n", "n_reference"}
    assert all(isinstance(value, float) for key, value in result.items() if key.startswith(
        ("fid", "kid")))


def test_kid_subsets_are_drawn_from_its_seed_not_the_global_rng(features):
    images, reference = noise(12), noise(12, seed=3)
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    first = distribution_distances(images, reference, features, kid_subset_size=6, seed=1)
    assert torch.equal(torch.rand(1), expected_draw)
    again = distribution_distances(images, reference, features, kid_subset_size=6, seed=1)
    other = distribution_distances(images, reference, features, kid_subset_size=6, seed=2)
    assert first == again
    assert first["kid"] != other["kid"]


@pytest.mark.parametrize("n, n_reference", [(1, 5), (5, 1)])
def test_too_few_images_raise_naming_the_minimum(features, n, n_reference):
    with pytest.raises(ValueError, match="FID needs at least 2 images"):
        distribution_distances(noise(n), noise(n_reference, seed=1), features)


def test_random_features_are_deterministic_from_the_seed():
    images = noise(4)
    first = random_image_features(dim=16, seed=3)(images)
    assert first.shape == (4, 16)
    assert torch.equal(first, random_image_features(dim=16, seed=3)(images))
    assert not torch.allclose(first, random_image_features(dim=16, seed=4)(images))


def test_random_features_respond_to_content_at_any_size(features):
    wide = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    embedded = features(wide)
    assert embedded.shape == (3, 64)
    assert torch.cdist(embedded, embedded)[torch.triu_indices(3, 3, offset=1).unbind()].min() > 0
    assert not torch.allclose(features(noise(2)), features(flat_colours(2)))


def test_cmmd_is_zero_for_a_set_with_itself_and_grows_for_different_sets(clip_reward):
    clip = clip_image_features(clip_reward)
    images = noise(8)
    assert cmmd(images, images.flip(0), clip) == pytest.approx(0, abs=1e-9)
    near = cmmd(images, noise(10, seed=5), clip)
    far = cmmd(images, flat_colours(10), clip)
    assert far > near > 0


def test_random_lpips_trunk_is_the_same_in_every_process():
    """Diversity is compared across trials, the baseline and the analysis, each its own process
    with its own RNG state: the offline trunk must not depend on it."""
    torch.manual_seed(123)
    first = LPIPSDistance(pretrained_trunk=False)
    torch.manual_seed(456)
    second = LPIPSDistance(pretrained_trunk=False)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.equal(first(a, b), second(a, b))
