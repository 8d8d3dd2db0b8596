"""Study config: the embedded default, the sd15 study, and bad input named before any trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study.config import load_study_config
from study.space import DefineByRun, reference_point, study_run_config, trial_run_config
from textcraftor.configio import ConfigError

REPO = Path(__file__).resolve().parents[1]


SEARCHED = {"reward.weights.aesthetic", "reward.clip_constraint", "sample.k"}


def test_default_and_sd15_configs_load():
    default = load_study_config()
    assert default.base.model.source == "shapes"
    assert set(default.search) == SEARCHED
    assert default.objectives.names == ("quality", "diversity", "alignment")
    # on ShapesWorld, alignment is the oracle's accuracy
    assert study_run_config(default).alignment_source() == "oracle_all"
    sd15 = load_study_config(REPO / "study" / "configs" / "sd15.yaml")
    assert study_run_config(sd15).alignment_source() == "clip"  # no oracle: the CLIP score
    assert sd15.base.sample.resolution == 512 and sd15.base.sample.num_steps == 25
    assert sd15.resources.gpus_per_worker == 1
    assert sd15.search["train.lr"].log is True


def test_the_first_trial_is_the_base_configs_values():
    """The reference recipe lives in one place, the YAML's base: unit weight, λ = 1, K = 5
    (the default study's first trial, as before the search took config paths)."""
    study = load_study_config()
    assert reference_point(study) == {"reward.weights.aesthetic": 1.0,
                                      "reward.clip_constraint": 1.0, "sample.k": 5}
    assert isinstance(reference_point(study)["sample.k"], int)


def test_trial_run_config_sets_each_searched_path(tmp_path):
    study = load_study_config()
    run = trial_run_config(study, {"reward.weights.aesthetic": 0.5, "reward.clip_constraint": 0.0,
                                   "sample.k": 2}, tmp_path / "t")
    assert run.reward.weights["aesthetic"] == 0.5
    assert run.reward.clip_constraint == 0.0
    assert run.sample.k == 2
    assert run.train.lr == study.base.train.lr  # not searched: the base's
    assert run.output_dir == str(tmp_path / "t")


def test_a_drawn_value_goes_through_the_run_configs_validation(tmp_path):
    study = load_study_config()
    with pytest.raises(ConfigError, match=r"sample.k: must be in \[1, num_steps=10\], got 11"):
        trial_run_config(study, {"reward.weights.aesthetic": 0.5, "reward.clip_constraint": 0.0,
                                 "sample.k": 11}, tmp_path / "t")


ANY_FIELD = ("search={sample.guidance_scale: {low: 3, high: 9}, sample.num_steps: {low: 5, "
             "high: 12}, sample.truncation: {choices: [last_k, random_k]}, "
             "train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}, "
             "reward.weights.hpsv2.1: {low: 0, high: 1}, model.source: {choices: [shapes, tiny]}}")


def test_any_field_is_searched_under_its_own_name_with_its_types_distribution(tmp_path):
    import optuna
    import yaml

    from study.config import default_config_path

    data = yaml.safe_load(default_config_path().read_text())
    data["base"]["reward"]["weights"]["hpsv2.1"] = 0.0  # the first trial's: the YAML's to give
    data["base"]["reward"]["sources"] = {"hpsv2.1": {"source": "/x/hps.pt"}}  # not in shapes
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(data))
    study = load_study_config(tmp_path / "study.yaml", [ANY_FIELD])
    space = DefineByRun(study)
    assert [(path, kind) for path, kind, *_ in space.space] == [
        ("sample.guidance_scale", "float"), ("sample.num_steps", "int"),
        ("sample.truncation", "categorical"), ("train.lr", "float"),
        ("reward.weights.hpsv2.1", "float"), ("model.source", "categorical")]
    optuna_study = optuna.create_study(directions=["maximize", "maximize"],
                                       sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = optuna_study.ask()
        assert space(trial) == {}
        params = trial.params
        assert set(params) == set(study.search)
        assert isinstance(params["sample.num_steps"], int) and 5 <= params["sample.num_steps"] <= 12
        assert params["sample.truncation"] in ("last_k", "random_k")
        assert 1e-5 <= params["train.lr"] <= 1e-3
        run = trial_run_config(study, params, "/tmp/t")
        assert run.sample.num_steps == params["sample.num_steps"]
        assert run.sample.truncation == params["sample.truncation"]
        assert run.reward.weights["hpsv2.1"] == params["reward.weights.hpsv2.1"]
        assert run.model.source == params["model.source"]
    assert reference_point(study) == {
        "sample.guidance_scale": 5.0, "sample.num_steps": 10, "sample.truncation": "last_k",
        "train.lr": 1e-4, "reward.weights.hpsv2.1": 0.0, "model.source": "shapes"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["base.train.stepz=3"], "base.train.stepz"),
        (["colour=blue"], "colour"),
        (["base.train.steps=abc"], "train.steps"),
        (["tuner.num_samples=two"], "tuner.num_samples"),
        (["tuner.scheduler=asha"], "asha supports one objective"),
        (["tuner.sampler=cmaes"], "'tpe', 'gp', 'nsga2', 'random', 'grid'"),
        (["tuner.sampler=random", "tuner.n_startup_trials=3"],
         "tuner.n_startup_trials: applies to sampler tpe or gp, not 'random'"),
        (["tuner.n_startup_trials=0"], "tuner.n_startup_trials: must be >= 1, got 0"),
        (["tuner.population_size=8"], "tuner.population_size: applies to sampler nsga2, not "
                                      "'tpe'"),
        (["tuner.sampler=nsga2", "tuner.population_size=1"],
         "tuner.population_size: must be >= 2, got 1"),
        # the search: each named before any trial, with the value
        (["search.sample.k.low=4", "search.sample.k.high=2"],
         "search.sample.k: low (4.0) > high (2.0)"),
        (["search.sample.k.high=50"], "search.sample.k.high: 50 is refused by the run config: "
                                      "sample.k: must be in [1, num_steps=10], got 50"),
        (["search.sample.k.high=4.5"], "search.sample.k: an int range needs integer bounds"),
        (["search={sample.guidance: {low: 1, high: 9}}"],
         "search.sample.guidance: no such field of the run config; did you mean "
         "sample.guidance_scale?"),
        (["search={sample: {low: 1, high: 9}}"], "search.sample: a section, not a value"),
        (["search={sample.truncation: {low: 0, high: 1}}"],
         "search.sample.truncation: a range needs a numeric field, and this one is str: give "
         "choices"),
        (["search={sample.truncation: {choices: [last_k, random_q]}}"],
         "search.sample.truncation.choices[1]: 'random_q' is refused by the run config: "
         "sample.truncation: 'random_q' is not one of"),
        (["search={sample.truncation: {choices: []}}"],
         "search.sample.truncation.choices: empty: give at least one"),
        (["search={sample.guidance_scale: {low: 6, high: 9}}"],
         "search.sample.guidance_scale: base.sample.guidance_scale = 5.0 is the first trial "
         "(tuner.reference_first) but lies outside this distribution"),
        (["search={reward.weights.beauty: {low: 0, high: 1}}"],
         "search.reward.weights.beauty.low: 0.0 is refused by the run config: reward.weights: "
         "'beauty' is not one of"),
        (["search={}"], "empty search space"),
        (["base.sample.k=2"], "--set 'base.sample.k=2': base.sample.k is searched "
                              "(search.sample.k): every trial draws its own value"),
        (["base.sample={k: 2}"], "base.sample.k is searched"),
    ],
)
def test_bad_study_config_names_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_study_config(None, overrides)
    assert message in str(error.value)


def test_without_the_base_as_first_trial_its_value_may_lie_outside():
    study = load_study_config(None, ["search={sample.guidance_scale: {low: 6, high: 9}}",
                                     "tuner.reference_first=false"])
    assert set(study.search) == {"sample.guidance_scale"}


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
    # the default study's one rank runs in the trial process: its CPUs are the trial's
    assert study.resources.in_process
    assert study.resources.bundles() == [{"CPU": 2.0, "head_node": 0.01}]


def test_trial_resources_of_worker_groups_and_of_in_process_trials():
    ddp = load_study_config(None, ["resources.num_workers=2", "resources.cpus_per_worker=0.5",
                                   "resources.gpus_per_worker=1"]).resources
    assert not ddp.in_process
    assert ddp.bundles() == [{"CPU": 0.1}, {"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}]
    one = load_study_config(None, ["resources.num_workers=0", "resources.cpus_per_worker=3",
                                   "resources.gpus_per_worker=1"]).resources
    assert one.in_process and one.bundles() == [{"CPU": 3.1, "GPU": 1.0}]
    with pytest.raises(ConfigError, match=r"resources.num_workers: must be >= 0 \(0: one rank "
                                          r"inside the Tune trial process.*got -1"):
        load_study_config(None, ["resources.num_workers=-1"])


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_names_a_bad_search_path_before_starting_ray(tmp_path):
    result = _sweep("--set", "search={sample.guidance: {low: 1, high: 9}}", "--results-dir",
                    str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert ("search.sample.guidance: no such field of the run config; did you mean "
            "sample.guidance_scale?") in result.stderr
    assert "ray" not in result.stderr.lower().replace("array", "")  # stopped before Ray
    assert not (tmp_path / "default").exists()


@pytest.mark.parametrize(
    ("overrides", "random_trials", "warned"),
    [
        ([], 10, "tuner.num_samples = 4 <= the 10 random trials tuner.sampler = tpe draws first "
                 "(tuner.n_startup_trials): this study is random search"),
        (["tuner.n_startup_trials=2"], 2, None),
        (["tuner.sampler=gp", "tuner.num_samples=12"], 10, None),
        (["tuner.sampler=gp", "tuner.num_samples=10"], 10, "tuner.sampler = gp"),
        (["tuner.sampler=nsga2", "tuner.num_samples=32"], 50,
         "the 50 random trials tuner.sampler = nsga2 draws first (tuner.population_size)"),
        (["tuner.sampler=nsga2", "tuner.num_samples=32", "tuner.population_size=8"], 8, None),
        (["tuner.sampler=random"], 4, None),  # chosen: no warning
    ],
)
def test_a_study_that_never_leaves_the_random_start_is_named_random_search(
        overrides, random_trials, warned):
    tuner = load_study_config(None, overrides).tuner
    assert tuner.random_trials() == random_trials
    warning = tuner.random_search_warning()
    if warned is None:
        assert warning is None
    else:
        assert warned in warning and "Raise tuner.num_samples above" in warning


def test_each_sampler_is_optunas_with_the_start_up_the_config_gives(tmp_path):
    """The sampler the sweep builds, read back: class and start-up size."""
    import optuna

    from study.sweep import make_searcher

    expected = {"tpe": (optuna.samplers.TPESampler, "_n_startup_trials", 3),
                "gp": (optuna.samplers.GPSampler, "_n_startup_trials", 3),
                "nsga2": (optuna.samplers.NSGAIISampler, "_population_size", 6)}
    for sampler, (cls, attribute, size) in expected.items():
        option = "population_size" if sampler == "nsga2" else "n_startup_trials"
        study = load_study_config(None, [f"tuner.sampler={sampler}", f"tuner.{option}={size}",
                                         f"results_dir={tmp_path}", f"name={sampler}"])
        study.sweep_dir.mkdir(parents=True)
        built = make_searcher(study).searcher.searcher._sampler  # StudySearch > limiter > Optuna
        assert type(built) is cls and getattr(built, attribute) == size, sampler


def test_alignment_as_the_oracle_needs_an_oracle_named_before_any_trial():
    with pytest.raises(ConfigError, match=r"objectives.alignment: the alignment objective as the "
                                          r"oracle's accuracy needs ShapesWorld's oracle, and "
                                          r"base.model.source=tiny"):
        load_study_config(None, ["base.model.source=tiny", "base.data.prompts=null",
                                 "objectives.alignment=oracle"])
    with pytest.raises(ConfigError, match=r"objectives.alignment: 'exact' is not one of"):
        load_study_config(None, ["objectives.alignment=exact"])
    with pytest.raises(ConfigError, match=r"objectives.names: 'beauty' is not one of"):
        load_study_config(None, ["objectives.names=[quality, beauty]"])
    with pytest.raises(ConfigError, match=r"objectives.diversity: attributes \(read by "
                                          r"ShapesWorld's oracle\) needs the oracle"):
        load_study_config(None, ["base.model.source=tiny", "base.data.prompts=null",
                                 "objectives.diversity=attributes"])
    clip = load_study_config(None, ["objectives.alignment=clip"])
    assert study_run_config(clip).alignment_source() == "clip"


@pytest.mark.parametrize("fault, field, allowed", [
    ("{crash_once_at_step: 3}", "fault_injection.crash_once_at_step",
     "3 is not a checkpoint step (a multiple of base.train.save_every=2"),
    ("{crash_once_at_step: 12}", "fault_injection.crash_once_at_step",
     "12 is not a checkpoint step"),
    ("{pause_once_after_step: 3}", "fault_injection.pause_once_after_step",
     "3 is not a checkpoint step before the last (a multiple of base.train.save_every=2 below "
     "base.train.steps=8)"),
    ("{pause_once_after_step: 8}", "fault_injection.pause_once_after_step",
     "8 is not a checkpoint step before the last"),
    ("{pause_once_after_step: -2}", "fault_injection", "steps must be >= 0"),
    ("{param: sample.k, value: 1}", "fault_injection",
     "set nan_at_step, crash_once_at_step or pause_once_after_step (> 0), or dial_error"),
])
def test_a_fault_injection_is_checked_naming_the_field(fault, field, allowed):
    """The testing faults fire at checkpoint steps: a step that is none is refused before any
    trial starts (a pause after the last step would hold nothing back)."""
    overrides = ["base.train.steps=8", "base.train.save_every=2", f"fault_injection={fault}"]
    with pytest.raises(ConfigError) as error:
        load_study_config(None, overrides)
    assert str(error.value).startswith(f"{field}: "), str(error.value)
    assert allowed in str(error.value)


def test_a_fault_injection_at_a_checkpoint_step_loads():
    study = load_study_config(None, ["base.train.steps=8", "base.train.save_every=2",
                                     "fault_injection=[{crash_once_at_step: 8}, "
                                     "{pause_once_after_step: 4}]"])
    assert [(f.crash_once_at_step, f.pause_once_after_step) for f in study.fault_injection] == [
        (8, 0), (0, 4)]
