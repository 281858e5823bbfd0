"""Answer text as the official SPHINX chat path makes it: SentencePiece decoding of byte runs, the
token-level stop rule (eos, "\\n###" as a segment, "\\n###" after other text), no stripping, streaming that
never shows a stop's pieces, and batched decoding equal to one sample at a time.

The SentencePiece model is the one of the official-code fixtures (512 pieces, byte fallback, LLaMA-style
normaliser); `sentencepiece` itself is the reference for decoding and for the stop sequences.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece as spm
import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.infer.generate import _Row, decode_batch, generate_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt
from sphinx_x.infer.stopping import stop_rule, token_forms
from sphinx_x.tokenizer import load_tokenizer, spm_bytes_to_text, text_decoder

SPM_MODEL = Path(__file__).parent / "fixtures" / "accessory" / "llama_ens5_light" / "tokenizer.model"
STOP = "\n###"


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(SPM_MODEL))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SPM_MODEL)


def byte_id(sp, value: int) -> int:
    return sp.piece_to_id(f"<0x{value:02X}>")


def official_stops(sp) -> list[list[int]]:
    """What the official wrapper computes for "\\n###" with a SentencePiece model: encode_segment and
    encode_wo_prefix_space (tokens after "@")."""
    return [sp.encode(STOP), sp.encode("@" + STOP)[len(sp.encode("@")):]]


# ---- decoding -------------------------------------------------------------------------------------
def test_byte_runs_decode_as_sentencepiece(sp, tok):
    ids = [byte_id(sp, b) for b in (0x61, 0xC7, 0x26, 0x32, 0xE7, 0xFE)]
    dec = text_decoder(tok)
    assert dec.sentencepiece
    assert dec.decode(ids) == sp.decode(ids) == "a\ufffd&2\ufffd\ufffd"
    # tokenizers' ByteFallback would write one U+FFFD per byte of the whole invalid run
    assert tok.decode(ids) == "\ufffd" * 6
    # a truncated 3-byte character: SentencePiece replaces each byte (Python's "replace" would give one)
    trunc = [byte_id(sp, 0xE7), byte_id(sp, 0x80), byte_id(sp, 0x41)]
    assert dec.decode(trunc) == sp.decode(trunc) == "\ufffd\ufffdA"
    assert b"\xe7\x80A".decode("utf-8", errors="replace") == "\ufffdA"


@pytest.mark.parametrize("run, text", [
    (b"\xe2\x82\xac", "\u20ac"),  # valid 3-byte character
    (b"\xf0\x9f\x98\x80x", "\U0001F600x"),  # valid 4-byte character
    (b"\xc0\xaf", "\ufffd\ufffd"),  # overlong
    (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # surrogate
    (b"\xf4\x90\x80\x80", "\ufffd" * 4),  # beyond U+10FFFF
    (b"\xef\xbf\xbd", "\ufffd"),  # a real U+FFFD is one character
])
def test_spm_bytes_to_text(run, text):
    assert spm_bytes_to_text(run) == text


def test_random_ids_decode_exactly_as_sentencepiece(sp, tok):
    """Byte runs mixed with pieces, lone dummy-prefix pieces, <unk>, <s>, </s> at every position."""
    dec = text_decoder(tok)
    rng = random.Random(0)
    lone_space = sp.piece_to_id("\u2581")
    utf8_bytes = [byte_id(sp, b) for b in (0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xC3, 0xA9, 0x20, 0x0A)]
    pools = [range(sp.get_piece_size()), [byte_id(sp, b) for b in range(256)], utf8_bytes,
             [lone_space, sp.unk_id(), sp.bos_id(), sp.eos_id()]]
    cases = [[rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 10))] for _ in range(3000)]
    assert [dec.decode(ids) for ids in cases] == [sp.decode(ids) for ids in cases]


def test_other_tokenizers_decode_as_themselves():
    nano = load_tokenizer("nano")
    dec = text_decoder(nano)
    ids = nano.encode("a photo of 2 cats", add_special_tokens=True) + [nano.eos_token_id]
    assert not dec.sentencepiece
    assert dec.decode(ids) == nano.decode(ids, skip_special_tokens=True) == "a photo of 2 cats"


# ---- the stop rule --------------------------------------------------------------------------------
def test_stop_sequences_are_the_official_ones(sp, tok):
    assert [list(f) for f in token_forms(tok, STOP)] == official_stops(sp)
    rule = stop_rule(tok, (STOP,), (STOP,), sp.eos_id())
    assert [list(s) for s in rule.sequences] == [[sp.eos_id()], *official_stops(sp)]
    assert rule.texts == ()  # a SentencePiece template stop is matched by tokens only
    extra = stop_rule(tok, (STOP, "cat"), (STOP,), sp.eos_id())
    assert extra.texts == ("cat",)  # a caller's stop string is also searched as text
    nano = load_tokenizer("nano")  # byte-level BPE: the text is searched as well
    assert stop_rule(nano, (STOP,), (STOP,), nano.eos_token_id).texts == (STOP,)
    assert (nano.convert_tokens_to_ids(STOP),) in stop_rule(nano, (STOP,), (STOP,), nano.eos_token_id).sequences


def run_row(tok, ids, stops=(STOP,), max_new_tokens=64):
    """Push `ids` through a row as the decode loop does; returns the row and the streamed pieces."""
    row = _Row(text_decoder(tok), 0, GenerationConfig(max_new_tokens=max_new_tokens),
               stop_rule(tok, stops, (STOP,), tok.eos_token_id))
    pieces, shown = [], []
    for t in ids:
        row.push(t)
        pieces.append(row.take_piece())
        shown.append("".join(pieces))
        if row.finished:
            break
    return row, pieces, shown


def test_stop_sequence_after_other_text(sp, tok):
    text_ids = sp.encode("a circle")
    after_text = official_stops(sp)[1]
    ids = text_ids + after_text + sp.encode("Human: more")
    row, pieces, shown = run_row(tok, ids)
    assert row.finish_reason == "stop" and row.answer() == "a circle" == sp.decode(text_ids)
    assert row.result().completion_tokens == len(text_ids) + len(after_text)
    assert "".join(pieces) == row.answer()
    assert all(row.answer().startswith(s) for s in shown)  # nothing shown is ever taken back


def test_stop_right_after_a_lone_space_piece_drops_the_space(sp, tok):
    lone_space = sp.piece_to_id("\u2581")
    text_ids = sp.encode("a circle")
    ids = text_ids + official_stops(sp)[0] + sp.encode("x")
    assert official_stops(sp)[0][0] == lone_space
    row, pieces, shown = run_row(tok, ids)
    assert row.answer() == "a circle"  # a cut at the text "\n###" would keep "a circle "
    assert "".join(pieces) == "a circle" and pieces[len(text_ids):] == [""] * len(official_stops(sp)[0])
    # the same sequence as the very first tokens: an empty answer
    row, pieces, _ = run_row(tok, official_stops(sp)[0])
    assert row.finish_reason == "stop" and row.answer() == "" and pieces == [""] * len(official_stops(sp)[0])


def test_streaming_never_shows_stop_pieces(sp, tok):
    lone_space, newline = sp.piece_to_id("\u2581"), byte_id(sp, 0x0A)
    # the stop's prefixes appear, then are released when they turn out to be text
    ids = sp.encode("a") + [lone_space, newline] + sp.encode("b") + [newline] + official_stops(sp)[1]
    row, pieces, shown = run_row(tok, ids)
    answer = sp.decode(sp.encode("a") + [lone_space, newline] + sp.encode("b") + [newline])
    assert row.answer() == answer and "".join(pieces) == answer
    assert all(answer.startswith(s) for s in shown)
    assert not any("#" in p for p in pieces)
    # partial UTF-8 waits for its last byte
    euro = [byte_id(sp, b) for b in (0xE2, 0x82, 0xAC)]
    row, pieces, _ = run_row(tok, sp.encode("a") + euro, max_new_tokens=len(sp.encode("a")) + 3)
    assert pieces[-3:] == ["", "", "\u20ac"] and "".join(pieces) == "a\u20ac" and row.finish_reason == "length"


def test_other_spellings_of_the_stop_string_do_not_stop(sp, tok):
    """The official loop writes on when "\\n###" comes from other pieces; a caller's stop string is text."""
    newline, one, two = byte_id(sp, 0x0A), sp.piece_to_id("#"), sp.piece_to_id("##")
    ids = sp.encode("a") + [newline, one, two] + sp.encode("b")
    row, _, _ = run_row(tok, ids, max_new_tokens=len(ids))
    assert row.finish_reason == "length" and row.answer() == sp.decode(ids) == "a\n### b"
    # "# b" has no token form at the end of these ids ("##" then "▁b"): found in the text
    row, pieces, _ = run_row(tok, ids, stops=(STOP, "# b"), max_new_tokens=len(ids))
    assert row.finish_reason == "stop" and row.answer() == "a\n##" == "".join(pieces)


def test_eos_ends_the_answer(sp, tok):
    ids = sp.encode("a circle") + [sp.eos_id()] + sp.encode("b")
    row, pieces, _ = run_row(tok, ids)
    assert row.finish_reason == "stop" and row.answer() == "a circle" == "".join(pieces)
    assert row.result().completion_tokens == len(sp.encode("a circle")) + 1


# ---- the decode loop ------------------------------------------------------------------------------
class ScriptedModel(torch.nn.Module):
    """Stands in for SphinxX in `decode_batch`: each prompt (by its ids) has a scripted answer; every step
    returns logits whose argmax is the row's next scripted token (then a filler). Lets the loop's stop,
    streaming and batching logic be checked on exact token sequences."""

    def __init__(self, tokenizer, scripts: dict[tuple[int, ...], list[int]], filler: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.config = SphinxXConfig.from_name("nano")
        self.llm = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
        self.scripts, self.filler = scripts, filler
        self.vocab = len(tokenizer)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def embed_inputs(self, ids, images):
        return torch.zeros(*ids.shape, 1)

    def forward(self, ids, attention_mask=None, position_ids=None, inputs_embeds=None, cache=None, use_cache=True):
        if cache is None:  # prefill: find each row's script from its real (unpadded) prompt ids
            cache = {"rows": [self.scripts[tuple(r[m.bool()].tolist())] for r, m in zip(ids, attention_mask)],
                     "step": 0}
        else:
            cache = {**cache, "step": cache["step"] + 1}
        logits = torch.zeros(ids.shape[0], ids.shape[1], self.vocab)
        for i, script in enumerate(cache["rows"]):
            step = cache["step"]
            logits[i, -1, script[step] if step < len(script) else self.filler] = 1.0
        return SimpleNamespace(logits=logits, cache=cache)


def test_batched_decoding_equals_one_at_a_time(sp, tok):
    stops = official_stops(sp)
    answers = {
        "segment form": sp.encode("a circle") + stops[0] + sp.encode("x"),
        "mid-text form": sp.encode("two") + [byte_id(sp, 0xC7), byte_id(sp, 0x26)] + stops[1],
        "eos": sp.encode("red") + [sp.eos_id()],
        "length": sp.encode("shape shape shape shape shape shape shape"),
        "other spelling": sp.encode("a") + [byte_id(sp, 0x0A), sp.piece_to_id("#"), sp.piece_to_id("##")],
    }
    prompts = [EncodedPrompt([sp.bos_id()] + sp.encode(f"question {i}" + " padded" * i)) for i in range(len(answers))]
    model = ScriptedModel(tok, {tuple(p.input_ids): a for p, a in zip(prompts, answers.values())},
                          filler=sp.piece_to_id("▁the"))
    cfg = GenerationConfig(max_new_tokens=12)
    batched = generate_batch(model, prompts, cfg)
    singles = [generate_batch(model, [p], cfg)[0] for p in prompts]
    assert [(g.text, g.token_ids, g.finish_reason) for g in batched] == [
        (g.text, g.token_ids, g.finish_reason) for g in singles]
    assert batched[0].text == sp.decode(sp.encode("a circle")) == "a circle"
    assert batched[1].text == sp.decode(answers["mid-text form"][:-len(stops[1])]) == "two\ufffd&"
    assert batched[2].text == "red" and batched[3].finish_reason == "length"
    assert batched[4].finish_reason == "length" and batched[4].text.startswith("a\n###")
    assert [g.finish_reason for g in batched[:3]] == ["stop"] * 3
    streamed = [""] * len(prompts)
    for events in decode_batch(model, prompts, cfg):
        for ev in events:
            streamed[ev.index] += ev.piece
    assert streamed == [g.text for g in batched]
