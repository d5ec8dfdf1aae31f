"""Reading files llmlab did not write: one-line errors, the one checked JSON reader, memory maps.

Every reader (GGUF, safetensors, torch checkpoints, tokenizer files, configs, adapters, data)
turns what a malformed file makes Python raise into one ValueError line naming the file, the
problem and the fix, never a traceback. JSON goes through read_json / json_value: the file must be
UTF-8 (a bad byte is named by its offset), the text valid JSON of the expected kind (an object, a
list), nesting at most MAX_JSON_DEPTH levels (counted without recursion; json's own RecursionError
is caught too), and the message names the file. A JSON object a program reads back (an adapter's
adapter_config.json, sft_config.json, pico.json, state.json, a data record) is then checked field
by field (check_fields: present, of its kind, in its range) before any field is used.

Tested in tests/test_fuzz_readers.py (hostile files of every format), tests/test_gguf_reader.py
and tests/test_reliability_inputs.py (depth, UTF-8 offsets, field checks of every config file).
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


# The deepest JSON nesting any file llmlab reads may have (tokenizer.json, configs: <= 6).
MAX_JSON_DEPTH = 64


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


def json_depth(value, limit=MAX_JSON_DEPTH):
    """The nesting depth of a parsed JSON value (a scalar 0, [] 1), counted without recursion;
    stops counting past limit + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= limit:
                stack.extend((child, depth + 1) for child in
                             (node.values() if isinstance(node, dict) else node))
    return deepest


def json_value(text, source, kind=dict):
    """The JSON value in text (str or bytes), of Python type `kind` (dict, list, or None for any);
    a one-line ValueError naming the source otherwise (invalid JSON, nesting deeper than
    MAX_JSON_DEPTH, wrong kind)."""
    if isinstance(text, bytes):
        text = decode_utf8(text, source)
    try:
        value = json.loads(text)
        too_deep = json_depth(value) > MAX_JSON_DEPTH
    except RecursionError:                             # json's own limit, ~1000 levels
        too_deep = True
    except ValueError as err:                          # JSONDecodeError
        raise ValueError(f"{source}: not valid JSON ({first_line(err)}); fix or "
                         f"re-download it") from None
    if too_deep:
        raise ValueError(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels "
                         "(file_checks.MAX_JSON_DEPTH); no llmlab file needs that, fix the file")
    if kind is not None and not isinstance(value, kind):
        expected = {dict: "a JSON object {...}", list: "a JSON list [...]"}.get(kind, kind.__name__)
        raise ValueError(f"{source}: expected {expected}, got a {type(value).__name__}; fix or "
                         f"re-download it")
    return value


# ----------------------------------------------------------------------------
# fields of a JSON object, checked one by one before use (adapter_config.json, sft_config.json,
# pico.json, state.json)

KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
              list: "a list", dict: "an object", type(None): "null"}


def is_kind(value, kinds):
    """JSON's kinds as Python reads them: bool is not an int, an int is a number."""
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind not in (bool, int, float) and isinstance(value, kind):
            return True
    return False


def check_fields(data, source, spec):
    """data, after checking it is an object whose fields match spec; else one ValueError naming
    the source, the field and what it must be. spec: name -> (kind or tuple of kinds, test or
    None, rule text); a name ending in "?" may be missing. Other fields are left alone."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object {{...}}, got "
                         f"{KIND_NAMES.get(type(data), type(data).__name__)}; fix or re-save it")
    for name, (kinds, test, rule) in spec.items():
        key = name.rstrip("?")
        if key not in data:
            if name.endswith("?"):
                continue
            raise ValueError(f"{source}: field {key!r} is missing; the file is incomplete or "
                             "from another program, re-save it")
        value, kinds = data[key], kinds if isinstance(kinds, tuple) else (kinds,)
        if not is_kind(value, kinds):
            expected = " or ".join(KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise ValueError(f"{source}: field {key!r} is {str(value)[:40]!r}, not {expected}; "
                             "fix or re-save the file")
        if test is not None and value is not None and not test(value):
            raise ValueError(f"{source}: field {key!r} = {str(value)[:40]}: must be {rule}; fix "
                             "or re-save the file")
    return data


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
    return decode_utf8(path.read_bytes(), source)


def decode_utf8(raw, source):
    """bytes -> str; one line naming the source and the byte offset when they are not UTF-8."""
    try:
        return raw.decode("utf-8")
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
