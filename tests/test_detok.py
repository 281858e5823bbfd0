"""The byte-level stream (sphinx_x/infer/detok.py) writes what the tokenizer's own decode writes: per id, at
every step of random id sequences (split UTF-8 characters, invalid bytes, specials, added tokens with
spaces), and for every prefix; tokenizers it cannot follow exactly keep the decode window."""

from __future__ import annotations

import random

import pytest

from sphinx_x.infer.detok import ByteLevelStream, WindowStream, byte_level_table, text_stream
from sphinx_x.tokenizer import load_tokenizer, text_decoder


@pytest.fixture(scope="module")
def nano_tok():
    return load_tokenizer("nano")


def byte_ids(tok) -> list[int]:
    """The ids of the 256 single-byte tokens (the byte-level alphabet)."""
    table = byte_level_table(text_decoder(tok))
    return [i for i in range(len(tok)) if len(table[i]) == 1]


def test_nano_takes_the_byte_level_stream(nano_tok):
    assert isinstance(text_stream(text_decoder(nano_tok)), ByteLevelStream)
    assert len(set(byte_level_table(text_decoder(nano_tok))[i] for i in byte_ids(nano_tok))) == 256


def test_every_id_alone_decodes_as_the_tokenizer_does(nano_tok):
    dec = text_decoder(nano_tok)
    table = byte_level_table(dec)
    for i in range(len(nano_tok)):
        assert table[i].decode("utf-8", "replace") == dec.decode([i]), i


def random_ids(tok, rng: random.Random, n: int) -> list[int]:
    """Whole pieces, single bytes (UTF-8 lead, continuation and invalid bytes), specials, the added tokens
    and the ids of multi-byte text."""
    singles = byte_ids(tok)
    sample = "caf\u00e9 \u20ac5 \U0001F600 \u00e9\u00e9 a\nb ### the cat \u4e2d\u6587"
    text = tok.encode(sample, add_special_tokens=False)
    added = list(tok.backend_tokenizer.get_added_tokens_decoder())
    pools = [range(len(tok)), singles, singles, text, added]
    return [rng.choice(rng.choice(pools)) for _ in range(n)]


def test_stream_equals_decoding_all_ids_at_every_step(nano_tok):
    dec = text_decoder(nano_tok)
    rng = random.Random(0)
    for _ in range(400):
        ids = random_ids(nano_tok, rng, rng.randint(1, 30))
        stream = text_stream(dec)
        for k, i in enumerate(ids, 1):
            stream.push(i)
            full = dec.decode(ids[:k])
            assert stream.text == full, ids[:k]
            assert full.startswith(stream.text[: stream.stable])
        assert [stream.prefix_text(k) for k in range(len(ids) + 1)] == [dec.decode(ids[:k]) for k in
                                                                       range(len(ids) + 1)]


def test_split_characters_are_held_then_written_whole(nano_tok):
    """A character sent one byte per id: U+FFFD while incomplete (as decode writes it), never committed."""
    dec = text_decoder(nano_tok)
    by_byte = {byte_level_table(dec)[i][0]: i for i in byte_ids(nano_tok)}
    stream = text_stream(dec)
    for b in "a\U0001F600".encode():
        stream.push(by_byte[b])
    assert stream.text == "a\U0001F600" and stream.stable == 2
    stream.push(by_byte[0xE2])
    stream.push(by_byte[0x82])
    assert stream.text == "a\U0001F600\ufffd" and stream.stable == 2
    stream.push(by_byte[ord("x")])  # the incomplete character proves invalid: one U+FFFD, then x
    assert stream.text == dec.decode(stream.ids) == "a\U0001F600\ufffdx" and stream.stable == 4


def test_a_tokenizer_with_its_own_decode_keeps_the_window(nano_tok):
    class OwnDecode(type(nano_tok)):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper()

    tok = load_tokenizer("nano")
    tok.__class__ = OwnDecode
    dec = text_decoder(tok)
    assert byte_level_table(dec) is None
    stream = text_stream(dec)
    assert isinstance(stream, WindowStream)
    ids = tok.encode("the cat sat", add_special_tokens=False)
    for i in ids:
        stream.push(i)
    assert stream.text == "THE CAT SAT"


def test_window_stream_still_equals_decoding_all_ids(nano_tok):
    """The window (kept for other tokenizers) on the same random ids."""
    dec = text_decoder(nano_tok)
    rng = random.Random(1)
    for _ in range(100):
        ids = random_ids(nano_tok, rng, rng.randint(1, 20))
        stream = WindowStream(dec)
        for k, i in enumerate(ids, 1):
            stream.push(i)
            assert stream.text == dec.decode(ids[:k])
        assert [stream.prefix_text(k) for k in range(len(ids) + 1)] == [dec.decode(ids[:k]) for k in
                                                                       range(len(ids) + 1)]
