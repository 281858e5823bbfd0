"""Quantized inference against full precision: speed, weight memory, agreement of logits and greedy answers.

    python benchmarks/bench_quantize.py [--sizes nano,100m] [--model DIR ...] [--methods int8,...] [--reps 5]

Models: `nano` and a ~100M-parameter LLM on nano's vision side (random weights, the LLM's matrices re-drawn
with std 0.08 * sqrt(256 / hidden) as tests/helpers_infer.py does for nano, so that greedy answers depend on
the input), and any trained model directory given with --model (e.g. the quickstart's). Prompts: synth-bench
test questions with their images (sphinx_x/data/synth). For each method (sphinx_x/infer/quantize.py):
- prefill: prompt tokens per second of one forward over the prompt (batch 1);
- decode: generated tokens per second after the first (the generation loop of sphinx_x/infer/generate.py,
  greedy, batch 1, a fixed number of new tokens);
- weight memory: bytes of the LLM's weights (int8/scales counted as stored) and of the whole model;
- agreement with float32: logits of every prompt position (max and mean absolute difference, share of
  positions with the same top-1 token) and greedy answers (share identical, share of ids equal).
Times are the best of --reps runs, methods interleaved (the machine is shared: the best run is the one
least disturbed). Prints a markdown table (docs/quantization.md holds one).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from sphinx_x.canvas import collate_images
from sphinx_x.config import SphinxXConfig
from sphinx_x.data.synth.corpus import make_sample
from sphinx_x.infer.generate import decode_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import PromptEncoder, user_turn
from sphinx_x.infer.quantize import quantize_model
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import load_tokenizer

LLM_SIZES = {
    "nano": {},
    "100m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2560),
}


# ---- models ----------------------------------------------------------------------------------------
def build_random(size: str) -> SphinxX:
    config = SphinxXConfig.from_name("nano")
    for k, v in LLM_SIZES[size].items():
        setattr(config.llm, k, v)
    torch.manual_seed(0)
    model = SphinxX(config)
    std = 0.08 * (256 / config.llm.hidden_size) ** 0.5
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() >= 2:
                p.normal_(0, std)
    model.tokenizer = load_tokenizer("nano")
    return model.eval()


def tensor_bytes(t: object) -> int:
    """Bytes as stored: quantized tensors with their scales, torchao tensor subclasses by their inner tensors."""
    if isinstance(t, (tuple, list)):
        return sum(tensor_bytes(x) for x in t)
    if not isinstance(t, torch.Tensor):
        return 0
    if t.is_quantized:
        extra = 0
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            extra = tensor_bytes(t.q_per_channel_scales()) + tensor_bytes(t.q_per_channel_zero_points())
        return t.numel() * t.element_size() + extra
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for value in module.state_dict(keep_vars=True).values():
        key = id(value)
        if key not in seen:  # tied weights once
            seen.add(key)
            total += tensor_bytes(value)
    return total


# ---- measurements ----------------------------------------------------------------------------------
def prompts_for(model: SphinxX, n: int) -> list:
    encoder = PromptEncoder.for_model(model)
    out = []
    for i in range(n):
        sample = make_sample(0, "test", i)
        images = [sample.image] if sample.image is not None else []
        out.append(encoder.encode([user_turn(sample.turns[0][0], images)]))
    return out


def prompt_logits(model: SphinxX, prompts: list) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for p in prompts:
            images = collate_images(p.images, model.config.vision)
            rows.append(model(torch.tensor([p.input_ids]), images=images).logits[0].float())
    return torch.cat(rows)


def greedy_ids(model: SphinxX, prompts: list, new_tokens: int) -> list[list[int]]:
    config = GenerationConfig(max_new_tokens=new_tokens)
    out = []
    for p in prompts:
        for events in decode_batch(model, [p], config):
            if events and events[0].done is not None:
                out.append(events[0].done.token_ids)
    return out


def time_prefill(model: SphinxX, prompt) -> float:
    images = collate_images(prompt.images, model.config.vision)
    ids = torch.tensor([prompt.input_ids])
    with torch.inference_mode():
        start = time.perf_counter()
        model(ids, images=images, use_cache=True, logits_to_keep=1)
        return len(prompt.input_ids) / (time.perf_counter() - start)


def time_decode(model: SphinxX, prompt, new_tokens: int) -> float:
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    steps, first = 0, None
    for _ in decode_batch(model, [prompt], config):
        steps += 1
        if first is None:
            first = time.perf_counter()  # after the prefill and the first token
    return (steps - 1) / (time.perf_counter() - first)


def measure(name: str, base: SphinxX, methods: list[str], args: argparse.Namespace) -> list[dict]:
    prompts = prompts_for(base, args.prompts)
    models = {"float32": base}
    for method in methods:
        models[method] = quantize_model(copy.deepcopy(base), method)
    ref_logits = prompt_logits(base, prompts)
    ref_ids = greedy_ids(base, prompts, args.new_tokens)
    rows = {m: dict(model=name, method=m, prefill=0.0, decode=0.0) for m in models}
    for m, model in models.items():
        logits = prompt_logits(model, prompts)
        ids = ref_ids if m == "float32" else greedy_ids(model, prompts, args.new_tokens)
        diff = (logits - ref_logits).abs()
        same_ids = sum(sum(a == b for a, b in zip(x, y)) for x, y in zip(ids, ref_ids))
        rows[m].update(
            llm_mb=weight_bytes(model.llm) / 2**20, model_mb=weight_bytes(model) / 2**20,
            max_diff=diff.max().item(), mean_diff=diff.mean().item(),
            top1=(logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
            answers_same=sum(x == y for x, y in zip(ids, ref_ids)) / len(ids),
            ids_same=same_ids / max(1, sum(len(y) for y in ref_ids)),
        )
    for _ in range(args.reps):  # interleaved: a burst of load elsewhere hits every method alike
        for m, model in models.items():
            rows[m]["prefill"] = max(rows[m]["prefill"], time_prefill(model, prompts[0]))
            rows[m]["decode"] = max(rows[m]["decode"], time_decode(model, prompts[0], args.new_tokens))
    return list(rows.values())


def print_header() -> None:
    print("| model | method | LLM weights MB | model MB | prefill tok/s | decode tok/s | logits max / mean abs diff "
          "| top-1 same | greedy answers same | answer ids same |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|", flush=True)


def print_rows(rows: list[dict]) -> None:
    """One model's rows, printed as soon as they are measured (a long run shows progress)."""
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['llm_mb']:.1f} | {r['model_mb']:.1f} | {r['prefill']:.0f} | "
              f"{r['decode']:.1f} | {r['max_diff']:.3f} / {r['mean_diff']:.4f} | {r['top1']:.1%} | "
              f"{r['answers_same']:.0%} | {r['ids_same']:.1%} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="nano,100m", help=f"random models: {', '.join(LLM_SIZES)} (empty: none)")
    p.add_argument("--model", action="append", default=[], metavar="DIR", help="a trained model directory too")
    p.add_argument("--methods", default="int8,int8-weight-only,int8-dynamic")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    print(f"torch {torch.__version__}, {args.threads} thread(s), quantized engine {torch.backends.quantized.engine}, "
          f"best of {args.reps}, {args.prompts} prompts, {args.new_tokens} new tokens\n")
    print_header()
    for directory in args.model:
        print_rows(measure(f"{Path(directory).name} (trained)", SphinxX.from_pretrained(directory), methods, args))
    for size in [s for s in args.sizes.split(",") if s]:
        base = build_random(size)
        n = sum(p.numel() for p in base.llm.parameters()) / 1e6
        print_rows(measure(f"{size} (random, LLM {n:.0f}M)", base, methods, args))


if __name__ == "__main__":
    main()
