"""Label masks, image-token placement and truncation, with the shipped nano BPE and the real Mistral
SentencePiece model from mistral-common (converted to a fast tokenizer)."""

from __future__ import annotations

import copy
from pathlib import Path

import mistral_common
import pytest
from _helpers.dialogue import DIALOGUE, bot, supervised_runs, user
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.data.encode import DialogueEncoder, SampleRejected
from sphinx_x.data.templates import ACCESSORY_SYSTEM, AccessoryTemplate, TemplateError, get_template
from sphinx_x.tokenizer import load_tokenizer

MISTRAL_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


@pytest.fixture(scope="module")
def nano():
    return load_tokenizer("nano")


@pytest.fixture(scope="module")
def mistral():
    assert MISTRAL_MODEL.is_file(), MISTRAL_MODEL
    return load_tokenizer(MISTRAL_MODEL)


@pytest.fixture(params=["nano", "mistral"])
def tok(request):
    return request.getfixturevalue(request.param)


def test_accessory_render_matches_spec():
    text, spans = AccessoryTemplate().render([user("hi"), bot("hello")])
    assert text == ACCESSORY_SYSTEM + "\n\n### Human: hi\n### Assistant: hello\n###"
    assert [text[a:b] for a, b in spans] == [" hello\n###"]  # the cue ends at the colon
    prompt, _ = AccessoryTemplate().render([user("hi")], add_generation_prompt=True)
    assert prompt.endswith("\n\n### Human: hi\n### Assistant:")
    assert AccessoryTemplate().stop_strings == ("\n###",)
    own, _ = AccessoryTemplate().render([{"role": "system", "content": "SYS"}, user("q"), bot("a")])
    assert own == "SYS\n\n### Human: q\n### Assistant: a\n###"


def test_loss_exactly_on_assistant_spans_multi_turn_with_images(tok):
    enc = DialogueEncoder(tok)
    counts = [11, 7]
    out = enc.encode(DIALOGUE, counts)
    ids, labels = out.input_ids, out.labels
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    # labels equal ids where supervised, never on image positions
    for i, label in enumerate(labels):
        assert label in (IGNORE_INDEX, ids[i])
        if ids[i] == IMAGE_TOKEN_ID:
            assert label == IGNORE_INDEX
    # one supervised run per answer, each decoding to the answer plus the closing "\n###"
    runs = supervised_runs(labels)
    answers = [m["content"] for m in DIALOGUE if m["role"] == "assistant"]
    assert [tok.decode(r).strip() for r in runs] == [a + "\n###" for a in answers]
    # no role tag, human text or system prompt is supervised
    supervised_text = tok.decode([x for x in labels if x != IGNORE_INDEX])
    assert "Assistant" not in supervised_text and "Human" not in supervised_text and "colour" not in supervised_text
    # images: one run of exactly count ids at each placeholder, in order
    image_runs, i = [], 0
    while i < len(ids):
        if ids[i] == IMAGE_TOKEN_ID:
            j = i
            while j < len(ids) and ids[j] == IMAGE_TOKEN_ID:
                j += 1
            image_runs.append((i, j - i))
            i = j
        else:
            i += 1
    assert [n for _, n in image_runs] == counts
    first, second = image_runs
    assert tok.decode(ids[1 : first[0]]).rstrip().endswith("### Human:")
    assert tok.decode(ids[first[0] + first[1] : second[0]]).startswith("\nWhat colour")
    assert tok.decode(ids[first[0] + first[1] : second[0]]).rstrip().endswith("this one:")
    assert out.num_visual_tokens == 18 and out.num_text_tokens == len(ids) - 18


def test_images_without_placeholder_go_right_after_bos(tok):
    enc = DialogueEncoder(tok)
    out = enc.encode([user("Describe both."), bot("Two cats.")], [5, 3])
    assert out.input_ids[0] == tok.bos_token_id
    assert out.input_ids[1:9] == [IMAGE_TOKEN_ID] * 8 and out.input_ids[9] != IMAGE_TOKEN_ID
    assert tok.decode(supervised_runs(out.labels)[0]).strip() == "Two cats.\n###"


def test_placeholder_count_must_match(tok):
    enc = DialogueEncoder(tok)
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        enc.encode([user("<image> and <image>"), bot("x")], [5])


def test_generation_prompt_is_training_prefix(tok):
    """Inference prompts end where a trained answer starts, token for token."""
    enc = DialogueEncoder(tok)
    msgs = [user("<image>\nWhat is it?"), bot("A red square.")]
    prompt = enc.encode_prompt(msgs[:1], [4])
    full = enc.encode(msgs, [4])
    assert full.input_ids[: len(prompt)] == prompt
    first_supervised = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
    assert first_supervised == len(prompt)


@settings(max_examples=40, deadline=None)
@given(answers=st.lists(st.text(alphabet="abcXYZ 0123.,!?\n-", min_size=1, max_size=30)
                        .filter(lambda s: s.strip() and "###" not in s), min_size=1, max_size=3))
def test_property_supervised_runs_are_answers(nano, answers):
    msgs = []
    for k, a in enumerate(answers):
        msgs += [user(f"question {k}?"), bot(a)]
    out = DialogueEncoder(nano).encode(msgs, [])
    runs = supervised_runs(out.labels)
    # adjacent answers never merge: a human turn sits between them
    assert [nano.decode(r) for r in runs] == [" " + a + "\n###" for a in answers]


# ---- the tokenizer's own chat template ----------------------------------------------------------
MISTRAL_CHAT = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_mistral_style(mistral):
    tok = copy.deepcopy(mistral)
    tok.chat_template = MISTRAL_CHAT
    template = get_template("chat", tok)
    assert template.includes_bos and template.stop_strings == ("</s>",)
    out = DialogueEncoder(tok, template).encode(DIALOGUE, [6, 2])
    assert out.input_ids.count(tok.bos_token_id) == 1 and out.input_ids[0] == tok.bos_token_id
    runs = supervised_runs(out.labels)
    answers = [m["content"] for m in DIALOGUE if m["role"] == "assistant"]
    assert [tok.decode(r) for r in runs] == [a + "</s>" for a in answers]
    assert all(r[-1] == tok.eos_token_id for r in runs)
    assert out.input_ids.count(IMAGE_TOKEN_ID) == 8


def test_chat_template_chatml_with_generation_prompt(nano):
    tok = copy.deepcopy(nano)
    tok.chat_template = CHATML
    enc = DialogueEncoder(tok, "chat")
    msgs = [user("<image>\nHi?"), bot("Hello there."), user("Bye?"), bot("Bye.")]
    out = enc.encode(msgs, [3])
    assert [tok.decode(r) for r in supervised_runs(out.labels)] == ["Hello there.<|im_end|>\n", "Bye.<|im_end|>\n"]
    text, _ = enc.template.render(msgs[:1], add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    prompt = enc.encode_prompt(msgs[:1], [3])
    assert out.input_ids[: len(prompt)] == prompt


def test_chat_template_missing_is_a_clear_error(nano):
    assert not nano.chat_template
    with pytest.raises(TemplateError, match="has no chat_template"):
        get_template("chat", nano)
    with pytest.raises(TemplateError, match="unknown template 'llava'; valid templates: accessory, chat"):
        get_template("llava")


# ---- truncation ---------------------------------------------------------------------------------
THREE_TURNS = [user("<image>\nFirst?"), bot("one " * 10), user("Second?"), bot("two " * 10),
               user("Third?"), bot("three " * 10)]


def test_truncation_drops_whole_trailing_turns(tok):
    full = DialogueEncoder(tok).encode(THREE_TURNS, [20])
    two = DialogueEncoder(tok).encode(THREE_TURNS[:4], [20])
    # any max_len from the end of turn 2 to one short of the full length keeps exactly two turns
    for max_len in (len(two.input_ids), len(full.input_ids) - 1):
        out = DialogueEncoder(tok, max_len=max_len).encode(THREE_TURNS, [20])
        assert out.dropped_turns == 1 and not out.cut_inside_turn
        assert out.input_ids == two.input_ids and out.labels == two.labels
        assert out.full_length == len(full.input_ids) and out.num_images == 1
    one = DialogueEncoder(tok, max_len=len(two.input_ids) - 1).encode(THREE_TURNS, [20])
    assert one.dropped_turns == 2 and len(supervised_runs(one.labels)) == 1
    fits = DialogueEncoder(tok, max_len=len(full.input_ids)).encode(THREE_TURNS, [20])
    assert fits.dropped_turns == 0 and fits.input_ids == full.input_ids


def test_truncation_never_cuts_an_image(tok):
    # image in the second human turn; max_len lands inside its run -> the turn is dropped with it
    msgs = [user("First?"), bot("Yes."), user("<image>\nSecond?"), bot("No.")]
    first_turn = DialogueEncoder(tok).encode(msgs[:2], [])
    start = len(first_turn.input_ids)
    out = DialogueEncoder(tok, max_len=start + 10).encode(msgs, [30])
    assert out.input_ids == first_turn.input_ids and out.num_images == 0 and out.num_visual_tokens == 0
    # a single turn longer than max_len is cut inside, but the image before the cut stays whole
    long = [user("<image>\nDescribe."), bot("word " * 80)]
    full = DialogueEncoder(tok).encode(long, [30])
    max_len = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX) + 20  # inside the answer
    out = DialogueEncoder(tok, max_len=max_len).encode(long, [30])
    assert out.cut_inside_turn and out.input_ids == full.input_ids[:max_len]
    assert out.input_ids.count(IMAGE_TOKEN_ID) == 30 and out.num_images == 1
    assert any(x != IGNORE_INDEX for x in out.labels)


def test_cut_inside_an_image_backs_off_to_its_start(tok):
    """max_len inside the only turn's image run: the cut backs off to the image's start, which leaves
    no answer, so the sample is rejected rather than keeping part of an image."""
    msgs = [user("Look: <image> now"), bot("ok")]  # inside the text: the image stays at its placeholder
    full = DialogueEncoder(tok).encode(msgs, [38])
    start = full.input_ids.index(IMAGE_TOKEN_ID)
    for max_len in (start + 1, start + 20, start + 37):
        with pytest.raises(SampleRejected) as err:
            DialogueEncoder(tok, max_len=max_len).encode(msgs, [38])
        assert err.value.reason == "no_supervised_tokens"
    # one token more than the image: the image is whole and the cut falls in the text after it
    with pytest.raises(SampleRejected):
        DialogueEncoder(tok, max_len=start + 39).encode(msgs, [38])


def test_sample_with_no_supervised_token_left_is_rejected(tok):
    full = DialogueEncoder(tok).encode([user("question " * 30), bot("answer")], [])
    with pytest.raises(SampleRejected, match="no supervised token") as err:
        DialogueEncoder(tok, max_len=len(full.input_ids) - 8).encode([user("question " * 30), bot("answer")], [])
    assert err.value.reason == "no_supervised_tokens"


def test_max_len_shorter_than_an_image_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="max_len 50 is shorter than one image's visual tokens"):
        DialogueEncoder(tok, max_len=50).encode([user("<image>"), bot("x")], [95])
