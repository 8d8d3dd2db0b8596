"""``--resume`` under the study the sweep started with: the comparison, what it records, the
searcher that follows an allowed change, and the command's refusal before Ray starts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sweep_helpers import SMALL, SMALL_STUDY, sweep_command

from study.config import load_study_config
from study.resume import (
    RESUMES,
    STUDY_CONFIG,
    ResumeError,
    StudySearch,
    canonical_tracking_uri,
    check_resume,
    refused_changes,
)
from study.sweep import load_study, make_searcher, parse_args, saved_study
from textcraftor.configio import to_dict


def study_data(*overrides: str) -> dict:
    return to_dict(load_study_config(SMALL_STUDY, overrides))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_only_more_trials_concurrency_and_max_failures_may_change():
    saved = study_data("tuner.num_samples=4")
    allowed, refused = refused_changes(saved, study_data(
        "tuner.num_samples=6", "tuner.max_concurrent=2", "resources.max_failures=0"))
    assert allowed == {"tuner.num_samples": (4, 6), "tuner.max_concurrent": (1, 2),
                       "resources.max_failures": (1, 0)}
    assert refused == {}
    allowed, refused = refused_changes(saved, study_data(
        "tuner.num_samples=3", "base.train.lr=3e-4", "tracking_uri=sqlite:////x/mlflow.db",
        "fault_injection={param: sample.k, value: 1, nan_at_step: 1}"))
    assert allowed == {}
    assert refused == {"tuner.num_samples": (4, 3), "base.train.lr": (1e-4, 3e-4),
                       "tracking_uri": (None, "sqlite:////x/mlflow.db"),
                       "fault_injection": ([], [{"param": "sample.k", "value": 1, "nan_at_step": 1,
                                                 "crash_once_at_step": 0,
                                                 "pause_once_after_step": 0,
                                                 "dial_error": False}])}


def test_resume_refuses_naming_every_field_and_touches_nothing(tmp_path):
    assert check_resume(tmp_path, study_data("tuner.num_samples=2"), resume=False) == {}
    saved = (tmp_path / STUDY_CONFIG).read_text()
    assert json.loads(saved)["tuner"]["num_samples"] == 2
    with pytest.raises(ResumeError) as error:
        check_resume(tmp_path, study_data("tuner.num_samples=1", "base.train.lr=3e-4",
                                          "base.sample.guidance_scale=7"), resume=True)
    message = str(error.value)
    assert "  base.train.lr: saved 0.0001, now 0.0003\n" in message
    assert "  tuner.num_samples: saved 2, now 1\n" in message
    assert "  base.sample.guidance_scale: saved 5.0, now 7.0\n" in message
    assert "tuner.num_samples (more trials only)" in message
    assert (tmp_path / STUDY_CONFIG).read_text() == saved
    assert not (tmp_path / RESUMES).exists()
    assert check_resume(tmp_path, study_data("tuner.num_samples=2"), resume=True) == {}
    assert not (tmp_path / RESUMES).exists()  # nothing changed, nothing recorded


def test_an_allowed_change_is_recorded_and_becomes_the_saved_study(tmp_path):
    check_resume(tmp_path, study_data("tuner.num_samples=2"), resume=False)
    changes = check_resume(tmp_path, study_data("tuner.num_samples=3",
                                                "tuner.max_concurrent=2"), resume=True)
    assert changes == {"tuner.num_samples": (2, 3), "tuner.max_concurrent": (1, 2)}
    [record] = [json.loads(line) for line in (tmp_path / RESUMES).read_text().splitlines()]
    assert record["changes"] == {"tuner.num_samples": {"saved": 2, "new": 3},
                                 "tuner.max_concurrent": {"saved": 1, "new": 2}}
    saved = json.loads((tmp_path / STUDY_CONFIG).read_text())
    assert (saved["tuner"]["num_samples"], saved["tuner"]["max_concurrent"]) == (3, 2)
    with pytest.raises(ResumeError, match="tuner.num_samples: saved 3, now 2"):
        check_resume(tmp_path, study_data("tuner.num_samples=2"), resume=True)


def test_a_sweep_folder_without_a_saved_study_gets_one_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="study.resume"):
        assert check_resume(tmp_path, study_data(), resume=True) == {}
    assert "cannot be checked" in caplog.text
    assert json.loads((tmp_path / STUDY_CONFIG).read_text()) == study_data()


def test_relative_sqlite_uris_are_compared_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert canonical_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert canonical_tracking_uri("http://host:5000") == "http://host:5000"


def test_restored_searcher_takes_the_trial_count_and_concurrency_of_the_saved_study(tmp_path):
    """Tune restores its search generator from its own state; ours then follows
    study_config.json (a resume that asked for more trials gets them)."""
    common = ["--results-dir", str(tmp_path), *SMALL,
              "--set", "tuner.storage=sqlite:///" + str(tmp_path / "optuna.db")]
    study = load_study(parse_args([*common, "--num-samples", "2"]))
    study.sweep_dir.mkdir(parents=True)
    check_resume(study.sweep_dir, saved_study(study, "sqlite:////m.db"), resume=False)
    search = make_searcher(study)
    assert isinstance(search, StudySearch)
    search._total_samples = 2  # as Tune's add_configurations sets it at the first start
    state = tmp_path / "state"
    state.mkdir()
    search.save_to_dir(str(state), session_str="s1")

    more = load_study(parse_args([*common, "--num-samples", "5",
                                  "--set", "tuner.max_concurrent=3"]))
    check_resume(study.sweep_dir, saved_study(more, "sqlite:////m.db"), resume=True)
    restored = make_searcher(study)  # as unpickled from the first start
    restored.restore_from_dir(str(state))
    assert restored.total_samples == 5
    assert restored.searcher.max_concurrent == 3


def test_the_command_refuses_a_changed_study_before_ray_starts(tmp_path, run_module):
    """A sweep folder with its saved study and Tune's state folder: --resume with another
    learning rate, or fewer trials, exits 2 naming the field, and changes no file."""
    common = sweep_command(tmp_path, "--set", "name=changed")[3:]  # no "python -m study.sweep"
    study = load_study(parse_args([*common, "--num-samples", "2"]))
    study.sweep_dir.mkdir(parents=True)
    (study.sweep_dir / "tune").mkdir()
    check_resume(study.sweep_dir, saved_study(study, f"sqlite:///{tmp_path / 'mlflow.db'}"),
                 resume=False)
    before = folder_bytes(tmp_path)

    changed = run_module("study.sweep", *common, "--num-samples", "2", "--resume",
                         "--set", "base.train.lr=3e-4", cwd=tmp_path)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "error: --resume: the study differs" in changed.stderr
    assert "  base.train.lr: saved 0.0001, now 0.0003\n" in changed.stderr
    fewer = run_module("study.sweep", *common, "--resume", "--num-samples", "1", cwd=tmp_path)
    assert fewer.returncode == 2, fewer.stderr[-3000:]
    assert "  tuner.num_samples: saved 2, now 1\n" in fewer.stderr
    assert "Started a local Ray instance" not in changed.stderr + fewer.stderr
    assert folder_bytes(tmp_path) == before  # no MLflow store, no Ray state, nothing rewritten
