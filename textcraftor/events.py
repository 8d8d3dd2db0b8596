"""What a run tells its caller: events through a callback, and the one way it stops early."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (or, without fp16 loss scaling, a gradient did); the run stopped
    before the optimizer step. Under fp16 an overflowing gradient is the loss scaler's to skip."""


@dataclass(frozen=True)
class TrainEvent:
    kind: str  # "step" | "eval" | "checkpoint" | "end"
    step: int  # optimizer steps done
    metrics: Mapping[str, float] = field(default_factory=dict)
    path: str | None = None  # checkpoint folder ("checkpoint", rank 0 only)


TrainCallback = Callable[[TrainEvent], None]
