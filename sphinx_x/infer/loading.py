"""Loading a model directory for inference: the device and dtype defaults, and the tokenizer it needs.

The CLI (sphinx_x/commands/cli_args.py) and library callers share these defaults: cuda when available,
else cpu; bfloat16 weights on cuda, the stored dtype (float32) on cpu.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """The default device: "cuda" when a GPU is available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_inference(directory: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
                       quantize: str | None = None) -> Any:
    """`SphinxX.from_pretrained(directory)` on `device` (default: cuda if available, else cpu) in `dtype` (a name
    of DTYPES or a torch dtype; default bfloat16 on cuda, as stored on cpu), its LLM quantized with `quantize`
    (sphinx_x/infer/quantize.py; None: full precision). Raises FileNotFoundError or ValueError when `directory`
    is not a model directory or holds no tokenizer files (inference needs them), or `quantize` cannot run."""
    from sphinx_x.model import SphinxX

    device = device or default_device()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype is None and device.startswith("cuda"):
        dtype = torch.bfloat16
    model = SphinxX.from_pretrained(directory, device=device, dtype=dtype, quantize=quantize)
    if model.tokenizer is None:
        raise ValueError("the model directory holds no tokenizer files (inference needs them)")
    return model
