"""Serving under load: `sphinx-x serve` driven by the official `openai` client at 1, 16 and 64 concurrent
clients, for the continuous-batching engine and the static one it replaced.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_serve_load.py [--engines static continuous]
        [--clients 1 16 64] [--requests-per-client 2] [--min-requests 8] [--out results.json]

The server is the real command in its own process (`python -m sphinx_x.cli serve --engine ...`, one torch
thread) on a randomly initialised `nano` model (speed does not depend on the weights). The request mix is
the same list for both engines: every second request carries one image (data: URI, 1:1 or 2:1), prompts
of different lengths, answer lengths cycling through `--lengths` and fixed with `min_tokens = max_tokens`
(the server's extension: EOS cannot end an answer early), and every fourth request streams. Greedy
decoding gives both engines the same answers, so they do the same work; the table prints the tokens
generated to show it. A client that gets a 429 counts it and retries after `--retry-s` (as a real client
would); latency is from the first attempt to the last byte. Reported per engine and client count:
requests/s, completion tokens/s, p50 and p99 latency, errors by kind, and the load average of the
machine before and after (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import openai
from PIL import Image

QUESTIONS = ["What is this?", "Describe the picture in detail, the colours, the shapes and where they are.",
             "Count the objects.", "Write a short caption for a photo album about a trip to the mountains."]


def image_uri(w: int, h: int, seed: int) -> str:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_mix(n: int, lengths: list[int]) -> list[dict]:
    """The n requests of one run: the same list for every engine."""
    out = []
    for i in range(n):
        content: list[dict] = [{"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]
        if i % 2 == 0:
            w, h = (128, 128) if i % 4 == 0 else (256, 128)
            content.append({"type": "image_url", "image_url": {"url": image_uri(w, h, i)}})
        tokens = lengths[i % len(lengths)]
        out.append({"messages": [{"role": "user", "content": content}], "max_tokens": tokens,
                    "extra_body": {"min_tokens": tokens}, "stream": i % 4 == 3})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sphinx-x serve` in a child process; `with Server(...) as url:`."""

    def __init__(self, model_dir: Path, engine: str, batch_size: int, max_queue: int, log: Path):
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "sphinx_x.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
                    "--engine", engine, "--batch-size", str(batch_size), "--max-queue", str(max_queue),
                    "--model-name", "nano"]
        self.log = log

    def __enter__(self) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.proc.kill()
        raise RuntimeError(f"the server did not become healthy:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(client: openai.OpenAI, req: dict, retry_s: float, errors: Counter, lock: threading.Lock
                ) -> tuple[float, int] | None:
    """(latency, completion tokens), or None when it failed with something other than a 429."""
    start = time.perf_counter()
    while True:
        try:
            if req["stream"]:
                tokens = 0
                stream = client.chat.completions.create(model="nano", messages=req["messages"],
                                                        max_tokens=req["max_tokens"], extra_body=req["extra_body"],
                                                        stream=True, stream_options={"include_usage": True})
                for c in stream:
                    if c.usage is not None:
                        tokens = c.usage.completion_tokens
            else:
                r = client.chat.completions.create(model="nano", messages=req["messages"],
                                                   max_tokens=req["max_tokens"], extra_body=req["extra_body"])
                tokens = r.usage.completion_tokens
            return time.perf_counter() - start, tokens
        except openai.RateLimitError:
            with lock:
                errors["429"] += 1
            time.sleep(retry_s)
        except Exception as e:  # counted by kind; the request is lost
            with lock:
                errors[getattr(e, "status_code", None) or type(e).__name__] += 1
            return None


def run_load(url: str, requests: list[dict], clients: int, retry_s: float) -> dict:
    """`clients` threads take requests from the shared list until it is empty."""
    todo = list(reversed(requests))
    lock = threading.Lock()
    errors: Counter = Counter()
    results: list[tuple[float, int]] = []

    def client_loop() -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        while True:
            with lock:
                if not todo:
                    return
                req = todo.pop()
            out = one_request(client, req, retry_s, errors, lock)
            if out is not None:
                with lock:
                    results.append(out)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = np.array([r[0] for r in results]) if results else np.array([float("nan")])
    return {"clients": clients, "requests": len(requests), "completed": len(results), "wall_s": wall,
            "requests_per_s": len(results) / wall, "tokens": sum(r[1] for r in results),
            "tokens_per_s": sum(r[1] for r in results) / wall, "p50_s": float(np.percentile(latencies, 50)),
            "p99_s": float(np.percentile(latencies, 99)), "errors": dict(errors),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def table(rows: list[dict]) -> str:
    lines = ["| engine | clients | requests | tokens | requests/s | tokens/s | p50 latency s | p99 latency s | "
             "errors by kind | load avg (before/after) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items(), key=str)) or "none"
        lines.append(f"| {r['engine']} | {r['clients']} | {r['completed']}/{r['requests']} | {r['tokens']} | "
                     f"{r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | "
                     f"{errors} | {r['load_before']:.2f}/{r['load_after']:.2f} |")
    return "\n".join(lines)


def speedups(rows: list[dict]) -> str:
    by = {(r["engine"], r["clients"]): r for r in rows}
    lines = []
    for clients in sorted({r["clients"] for r in rows}):
        old, new = by.get(("static", clients)), by.get(("continuous", clients))
        if old and new:
            lines.append(f"- {clients} clients: continuous / static = {new['tokens_per_s'] / old['tokens_per_s']:.2f}x "
                         f"tokens/s, {new['requests_per_s'] / old['requests_per_s']:.2f}x requests/s, "
                         f"p99 {new['p99_s']:.2f} s vs {old['p99_s']:.2f} s")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", nargs="+", default=["static", "continuous"], choices=["static", "continuous"])
    p.add_argument("--clients", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=8, help="requests of a run with few clients")
    p.add_argument("--lengths", nargs="+", type=int, default=[8, 64, 16, 32], help="answer lengths, cycled")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--retry-s", type=float, default=0.5, help="a client's wait after a 429")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args()

    from sphinx_x.commands.init import init_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "nano"
        init_model("nano", str(model_dir), seed=0)
        for engine in args.engines:
            with Server(model_dir, engine, args.batch_size, args.max_queue, Path(tmp) / f"{engine}.log") as url:
                warm = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
                one_request(warm, request_mix(2, [4])[0], 0.1, Counter(), threading.Lock())  # first-call costs
                for clients in args.clients:
                    n = max(args.min_requests, clients * args.requests_per_client)
                    row = {"engine": engine, **run_load(url, request_mix(n, args.lengths), clients, args.retry_s)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\nmachine: {os.cpu_count()} CPUs; server: one process, OMP_NUM_THREADS=1, batch size {args.batch_size}, "
          f"queue {args.max_queue}\n")
    print(table(rows))
    print()
    print(speedups(rows))
    if args.out is not None:
        tmp_out = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp_out.write_text(json.dumps(rows, indent=1))
        os.replace(tmp_out, args.out)


if __name__ == "__main__":
    main()
