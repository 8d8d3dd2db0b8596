"""The ``sd15-arch`` reward preset: the paper's four reward towers at their real sizes, counted on
the meta device (nothing allocated, nothing fetched), PickScore's layout read from its real
config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig

from textcraftor.rewards.architectures import (
    build_sd15_arch_rewards,
    image_tower_parameters,
    pickscore_config,
)
from textcraftor.tokenizer import build_clip_tokenizer

PICKSCORE_CONFIG = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pickscore" / \
    "config.json"
# (all parameters, the image tower's: what each step's gradient passes through)
EXPECTED = {
    "aesthetic": (304_894_177, 304_894_177),  # ViT-L/14 image tower 303,966,208 + head 927,969
    "pickscore": (986_109_441, 632_076_800),  # CLIP-H/14
    "hpsv2": (986_109_441, 632_076_800),  # open_clip ViT-H-14
    "clip": (1_366_678_273, 1_012_645_632),  # open_clip ViT-g-14
}


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    tokenizer = build_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return build_sd15_arch_rewards(tokenizer, device="meta", dtype=torch.bfloat16)


def test_the_four_towers_have_the_papers_sizes_on_the_meta_device(rewards):
    counts = {name: (sum(p.numel() for p in r.parameters()), image_tower_parameters(name, r))
              for name, r in rewards.items()}
    print(json.dumps(counts))
    assert counts == EXPECTED
    assert sum(total for total, _ in counts.values()) == 3_643_791_332
    for reward in rewards.values():
        assert {p.device.type for p in reward.parameters()} == {"meta"}
        assert {p.dtype for p in reward.parameters()} == {torch.bfloat16}
        assert not any(p.requires_grad for p in reward.parameters())  # frozen, as loaded ones


def test_pickscore_layout_is_the_real_config_files():
    """Every architecture field as transformers reads the real file (fields the file leaves out,
    such as the vocabulary size, take transformers' defaults there as here)."""
    real = CLIPConfig.from_dict(json.loads(PICKSCORE_CONFIG.read_text())).to_dict()
    ours = pickscore_config().to_dict()
    for tower in ("text_config", "vision_config"):
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings", "image_size",
                    "patch_size", "hidden_act", "layer_norm_eps"):
            if key in real[tower] or key in ours[tower]:
                assert ours[tower].get(key) == real[tower].get(key), (tower, key)
    assert ours["projection_dim"] == real["projection_dim"] == 1024
    assert ours["logit_scale_init_value"] == pytest.approx(real["logit_scale_init_value"])


def test_reward_preset_sd15_arch_builds_the_active_rewards_in_reward_dtype(tmp_path):
    """``reward.preset=sd15-arch`` through the loader every run uses (``build_rewards``):
    the active rewards only, hpsv2.1 with HPSv2's architecture, stored in ``reward.dtype``."""
    from textcraftor.config import load_run_config
    from textcraftor.objective import build_rewards

    config = load_run_config(None, ["model.source=sd15-random", "reward.preset=sd15-arch",
                                    "reward.dtype=bf16",
                                    "reward.weights={pickscore: 1, hpsv2.1: 0.5}"])
    rewards = build_rewards(config.reward, "sd15-random", tmp_path, device="meta")
    assert list(rewards) == ["pickscore", "hpsv2.1", "clip"]
    expected = {"pickscore": EXPECTED["pickscore"], "hpsv2.1": EXPECTED["hpsv2"],
                "clip": EXPECTED["clip"]}
    for name, reward in rewards.items():
        assert (sum(p.numel() for p in reward.parameters()),
                image_tower_parameters(name, reward)) == expected[name]
        assert {(p.device.type, p.dtype) for p in reward.parameters()} == {("meta", torch.bfloat16)}


def test_a_reward_source_overrides_the_preset(tmp_path):
    from textcraftor.config import load_run_config
    from textcraftor.objective import build_rewards
    from textcraftor.shapes_weights import SHAPES_AESTHETIC_HEAD, SHAPES_CLIP, shapes_folder

    folder = shapes_folder()
    config = load_run_config(None, [
        "reward.preset=sd15-arch", "reward.clip_constraint=0", "reward.weights={aesthetic: 1}",
        f"reward.sources.aesthetic.source={folder / SHAPES_AESTHETIC_HEAD}",
        f"reward.sources.aesthetic.backbone={folder / SHAPES_CLIP}"])
    aesthetic = build_rewards(config.reward, "sd15-random", tmp_path)["aesthetic"]
    count = sum(p.numel() for p in aesthetic.parameters())
    assert count < EXPECTED["aesthetic"][0] / 100  # ShapesWorld's small CLIP, not ViT-L/14
    assert {p.device.type for p in aesthetic.parameters()} == {"cpu"}


def test_an_unknown_reward_of_the_preset_is_named():
    with pytest.raises(ValueError, match="reward.preset sd15-arch has no reward 'lpips'"):
        build_sd15_arch_rewards(None, names=("lpips",))
