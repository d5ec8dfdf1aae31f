"""Reading files llmlab did not write: one-line errors, the one checked JSON reader, memory maps.

Every reader (GGUF, safetensors, torch checkpoints, tokenizer files, configs, adapters, data)
turns what a malformed file makes Python raise into one ValueError line naming the file, the
problem and the fix, never a traceback. JSON goes through read_json / json_value: the file must be
UTF-8, the text valid JSON of the expected kind (an object, a list), nesting is bounded (a deeply
nested file raises RecursionError inside json, caught here), and the message names the file.

Tested in tests/test_fuzz_readers.py (hostile files of every format) and tests/test_gguf_reader.py.
"""
import contextlib
import json
import os
import struct
from pathlib import Path

import numpy as np


# What a malformed header makes Python or numpy raise; format_errors turns them into one line.
LOW_LEVEL_ERRORS = (struct.error, UnicodeDecodeError, RecursionError, OverflowError, KeyError,
                    TypeError, IndexError, ZeroDivisionError, AttributeError)


def first_line(err):
    """The first line of an exception's message, at most 160 characters (errors stay one line)."""
    return (str(err).strip().splitlines() or [""])[0][:160]


@contextlib.contextmanager
def format_errors(path, what):
    """Inside it, a low-level failure while parsing a `what` file becomes a one-line ValueError
    naming the file (the checks name the cases they know; this catches the rest)."""
    try:
        yield
    except LOW_LEVEL_ERRORS as err:
        raise ValueError(f"{path}: corrupt or unsupported {what} file ({type(err).__name__}: "
                         f"{first_line(err)}); download or convert it again") from None


def check_byte_ranges(path, ranges, what="tensor"):
    """ValueError when two (name, begin, end) byte ranges overlap; empty ranges never do.
    Sorted by begin, a range overlaps an earlier one iff it starts before the previous end."""
    previous = None
    for name, begin, end in sorted((r for r in ranges if r[2] > r[1]), key=lambda r: r[1]):
        if previous is not None and begin < previous[2]:
            raise ValueError(f"{path}: {what} {name} bytes [{begin}, {end}) overlap {what} "
                             f"{previous[0]} [{previous[1]}, {previous[2]}); the file is corrupt")
        previous = (name, begin, end)


def json_value(text, source, kind=dict):
    """The JSON value in text (str or bytes), of Python type `kind` (dict, list, or None for any);
    a one-line ValueError naming the source otherwise (invalid JSON, nesting too deep, wrong kind)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:        # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{source}: not valid JSON ({first_line(err)}); fix or "
                         f"re-download it") from None
    if kind is not None and not isinstance(value, kind):
        expected = {dict: "a JSON object {...}", list: "a JSON list [...]"}.get(kind, kind.__name__)
        raise ValueError(f"{source}: expected {expected}, got a {type(value).__name__}; fix or "
                         f"re-download it")
    return value


def json_object(text, source):
    """A JSON object {...} from text (a config, an index, a tokenizer file)."""
    return json_value(text, source, dict)


def read_text(path, flag=None, what="UTF-8 text"):
    """The contents of a UTF-8 text file; a missing or undecodable file is one line naming the
    flag (when given) and the file."""
    path = Path(path)
    source = f"{flag} {path}" if flag else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file; give an existing {what} file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 ({err.reason} at byte {err.start}); convert it "
                         "to UTF-8 or re-download it") from None


def read_json(path, kind=dict, flag=None):
    """The JSON value of a UTF-8 file (config.json, an index, an adapter config, a label list),
    checked as json_value does; errors name the file and, when given, the flag that named it."""
    text = read_text(path, flag, "JSON")
    return json_value(text, f"{path} ({flag})" if flag else str(path), kind)


def map_file(path):
    """The whole file as a uint8 array backed by a copy-on-write memory map (nothing is read;
    writing to it never touches the file)."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty; download or save it again")
    return np.memmap(path, dtype=np.uint8, mode="c")
