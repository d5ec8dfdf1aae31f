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

Tests: tests/test_options.py (each type on good and bad text; run.main prints one line; every
trainer spells each shared flag the same way).
"""
import argparse
import math
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


def renamed(old_to_new):
    """A type function mapping old spellings of a choice to the current one (argparse checks
    `choices` after the type): renamed({"byte": "bytes"}) keeps `--tokenizer byte` working."""
    def convert(text):
        return old_to_new.get(text, text)
    convert.__name__ = "choice"       # argparse names the type in some messages
    return convert


def output_file(text):
    """A path to write a file to: not an existing folder (checked now, not after training)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path "
                                         f"(e.g. {text}/out.txt)")
    return text


def output_folder(text):
    """A folder to write into: not an existing file."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder path")
    return text


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
