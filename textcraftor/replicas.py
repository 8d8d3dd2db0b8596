"""Data-parallel replicas that stay identical: every trained parameter, on every rank.

Why not ``torch.nn.parallel.DistributedDataParallel``: its reducer assumes one forward per
backward of the wrapped module. Here the UNet (when it trains) runs K checkpointed forwards per
backward — reentrant checkpointing re-runs each forward inside backward — and the text encoder,
the UNet and a LoRA adapter are separate modules that would each need their own wrapper; a
module left unwrapped (the UNet, a LoRA, a frozen encoder) trained on its own rank's gradients
and drifted apart (issue 17). So the set of synchronised tensors is exactly the optimizer's
parameters, whatever module they live in:

1. ``broadcast_from_first`` copies rank 0's values to every rank once (a LoRA adapter is
   initialised from each rank's own RNG);
2. ``average_gradients`` all-reduces the accumulated gradients once per optimizer step, before
   unscaling and clipping, so the clip coefficient, the non-finite check and the AdamW update
   are computed from the same numbers on every rank;
3. ``check_identical`` compares a fingerprint of every parameter across ranks (at checkpoints)
   and raises if they ever differ.

What is lost against DDP: overlap of the all-reduce with the backward pass. Against a step of
several seconds (the paper's setting), one all-reduce of the text encoder's 123 M gradients is
small; buckets keep the extra memory at ``BUCKET_ELEMENTS`` floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 1 << 23  # gradient elements per all-reduce (32 MiB of fp32), like DDP's buckets


class ReplicaDivergenceError(RuntimeError):
    """Trained parameters differ between ranks: the replicas are no longer one model."""


class Replicas:
    """The trained parameters of one rank, kept identical to every other rank's.

    ``named_parameters``: (name, parameter) of everything the optimizer updates, in the same
    order on every rank. Without an initialised process group of more than one rank every
    method does nothing.
    """

    def __init__(self, named_parameters: Sequence[tuple[str, torch.nn.Parameter]],
                 world_size: int):
        self.names = [name for name, _ in named_parameters]
        self.parameters = [p for _, p in named_parameters]
        self.world_size = world_size
        self.active = world_size > 1 and dist.is_available() and dist.is_initialized()

    @torch.no_grad()
    def broadcast_from_first(self) -> None:
        """Every rank takes rank 0's parameter values (collective: call on every rank)."""
        if not self.active:
            return
        for bucket in _buckets(self.parameters):
            flat = torch.cat([p.reshape(-1) for p in bucket])
            dist.broadcast(flat, src=0)
            _unflatten_into(flat, bucket)

    @torch.no_grad()
    def average_gradients(self) -> None:
        """Replace each parameter's gradient by its mean over the ranks (collective). A
        parameter without a gradient on this rank counts as zeros, so every rank sends the same
        buckets whatever its own graph touched."""
        if not self.active:
            return
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(self.parameters):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            _unflatten_into(flat, [p.grad for p in bucket])

    @torch.no_grad()
    def check_identical(self) -> None:
        """Raise ``ReplicaDivergenceError`` naming the parameters whose values differ between
        ranks (collective). The fingerprint per parameter is (sum, sum of squares, sum of
        |x|·index) in float64: any difference a training step can make shows in it."""
        if not self.active or not self.parameters:
            return
        fingerprints = torch.stack([_fingerprint(p) for p in self.parameters])
        gathered = [torch.empty_like(fingerprints) for _ in range(self.world_size)]
        dist.all_gather(gathered, fingerprints)
        differing = {self.names[i] for other in gathered[1:]
                     for i in torch.nonzero((other != gathered[0]).any(dim=1)).flatten().tolist()}
        if differing:
            names = sorted(differing)
            raise ReplicaDivergenceError(
                f"trained parameters differ between the {self.world_size} ranks: "
                f"{', '.join(names[:5])}{' …' if len(names) > 5 else ''} ({len(names)} of "
                f"{len(self.names)}); every rank must start from and apply the same update")


def mean_over_ranks(values: torch.Tensor) -> list[float]:
    """``values`` averaged over the ranks (one all-reduce; as is without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / dist.get_world_size()
    return values.tolist()


def from_first_rank(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a broadcast of a picklable object)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _fingerprint(p: torch.Tensor) -> torch.Tensor:
    x = p.detach().reshape(-1).to(torch.float64)
    index = torch.arange(1, x.numel() + 1, dtype=torch.float64, device=x.device)
    return torch.stack([x.sum(), (x * x).sum(), (x.abs() * index).sum()]).cpu()


def _buckets(tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive groups of one dtype and device, each up to ``BUCKET_ELEMENTS`` elements (a
    larger tensor is a bucket on its own)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1] if buckets else None
        if (last is None or size + t.numel() > BUCKET_ELEMENTS
                or (last[0].dtype, last[0].device) != (t.dtype, t.device)):
            buckets.append([t])
            size = t.numel()
        else:
            last.append(t)
            size += t.numel()
    return buckets


def _unflatten_into(flat: torch.Tensor, targets: Sequence[torch.Tensor]) -> None:
    offset = 0
    for t in targets:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
