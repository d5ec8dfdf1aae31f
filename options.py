"""The command-line vocabulary: checked option values, and the training flags every trainer shares.

Checked values are argparse `type=` functions, so an impossible value fails while the command line
is parsed, before any file is read or any model is loaded, as one line:

    error: argument --batch_size: 0 is not allowed: must be an integer >= 1

Each function takes the flag's text and returns the value or raises argparse.ArgumentTypeError
(run.py's parser prints that one line and exits with code 2). Ranges that depend on two flags
(e.g. a prompt longer than --block_size) are checked by the option's own check function right
after parsing, still before any work.

TRAINING_FLAGS: one spelling, type and help text per training concept (`--epochs`, `--lr`,
`--batch_size`, `--time_budget_s`, `--patience`, `--resume`, ...), underscores first with the dash
spelling as an alias, old llmlab spellings kept as aliases (`--time_budget`). Every trainer
(finetune, lora, sft, ssm, s4, pico) declares them through train.add_training_arguments, which
also turns them into a TrainConfig (train.config_from_args).

Output paths: output_file / output_folder (argparse types) and check_paths (run.py, on each
driver's PATHS = PathFlags(inputs, outputs, folders, swapped)) refuse, before any work, an output
that cannot be written (under a file, not writable, a name too long) or that names an input (an
input file, a file in a model or adapter folder, a folder replaced whole that holds an input).

Tests: tests/test_options.py (each type on good and bad text; run.main prints one line; every
trainer spells each shared flag the same way); tests/test_reliability_outputs.py (output paths).
"""
import argparse
import dataclasses
import math
import os
from pathlib import Path

import optimizer


def _number(text, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        kind_name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind_name}")
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


# ----------------------------------------------------------------------------
# bounded allocations: every size that decides an allocation is checked against one bound first

# The one bound on a width that sizes a tensor (ranks, virtual tokens, hidden sizes, dims, heads,
# layers): 4x the widest Llama 3.x layer (16384 in 405B's feed-forward is 53248; 65536 covers it).
MAX_SIZE = 65536
# The bound on a product of sizes that is one allocation (vocab x dim, batch x length x width):
# 2^31 elements, 8 GiB in fp32.
MAX_ELEMENTS = 2 ** 31
SIZE_RULE = f"an integer >= 1 and <= {MAX_SIZE} (options.MAX_SIZE, the bound on any size)"


def check_size(name, value, limit=MAX_SIZE):
    """value as an int in 1..limit, else one ValueError naming `name` and the bound; for sizes
    read from files and sizes two flags make together (limit=MAX_ELEMENTS for products)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        bound = "options.MAX_SIZE" if limit == MAX_SIZE else (
            "options.MAX_ELEMENTS" if limit == MAX_ELEMENTS else "the bound")
        raise ValueError(f"{name} {value!r}: must be an integer >= 1 and <= {limit} ({bound}, "
                         "the bound on a size that decides an allocation)")
    return value


size = _checked(int, lambda v: 1 <= v <= MAX_SIZE, SIZE_RULE)


def size_field(limit=MAX_SIZE):
    """A file_checks.check_fields rule for a size read from a file: an integer in 1..limit."""
    return (int, lambda v: 1 <= v <= limit, f"an integer >= 1 and <= {limit} (the bound on a "
            "size that decides an allocation)")


def renamed(old_to_new):
    """A type function mapping old spellings of a choice to the current one (argparse checks
    `choices` after the type): renamed({"byte": "bytes"}) keeps `--tokenizer byte` working."""
    def convert(text):
        return old_to_new.get(text, text)
    convert.__name__ = "choice"       # argparse names the type in some messages
    return convert


# ----------------------------------------------------------------------------
# output paths: writable, and never an input (checked before any work)

# The atomic writer names its temporary file or folder `.<name>.XXXXXXXX.tmp`: 14 bytes more than
# the name itself must still fit the file system's limit on one name.
TEMPORARY_NAME_EXTRA = 14


def _nearest_existing(path):
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_problem(text, folder=False):
    """None when `text` can be written (a file; a folder to write into when folder=True), else
    why not: a name too long, a folder given as a file (or a file as a folder), a path under a
    file, a folder that is not writable. Nothing is created."""
    if "\0" in text:
        return "holds a NUL byte, which no file name can; give a plain path"
    path = Path(os.path.abspath(text))
    try:
        limit = os.pathconf(_nearest_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255                                   # the usual NAME_MAX
    for part in path.parts[1:]:
        room = limit - TEMPORARY_NAME_EXTRA if part == path.name else limit
        if len(os.fsencode(part)) > room:
            why = (f"the file system's {limit} less {TEMPORARY_NAME_EXTRA} for the atomic "
                   "writer's temporary name" if room < limit else "the file system's limit")
            return (f"a name in it is {len(os.fsencode(part))} bytes long, at most {room} fit "
                    f"({why}); give a shorter name")
    try:
        if path.is_dir() and not folder:
            return f"is a folder; give a file path (e.g. {text}/out.txt)"
        if path.exists() and not path.is_dir() and folder:
            return "is a file; give a folder path"
        existing = _nearest_existing(path if folder else path.parent)
        if not existing.is_dir():
            return f"is under the file {existing}; a folder cannot be made there"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"the folder {existing} is not writable; give another path"
    except OSError as err:
        return f"cannot be written ({err.strerror})"
    return None


def said(text, problem):
    """'PATH is a folder; ...' or 'PATH: a name in it ...' (a path with a NUL byte quoted)."""
    shown = repr(text) if "\0" in text else text
    return f"{shown} {problem}" if problem.startswith("is ") else f"{shown}: {problem}"


def output_file(text):
    """A path to write a file to (checked now, not after training: see output_problem)."""
    problem = output_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(said(text, problem))
    return text


def output_folder(text):
    """A folder to write into (checked now: see output_problem)."""
    problem = output_problem(text, folder=True)
    if problem:
        raise argparse.ArgumentTypeError(said(text, problem))
    return text


@dataclasses.dataclass(frozen=True)
class PathFlags:
    """A driver's path flags, checked by check_paths before any work (run.py): `inputs` read
    (data files, model files or folders, adapter folders), `outputs` files written, `folders`
    folders written into; swapped(args) -> {what: folder} of the folders it replaces whole
    (e.g. "--out_dir's adapter folder": OUT_DIR/adapter), or None; written(args) -> {what: file}
    of the files it writes under fixed names (e.g. "--out_dir's summary.json"), checked as the
    output files are, or None."""
    inputs: tuple = ()
    outputs: tuple = ()
    folders: tuple = ()
    swapped: object = None
    written: object = None


def _paths(values, flag):
    """The paths a flag holds: none, one, or a list (--data a.jsonl b.jsonl)."""
    value = values.get(flag.lstrip("-").replace("-", "_"))
    found = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])
             if isinstance(v, (str, Path))]
    for text in found:
        if "\0" in text:
            raise ValueError(f"{flag} {text!r}: holds a NUL byte, which no file name can; give a "
                             "plain path")
    return found


def _inside(path, folder):
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _same_file(a, b):
    """One file under two real paths (a hard link) or the same real path."""
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:                                   # one of them does not exist (yet)
        return False


def check_paths(values, paths, also_read=()):
    """One ValueError line, before any work, when an output cannot be written or names an input:
    an output file that is an input file or lies in an input folder (a model or adapter folder),
    two outputs on one file, a folder written into that is (or is in) an input folder, a folder
    replaced whole that holds an input. values: vars() of the parsed flags; paths: PathFlags;
    also_read: more (flag, path) inputs (the files a model file's loader reads beside it)."""
    reads = [(flag, text, os.path.realpath(text)) for flag, text in
             [(f, t) for f in paths.inputs for t in _paths(values, f)] + list(also_read)]
    files = [(flag, text) for flag in paths.outputs for text in _paths(values, flag)]
    folders = [(flag, text) for flag in paths.folders for text in _paths(values, flag)]
    swapped = [(what, str(text)) for what, text in (paths.swapped(values) if paths.swapped
                                                    else {}).items()]
    written = [(what, str(text)) for what, text in (paths.written(values) if paths.written
                                                    else {}).items()]
    for flag, text in files + folders + swapped:
        problem = output_problem(text, folder=(flag, text) not in files)
        if problem:
            raise ValueError(f"{flag} {said(text, problem)}")
    seen = {}
    _check_files(files, reads, seen)
    for flag, text in folders + swapped:
        real = os.path.realpath(text)
        for source, source_text, source_real in reads:
            if os.path.isdir(source_real) and (real == source_real or _inside(real, source_real)):
                where = "is the" if real == source_real else "is inside the"
                raise ValueError(f"{flag} {text} {where} {source} folder {source_text}; write "
                                 "it elsewhere")
            if (flag, text) in swapped and _inside(source_real, real):
                raise ValueError(f"{flag} {text} is replaced whole but holds the {source} "
                                 f"{source_text}; write it elsewhere")
    _check_files(written, reads, seen)       # after the folders: a folder's error says more


def _check_files(files, reads, seen):
    """Each output file (flag, text): not written twice (seen: real path -> flag), not an input
    file, not inside an input folder."""
    for flag, text in files:
        real = os.path.realpath(text)
        if real in seen:
            raise ValueError(f"{flag} {text} is also the {seen[real]} file; give each output "
                             "its own path")
        seen[real] = flag
        for source, source_text, source_real in reads:
            if _same_file(real, source_real) or _inside(real, source_real):
                where = "is the" if _same_file(real, source_real) else "is inside the"
                kind = "folder " + source_text if os.path.isdir(source_real) else "file"
                raise ValueError(f"{flag} {text} {where} {source} {kind}; write it elsewhere")


# ----------------------------------------------------------------------------
# the training flags: one spelling, type and help per concept (train.add_training_arguments)

# name -> (help, argparse keywords, old spellings kept as aliases); `--name-with-dashes` is always
# an alias too, and each trainer gives the defaults (train.add_training_arguments).
TRAINING_FLAGS = {
    "epochs": ("passes over the training data", dict(type=positive_int), []),
    "lr": ("peak AdamW learning rate (reached after --warmup_steps)",
           dict(type=positive_float), []),
    "batch_size": ("examples (sequences, blocks) per micro-batch",
                   dict(type=positive_int), []),
    "eval_batch_size": ("examples per evaluation batch", dict(type=positive_int), []),
    "grad_accum": ("micro-batches per optimizer step (gradient accumulation)",
                   dict(type=positive_int), []),
    "weight_decay": ("AdamW decoupled weight decay", dict(type=nonnegative_float), []),
    "schedule": ("lr after warmup: constant, or cosine / linear decay to 0 (a decay needs a known "
                 "length: a dataset with len() or --max_steps_per_epoch)",
                 dict(choices=sorted(optimizer.SCHEDULES)), []),
    "warmup_steps": ("optimizer steps of linear warmup from 0 to --lr",
                     dict(type=nonnegative_int), []),
    "eval_every_steps": ("also evaluate every N optimizer steps (always at each epoch end)",
                         dict(type=positive_int), []),
    "patience": ("early stopping: stop after N evaluations in a row without a better validation "
                 "score (evaluations: each epoch end and every --eval_every_steps)",
                 dict(type=positive_int), []),
    "max_steps_per_epoch": ("stop each epoch after N optimizer steps (None: the whole epoch)",
                            dict(type=positive_int), []),
    "time_budget_s": ("stop training after this many seconds (then evaluate and predict)",
                      dict(type=nonnegative_float), ["--time_budget", "--time-budget"]),
    "max_train_examples": ("train on a seeded random subset of N training examples",
                           dict(type=positive_int), []),
    "max_eval_examples": ("evaluate on a seeded random subset of N validation (dev) examples; "
                          "never cuts the test file", dict(type=positive_int), []),
    "max_test_examples": ("predict a seeded random subset of N test examples (a submission "
                          "always covers every test row)", dict(type=positive_int), []),
    "no_progress": ("no tqdm progress bars (for logs)", dict(action="store_true"), []),
    "checkpoint_every_steps": ("write a resumable checkpoint every N optimizer steps (and at "
                               "every epoch end) into OUT_DIR/<name>-checkpoint",
                               dict(type=positive_int), []),
    "resume": ("continue this run (same flags) from its checkpoint: a killed run finishes to the "
               "same result, a finished pico run trains --epochs more; `--resume DIR` names the "
               "folder (default OUT_DIR/<name>-checkpoint; pico: OUT_DIR/<name>)",
               dict(nargs="?", const=True, metavar="DIR"), []),
    "resume_or_start": ("--resume, but start fresh when no checkpoint is there yet (--resume "
                        "alone refuses that)", dict(action="store_true"), []),
}


def add_flags(parser, **defaults):
    """The TRAINING_FLAGS named in defaults, each with its default: --name, --name-with-dashes
    and any old spelling."""
    for name, default in defaults.items():
        text, kwargs, old = TRAINING_FLAGS[name]
        dashed = "--" + name.replace("_", "-")
        aliases = ([dashed] if dashed != f"--{name}" else []) + old
        parser.add_argument(f"--{name}", *aliases, default=default, help=text, **kwargs)


def add_compile_arguments(parser, what):
    """--compile and --compile_backend, shared by the options that can run a compiled path
    (fused.compile_decode for generation, fused.compile_model for training); `what` says which."""
    parser.add_argument("--compile", action="store_true",
                        help=f"torch.compile {what} (tested equal to eager; the first call waits "
                        "for the compiler)")
    parser.add_argument("--compile_backend", "--compile-backend", default="inductor",
                        choices=["inductor", "aot_eager", "eager"],
                        help="torch.compile backend for --compile (inductor generates kernels and, "
                        "on a GPU, CUDA graphs; eager only traces, for checking)")
