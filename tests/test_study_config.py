"""Study config: the embedded default, the sd15 study, and bad input named before any trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study.config import load_study_config
from study.space import DefineByRun, reference_point, trial_run_config
from textcraftor.configio import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_default_and_sd15_configs_load():
    default = load_study_config()
    assert default.base.model.source == "shapes"
    assert set(default.search.searched()) == {"w_aesthetic", "clip_constraint", "k"}
    assert default.objectives.names == ("quality", "diversity")
    sd15 = load_study_config(REPO / "study" / "configs" / "sd15.yaml")
    assert sd15.base.sample.resolution == 512 and sd15.base.sample.num_steps == 25
    assert sd15.resources.gpus_per_worker == 1


def test_reference_point_is_clipped_into_ranges():
    study = load_study_config(None, ["search.k.high=3", "search.clip_constraint.low=0.5"])
    point = reference_point(study)
    assert point == {"w_aesthetic": 1.0, "clip_constraint": 1.0, "k": 3}


def test_trial_run_config_applies_params(tmp_path):
    study = load_study_config()
    run = trial_run_config(study, {"w_aesthetic": 0.5, "clip_constraint": 0.0, "k": 2},
                           tmp_path / "t")
    assert run.reward.weights["aesthetic"] == 0.5
    assert run.reward.clip_constraint == 0.0
    assert run.sample.k == 2
    assert run.train.lr == study.search.lr.value
    assert run.output_dir == str(tmp_path / "t")


def test_define_by_run_suggests_searched_and_returns_fixed():
    import optuna

    study = load_study_config()
    space = DefineByRun(study)
    trial = optuna.create_study(directions=["maximize", "maximize"]).ask()
    fixed = space(trial)
    assert fixed == {"lr": study.search.lr.value}
    assert set(trial.params) == {"w_aesthetic", "clip_constraint", "k"}
    assert isinstance(trial.params["k"], int)
    low, high = study.search.k.low, study.search.k.high
    assert low <= trial.params["k"] <= high


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["base.train.stepz=3"], "base.train.stepz"),
        (["colour=blue"], "colour"),
        (["base.train.steps=abc"], "train.steps"),
        (["tuner.num_samples=two"], "tuner.num_samples"),
        (["search.k.low=4", "search.k.high=2"], "low (4"),
        (["search.clip_constraint.low=2", "search.clip_constraint.high=1"], "clip_constraint"),
        (["tuner.scheduler=asha"], "asha supports one objective"),
        (["tuner.sampler=grid"], "'tpe', 'nsga2', 'random'"),
        (["search.k.high=50"], "exceeds sample.num_steps"),
        (["search.reward_weights.beauty.low=0", "search.reward_weights.beauty.high=1"],
         "reward_weights"),
    ],
)
def test_bad_study_config_names_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_study_config(None, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(("override", "message"), [
    # a run config's own checks name fields relative to it: inside a study, under base.
    ("base.sample.eta=1.5", "base.sample.eta: must be in [0, 1], got 1.5"),
    ("base.sample.resolution=0", "base.sample.resolution: must be a positive number of pixels"),
    ("base.train.lr=.nan", "base.train.lr: expected a finite number, got nan"),
    ("base.reward.weights.hpsv2.1=0.5", "base.reward.weights.hpsv2.1: the shapes preset"),
    ("base.data.eval_seeds=[0]", "base.data.eval_seeds: eval.diversity needs"),
    # type errors carry the whole path already, and get nothing twice
    ("base.train.lr=abc", "base.train.lr: expected a number, got 'abc'"),
    ("base.reward.sources.aesthetic=/x.pt",
     "base.reward.sources.aesthetic: expected a mapping with fields source, backbone, got str"),
])
def test_a_nested_run_config_is_named_from_the_study(override, message):
    with pytest.raises(ConfigError) as error:
        load_study_config(None, [override])
    assert str(error.value).startswith(message), str(error.value)


def test_empty_search_space_is_an_error():
    fixed = ["search.reward_weights.aesthetic={value: 1.0}", "search.clip_constraint={value: 1.0}",
             "search.k={value: 3}"]
    with pytest.raises(ConfigError, match="empty search space"):
        load_study_config(None, fixed)


def test_asha_with_one_objective_is_allowed():
    study = load_study_config(None, ["tuner.scheduler=asha", "objectives.names=[quality]"])
    assert study.tuner.scheduler == "asha"


def _sweep(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.sweep", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_bad_yaml_before_starting_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase:\n  trian: {steps: 3}\n")
    result = _sweep("--config", str(bad), "--results-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "base.trian" in result.stderr and "allowed" in result.stderr
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_rejects_unreachable_tracking_server(tmp_path):
    result = _sweep("--tracking-uri", "http://127.0.0.1:9", "--results-dir", str(tmp_path),
                    cwd=tmp_path)
    assert result.returncode == 2
    assert "unreachable" in result.stderr
    assert not (tmp_path / "default").exists()


def test_cli_rejects_trial_larger_than_cluster(tmp_path):
    result = _sweep("--set", "resources.num_workers=8", "--set", "resources.cpus_per_worker=1",
                    "--results-dir", str(tmp_path), "--tracking-uri",
                    f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "needs 8.1 CPU" in result.stderr and "cluster has" in result.stderr


def test_cli_help_explains_options(tmp_path):
    result = _sweep("--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--config", "--num-samples", "--results-dir", "--tracking-uri", "--address",
                   "--resume", "--set"):
        assert option in result.stdout


def test_cli_rejects_an_address_with_no_cluster(tmp_path):
    result = _sweep("--address", f"127.0.0.1:{_closed_port()}", "--results-dir", str(tmp_path),
                    "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path,
                    timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no Ray cluster at" in result.stderr


def test_cli_rejects_results_storage_that_is_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for results in (str(blocker), f"file://{blocker}/sweeps"):
        result = _sweep("--results-dir", results, "--tracking-uri",
                        f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "not writable" in result.stderr, result.stderr[-3000:]


def test_cluster_fields_are_checked():
    with pytest.raises(ConfigError, match="resources.placement_strategy"):
        load_study_config(None, ["resources.placement_strategy=EVERYWHERE"])
    with pytest.raises(ConfigError, match="resources.trial_resources.CPU"):
        load_study_config(None, ["resources.trial_resources={CPU: 1}"])
    study = load_study_config(None, ["results_dir=s3://bucket/sweeps",
                                     "resources.trial_resources={head_node: 0.01}"])
    assert study.storage_dir == "s3://bucket/sweeps/default"
    assert study.resources.trial_bundle() == {"CPU": 0.1, "head_node": 0.01}


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
