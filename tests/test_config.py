"""Run config: YAML + ``--set`` overrides, type checks, validation messages, dict round trip."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from textcraftor.config import (
    QUALITY_REWARDS,
    RewardConfig,
    RunConfig,
    SampleConfig,
    load_run_config,
)
from textcraftor.configio import ConfigError, apply_overrides, from_dict, read_yaml, to_dict


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path / "run.yaml", """
        model: {source: tiny}
        sample: {num_steps: 10, k: 3, resolution: 64}
        reward:
          weights: {aesthetic: 2, pickscore: 0.5}
          clip_constraint: 0.1
        train: {lr: 1e-3, steps: 7, batch_size: 4}
        data: {eval_seeds: [3, 4]}
    """)
    config = load_run_config(path, ["train.steps=9", "sample.truncation=random_k",
                                    "sample.k_max=4", "reward.weights.hpsv2=1",
                                    "output_dir=/tmp/somewhere"])
    assert config.train.steps == 9  # the override wins over the file
    assert config.train.batch_size == 4  # untouched file value
    assert config.train.lr == 1e-3 and type(config.train.lr) is float
    assert config.sample.num_steps == 10 and config.sample.k == 3
    assert config.sample.truncation == "random_k" and config.sample.k_max == 4
    assert dict(config.reward.weights) == {"aesthetic": 2.0, "pickscore": 0.5, "hpsv2": 1.0}
    assert config.reward.active() == {"aesthetic": 2.0, "pickscore": 0.5, "hpsv2": 1.0,
                                      "clip": 0.1}
    assert config.data.eval_seeds == (3, 4)
    assert config.output_dir == "/tmp/somewhere"
    assert config.model == RunConfig().model  # defaults fill what neither source sets


@pytest.mark.parametrize("override, field, expected", [
    ("train.lr=1e-3", "lr", 1e-3),  # YAML 1.1 reads this as a string
    ("train.lr=2E-4", "lr", 2e-4),
    ("train.lr='5e-6'", "lr", 5e-6),
    ("train.weight_decay=0", "weight_decay", 0.0),  # an int for a float field
    ("train.max_grad_norm=.5", "max_grad_norm", 0.5),
])
def test_numeric_strings_and_ints_become_floats(override, field, expected):
    value = getattr(load_run_config(None, [override]).train, field)
    assert value == expected and type(value) is float


def test_to_dict_from_dict_round_trip():
    config = load_run_config(None, [
        "model.source=tiny", "sample.truncation=x0_shortcut", "sample.k_min=2",
        "sample.k_max=4", "reward.weights={aesthetic: 1.5, hpsv2: 0.25}",
        "reward.clip_constraint=0.3", "reward.scales={hpsv2: 10}",
        "reward.sources={aesthetic: {source: /w/head.pth, backbone: /w/clip}}",
        "data.eval_seeds=[5, 6, 7]", "train.lr=3e-4", "output_dir=runs/x",
    ])
    plain = json.loads(json.dumps(to_dict(config)))  # JSON-able, as config.json stores it
    assert plain["reward"]["sources"]["aesthetic"] == {"source": "/w/head.pth",
                                                       "backbone": "/w/clip"}
    assert plain["data"]["eval_seeds"] == [5, 6, 7]
    back = from_dict(RunConfig, plain)
    assert back == config
    assert to_dict(back) == plain
    assert from_dict(RunConfig, to_dict(RunConfig())) == RunConfig()


@pytest.mark.parametrize("yaml_text, named, allowed", [
    ("lerning_rate: 1\n", "lerning_rate", "allowed under the top level: model, sample, reward"),
    ("train: {lerning_rate: 1e-3}\n", "train.lerning_rate", "allowed under train: steps"),
    ("reward: {sources: {aesthetic: {path: x}}}\n", "reward.sources.aesthetic.path",
     "allowed under reward.sources.aesthetic: source, backbone"),
])
def test_unknown_yaml_keys_are_named_with_the_allowed_ones(tmp_path, yaml_text, named, allowed):
    path = write(tmp_path / "bad.yaml", yaml_text)
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert named in str(error.value)
    assert allowed in str(error.value)


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", "train.steps: expected an integer"),
    ("train.steps=2.5", "train.steps: expected an integer"),
    ("train.steps=true", "train.steps: expected an integer"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("train.lr=true", "train.lr: expected a number"),
    ("sample.checkpointing=1", "sample.checkpointing: expected bool"),
    ("model.source=3", "model.source: expected str"),
    # YAML 1.1 reads these words as booleans: the error says so, and how to quote
    ("model.mixed_precision=no", "model.mixed_precision: expected str, got False (YAML reads an "
                                 "unquoted no, off, yes or on as a boolean: quote the word"),
    ("model.train_unet=off", "model.train_unet: expected str, got False (YAML reads"),
    ("data.eval_seeds=3", "data.eval_seeds: expected a list"),
    ("data.eval_seeds=[0, x]", "data.eval_seeds[1]: expected an integer"),
    ("reward.weights=[aesthetic]", "reward.weights: expected a mapping"),
    ("reward.weights.aesthetic=high", "reward.weights.aesthetic: expected a number"),
    ("model=tiny", "model: expected a mapping"),
])
def test_wrong_types_name_the_field(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_run_config(None, [override])


def test_unknown_reward_lists_the_valid_names():
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["reward.weights={aestetic: 1}"])
    message = str(error.value)
    assert message.startswith("reward.weights:") and "'aestetic'" in message
    for name in QUALITY_REWARDS:
        assert repr(name) in message


def test_negative_and_all_zero_weights_are_rejected():
    with pytest.raises(ConfigError, match=r"reward.weights.aesthetic: must be >= 0, got -1"):
        load_run_config(None, ["reward.weights.aesthetic=-1"])
    with pytest.raises(ConfigError, match=r"reward.clip_constraint: must be >= 0"):
        load_run_config(None, ["reward.clip_constraint=-0.5"])
    with pytest.raises(ConfigError, match=r"reward.weights: all weights are zero"):
        load_run_config(None, ["reward.weights={aesthetic: 0, hpsv2: 0}",
                               "reward.clip_constraint=0"])
    # zero quality weights are fine while the CLIP constraint alone is active
    only_clip = RewardConfig(weights={"aesthetic": 0.0}, clip_constraint=2.0)
    assert only_clip.active() == {"clip": 2.0}


@pytest.mark.parametrize("k", [0, -1, 11])
def test_k_outside_one_to_t_names_sample_k_and_the_range(k):
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["sample.num_steps=10", f"sample.k={k}"])
    assert str(error.value) == f"sample.k: must be in [1, num_steps=10], got {k}"


@pytest.mark.parametrize("truncation", ["random_k", "x0_shortcut"])
def test_random_k_bounds_are_checked(truncation):
    with pytest.raises(ConfigError, match=r"^sample.k_min: must be in \[1, num_steps=6\], got 0"):
        SampleConfig(num_steps=6, truncation=truncation, k_min=0, k_max=3)
    with pytest.raises(ConfigError, match=r"^sample.k_max: must be in \[k_min=2, num_steps=6\]"):
        SampleConfig(num_steps=6, truncation=truncation, k_min=2, k_max=7)
    with pytest.raises(ConfigError, match=r"^sample.k_max"):
        SampleConfig(num_steps=6, truncation=truncation, k_min=3, k_max=2)
    # the boundaries themselves are valid, and last_k's k is not checked in these modes
    SampleConfig(num_steps=6, truncation=truncation, k_min=1, k_max=6, k=99)


def test_k_boundaries_are_valid():
    assert SampleConfig(num_steps=10, k=1).k == 1
    assert SampleConfig(num_steps=10, k=10).k == 10


@pytest.mark.parametrize("override, field", [
    ("sample.truncation=last_q", "sample.truncation"),
    ("sample.no_grad_encoder=frozen", "sample.no_grad_encoder"),
    ("sample.resolution=0", "sample.resolution"),
    ("train.steps=0", "train.steps"),
    ("train.lr=0", "train.lr"),
    ("data.heldout_count=0", "data.heldout_count"),
    ("sample.test_finetuned_steps=21", "sample.test_finetuned_steps"),
    ("model.train_unet=half", "model.train_unet"),
    ("reward.scales={bogus: 1}", "reward.scales"),
    ("reward.sources={oracle: {source: x}}", "reward.sources"),
    ("reward.preset=sd21-arch", "reward.preset"),
    ("reward.dtype=fp8", "reward.dtype"),
    ("eval.alignment=exact", "eval.alignment"),
    ("eval.alignment=oracle", "eval.alignment"),  # the default run config has no oracle
    ("eval.diversity_metric=attributes", "eval.diversity_metric"),
    ("eval.diversity_metric=entropy", "eval.diversity_metric"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.") + ":"):
        load_run_config(None, [override])


def test_overrides_need_key_equals_value():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="train is not a section"):
        apply_overrides({"train": 3}, ["train.steps=2"])


def test_read_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        read_yaml(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    assert read_yaml(write(tmp_path / "empty.yaml", "")) == {}


def test_a_missing_required_field_is_named():
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["reward.sources.hpsv2.1.backbone=/w/vit.json"])
    assert str(error.value) == "reward.sources.hpsv2.1.source: required, not given"


def test_the_quoted_word_is_the_choice():
    assert load_run_config(None, ["model.mixed_precision='no'"]).model.mixed_precision == "no"
