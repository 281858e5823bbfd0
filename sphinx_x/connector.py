"""The connector: the weights between the vision experts and the LLM, i.e. the projector(s) and the image tags
(start, end, skip). Saved on its own so a later run can start from an earlier one's (config `connector`), as
LLaVA's second stage starts from the first stage's projector (`pretrain_mm_mlp_adapter`).

The stand-in sets use it (docs/standins.md): the LLM's lookup warm-up learns its lookups through a projector,
and the one-stage run that starts from that projector keeps them, where a freshly drawn one loses one lookup in
some seeds (docs/experiments.md, stop 35).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sphinx_x.errors import CheckpointError

TAGS = ("image_start", "image_end", "skip_token")
PROJECTOR_PREFIXES = ("visual.projector.", "visual.own_projectors.")


def is_connector_key(name: str) -> bool:
    return name in TAGS or name.startswith(PROJECTOR_PREFIXES)


def connector_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The connector's tensors of a SphinxX model (detached, on the CPU), by their names in the model."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_connector_key(k)}


def save_connector(model: nn.Module, path: str | Path) -> Path:
    """Write `connector_state(model)` to `path` (safetensors, atomically)."""
    from safetensors.torch import save_file

    from sphinx_x.fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(connector_state(model), str(tmp), metadata={"format": "pt", "content": "sphinx-x connector"})
    return path


def load_connector(model: nn.Module, path: str | Path) -> None:
    """Copy the connector weights in `path` (as `save_connector` writes them) into `model`. The file must hold
    exactly the model's connector tensors with its shapes; anything else is an error naming the file."""
    from sphinx_x.experts.base import first_keys
    from sphinx_x.fileio import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"connector {path}: no such file")
    state = read_state_dict(path, "connector weights file")
    own = {k: v for k, v in model.state_dict(keep_vars=True).items() if is_connector_key(k)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        parts = [f"missing {len(missing)}: {first_keys(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}: {first_keys(unexpected)}" if unexpected else ""]
        raise CheckpointError(f"connector {path}: keys do not match the model's projector and image tags "
                              f"({'; '.join(p for p in parts if p)})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"connector {path}: shapes do not match the model's (stored vs built): "
                              f"{first_keys(wrong, 3)}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))
