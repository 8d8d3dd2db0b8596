"""Reward names with a dot (``hpsv2.1``): one rule for YAML keys, ``--set`` paths, the
objective's modules and MLflow keys — and ``--set a.b.KEY`` merging into a mapping the same
way in the training and the study command lines."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from study.config import load_study_config
from study.space import reference_point
from textcraftor.config import RunConfig, load_run_config
from textcraftor.configio import apply_overrides, to_dict


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


# --- --set paths -------------------------------------------------------------------------------


def test_set_paths_take_the_rest_of_the_key_inside_a_mapping():
    config = load_run_config(None, [
        "reward.weights.hpsv2.1=0.5", "reward.scales.hpsv2.1=3",
        "reward.sources.hpsv2.1.source=/w/HPS_v2.1_compressed.pt",
        "reward.sources.hpsv2.1.backbone=/w/vit.json",
    ])
    assert dict(config.reward.weights) == {"aesthetic": 1.0, "hpsv2.1": 0.5}
    assert dict(config.reward.scales) == {"hpsv2.1": 3.0}
    source = config.reward.sources["hpsv2.1"]
    assert (source.source, source.backbone) == ("/w/HPS_v2.1_compressed.pt", "/w/vit.json")
    # a whole entry of a mapping of dataclasses, by the name alone
    whole = load_run_config(None, ["reward.sources.hpsv2.1={source: /x.pt}"])
    assert whole.reward.sources["hpsv2.1"].source == "/x.pt"


def test_study_paths_with_dotted_names(tmp_path):
    # the first trial's weight is the YAML's (a searched path's base value is never --set's)
    study_yaml = write(tmp_path / "study.yaml",
                       "base: {reward: {weights: {aesthetic: 1, hpsv2.1: 0.25}}}\n")
    study = load_study_config(study_yaml, [
        "search.reward.weights.hpsv2.1.low=0.1", "search.reward.weights.hpsv2.1.high=0.4",
        "objectives.quality_weights.hpsv2.1=2", "resources.trial_resources.rack.a=0.5",
    ])
    assert dict(study.base.reward.weights) == {"aesthetic": 1.0, "hpsv2.1": 0.25}
    searched = study.search["reward.weights.hpsv2.1"]
    assert (searched.low, searched.high, searched.choices) == (0.1, 0.4, None)
    assert dict(study.objectives.quality_weights) == {"aesthetic": 1.0, "hpsv2.1": 2.0}
    assert dict(study.resources.trial_resources) == {"rack.a": 0.5}
    assert list(study.search) == ["reward.weights.aesthetic", "reward.clip_constraint",
                                  "sample.k", "reward.weights.hpsv2.1"]
    assert reference_point(study)["reward.weights.hpsv2.1"] == 0.25


def test_without_a_schema_every_dot_splits():
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    assert apply_overrides({}, ["reward.weights.hpsv2.1=1"]) == {
        "reward": {"weights": {"hpsv2": {"1": 1}}}}
    assert apply_overrides({}, ["reward.weights.hpsv2.1=1"], schema=RunConfig) == {
        "reward": {"weights": {"aesthetic": 1.0, "hpsv2.1": 1}}}


# --- YAML keys and the objective's modules ------------------------------------------------------


def test_yaml_key_with_a_dot_builds_and_runs_the_objective(tmp_path, tiny_source):
    """The YAML form used to pass validation and crash building the objective (nn.ModuleDict:
    module name can't contain ".")."""
    from textcraftor.objective import build_objective

    config = load_run_config(write(tmp_path / "run.yaml", """
        reward: {weights: {hpsv2.1: 0.5}, clip_constraint: 0}
    """))
    assert dict(config.reward.weights) == {"hpsv2.1": 0.5}  # the file's mapping replaces
    objective = build_objective(config.reward, "tiny", None)
    assert objective.names == ("hpsv2.1",) and list(objective.rewards) == ["hpsv2.1"]
    assert objective.coefficients == {"hpsv2.1": 0.5 * 100}  # w·s, HPS's scale 100
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    loss, scores = objective(images, ["a red fox", "a blue car"])
    assert list(scores) == ["hpsv2.1"] and scores["hpsv2.1"].shape == (2,)
    torch.testing.assert_close(loss, -(50.0 * scores["hpsv2.1"]).mean())
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # module names are positions: no escaped form of the reward name anywhere
    assert all(key.startswith("models.0.") for key in objective.state_dict())


# --- one rule for --set on a mapping, in both command lines -----------------------------------


def train_config(*overrides: str, config: str | None = None) -> RunConfig:
    from textcraftor.train import parse_args, resolve_config

    args = [a for o in overrides for a in ("--set", o)]
    return resolve_config(parse_args([*(["--config", config] if config else []), *args]))


def study_base(*overrides: str, config: str | None = None) -> RunConfig:
    from study.sweep import load_study, parse_args

    args = [a for o in ("model.source=tiny", *overrides) for a in ("--set", f"base.{o}")]
    # searching K only: a searched field's base value is the YAML's, never --set's
    args += ["--set", "search={sample.k: {low: 1, high: 5}}"]
    return load_study(parse_args([*(["--config", config] if config else []), *args])).base


@pytest.mark.parametrize("overrides, weights", [
    (["reward.weights.hpsv2.1=0.5"], {"aesthetic": 1.0, "hpsv2.1": 0.5}),  # merged in
    (["reward.weights={hpsv2.1: 0.5}"], {"hpsv2.1": 0.5}),  # replaced
    (["reward.weights={pickscore: 2}", "reward.weights.hpsv2=1"], {"pickscore": 2.0,
                                                                   "hpsv2": 1.0}),
])
def test_train_and_study_command_lines_treat_a_mapping_alike(overrides, weights):
    """The study's default YAML has weights {aesthetic: 1}, the run config's default is the
    same: both command lines merge a.b.KEY into it and replace it with a.b={...}."""
    assert dict(train_config(*overrides).reward.weights) == weights
    assert dict(study_base(*overrides).reward.weights) == weights


def test_a_yaml_mapping_replaces_the_default_in_both(tmp_path):
    run_yaml = write(tmp_path / "run.yaml", "reward: {weights: {pickscore: 1}}\n")
    study_yaml = write(tmp_path / "study.yaml", """
        base: {model: {source: tiny}, reward: {weights: {pickscore: 1}}}
        search: {reward.weights.pickscore: {low: 0.1, high: 1}}
        objectives: {quality_weights: {pickscore: 1}}
    """)
    assert dict(train_config(config=str(run_yaml)).reward.weights) == {"pickscore": 1.0}
    assert dict(study_base(config=str(study_yaml)).reward.weights) == {"pickscore": 1.0}
    merged = {"pickscore": 1.0, "hpsv2.1": 0.5}
    assert dict(train_config("reward.weights.hpsv2.1=0.5",
                             config=str(run_yaml)).reward.weights) == merged
    assert dict(study_base("reward.weights.hpsv2.1=0.5",
                           config=str(study_yaml)).reward.weights) == merged


# --- MLflow keys --------------------------------------------------------------------------------


def test_mlflow_keys_with_dotted_names_round_trip(tmp_path):
    """Metric eval/hpsv2.1, param reward.weights.hpsv2.1 and the flattened study config's
    base.reward.weights.hpsv2.1 come back from a real SQLite store as written, and a flattened
    key is a --set path that sets the same value again."""
    from mlflow.tracking import MlflowClient

    from study.tracking import flatten

    study_yaml = write(tmp_path / "study.yaml",
                       "base: {reward: {weights: {aesthetic: 1, hpsv2.1: 0.25}}}\n")
    study = load_study_config(study_yaml, ["search.reward.weights.hpsv2.1={low: 0.1, high: 0.4}"])
    params = flatten(to_dict(study))
    assert params["base.reward.weights.hpsv2.1"] == "0.25"
    assert params["search.reward.weights.hpsv2.1.low"] == "0.1"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("dotted"))
    run_id = run.info.run_id
    # a trial's hyperparameter is its run-config path, beside the flattened study
    chosen = {"reward.weights.hpsv2.1": "0.3", **{k: v[:6000] for k, v in params.items()}}
    for key, value in chosen.items():
        client.log_param(run_id, key, value)
    client.log_metric(run_id, "eval/hpsv2.1", 0.125, step=3)
    client.log_metric(run_id, "train/hpsv2.1", 0.5, step=1)
    client.set_terminated(run_id)

    data = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).data
    assert data.params == chosen
    assert data.metrics == {"eval/hpsv2.1": 0.125, "train/hpsv2.1": 0.5}
    history = client.get_metric_history(run_id, "eval/hpsv2.1")
    assert [(m.step, m.value) for m in history] == [(3, 0.125)]
    # the flattened names are --set paths under the one rule
    again = load_study_config(study_yaml, [
        f"{k}={data.params[k]}" for k in ("search.reward.weights.hpsv2.1.low",
                                          "search.reward.weights.hpsv2.1.high")])
    assert again.base.reward.weights == study.base.reward.weights
    assert again.search == study.search


# --- a run that trains hpsv2.1 --------------------------------------------------------------


def test_train_cli_trains_hpsv2_1(run_module, small_overrides, tmp_path):
    """YAML weights {hpsv2.1: 1}, then --set reward.weights.hpsv2.1=0.5: one tiny step."""
    config = write(tmp_path / "run.yaml", "reward: {weights: {hpsv2.1: 1}}\n")
    run = tmp_path / "run"
    small = [o for o in small_overrides if not o.startswith("reward.weights")]
    done = run_module("textcraftor.train", "--config", str(config), "--output-dir", str(run),
                      *(a for o in (*small, "train.steps=1", "reward.weights.hpsv2.1=0.5")
                        for a in ("--set", o)))
    assert done.returncode == 0, done.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["reward"]["weights"] == {"hpsv2.1": 0.5}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (step,) = [m for m in lines if m["kind"] == "step"]
    (evaluation,) = [m for m in lines if m["kind"] == "eval"]
    assert set(step) >= {"loss", "train/hpsv2.1"} and "train/aesthetic" not in step
    # λ = 0: the loss is −w·s·R of the one reward
    assert step["loss"] == pytest.approx(-0.5 * 100 * step["train/hpsv2.1"], rel=1e-5)
    assert "eval/hpsv2.1" in evaluation and "eval/train_objective" in evaluation
