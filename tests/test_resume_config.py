"""Resuming continues a run with its saved configuration: ``--set`` applies on top of
``config.json``, a different ``--config`` is refused naming every differing field, and only
more steps (and fields that cannot change results) may change — recorded in resumes.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from textcraftor.checkpoint import list_checkpoints
from textcraftor.config import load_run_config
from textcraftor.configio import ConfigError, to_dict
from textcraftor.resume import check_resume, record_resume

TRAIN = "textcraftor.train"
# the run being resumed differs from the defaults in lr, λ, T, resolution and K
TINY_RUN = ("train.lr=1e-4", "reward.clip_constraint=0.5", "train.steps=2",
            "train.eval_every=0", "train.save_every=1", "train.keep_checkpoints=3")


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder, by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_source, small_overrides) -> Path:
    """A finished 2-step tiny run (lr 1e-4, λ 0.5, T 4, 32 px, K 2), checkpoints at 1 and 2."""
    from textcraftor.trainer import TextCraftor

    run = tmp_path_factory.mktemp("tiny") / "run"
    config = load_run_config(None, [*small_overrides, *TINY_RUN, f"output_dir={run}"])
    TextCraftor(config, device="cpu", show_progress=False).fit()
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "a"
    shutil.copytree(tiny_run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "output_dir": str(copy)}, indent=2))
    return copy


# --- the comparison (no models) ------------------------------------------------------------


def test_check_resume_names_every_differing_field_with_both_values(small_overrides):
    saved = to_dict(load_run_config(None, [*small_overrides, *TINY_RUN, "output_dir=runs/a"]))
    requested = load_run_config(None, [*small_overrides, *TINY_RUN, "output_dir=runs/a",
                                       "train.lr=1e-6", "reward.clip_constraint=1.0",
                                       "train.steps=5"])
    with pytest.raises(ConfigError) as error:
        check_resume(saved, requested, checkpoint_step=2)
    assert str(error.value) == (
        "--resume: runs/a was trained with another configuration; differing fields: "
        "reward.clip_constraint (saved 0.5, now 1.0), train.lr (saved 0.0001, now 1e-06); "
        "only train.steps (≥ 2), train.keep_checkpoints, train.eval_batch_size and output_dir "
        "may change on resume")


def test_check_resume_allows_more_steps_and_harmless_fields_only(small_overrides):
    saved = to_dict(load_run_config(None, [*small_overrides, *TINY_RUN, "output_dir=runs/a"]))
    same = load_run_config(None, base=saved)
    assert check_resume(saved, same, checkpoint_step=2) == {}
    extended = load_run_config(None, ["train.steps=9", "train.keep_checkpoints=1",
                                      "train.eval_batch_size=3", "output_dir=runs/moved"],
                               base=saved)
    assert check_resume(saved, extended, checkpoint_step=2) == {
        "train.steps": (2, 9), "train.keep_checkpoints": (3, 1),
        "train.eval_batch_size": (8, 3), "output_dir": ("runs/a", "runs/moved")}
    # as many steps as the checkpoint holds is allowed (nothing left to train); fewer is not
    at_checkpoint = load_run_config(None, ["train.steps=1"], base=saved)
    assert check_resume(saved, at_checkpoint, checkpoint_step=1) == {"train.steps": (2, 1)}
    with pytest.raises(ConfigError, match=r"train.steps: 1 is below the step of .* latest "
                                          r"checkpoint \(2\); a resume may only extend the run "
                                          r"\(saved train.steps 2\)"):
        check_resume(saved, at_checkpoint, checkpoint_step=2)
    # beside another refused field, fewer steps is listed with it
    both = load_run_config(None, ["train.steps=1", "train.lr=0.5"], base=saved)
    with pytest.raises(ConfigError, match=r"train.steps \(saved 2, now 1\)"):
        check_resume(saved, both, checkpoint_step=2)


def test_record_resume_appends_one_line_per_resume(tmp_path):
    record_resume(tmp_path, 2, {"train.steps": (2, 3)})
    record_resume(tmp_path, 3, {})
    lines = read_lines(tmp_path / "resumes.jsonl")
    assert [(r["at_step"], r["changes"]) for r in lines] == [
        (2, {"train.steps": [2, 3]}), (3, {})]
    assert all(isinstance(r["time"], float) for r in lines)
    assert [p.name for p in tmp_path.iterdir()] == ["resumes.jsonl"]  # no temporary left


# --- the command line ----------------------------------------------------------------------


def test_resume_with_more_steps_continues_the_saved_configuration(run_module, run_copy):
    """The README's form: --output-dir RUN --resume --set train.steps=N, no --config."""
    before = read_lines(run_copy / "metrics.jsonl")
    done = run_module(TRAIN, "--output-dir", str(run_copy), "--resume", "--set", "train.steps=3")
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr and "step 2" in done.stderr
    config = json.loads((run_copy / "config.json").read_text())
    assert config["train"]["lr"] == 1e-4 and config["reward"]["clip_constraint"] == 0.5
    assert config["sample"]["num_steps"] == 4 and config["sample"]["resolution"] == 32
    assert config["sample"]["k"] == 2 and config["train"]["steps"] == 3
    assert config["output_dir"] == str(run_copy)
    (resume,) = read_lines(run_copy / "resumes.jsonl")
    assert resume["at_step"] == 2 and resume["changes"] == {"train.steps": [2, 3]}
    metrics = read_lines(run_copy / "metrics.jsonl")
    assert metrics[:len(before)] == before  # the first two steps untouched
    steps = [m for m in metrics if m["kind"] == "step"]
    assert [m["step"] for m in steps] == [1, 2, 3]
    # the saved config's step structure on every line: K = 2 and the λ > 0 CLIP score
    assert all(m["train/k_drawn"] == 2 for m in steps)
    assert all(set(m) == set(steps[0]) for m in steps) and "train/clip" in steps[0]
    assert [p.name for p in list_checkpoints(run_copy)] == [
        "step_0000001", "step_0000002", "step_0000003"]


def test_resume_with_another_configuration_is_refused_and_touches_nothing(run_module, run_copy):
    before = snapshot(run_copy)
    refused = run_module(TRAIN, "--output-dir", str(run_copy), "--resume",
                         "--set", "train.lr=1e-6", "--set", "reward.clip_constraint=1.0",
                         "--set", "train.steps=3")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: --resume: {run_copy} was trained with another configuration; differing "
        "fields: reward.clip_constraint (saved 0.5, now 1.0), train.lr (saved 0.0001, now "
        "1e-06); only train.steps (≥ 2), train.keep_checkpoints, train.eval_batch_size and "
        "output_dir may change on resume\n")
    assert refused.stdout == ""
    assert snapshot(run_copy) == before  # config.json, metrics.jsonl, checkpoints: same bytes


def test_resume_with_a_different_config_file_lists_every_field(run_module, run_copy,
                                                               tiny_run, tmp_path):
    """--config FILE + overrides is compared with the saved configuration as a whole: a file
    that leaves the run's settings at their defaults differs in each of them."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train: {steps: 3}\n")
    before = snapshot(run_copy)
    refused = run_module(TRAIN, "--config", str(yaml_file), "--output-dir", str(run_copy),
                         "--resume")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    saved = json.loads((tiny_run / "config.json").read_text())
    defaults = to_dict(load_run_config(yaml_file))
    fields = {"sample.resolution", "sample.num_steps", "sample.k",
              "reward.clip_constraint", "train.lr", "data.heldout_count", "data.eval_seeds",
              "train.eval_at_start", "train.sample_grid", "eval.diversity", "eval.distribution",
              "train.eval_every", "train.save_every"}
    for name in fields:
        section, _, leaf = name.partition(".")
        old, new = saved[section], defaults[section]
        for part in leaf.split("."):
            old, new = old[part], new[part]
        shown = f"{name} (saved {json.dumps(old)}, now {json.dumps(new)})"
        assert shown in refused.stderr, shown
    assert "train.keep_checkpoints (" not in refused.stderr  # allowed to differ
    assert snapshot(run_copy) == before


def test_resume_without_a_checkpoint_says_so(run_module, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text("{}")
    for folder in (started, tmp_path / "missing"):
        result = run_module(TRAIN, "--output-dir", str(folder), "--resume")
        assert result.returncode == 2
        assert result.stderr == (f"error: --resume: {folder} holds no checkpoint to continue "
                                 "(no checkpoints/step_*/state.json); run without --resume to "
                                 "start it\n")
    assert not (tmp_path / "missing").exists()
    assert [p.name for p in started.iterdir()] == ["config.json"]


# --- the shapes preset ---------------------------------------------------------------------

SHAPES_RUN = ("model.source=shapes", "sample.num_steps=4", "sample.resolution=64", "sample.k=2",
              "train.batch_size=2", "train.eval_at_start=false", "train.sample_grid=false",
              "train.steps=1", "train.eval_every=0", "data.heldout_count=2",
              "data.eval_seeds=[0]", "eval.diversity=false", "eval.distribution=false",
              "reward.weights={aesthetic: 1}", "reward.clip_constraint=1")


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    from textcraftor.trainer import TextCraftor

    run = tmp_path_factory.mktemp("shapes") / "run"
    config = load_run_config(None, [*SHAPES_RUN, f"output_dir={run}"])
    TextCraftor(config, device="cpu", show_progress=False).fit()
    return run


def test_shapes_run_resumes_without_config_and_refuses_a_tiny_config(run_module, shapes_run,
                                                                      tmp_path):
    """Resuming a shapes run used to load the defaults (the tiny preset) into its checkpoint and
    die with a raw 'size mismatch' traceback."""
    tiny_yaml = tmp_path / "tiny.yaml"
    tiny_yaml.write_text("model: {source: tiny}\nsample: {num_steps: 4, resolution: 32, k: 2}\n")
    before = snapshot(shapes_run)
    refused = run_module(TRAIN, "--config", str(tiny_yaml), "--output-dir", str(shapes_run),
                         "--resume", "--set", "train.steps=2")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: --resume: {shapes_run} was trained with another "
                                     "configuration; differing fields: model.source (saved "
                                     "\"shapes\", now \"tiny\"), sample.resolution (saved 64, "
                                     "now 32)")
    assert snapshot(shapes_run) == before

    resumed = run_module(TRAIN, "--output-dir", str(shapes_run), "--resume",
                         "--set", "train.steps=2")
    assert resumed.returncode == 0, resumed.stderr
    config = json.loads((shapes_run / "config.json").read_text())
    assert config["model"]["source"] == "shapes" and config["train"]["steps"] == 2
    steps = [m["step"] for m in read_lines(shapes_run / "metrics.jsonl") if m["kind"] == "step"]
    assert steps == [1, 2]
    (resume,) = read_lines(shapes_run / "resumes.jsonl")
    assert resume["at_step"] == 1 and resume["changes"] == {"train.steps": [1, 2]}
