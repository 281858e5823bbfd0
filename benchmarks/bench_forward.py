"""Time one SPHINX-X forward pass on a single 1:1 image (and a 2:1 one, where skip tokens apply).

    .venv/bin/python benchmarks/bench_forward.py [--preset nano] [--repeats 10] [--threads 2]

Prints a table: preset, image size, visual tokens, encoded views, median ms per forward (no grad).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from sphinx_x.canvas import collate_images, prepare_image
from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.model import SphinxX


def time_forward(model: SphinxX, size: tuple[int, int], repeats: int, text_tokens: int = 32) -> tuple[int, int, float]:
    vision = model.config.vision
    views = prepare_image(Image.new("RGB", size, (200, 40, 40)), vision)
    images = collate_images([views], vision)
    n_vis = visual_token_count(*size, vision)
    ids = torch.tensor([[1] + [IMAGE_TOKEN_ID] * n_vis + list(range(3, 3 + text_tokens))])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, images=images)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, images=images)
            times.append(time.perf_counter() - t0)
    return n_vis, views.num_encoded, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SphinxX(SphinxXConfig.from_name(args.preset)).eval()
    print(f"| preset | image | visual tokens | encoded views | forward ms (median of {args.repeats}) |")
    print("|---|---|---|---|---|")
    for size in [(512, 512), (1024, 512)]:
        n_vis, n_views, ms = time_forward(model, size, args.repeats)
        print(f"| {args.preset} | {size[0]}x{size[1]} | {n_vis} | {n_views} | {ms:.1f} |")


if __name__ == "__main__":
    main()
