"""Rewards: tiny random models in the real formats, loaded through the real loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textcraftor.rewards import (
    REWARD_NAMES,
    REWARD_SCALES,
    AestheticReward,
    ClipSimilarityReward,
    HPSReward,
    PickScoreReward,
    Reward,
    RewardSource,
    build_tiny_rewards,
    load_reward,
    to_clip_pixels,
)
from textcraftor.rewards.sources import is_hub_file, is_local_path
from textcraftor.rewards.tiny import TINY_PICKSCORE_CONFIG

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
AESTHETIC_HEAD = FIXTURES / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"
PICKSCORE_CONFIG = FIXTURES / "pickscore" / "config.json"
PROMPTS = ["a red cube on a table", "an astronaut riding a horse"]
EXPECTED_CLASS = {
    "aesthetic": AestheticReward,
    "pickscore": PickScoreReward,
    "hpsv2": HPSReward,
    "hpsv2.1": HPSReward,
    "clip": ClipSimilarityReward,
}


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_rewards")


@pytest.fixture(scope="session")
def tiny(tiny_folder) -> dict[str, RewardSource]:
    return build_tiny_rewards(tiny_folder, seed=0)


def images(batch: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen)


def count_text_batches(reward: Reward) -> list[int]:
    """Batch sizes seen by the reward's text tower, appended on every call."""
    if isinstance(reward, PickScoreReward):
        tower = reward.model.text_model
    else:
        tower = reward.model.token_embedding  # open_clip: only the text path embeds tokens
    sizes: list[int] = []
    tower.register_forward_hook(
        lambda module, args, out: sizes.append(getattr(out, "last_hidden_state", out).shape[0]))
    return sizes


def test_every_reward_has_a_tiny_version_and_a_scale(tiny):
    assert set(tiny) == set(REWARD_NAMES)
    assert {"aesthetic", "pickscore", "hpsv2", "clip"} <= set(REWARD_SCALES)


@pytest.mark.parametrize("size", [(64, 64), (20, 24)], ids=["downsize", "upsize"])
@pytest.mark.parametrize("name", REWARD_NAMES)
def test_reward_scores_and_pixel_gradients(tiny, name, size):
    reward = load_reward(name, tiny[name])
    assert type(reward) is EXPECTED_CLASS[name]
    assert not reward.training
    assert all(not p.requires_grad for p in reward.parameters())

    x = images(2, *size).requires_grad_(True)
    scores = reward(x, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters())


def test_aesthetic_loads_the_real_laion_head(tiny):
    tower = tiny["aesthetic"].backbone
    reward = load_reward("aesthetic", RewardSource(str(AESTHETIC_HEAD), backbone=tower))
    state = torch.load(AESTHETIC_HEAD, weights_only=True, map_location="cpu")
    manual = nn.Sequential(*(nn.Linear(*state[f"layers.{i}.weight"].shape[::-1]) for i in
                             (0, 2, 4, 6, 7)))
    for linear, i in zip(manual, (0, 2, 4, 6, 7), strict=True):
        linear.weight.data.copy_(state[f"layers.{i}.weight"])
        linear.bias.data.copy_(state[f"layers.{i}.bias"])
    manual.eval()

    x = images(3, 48, 48, seed=1)
    pixels = to_clip_pixels(x, reward.image_size)
    with torch.no_grad():
        embedding = F.normalize(reward.tower(pixel_values=pixels).image_embeds, dim=-1)
        expected = manual(embedding).squeeze(-1)
        got = reward(x, ["", "", ""])
    assert embedding.shape == (3, 768)
    torch.testing.assert_close(got, expected)
    # A parent calling .train() must not switch the head's dropout on.
    reward.train()
    with torch.no_grad():
        torch.testing.assert_close(reward(x, ["", "", ""]), expected)


_SIZE_WORDS = ("size", "dim", "layers", "heads")


def _layout_difference(real: dict, tiny: dict, where: str = "") -> list[str]:
    metadata = {"_name_or_path", "torch_dtype", "dtype", "transformers_version"}
    problems = []
    for key in sorted(set(real) - metadata):
        if key not in tiny:
            problems.append(f"missing {where}{key}")
        elif isinstance(real[key], dict):
            problems += _layout_difference(real[key], tiny[key], f"{where}{key}.")
        elif any(word in key for word in _SIZE_WORDS):
            if not 0 < tiny[key] <= real[key]:
                problems.append(f"{where}{key}: {tiny[key]!r} not shrunk from {real[key]!r}")
        elif tiny[key] != real[key]:
            problems.append(f"{where}{key}: {tiny[key]!r} != {real[key]!r}")
    extra = set(tiny) - set(real) - {"image_size"}
    problems += [f"extra {where}{key}" for key in sorted(extra)]
    return problems


def test_tiny_pickscore_config_has_the_real_layout(tiny):
    real = json.loads(PICKSCORE_CONFIG.read_text())
    assert _layout_difference(real, TINY_PICKSCORE_CONFIG) == []
    assert _layout_difference({"x": 2}, {"x": 3}) != []  # the comparison can fail
    assert _layout_difference({"hidden_size": 2}, {"hidden_size": 3}) != []
    model = load_reward("pickscore", tiny["pickscore"]).model
    for tower in ("text_config", "vision_config"):
        saved = getattr(model.config, tower)
        for key, value in TINY_PICKSCORE_CONFIG[tower].items():
            if key != "model_type":
                assert getattr(saved, key) == value, (tower, key)


def test_pickscore_scores_matched_pairs(tiny):
    reward = load_reward("pickscore", tiny["pickscore"])
    x = images(2, 32, 32, seed=2)
    with torch.no_grad():
        pair = torch.stack([torch.cat([reward(x[i : i + 1], [p]) for p in PROMPTS])
                            for i in range(2)])  # pair[i, j] = score(image i, prompt j)
        straight = reward(x, PROMPTS)
        swapped = reward(x, PROMPTS[::-1])
    torch.testing.assert_close(straight, pair.diagonal(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(swapped, pair.fliplr().diagonal(), rtol=1e-4, atol=1e-4)
    assert (straight - swapped).abs().min() > 1e-4
    scale = reward.model.logit_scale.exp()
    assert straight.abs().max() <= scale + 1e-4  # logit_scale.exp() * cosine


@pytest.mark.parametrize("name", ["pickscore", "hpsv2", "clip"])
def test_text_features_are_cached(tiny, name):
    reward = load_reward(name, tiny[name])
    batches = count_text_batches(reward)
    x = images(3, 32, 32)
    first = reward(x, [PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert batches == [2]  # one text pass; the repeated prompt is encoded once
    second = reward(x, [PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert batches == [2]
    torch.testing.assert_close(first, second)
    reward(x[:1], ["a new prompt"])
    assert batches == [2, 1]
    assert all(not f.requires_grad for f in reward.text_cache.values())


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        load_reward("imagereward")
    for name in REWARD_NAMES:
        assert name in str(error.value)


def test_missing_paths_raise_file_not_found(tmp_path, tiny):
    missing = tmp_path / "absent" / "HPS_v2_compressed.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_reward("hpsv2", RewardSource(str(missing), backbone=tiny["hpsv2"].backbone))
    folder = tmp_path / "no_pickscore_here"
    with pytest.raises(FileNotFoundError, match=str(folder)):
        load_reward("pickscore", RewardSource(str(folder)))
    config = tmp_path / "tiny-missing.json"
    with pytest.raises(FileNotFoundError, match=str(config)):
        load_reward("clip", RewardSource(tiny["clip"].source, backbone=str(config)))


def test_reference_conventions():
    assert is_hub_file("xswu/HPSv2:HPS_v2_compressed.pt")
    assert not is_local_path("yuvalkirstain/PickScore_v1")
    assert not is_local_path("laion2b_s34b_b88k") and not is_hub_file("laion2b_s34b_b88k")
    assert is_local_path("/abs/HPS_v2.pt") and is_local_path("weights/head.pth")


def test_bad_inputs_raise_value_error(tiny):
    reward = load_reward("hpsv2", tiny["hpsv2"])
    for bad in (torch.rand(3, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 4, 32, 32),
                torch.randint(0, 255, (2, 3, 32, 32))):
        with pytest.raises(ValueError, match="images"):
            reward(bad, PROMPTS)
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(images(3), PROMPTS)
    with pytest.raises(ValueError, match="images"):
        to_clip_pixels(torch.rand(2, 32, 32, 3), 32)


def test_to_clip_pixels_resizes_and_normalises():
    x = images(1, 64, 64)
    down = to_clip_pixels(x, 32, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(down, F.avg_pool2d(x, 2))
    up = to_clip_pixels(images(1, 8, 8), 32)
    assert up.shape == (1, 3, 32, 32)
    mean = torch.tensor((0.25, 0.5, 0.75)).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    zero = to_clip_pixels(mean, 16, mean=(0.25, 0.5, 0.75), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(zero, torch.zeros_like(zero))


def test_dtype_is_the_rewards_and_scores_are_float32(tiny):
    reward = load_reward("aesthetic", tiny["aesthetic"], dtype=torch.float64)
    assert reward.dtype == torch.float64
    x = images(2).requires_grad_(True)
    scores = reward(x, PROMPTS)
    assert scores.dtype == torch.float32
    scores.sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_tiny_build_is_deterministic_and_reused(tiny, tiny_folder, tmp_path):
    stamp = {p: p.stat().st_mtime_ns for p in tiny_folder.rglob("*")}
    assert build_tiny_rewards(tiny_folder, seed=0) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny_folder.rglob("*")} == stamp
    assert not [p for p in tiny_folder.iterdir() if p.name.startswith(".")]  # no temp leftovers
    with pytest.raises(ValueError, match="seed"):
        build_tiny_rewards(tiny_folder, seed=1)

    again = build_tiny_rewards(tmp_path / "again", seed=0)
    other = build_tiny_rewards(tmp_path / "other", seed=1)
    first, second, third = (torch.load(s["hpsv2"].source, weights_only=True)["state_dict"]
                            for s in (tiny, again, other))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_open_clip_config_json_loads_in_a_fresh_process(tiny):
    """Ray workers start without this process's open_clip registry."""
    code = (
        "import sys, torch\n"
        "from textcraftor.rewards import RewardSource, load_reward\n"
        "r = load_reward('hpsv2', RewardSource(sys.argv[1], backbone=sys.argv[2]))\n"
        "print(float(r(torch.full((1, 3, 32, 32), 0.5), ['x'])[0]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, tiny["hpsv2"].source,
                           tiny["hpsv2"].backbone], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    here = load_reward("hpsv2", tiny["hpsv2"])(torch.full((1, 3, 32, 32), 0.5), ["x"])
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(float(here[0]), abs=1e-6)
