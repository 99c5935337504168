"""The command line's own error type, and argparse types that refuse bad values before anything runs."""

import argparse

__all__ = ["UsageError", "positive_int"]


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of samples, structures, steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value
