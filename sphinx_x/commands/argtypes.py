"""argparse value types shared by the subcommands (errors name the bad value)."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {n}")
    return n


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {v}")
    return v


def comma_list(text: str) -> tuple[str, ...]:
    """"a, b,,c" -> ("a", "b", "c"): the non-empty comma-separated names (the consumer checks them)."""
    return tuple(k.strip() for k in text.split(",") if k.strip())
