"""Inference benchmark: time-to-first-token and decode tokens/s, then server requests/s.

    python benchmarks/bench_infer.py [--device cuda] [--new-tokens 32] [--requests 8]

Models are randomly initialised (speed does not depend on the weights): `nano` and a ~100M-parameter
LLM on nano's vision experts. Every sample decodes exactly `--new-tokens` tokens (no EOS / stop strings).
TTFT = prefill (vision encoders + LLM over the prompt) + the first token; decode tokens/s counts every
sample's tokens after the first. The server part starts the real app on 127.0.0.1 and measures completed
requests/s with 1, 4 and 16 concurrent clients (each client sends `--requests` requests, one image each).
"""

from __future__ import annotations

import argparse
import base64
import io
import threading
import time

import numpy as np
import torch
from PIL import Image

from sphinx_x.config import SphinxXConfig
from sphinx_x.infer.chat import encode
from sphinx_x.infer.generate import decode_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import load_tokenizer

# ~100M: a 12-layer, 768-wide Llama (GQA 12/4) on the nano vision experts and tokenizer.
LLM_100M = dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2560)
ASPECTS = {"1:1": (256, 256), "2:1": (256, 128)}


def build(name: str, device: str, dtype: torch.dtype) -> SphinxX:
    config = SphinxXConfig.from_name("nano")
    if name == "100m":
        for k, v in LLM_100M.items():
            setattr(config.llm, k, v)
    torch.manual_seed(0)
    with torch.device(device):
        model = SphinxX(config)
    model.tokenizer = load_tokenizer("nano")
    return model.to(dtype).eval()


def image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_generation(model: SphinxX, batch: int, aspect: str, new_tokens: int, device: str) -> tuple[float, float]:
    w, h = ASPECTS[aspect]
    prompts = [encode(model, {"question": f"Describe image {i}.", "images": image(w, h, i)}) for i in range(batch)]
    cfg = GenerationConfig(max_new_tokens=new_tokens, stop_strings=(), eos_token_id=-1)
    for _ in decode_batch(model, prompts[:1], GenerationConfig(max_new_tokens=2, stop_strings=())):
        pass  # warm-up
    sync(device)
    start = time.perf_counter()
    first = None
    for _ in decode_batch(model, prompts, cfg):
        if first is None:
            sync(device)
            first = time.perf_counter()
    sync(device)
    end = time.perf_counter()
    return first - start, batch * (new_tokens - 1) / max(end - first, 1e-9)


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def server_throughput(model: SphinxX, clients: int, per_client: int, max_tokens: int) -> tuple[float, int]:
    import httpx

    from sphinx_x.serve.runner import BackgroundServer
    from sphinx_x.serve.settings import ServerSettings

    uri = data_uri(image(256, 256, 0))
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe it."},
                                                      {"type": "image_url", "image_url": {"url": uri}}]}],
            "max_tokens": max_tokens}
    failures = []
    with BackgroundServer(model, ServerSettings(batch_size=8, batch_wait_s=0.005)) as srv:
        url = srv.base_url + "/v1/chat/completions"

        def client() -> None:
            with httpx.Client(timeout=600) as c:
                for _ in range(per_client):
                    r = c.post(url, json=body)
                    if r.status_code != 200:
                        failures.append(r.status_code)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        largest = srv.app.state.engine.largest_batch
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed: {sorted(set(failures))}")
    return clients * per_client / elapsed, largest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per server client")
    p.add_argument("--server-max-tokens", type=int, default=16)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                           else torch.float32)
    cpu = f"cpu ({torch.get_num_threads()} threads)"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"device: {device_name}, dtype: {str(dtype).removeprefix('torch.')}, new tokens: {args.new_tokens}\n")
    print("| model | params | batch | image | prompt tokens/sample | TTFT (ms) | decode tokens/s |")
    print("|---|---|---|---|---|---|---|")
    models = {}
    for name_ in ("nano", "100m"):
        model = models[name_] = build(name_, args.device, dtype)
        params = model.parameter_counts()["total"] / 1e6
        for batch in (1, 8):
            for aspect in ASPECTS:
                w, h = ASPECTS[aspect]
                n = len(encode(model, {"question": "Describe image 0.", "images": image(w, h, 0)}).input_ids)
                ttft, tps = time_generation(model, batch, aspect, args.new_tokens, args.device)
                print(f"| {name_} | {params:.1f}M | {batch} | {aspect} | {n} | {ttft * 1000:.1f} | {tps:.1f} |",
                      flush=True)
    print("\n| server model | concurrent clients | requests | requests/s | largest batch |")
    print("|---|---|---|---|---|")
    for clients in (1, 4, 16):
        rps, largest = server_throughput(models["nano"], clients, args.requests, args.server_max_tokens)
        print(f"| nano | {clients} | {clients * args.requests} | {rps:.2f} | {largest} |", flush=True)


if __name__ == "__main__":
    main()
