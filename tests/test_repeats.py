"""tuner.repeats: each configuration trained with several training seeds, grouped; the
sampler is told every objective's mean (study.repeats.Repeats over a real OptunaSearch)."""

from __future__ import annotations

import math

import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX

from study.config import load_study_config
from study.repeats import Repeats, repeat_groups
from study.space import REPEAT_INDEX, trial_run_config
from textcraftor.configio import ConfigError


def searcher(repeats: int):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"])
    inner = OptunaSearch({"x": tune.uniform(0, 1)}, metric=["quality", "diversity"],
                         mode=["max", "max"], sampler=optuna.samplers.RandomSampler(seed=0))
    inner._ot_study = study  # the in-memory study to read back what the searcher told it
    return Repeats(inner, repeat=repeats), study


def test_the_sampler_sees_one_trial_per_configuration_with_the_repeats_mean():
    repeats, study = searcher(3)
    configs = [repeats.suggest(f"t{i}") for i in range(3)]
    assert len({c["x"] for c in configs}) == 1  # one configuration, three repeats
    assert [c[REPEAT_INDEX] for c in configs] == [0, 1, 2]
    repeats.on_trial_complete("t0", {"quality": 60.0, "diversity": 0.1})
    repeats.on_trial_complete("t1", None, error=True)  # a failed repeat is left out
    assert not study.trials[0].values  # nothing told before every repeat has ended
    repeats.on_trial_complete("t2", {"quality": 62.0, "diversity": 0.3})
    (told,) = study.trials
    assert told.state.name == "COMPLETE"
    assert told.values == pytest.approx([61.0, 0.2])
    assert repeats.suggest("t3")["x"] != configs[0]["x"]  # the next configuration


def test_a_configuration_no_repeat_measured_fails_in_the_sampler():
    repeats, study = searcher(2)
    repeats.suggest("a")
    repeats.suggest("b")
    repeats.on_trial_complete("a", None, error=True)
    repeats.on_trial_complete("b", None, error=True)
    assert study.trials[0].state.name == "FAIL"


def test_each_repeat_trains_with_its_own_seed_and_groups_summarise_the_spread(tmp_path):
    assert REPEAT_INDEX == TRIAL_INDEX  # the key Tune's Repeater sets
    study = load_study_config(None, ["tuner.repeats=3"])
    params = {"reward.weights.aesthetic": 1.0, "reward.clip_constraint": 1.0, "sample.k": 5}
    seeds = [trial_run_config(study, {**params, REPEAT_INDEX: r}, tmp_path).train.seed
             for r in range(3)]
    assert seeds == [study.base.train.seed + r for r in range(3)]
    # every repeat is evaluated on the same held-out prompts: the split keeps the base's seed
    splits = {trial_run_config(study, {**params, REPEAT_INDEX: r}, tmp_path)
              .held_out_split_seed() for r in range(3)}
    assert splits == {study.base.train.seed}
    assert study.tuner.num_trials == 3 * study.tuner.num_samples
    trials = [
        {"trial_id": "a", "repeat_of": "a", "status": "TERMINATED", "params": {"w": 1},
         "objectives": {"quality": 60.0, "diversity": 0.1}},
        {"trial_id": "b", "repeat_of": "a", "status": "TERMINATED", "params": {"w": 1},
         "objectives": {"quality": 62.0, "diversity": 0.3}},
        {"trial_id": "c", "repeat_of": "c", "status": "ERROR", "params": {"w": 2},
         "objectives": {"quality": None, "diversity": None}}]
    first, failed = repeat_groups(trials, ["quality", "diversity"])
    assert first["trials"] == ["a", "b"] and first["pareto"]
    assert first["objectives"]["quality"] == {"mean": 61.0, "std": pytest.approx(math.sqrt(2)),
                                              "n": 2}
    assert failed["objectives"]["quality"] == {"mean": None, "std": None, "n": 0}
    assert not failed["pareto"]


@pytest.mark.parametrize("override, message", [
    ("tuner.repeats=0", "tuner.repeats: must be >= 1, got 0"),
    ("tuner.scheduler=moasha", "tuner.repeats: 2 repeats need scheduler fifo")])
def test_bad_repeats_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_study_config(None, ["tuner.repeats=2", override] if "scheduler" in override
                          else [override])
