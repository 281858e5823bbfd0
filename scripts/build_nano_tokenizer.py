"""Rebuild the shipped nano tokenizer, `sphinx_x/assets/nano_tokenizer.json`, from the synthetic corpus.

The BPE is trained on the dialogue text of the first `--samples` training samples of the synthetic
corpus (seed `--seed`) as it was when the tokenizer was built (`TOKENIZER_DOMAINS`: VQA at weight 8, without
lookup questions first), each rendered with the accessory template so the system prompt and the
" Human:" / " Assistant:" / "\\n###" markers are seen as the model sees them. Deterministic: the same
arguments give a byte-identical file.

    python scripts/build_nano_tokenizer.py            # rewrite the asset
    python scripts/build_nano_tokenizer.py --check    # exit 1 if the committed asset differs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sphinx_x.constants import IMAGE_PLACEHOLDER
from sphinx_x.data.synth.corpus import tokenizer_sample
from sphinx_x.data.templates import get_template
from sphinx_x.tokenizer import NANO_TOKENIZER_PATH, NANO_VOCAB_SIZE, train_nano_bpe

DEFAULT_SAMPLES = 8000


def corpus_texts(seed: int, samples: int) -> Iterator[str]:
    template = get_template("accessory")
    for index in range(samples):
        sample = tokenizer_sample(seed, index)
        messages = []
        for q, a in sample.turns:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        text, _ = template.render(messages)
        yield text.replace(IMAGE_PLACEHOLDER + "\n", "")  # images never reach the tokenizer as text


def build(seed: int, samples: int) -> str:
    return train_nano_bpe(corpus_texts(seed, samples), NANO_VOCAB_SIZE).to_str(pretty=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    p.add_argument("--out", type=Path, default=NANO_TOKENIZER_PATH)
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = p.parse_args(argv)
    text = build(args.seed, args.samples) + "\n"
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the asset is an ordinary package file
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({NANO_VOCAB_SIZE} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
