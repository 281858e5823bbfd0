"""Answer normalisation of the official VQA evaluation (GT-Vision-Lab `vqaEval.py`), re-implemented.

The rules, in the order the official script applies them:
1. newlines and tabs become spaces, surrounding whitespace is stripped;
2. punctuation (`process_punctuation`): each mark in `PUNCTUATION` is deleted when it touches a space
   (``"p "`` or ``" p"`` occurs) or when the text holds a digit-comma-digit group such as ``1,000``;
   otherwise it becomes a space. So ``"1,000"`` becomes ``"1000"`` (one number, never ``"1 000"``),
   and ``"black/white"`` becomes ``"black white"``. A period is deleted unless a digit follows it, so
   ``"dog."`` -> ``"dog"`` and ``"1.5"`` stays;
3. words (`process_digit_article`): lower-cased, number words zero..ten (and "none") become digits,
   the articles a/an/the are dropped, apostrophe-less contractions are restored ("dont" -> "don't").

One deliberate difference: the official script normalises only when the ground-truth answers are not all
identical (a shortcut that makes "two" fail against ten "2"s); here every answer is always normalised, as
the community evaluators for TextVQA (LLaVA, lmms-eval) do.
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# A comma between two digits marks a number such as 1,000; its presence anywhere switches every
# punctuation mark of the text to "delete" instead of "replace by a space".
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) look-ahead that never
# blocks, so in effect a period is removed unless a digit follows it. Written here as what it does.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})


def _contractions() -> dict[str, str]:
    """Spelling without apostrophes -> the contraction, as in the official table. Words are lower-cased
    before the lookup, so the official capitalised keys ("Im", "Ive", "Id've") can never match and are
    left out; so is its one reversed entry ("somebody'd" -> "somebodyd")."""
    simple = (
        "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll "
        "how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't "
        "shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd "
        "something'll that's there'd there're there's they'd they'll they're they've wasn't we've weren't "
        "what'll what're what's what've when's where'd where's where've who'd who'll who's who've why'll why're "
        "why's won't would've wouldn't y'all you'd you'll you're you've"
    )
    table = {word.replace("'", ""): word for word in simple.split()}
    # "X've" double contractions: accepted as "X-without-apostrophes've" and as "Xve".
    double = (
        "couldn't hadn't he'd it'd mightn't she'd shouldn't somebody'd someone'd something'd there'd they'd "
        "we'd who'd wouldn't you'd"
    )
    for first in double.split():
        table[first.replace("'", "") + "'ve"] = first + "'ve"
        table[first + "ve"] = first + "'ve"
    table.update({"yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've"})
    table.update({"twas": "'twas", "yall'll": "y'all'll", "y'allll": "y'all'll"})
    table.update({"ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at"})
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The test looks at the original text, as the official script does, not at `out`.
        if has_number_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The full official normalisation of one answer (prediction or ground truth)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))
