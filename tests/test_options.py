"""Tests for options.py (checked option values) and run.py's one-line option errors.

Run: .venv/bin/python -m pytest tests/test_options.py -q

Oracles: the values written out by hand; run.main's stderr and exit code; the vocabulary
table options.TRAINING_FLAGS for every trainer's shared flags (one spelling and help each).
"""
import argparse

import pytest

import options
import run


@pytest.mark.parametrize("check, good, bad", [
    (options.positive_int, [("1", 1), ("12", 12)], ["0", "-3", "1.5", "x"]),
    (options.nonnegative_int, [("0", 0)], ["-1"]),
    (options.positive_float, [("2e-5", 2e-5)], ["0", "-1", "nan", "inf"]),
    (options.nonnegative_float, [("0", 0.0)], ["-0.1", "nan"]),
    (options.probability, [("0", 0.0), ("0.3", 0.3)], ["1", "1.5", "-0.1"]),
    (options.fraction, [("0.1", 0.1)], ["0", "1", "2"]),
    (options.unit_interval, [("0", 0.0), ("1", 1.0)], ["1.01"]),
    (options.nucleus_mass, [("1", 1.0), ("0.9", 0.9)], ["0", "2"]),
])
def test_types_accept_and_refuse(check, good, bad):
    for text, value in good:
        assert check(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


def test_paths(tmp_path):
    assert options.output_file(str(tmp_path / "a.txt")) == str(tmp_path / "a.txt")
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        options.output_file(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        options.output_folder(str(tmp_path / "f"))


@pytest.mark.parametrize("argv, words", [
    (["--option", "pico", "--block_size", "0"], "--block_size"),
    (["--option", "pico", "--top_p", "2"], "--top_p"),
    (["--option", "s4", "--time_budget", "-1"], "--time_budget"),
    (["--option", "s4", "--batch_size", "0"], "--batch_size"),
    (["--option", "generate", "--threads", "-1"], "--threads"),
    (["--option", "sft", "--epochs", "0"], "--epochs"),
    (["--option", "generate", "--generated_sentence_low_temp_out", "."], "is a folder"),
])
def test_bad_flags_fail_in_one_line_before_any_work(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err


TRAINERS = ("finetune", "lora", "sft", "ssm", "s4", "pico", "sweep")


@pytest.mark.parametrize("option", TRAINERS)
def test_every_trainer_spells_a_shared_flag_the_same_way(option):
    """Each training flag a trainer has is the vocabulary's (options.TRAINING_FLAGS): the same
    spellings (underscore, dash alias, old aliases) and help text; the common ones everywhere."""
    actions = {a.dest: a for a in run.build_parser(option)._actions}
    for name in ("epochs", "lr", "batch_size", "max_steps_per_epoch", "time_budget_s",
                 "no_progress", "checkpoint_every_steps", "resume"):
        assert name in actions, (option, name)
    for name, (text, _, old) in options.TRAINING_FLAGS.items():
        if name in actions:
            dashed = "--" + name.replace("_", "-")
            spellings = [f"--{name}"] + ([dashed] if dashed != f"--{name}" else []) + old
            assert actions[name].option_strings == spellings, (option, name)
            assert actions[name].help == text, (option, name)


def test_old_choice_spellings_are_renamed():
    """--tokenizer byte (pico's old spelling) reads as bytes in both trainers that have it."""
    assert options.renamed({"byte": "bytes"})("byte") == "bytes"
    for option in ("pico", "s4"):
        args = run.build_parser(option).parse_args(["--option", option, "--tokenizer", "byte"])
        assert args.tokenizer == "bytes"
