"""load_tokenizer: the shipped nano BPE, SentencePiece models, tokenizer directories, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_x.config import SphinxXConfig
from sphinx_x.tokenizer import (
    NANO_ADDED_TOKENS,
    NANO_TOKENIZER_PATH,
    TokenizerError,
    load_tokenizer,
    train_nano_bpe,
)

ROOT = Path(__file__).resolve().parents[1]
MISTRAL_DATA = Path(spm.__file__).resolve().parents[1] / "mistral_common" / "data"
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")


@pytest.fixture(scope="module")
def nano():
    return load_tokenizer("nano")


def test_nano_specials_and_size(nano) -> None:
    assert nano.is_fast
    assert len(nano) == SphinxXConfig.from_name("nano").llm.vocab_size == 2048
    assert (nano.bos_token, nano.eos_token, nano.pad_token, nano.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert (nano.bos_token_id, nano.eos_token_id, nano.pad_token_id, nano.unk_token_id) == (0, 1, 2, 3)
    ids = nano("What is 2 + 3?")["input_ids"]
    assert ids[0] == nano.bos_token_id and nano.eos_token_id not in ids  # BOS prepended, no EOS


def test_markers_are_single_tokens(nano) -> None:
    for marker in NANO_ADDED_TOKENS:
        ids = nano(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (marker, nano.convert_ids_to_tokens(ids))
    # every word and punctuation piece of the system prompt is one token: it was in the training text
    pieces = nano.backend_tokenizer.pre_tokenizer.pre_tokenize_str(SYSTEM)
    assert len(nano(SYSTEM, add_special_tokens=False)["input_ids"]) == len(pieces)
    text = f"{SYSTEM}\n\n### Human: What color is the square?\n### Assistant: red\n###"
    ids = nano(text, add_special_tokens=False)["input_ids"]
    assert nano.decode(ids) == text


def test_digits_are_split(nano) -> None:
    ids = nano("12345", add_special_tokens=False)["input_ids"]
    assert nano.convert_ids_to_tokens(ids) == ["1", "2", "3", "4", "5"]
    box = nano("[0.47, 0.44, 0.49, 0.50]", add_special_tokens=False)["input_ids"]
    assert "".join(nano.decode([i]) for i in box) == "[0.47, 0.44, 0.49, 0.50]"
    # no learned token holds two digits, so every number is read digit by digit
    for token in nano.get_vocab():
        if token.startswith("<reserved_"):
            continue
        assert sum(c.isdigit() for c in token) <= 1, token


def test_offsets_cover_the_text(nano) -> None:
    text = " Human: <p>a red circle</p> [0.10, 0.20, 0.30, 0.40]\n### Assistant: yes\n###"
    enc = nano(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps or overlaps


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_nano_round_trips_any_text(text: str) -> None:
    tok = load_tokenizer("nano")
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_sentencepiece_model_matches_sentencepiece() -> None:
    path = MISTRAL_DATA / "tokenizer.model.v1"  # the Mistral-7B / Mixtral-8x7B SentencePiece model
    tok = load_tokenizer(path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert tok.is_fast and len(tok) == 32000
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert tok.pad_token == tok.unk_token  # no pad in the model: pad = unk (documented policy)
    for text in ["Hello world", f"{SYSTEM}\n\n### Human: <p>cat</p> [0.12, 0.50]\n### Assistant: 345\n###",
                 "  two  spaces\tand é 中文"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
        assert tok(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]


def test_directory_and_json_file(nano, tmp_path: Path) -> None:
    nano.save_pretrained(tmp_path / "dir")
    text = "Detect all circles shown in the image."
    assert load_tokenizer(tmp_path / "dir")(text)["input_ids"] == nano(text)["input_ids"]
    assert load_tokenizer(NANO_TOKENIZER_PATH)(text)["input_ids"] == nano(text)["input_ids"]
    spm_dir = tmp_path / "mistral"  # a checkpoint directory holding only tokenizer.model
    spm_dir.mkdir()
    (spm_dir / "tokenizer.model").write_bytes((MISTRAL_DATA / "tokenizer.model.v1").read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    assert load_tokenizer(spm_dir)(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="unknown tokenizer 'llama-9000'"):
        load_tokenizer("llama-9000")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizers JSON"):
        load_tokenizer(bad)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(TokenizerError, match="not a tokenizer"):
        load_tokenizer(other)
    broken = tmp_path / "broken.model"
    broken.write_bytes(b"\x00\x01garbage")
    with pytest.raises(TokenizerError, match="SentencePiece"):
        load_tokenizer(broken)


def test_training_is_deterministic_and_sized() -> None:
    texts = [f" Human: What is {i} + {i * 7 % 13}?\n### Assistant: {i + i * 7 % 13}\n###" for i in range(50)]
    texts += ["the red circle is left of the blue square", "a green star and an orange triangle"] * 5
    a, b = train_nano_bpe(texts, 600), train_nano_bpe(texts, 600)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size(with_added_tokens=True) == 600
    assert a.token_to_id("<reserved_0>") is not None  # the small text left room, filled with reserved ids


@pytest.mark.slow
def test_shipped_tokenizer_is_reproducible() -> None:
    """The committed asset is exactly what scripts/build_nano_tokenizer.py builds (about 10 s)."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_nano_tokenizer.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
