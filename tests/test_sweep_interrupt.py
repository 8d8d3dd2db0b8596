"""The driver's signal handling against Ray Tune's own (``tune.run`` installs it inside
``Tuner.fit()``), and the statuses an interrupted sweep reports. The sweep itself is
interrupted end to end in test_study_sweep.py."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import pytest
from ray.tune.tune import _setup_signal_catching

from study.interrupt import StopSignals, TrialStatuses


def test_sigint_in_fit_becomes_tunes_stop_request_and_is_remembered():
    with StopSignals() as stop:
        with stop.fitting():
            tune_stopped = _setup_signal_catching()  # what tune.run does first
            os.kill(os.getpid(), signal.SIGINT)
            assert tune_stopped.is_set()  # Tune ends its loop, saves its state, returns
            assert stop.exit_code == 130 and stop.received is signal.SIGINT
            with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # Tune's spent handler gone
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_sigterm_outside_fit_stops_at_once_with_its_own_exit_code():
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.exit_code == 143


@dataclass
class TuneTrial:
    trial_id: str
    status: str


def test_statuses_are_read_before_tunes_clean_up_rewrites_them():
    seen = TrialStatuses()
    trials = [TuneTrial("done", "TERMINATED"), TuneTrial("failed", "ERROR"),
              TuneTrial("running", "RUNNING"), TuneTrial("queued", "PENDING"),
              TuneTrial("queued_before", "PENDING")]
    seen.on_trial_start(0, trials, trials[2])
    seen.on_step_end(7, trials)
    for trial in trials:  # what Tune's clean-up does after an interruption
        trial.status = "TERMINATED" if trial.status != "ERROR" else "ERROR"
    got = {t.trial_id: seen.status(t.trial_id, t.status, t.trial_id == "queued_before")
           for t in trials}
    assert got == {"done": "TERMINATED", "failed": "ERROR", "running": "INTERRUPTED",
                   "queued": "NOT_STARTED", "queued_before": "INTERRUPTED"}
