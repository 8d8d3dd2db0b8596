"""The MLflow tag and artifact names the sweep writes and the analysis reads (no Ray, no torch:
the analysis imports this module alone)."""

from __future__ import annotations

SWEEP_TAG = "textcraftor.sweep"  # the sweep (study name) a run belongs to
TRIAL_TAG = "textcraftor.trial_id"  # Tune's trial id of a trial's run
KIND_TAG = "textcraftor.kind"  # sweep | baseline | trial
# a trial's inference dials (study.dial_table): logged when it finishes its training, or by
# ``python -m study.dials`` for a finished trial
DIALS_ARTIFACT = "dials/dials.json"
# why a trial's inference dials could not be measured (the trial itself finished)
DIALS_ERROR_TAG = "textcraftor.dials_error"
# a trial MO-ASHA stopped early: the rung (training step) it reached
STOPPED_TAG = "textcraftor.stopped_at_step"
# tuner.repeats: a trial's repeat index (its training seed is train.seed + this)
REPEAT_TAG = "textcraftor.repeat"
