"""Optional parts of the install: a command that needs one says which extra to install.

The core install (`pip install sphinx-x`) trains, evaluates and runs models; the extras of pyproject.toml add
the HTTP server (`serve`), the web demo (`demo`), the data-curation tools (`curate`), the lmms-eval adapter
(`lmms`), quantized inference (`quant`), LoRA (`lora`), the released SPHINX models' CLIP ViT expert
(`released`) and TensorBoard logging (`tensorboard`). README "Install" lists them.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require_extra(extra: str, module: str, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtraError saying that `feature` (default: the extra's name) needs
    `pip install 'sphinx-x[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{feature or extra} needs the '{top}' package, which is not installed: pip install 'sphinx-x[{extra}]'"
        ) from e
