"""Writing a transformers model's folder (``config.json`` + ``model.safetensors``) from any
process, as ``from_pretrained`` reads it."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from transformers import PreTrainedModel


def save_transformers_model(model: PreTrainedModel, folder: str | Path) -> Path:
    """Write what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``) from any
    process. transformers 5 skips the weights on every rank but 0 once torch.distributed is
    initialised — a preset built inside a DDP worker of rank > 0 would lack them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder
