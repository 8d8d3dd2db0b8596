"""An interrupted sweep tells the truth: which signal stopped it, which trials were cut short and
which never started.

Ray Tune (``tune.run``, Ray 2.60) replaces the SIGINT handler during ``Tuner.fit()`` with its own:
the first SIGINT sets an event, the tuning loop stops, the experiment state is saved, and then
its clean-up marks every trial that still has an actor TERMINATED, including one that was only
being scheduled; ``fit()`` returns a ResultGrid as if the sweep had finished. So the driver
keeps SIGINT itself (``TUNE_DISABLE_SIGINT_HANDLER``), remembers the signal, and asks Tune to
stop through the handler Tune always installs for SIGUSR1; and it reads the trials' statuses at
the end of Tune's last step (``TrialStatuses``), before that clean-up rewrites them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)
# exit status of a sweep stopped by each signal (128 + the signal number, as a shell reports it)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
FINISHED = ("TERMINATED", "ERROR")  # statuses of trials that ran to their end
INTERRUPTED, NOT_STARTED = "INTERRUPTED", "NOT_STARTED"  # the others, in summary.json


class StopSignals:
    """While active, SIGINT and SIGTERM are remembered (``received``). Inside ``fitting()``
    they are passed on to ``Tuner.fit()`` as Tune's own stop request (Tune saves its state and
    returns); anywhere else, or at a second signal, they raise ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._tune_env: str | None = None
        self._fitting = False
        self._usr1_outside_fit: Any = None  # SIGUSR1's handler before fit() installed Tune's

    def __enter__(self) -> StopSignals:
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune keeps SIGUSR1 for itself
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._tune_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_env

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """Around ``Tuner.fit()``; afterwards SIGUSR1 gets its handler back (Tune leaves its
        own, spent, in place)."""
        self._usr1_outside_fit = signal.getsignal(signal.SIGUSR1)
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            signal.signal(signal.SIGUSR1, self._usr1_outside_fit)

    @property
    def exit_code(self) -> int | None:
        """130 after SIGINT, 143 after SIGTERM, None when no signal came."""
        return EXIT_CODES[self.received] if self.received is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1)
        in_fit = self._fitting and tune_stop is not self._usr1_outside_fit  # Tune's is set
        if not first or not in_fit or not callable(tune_stop):
            raise KeyboardInterrupt
        log.warning("%s: the sweep stops once Ray Tune has saved its state (send it again to "
                    "stop at once); continue it later with --resume", self.received.name)
        tune_stop(signum, frame)


class TrialStatuses(Callback):
    """Each trial's status at the end of every Tune step, and which trials this driver started.
    After an interruption, the last step's statuses are the true ones (Tune's clean-up marks
    the rest TERMINATED afterwards)."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.started: set[str] = set()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.last = {t.trial_id: t.status for t in trials}

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.started.add(trial.trial_id)

    def status(self, trial_id: str, reported: str, started_before: bool) -> str:
        """The summary status of one trial: TERMINATED or ERROR when it ran to its end;
        INTERRUPTED when it had started (here, or in an earlier run of the driver:
        ``started_before``) and did not end; NOT_STARTED when it never started. ``reported``:
        the status Tune gave after ``fit()`` (used when no step saw the trial)."""
        status = self.last.get(trial_id, reported)
        if status in FINISHED:
            return status
        return INTERRUPTED if trial_id in self.started or started_before else NOT_STARTED


def unfinished(statuses: Iterable[str]) -> int:
    """How many trials did not run to their end."""
    return sum(status not in FINISHED for status in statuses)
