"""A sample dialogue with two images and a reference reading of label masks, shared by the encoding tests."""

from __future__ import annotations

from sphinx_x.constants import IGNORE_INDEX


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def supervised_runs(labels):
    """Maximal runs of supervised label ids."""
    runs, cur = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(label)
    return runs + ([cur] if cur else [])


DIALOGUE = [
    user("<image>\nWhat colour is the square?"),
    bot("The square is red."),
    user("How many circles are there?"),
    bot("There are 12 circles, 3 of them blue."),
    user("Compare it with this one: <image>"),
    bot("The second image has été café and\ntwo lines."),
]
