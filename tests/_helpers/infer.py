"""A nano model directory for inference and serving tests, plus small images.

`sphinx-x init nano` weights (std 0.02) make every greedy step pick the same token, so equality tests
would pass trivially; `make_model_dir` re-draws the LLM matrices with a larger std (seeded) so greedy
outputs vary with the prompt and the images, then saves the directory like `init` does.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sphinx_x.commands.init import init_model
from sphinx_x.model import SphinxX


def make_model_dir(out: Path, seed: int = 0) -> Path:
    init_model("nano", str(out), seed)
    model = SphinxX.from_pretrained(out)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08, generator=g)
    model.save_pretrained(out)
    return out


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_uri(img: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()
