"""Hooks on a trainer's UNet that record, for every call, whether it ran in the forward pass or
as a gradient-checkpoint recomputation during backward (a tensor hook on the loss marks the start
of backward), whether its input and output carry gradient, its timestep and the text context it
was conditioned on: what tests count gradient flow on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Call:
    backward: bool  # a checkpoint recomputation during backward
    grad_enabled: bool  # autograd was recording when the call started
    context: torch.Tensor  # encoder_hidden_states of the call
    input_grad: bool  # the latents the UNet got require grad (DRTune: never)
    timestep: float  # the call's timestep
    grad: bool | None = None  # the output requires grad (None: the call did not finish — a
    #                           non-reentrant recomputation stops once it has what it needs)


class UNetCalls:
    """Records every UNet call of a trainer; ``arm(loss)`` marks where backward starts."""

    def __init__(self, trainer, monkeypatch):
        self.calls: list[Call] = []
        self.in_backward = False
        unet = trainer.pipeline.unet
        unet.register_forward_pre_hook(self._start, with_kwargs=True)
        unet.register_forward_hook(self._finish)
        objective_forward = trainer.objective.forward

        def forward(images, prompts):  # the real objective, with backward marked on its loss
            loss, scores = objective_forward(images, prompts)
            self.arm(loss)
            return loss, scores

        monkeypatch.setattr(trainer.objective, "forward", forward)

    def _start(self, module, args, kwargs):
        self.calls.append(Call(self.in_backward, torch.is_grad_enabled(),
                               kwargs["encoder_hidden_states"].detach().clone(),
                               args[0].requires_grad, float(args[1].reshape(-1)[0])))

    def _finish(self, module, args, output):
        self.calls[-1].grad = output[0].requires_grad

    def arm(self, loss: torch.Tensor) -> None:
        self.in_backward = False
        loss.register_hook(lambda grad: setattr(self, "in_backward", True))

    def take(self) -> tuple[list[Call], list[Call]]:
        """(forward calls, backward recomputations) since the last take."""
        calls, self.calls = self.calls, []
        self.in_backward = False
        return [c for c in calls if not c.backward], [c for c in calls if c.backward]


def grad_pattern(calls: list[Call]) -> list[bool]:
    return [c.grad for c in calls]
