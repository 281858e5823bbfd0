"""Host memory of loading a model directory and of FSDP setup: peak RSS per process / per rank.

    python benchmarks/bench_fsdp_memory.py make DIR [--hidden 2048 --layers 16 --vocab 32000 --dtype bf16]
    python benchmarks/bench_fsdp_memory.py load DIR [--dtype fp32|bf16|auto]     # one process, from_pretrained
    torchrun --nproc_per_node 2 benchmarks/bench_fsdp_memory.py fsdp DIR [--precision bf16]

`make` writes a randomly initialised model directory shaped like a preset (the `nano` vision front end
and a Llama of about 1B parameters by default, stored in bf16 as converted models are). `load` measures
`SphinxX.from_pretrained` alone. `fsdp` runs what the trainer does before its first step under
torchrun (gloo on CPU): build the model from `model.path=DIR`, then shard it with FSDP2; each rank
prints its peak RSS (getrusage ru_maxrss, which includes the interpreter, torch and the modules the build
imports: the baseline, read before building), the bytes of its own parameter shards, the peak over
baseline + shard, one decoder layer's bytes (the target: the excess stays about one layer), and the
whole model's bytes for scale. `fsdp --preset` starts from
DIR/preset.json (written by `make`) as a preset instead (random init: rank 0 builds the model, the
others receive their shards).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

GIB = 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def current_rss_gib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def make(args) -> None:
    from sphinx_x.config import PRESETS, SphinxXConfig, deep_merge
    from sphinx_x.model import SphinxX

    llm = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.hidden // 128,
           "num_kv_heads": args.hidden // 128, "intermediate_size": int(args.hidden * 2.6875) // 64 * 64,
           "vocab_size": args.vocab, "tie_word_embeddings": False}
    config = SphinxXConfig.from_dict(deep_merge(PRESETS["nano"], {"name": "bench-1b", "llm": llm}))
    model = SphinxX.from_config_without_weights(config)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights without transformers' (slow) init; the values do not matter here
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    model.llm.tie_weights()
    from sphinx_x.model_io import _rebuild_non_persistent_buffers

    _rebuild_non_persistent_buffers(model, "cpu")
    model.to({"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype])
    model.save_pretrained(args.dir, max_shard_bytes=args.shard_mb * 2**20)
    (Path(args.dir) / "preset.json").write_text(json.dumps(config.to_dict(), indent=2))  # for `fsdp --preset`
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.dir}: {n / 1e9:.3f}B parameters, {args.dtype}")


def load(args) -> None:
    from sphinx_x.model import SphinxX

    torch.set_num_threads(1)
    base = peak_rss_gib()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "auto": "auto"}[args.dtype]
    t0 = time.perf_counter()
    model = SphinxX.from_pretrained(args.dir, dtype=dtype) if dtype is not None else SphinxX.from_pretrained(args.dir)
    dt = time.perf_counter() - t0
    with torch.no_grad():  # read every weight once: tensors mapped from the files count once touched
        checksum = sum(float(p.float().sum()) for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    print(json.dumps({"dtype": args.dtype, "model_gib": round(size, 3), "peak_rss_gib": round(peak_rss_gib(), 3),
                      "rss_before_load_gib": round(base, 3), "load_s": round(dt, 1), "checksum": round(checksum, 3)}))


def fsdp(args) -> None:
    from sphinx_x.train import distributed as D
    from sphinx_x.train.config import load_train_config

    source = f"--model.preset={args.dir}/preset.json" if args.preset else f"--model.path={args.dir}"
    cfg = load_train_config(None, [source, f"--train.precision={args.precision}",
                                   "--train.device=cpu", "--train.cpu_threads=1"])
    info = D.init_distributed("cpu")
    torch.set_num_threads(1)
    import timm  # noqa: F401 - the modules the build imports, loaded before the baseline is read
    import transformers.models.llama.modeling_llama  # noqa: F401

    import sphinx_x.model  # noqa: F401
    base = current_rss_gib()
    t0 = time.perf_counter()
    from sphinx_x.train import build

    if hasattr(build, "build_training_model"):
        model, _ = build.build_training_model(cfg, info)
    else:  # the code before meta-device loading: every rank builds the whole model, then shards it
        model, _ = build.build_model(cfg)
        D.apply_fsdp(model, info, cfg.train.precision == "bf16")
    dt = time.perf_counter() - t0

    def local_bytes(t):
        return (t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size()

    shard = sum(local_bytes(p) for p in model.parameters()) / GIB
    whole = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    layer = sum(p.numel() * p.element_size() for p in model.llm.get_decoder().layers[0].parameters()) / GIB
    peak = peak_rss_gib()
    row = {"rank": info.rank, "peak_rss_gib": round(peak, 3), "own_shard_gib": round(shard, 3),
           "rss_before_build_gib": round(base, 3), "rss_after_build_gib": round(current_rss_gib(), 3),
           "peak_over_base_and_shard_gib": round(peak - base - shard, 3), "one_layer_gib": round(layer, 3),
           "model_gib": round(whole, 3), "param_dtypes": dtypes, "setup_s": round(dt, 1)}
    rows = D.gather_objects(row, info)
    if info.is_main:
        for r in rows:
            print(json.dumps(r), flush=True)
    D.shutdown_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--hidden", type=int, default=2048)
    m.add_argument("--layers", type=int, default=16)
    m.add_argument("--vocab", type=int, default=32000)
    m.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    m.add_argument("--shard-mb", type=int, default=500)
    ld = sub.add_parser("load")
    ld.add_argument("dir")
    ld.add_argument("--dtype", choices=("fp32", "bf16", "auto"), default="fp32")
    f = sub.add_parser("fsdp")
    f.add_argument("dir")
    f.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    f.add_argument("--preset", action="store_true",
                   help="random init from DIR/preset.json (rank 0 builds and broadcasts)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"make": make, "load": load, "fsdp": fsdp}[args.cmd](args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
