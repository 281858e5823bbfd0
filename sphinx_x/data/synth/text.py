"""Text-only samples: multi-turn templated dialogue, arithmetic, and a small code-tracing task."""

from __future__ import annotations

import random

from sphinx_x.data.synth.common import Sample

FACT_COLORS = {"sky": "blue", "grass": "green", "banana": "yellow", "snow": "white", "coal": "black",
               "tomato": "red", "orange": "orange", "plum": "purple"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "open": "closed",
             "happy": "sad", "old": "new", "left": "right", "light": "dark"}
SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot"}
SPELL = ["cat", "dog", "sun", "tree", "book", "moon", "fish", "bird", "cake", "milk"]
GREETINGS = [("Hello!", "Hello! How can I help you today?"), ("Hi, who are you?", "I am a helpful assistant."),
             ("Thank you.", "You're welcome!"), ("Good morning!", "Good morning! What can I do for you?")]
ARITH_MAX = 30


def _dialogue_turn(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["color", "opposite", "sound", "spell", "next", "greet"])
    if kind == "color":
        thing = rng.choice(sorted(FACT_COLORS))
        return f"What color is {'a ' + thing if thing in ('banana', 'tomato', 'plum') else thing}?", FACT_COLORS[thing]
    if kind == "opposite":
        word = rng.choice(sorted(OPPOSITES))
        return f"What is the opposite of {word}?", OPPOSITES[word]
    if kind == "sound":
        animal = rng.choice(sorted(SOUNDS))
        return f"What sound does a {animal} make?", SOUNDS[animal]
    if kind == "spell":
        word = rng.choice(SPELL)
        return f"Spell the word {word}.", "-".join(word)
    if kind == "next":
        n = rng.randint(0, 98)
        return f"What number comes after {n}?", str(n + 1)
    return rng.choice(GREETINGS)


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, ARITH_MAX), rng.randint(0, ARITH_MAX)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", str(a - b)


def code(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["add", "len", "max", "min", "mul"])
    if kind == "add":
        x, y = rng.randint(0, 9), rng.randint(0, 9)
        prog, out = f"x = {x}\ny = x + {y}\nprint(y)", x + y
    elif kind == "mul":
        x, y = rng.randint(0, 9), rng.randint(0, 9)
        prog, out = f"a = {x}\nb = {y}\nprint(a * b)", x * y
    else:
        items = [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]
        fn = {"len": len, "max": max, "min": min}[kind]
        prog, out = f"nums = {items}\nprint({kind}(nums))", fn(items)
    return f"What does this code print?\n{prog}", str(out)


def generate_text(rng: random.Random, task: str | None = None) -> Sample:
    if task == "arithmetic":
        qa = arithmetic(rng)
        return Sample("text", [qa], bench={"task": task, "metric": "exact", "answer": qa[1]})
    if task == "code":
        qa = code(rng)
        return Sample("text", [qa], bench={"task": task, "metric": "exact", "answer": qa[1]})
    makers = rng.choices([_dialogue_turn, arithmetic, code], weights=[2, 2, 1], k=rng.choice([3, 4, 5]))
    return Sample("text", [make(rng) for make in makers])
