"""tuner.sampler grid: Optuna's GridSampler as Tune's OptunaSearch drives it (ask and tell).

Optuna's GridSampler calls ``Study.stop()`` after the trial that completes its grid; that only
works inside ``Study.optimize``, which Tune never runs (it asks and tells), so the last tell
would raise. Here the grid does not stop the study: Tune's ``num_samples`` (checked to be the
grid's size, ``study.config.check_grid``) ends the sweep after the last point.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.samplers import GridSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class TuneGridSampler(GridSampler):
    """Every combination of the searched choices once, in a seeded random order; never stops
    the Optuna study itself."""

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None
