"""Checked option values: argparse `type=` functions, so an impossible value fails while the
command line is parsed, before any file is read or any model is loaded, as one line:

    error: argument --batch_size: 0 is not allowed: must be an integer >= 1

Each function takes the flag's text and returns the value or raises argparse.ArgumentTypeError
(run.py's parser prints that one line and exits with code 2). Ranges that depend on two flags
(e.g. a prompt longer than --block_size) are checked by the option's own check function right
after parsing, still before any work.

Tests: tests/test_options.py (each type on good and bad text; run.main prints one line).
"""
import argparse
import math
from pathlib import Path


def _number(text, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be a finite number")
    return value


def _checked(kind, test, rule):
    """A type function: parse with kind, then require test(value), else say the rule."""
    def check(text):
        value = _number(text, kind)
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: must be {rule}")
        return value
    check.__name__ = rule             # argparse names the type in some messages
    return check


positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a number > 0")
nonnegative_float = _checked(float, lambda v: v >= 0, "a number >= 0")
probability = _checked(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")
fraction = _checked(float, lambda v: 0 < v < 1, "a fraction strictly between 0 and 1")
unit_interval = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
nucleus_mass = _checked(float, lambda v: 0 < v <= 1, "a nucleus mass p in (0, 1]")


def output_file(text):
    """A path to write a file to: not an existing folder (checked now, not after training)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path (e.g. {text}/out.txt)")
    return text


def output_folder(text):
    """A folder to write into: not an existing file."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder path")
    return text
