"""`sphinx-x convert accessory SRC_DIR --out DST_DIR`: import a released LLaMA2-Accessory SPHINX checkpoint."""

from __future__ import annotations

import argparse

from sphinx_x.commands.argtypes import positive_float


def run_accessory(args: argparse.Namespace) -> int:
    from sphinx_x.convert.accessory import convert_accessory
    from sphinx_x.convert.shards import ConversionError

    try:
        out = convert_accessory(
            args.src, args.out, dtype=args.dtype, config=args.config, overwrite=args.overwrite,
            max_shard_bytes=int(args.max_shard_gb * 2**30), progress=not args.quiet,
            check_replicas=not args.no_replica_check,
        )
    except ConversionError as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="import released checkpoints of other codebases")
    kinds = p.add_subparsers(dest="source_format", required=True, metavar="FORMAT")
    a = kinds.add_parser(
        "accessory",
        help="a LLaMA2-Accessory SPHINX release (consolidated.XX-of-YY.model.pth, config.json, meta.json, "
        "tokenizer.model)",
    )
    a.add_argument("src", help="directory of the released checkpoint")
    a.add_argument("--out", required=True, help="model directory to write (must not exist, see --overwrite)")
    a.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="weights dtype to write")
    a.add_argument("--config", default=None,
                   help="SPHINX-X config file replacing the preset of the checkpoint's llama_type (LLM dims "
                   "still come from the checkpoint)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    a.add_argument("--max-shard-gb", type=positive_float, default=2.0,
                   help="size of each written safetensors file (also bounds the converter's memory)")
    a.add_argument("--no-replica-check", action="store_true",
                   help="do not compare the replicated tensors (frozen encoders, norms) of shards 1.. with shard 0's, "
                   "which is the copy written (saves reading them)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=run_accessory)
