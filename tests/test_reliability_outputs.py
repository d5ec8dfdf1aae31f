"""Reliability round 3, part 1: no output names an input, every saved folder is swapped in whole,
output folders are checked before any work (issue 24).

Run: .venv/bin/python -m pytest tests/test_reliability_outputs.py -q   (CPU, tiny models, seconds)

Oracles: the contract itself. (1) Each row of the per-option tables (an output flag naming an
input file, a file in an input folder, another output, a folder replaced whole that holds an
input) must end in one "error:" line on stderr naming both flags, exit code 2, before anything is
read: the input files are unchanged and a missing model is never reached; the same is checked
for every (output, input) pair of every option's PATHS table. (2) Each saved folder
(a peft adapter, sft's adapter and model folders with sft_config.json, the lora classifier's
adapter + head, a model folder) is written twice; the second writer is made to fail at each of
its files in turn (atomic.write_atomic patched to raise there, as a kill between files would
stop it): the first folder must still be there byte for byte and load, with no temporary folder
left. (3) Output folders under a file, with a 300-byte name or not writable are one line.
"""
import argparse
import os
import re
import types
from pathlib import Path

import pytest
import torch

import atomic
import llama
import lora
import options
import peft_format
import run
import run_classifier
import run_sft
import weights
from test_llama import tiny_model

LONG = "n" * 300


def run_cli(argv, capsys):
    """run.main's exit code and its stderr (a user error: one 'error:' line, exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def files(tmp_path):
    """Inputs of every kind in one folder: data files, a model file and folder, an adapter."""
    names = ["train.txt", "dev.txt", "test.json", "conv.json", "data.jsonl", "data2.jsonl",
             "labels.json", "val.json", "text.txt", "model.gguf"]
    for name in names:
        (tmp_path / name).write_text("[]\n" if name.endswith("json") else "x\n")
    for folder, inside in [("model", "config.json"), ("model", "model.safetensors"),
                           ("adapter", "adapter_model.safetensors"),
                           ("adapter", "adapter_config.json")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / inside).write_text("{}\n")
    (tmp_path / "link.json").symlink_to(tmp_path / "test.json")
    os.link(tmp_path / "dev.txt", tmp_path / "hard.txt")
    return tmp_path


# ----------------------------------------------------------------------------
# 1. no output names an input

MISSING = ["--pretrained-model-path", "{d}/no-such-model.gguf"]   # never reached: checked first
CASES = [   # (argv with {d} = the inputs' folder, words the one line must hold)
    (["--option", "sft", "--adapter", "{d}/adapter", "--test", "{d}/test.json",
      "--submission", "{d}/test.json", *MISSING], "--submission .* is the --test file"),
    (["--option", "sft", "--adapter", "{d}/adapter", "--test", "{d}/test.json", "--train",
      "{d}/train.txt", "--submission", "{d}/train.txt", *MISSING], "is the --train file"),
    (["--option", "sft", "--adapter", "{d}/adapter", "--test", "{d}/test.json", "--submission",
      "{d}/adapter/adapter_model.safetensors", *MISSING], "is inside the --adapter folder"),
    (["--option", "sft", "--adapter", "{d}/adapter", "--test", "{d}/test.json",
      "--submission", "{d}/link.json", *MISSING], "--submission .*link.json is the --test file"),
    (["--option", "sft", "--adapter", "{d}/adapter", "--test", "{d}/test.json",
      "--out_dir", "{d}/adapter", *MISSING], "--out_dir .* is the --adapter folder"),
    (["--option", "sft", "--train", "{d}/train.txt", "--method", "full", "--out_dir", "{d}",
      "--pretrained-model-path", "{d}/model"], "saved folder .* is the --pretrained-model-path"),
    (["--option", "sft", "--train", "{d}/adapter/adapter_config.json", "--out_dir", "{d}",
      *MISSING], "replaced whole but holds the --train"),
    (["--option", "finetune", "--train", "{d}/train.txt", "--dev", "{d}/dev.txt", "--test",
      "{d}/test.json", "--dev_out", "{d}/dev.txt", *MISSING], "--dev_out .* is the --dev file"),
    (["--option", "finetune", "--train", "{d}/train.txt", "--dev", "{d}/dev.txt", "--test",
      "{d}/test.json", "--dev_out", "{d}/hard.txt", *MISSING], "hard.txt is the --dev file"),
    (["--option", "prompt", "--train", "{d}/train.txt", "--dev", "{d}/dev.txt", "--test",
      "{d}/test.json", "--dev_out", "{d}/o.txt", "--test_out", "{d}/o.txt", *MISSING],
     "--test_out .* is also the --dev_out file"),
    (["--option", "lora", "--train", "{d}/train.txt", "--dev", "{d}/dev.txt", "--test",
      "{d}/test.json", "--label-names", "{d}/labels.json", "--test_out", "{d}/labels.json",
      *MISSING], "is the --label_names file"),
    (["--option", "lora", "--train", "{d}/train.txt", "--dev", "{d}/dev.txt", "--test",
      "{d}/test.json", "--label-names", "{d}/lora-train-adapter/labels.json", "--out_dir",
      "{d}", *MISSING], "adapter folder .* is replaced whole but holds the --label_names"),
    (["--option", "chat", "--conversation", "{d}/conv.json", "--out", "{d}/conv.json", *MISSING],
     "--out .* is the --conversation file"),
    (["--option", "chat", "--prompt", "hi", "--compare_model", "{d}/model", "--out",
      "{d}/model/t.json", *MISSING], "is inside the --compare_model folder"),
    (["--option", "memory", "--pretrained-model-path", "{d}/model", "--json",
      "{d}/model/config.json"], "--json .* is inside the --pretrained-model-path folder"),
    (["--option", "memory", "--pretrained-model-path", "{d}/model/model.safetensors", "--json",
      "{d}/model/config.json"], "config.json is the --pretrained-model-path .read beside the model. file"),
    (["--option", "generate", "--pretrained-model-path", "{d}/model.gguf",
      "--generated_sentence_high_temp_out", "{d}/model.gguf"],
     "is the --pretrained-model-path file"),
    (["--option", "eval", "--data", "{d}/data.jsonl", "{d}/data2.jsonl", "--json",
      "{d}/data2.jsonl", *MISSING], "--json .* is the --data file"),
    (["--option", "eval", "--data", "{d}/data.jsonl", "--adapter", "{d}/adapter", "--out_dir",
      "{d}/adapter/plots", *MISSING], "--out_dir .* is inside the --adapter folder"),
    (["--option", "ssm", "--train", "{d}/train.txt", "--val", "{d}/val.json", "--test",
      "{d}/test.json", "--submission", "{d}/val.json"], "--submission .* is the --val file"),
    (["--option", "tokenizers", "--tokenizer", "{d}/model", "--out_dir", "{d}/model"],
     "--out_dir .* is the --tokenizer folder"),
    (["--option", "sweep", "--train", "{d}/train.txt", "--out_dir", "{d}/model/runs",
      "--pretrained-model-path", "{d}/model"],
     "--out_dir .* is inside the --pretrained-model-path folder"),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[f"{c[0][1]}-{i}" for i, c in enumerate(CASES)])
def test_an_output_naming_an_input_is_refused_before_any_work(files, capsys, argv, words):
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    err = run_cli([a.format(d=files) for a in argv], capsys)
    assert re.search(words, err), err
    assert "no-such-model" not in err                       # refused before the model is read
    assert {p: p.read_bytes() for p in files.rglob("*") if p.is_file()} == before


EVERY_PAIR = [(option, output, source) for option, driver in run.OPTIONS.items()
              for output in driver.PATHS.outputs + driver.PATHS.folders
              for source in driver.PATHS.inputs]


@pytest.mark.parametrize("option, output, source", EVERY_PAIR,
                         ids=[" ".join(c) for c in EVERY_PAIR])
def test_every_output_on_every_input_of_every_option_is_refused(files, capsys, option, output,
                                                                source):
    """From the tables themselves: each output flag set to what each input flag names (a file
    for an output file, a folder for an output folder) is one line naming both flags."""
    folder = output in run.OPTIONS[option].PATHS.folders
    target = str(files / ("model" if folder else "test.json"))
    required = ["--data", str(files / "data.jsonl")] if option == "eval" else []
    err = run_cli(["--option", option, *required, source, target, output, target], capsys)
    assert f"{output} {target} is the {source}" in err, err


def test_the_default_model_is_an_input_too(capsys, default_model_path):
    err = run_cli(["--option", "generate", "--generated_sentence_low_temp_out",
                   str(default_model_path)], capsys)
    assert "is the --pretrained-model-path file" in err


def test_every_path_flag_in_the_tables_exists_and_every_output_is_in_one():
    """The PATHS table of each driver names real flags, and every flag typed as an output
    (options.output_file / output_folder) is in its table."""
    for option, driver in run.OPTIONS.items():
        parser = run.build_parser(option)
        by_dest = {a.dest: a for a in parser._actions}
        paths = driver.PATHS
        declared = paths.inputs + paths.outputs + paths.folders
        missing = [f for f in declared if f.lstrip("-").replace("-", "_") not in by_dest]
        assert not missing, (option, missing)
        typed = {a.option_strings[0] for a in parser._actions
                 if a.type in (options.output_file, options.output_folder)}
        names = {f.lstrip("-").replace("-", "_") for f in paths.outputs + paths.folders}
        assert {t.lstrip("-").replace("-", "_") for t in typed} <= names, (option, typed)


def test_outputs_elsewhere_pass_the_check(files):
    paths = run_sft.PATHS
    values = {"adapter": str(files / "adapter"), "test": str(files / "test.json"),
              "submission": str(files / "out" / "submission.csv"), "out_dir": str(files),
              "pretrained_model_path": str(files / "model"), "method": "lora", "train": None}
    options.check_paths(values, paths)                   # the run folder may hold the adapter


# ----------------------------------------------------------------------------
# 2. every saved folder is swapped in whole

def lora_model(seed):
    model = tiny_model(seed)
    config = lora.LoraConfig(r=2, alpha=4.0, target_modules=["wq", "wv"])
    lora.inject_lora(model, config)
    torch.manual_seed(seed + 100)
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(layer.lora_B)
    return model, config


def fail_at(monkeypatch, name):
    """Make the atomic writer fail (as a kill would stop it) when it reaches the file `name`."""
    real = atomic.write_atomic

    def write(path, write_):
        if Path(path).name == name:
            raise RuntimeError(f"killed before {name}")
        return real(path, write_)
    monkeypatch.setattr(atomic, "write_atomic", write)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def save_twice(monkeypatch, folder, save, name):
    """save(1) fully, then save(2) failing at `name`: the folder of save(1) must remain."""
    save(1)
    first = snapshot(folder)
    assert Path(name) in first, sorted(first)
    fail_at(monkeypatch, name)
    with pytest.raises(RuntimeError, match="killed"):
        save(2)
    monkeypatch.undo()
    assert snapshot(folder) == first
    assert not list(folder.parent.glob(f".{folder.name}.*.tmp"))
    assert not folder.with_name(folder.name + ".old").exists()
    save(2)                                              # and a whole second save replaces it
    assert snapshot(folder) != first


def save_peft(folder, seed):
    model, config = lora_model(seed)
    peft_format.save_adapter(folder, model, config)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_killed_adapter_save_keeps_the_old_adapter(tmp_path, monkeypatch, name):
    folder = tmp_path / "adapter"
    save_twice(monkeypatch, folder, lambda seed: save_peft(folder, seed), name)
    peft_format.load_adapter(folder, tiny_model(0))


def sft_args(out, method):
    return argparse.Namespace(out_dir=str(out), method=method, max_len=64,
                              pretrained_model_path="base")


@pytest.mark.parametrize("method, name", [
    ("lora", "adapter_model.safetensors"), ("lora", "adapter_config.json"),
    ("lora", "sft_config.json"), ("full", "model.safetensors"), ("full", "config.json"),
    ("full", "sft_config.json")])
def test_a_killed_sft_save_keeps_the_old_folder_and_its_labels(tmp_path, monkeypatch, method,
                                                               name):
    """sft_config.json (labels, template) is inside the swap: never new weights beside the
    previous run's labels."""
    tokenizer = types.SimpleNamespace(spec=None)

    def save(seed):
        model, config = lora_model(seed) if method == "lora" else (tiny_model(seed), None)
        labels = ["a", "b"] if seed == 1 else ["x", "y", "z"]
        run_sft.save_trained(model, tokenizer, config, labels, "plain", sft_args(tmp_path, method))
    folder = tmp_path / ("adapter" if method == "lora" else "model")
    save_twice(monkeypatch, folder, save, name)
    monkeypatch.undo()
    assert '"x"' in (folder / "sft_config.json").read_text()
    if method == "lora":
        peft_format.load_adapter(folder, tiny_model(0))
    else:
        weights.read_model_file(folder)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json",
                                  "classifier_head.safetensors"])
def test_a_killed_lora_classifier_save_keeps_adapter_and_head_together(tmp_path, monkeypatch,
                                                                       name):
    import classifier
    args = argparse.Namespace(out_dir=str(tmp_path), option="lora", train="data/train.txt")

    def save(seed):
        torch.manual_seed(seed)
        model = classifier.LlamaEmbeddingClassifier(tiny_model(seed), num_labels=2)
        classifier.add_lora(model, rank=2, alpha=4.0, targets="heavy", dropout=0.0)
        run_classifier.save_lora_classifier(model, args)
    save_twice(monkeypatch, run_classifier.lora_folder(args), save, name)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_killed_model_folder_save_keeps_the_old_model(tmp_path, monkeypatch, name):
    folder = tmp_path / "model"

    def save(seed):
        model = tiny_model(seed)
        weights.save_model_folder(folder, model.config, model.state_dict())
    save_twice(monkeypatch, folder, save, name)
    config, state, _ = weights.read_model_file(folder)
    assert config == llama.LlamaConfig.tiny()
    torch.testing.assert_close(state["tok_embeddings.weight"],
                               tiny_model(2).state_dict()["tok_embeddings.weight"])


# ----------------------------------------------------------------------------
# 3. output folders checked before any work

FOLDER_CASES = [   # argv with {d}; an output that cannot be written
    ["--option", "sft", "--train", "{d}/train.txt", "--out_dir", "{d}/train.txt/runs"],
    ["--option", "sft", "--train", "{d}/train.txt", "--out_dir", "{d}/" + LONG],
    ["--option", "ssm", "--out_dir", "{d}/train.txt/runs"],
    ["--option", "pico", "--out_dir", "{d}/" + LONG + "/x"],
    ["--option", "eval", "--data", "{d}/data.jsonl", "--json", "{d}/" + LONG],
    ["--option", "memory", "--preset", "stories42m", "--json", "{d}/" + LONG],
    ["--option", "memory", "--preset", "stories42m", "--json", "{d}/train.txt/m.json"],
    ["--option", "tokenizers", "--out_dir", "{d}/train.txt"],
    ["--option", "tokenizers", "--out_dir", "{d}/" + LONG],
    ["--option", "chat", "--prompt", "hi", "--out", "{d}/model"],
]


@pytest.mark.parametrize("argv", FOLDER_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(FOLDER_CASES)])
def test_an_output_that_cannot_be_written_is_one_line_before_the_model(files, capsys, argv):
    err = run_cli([a.format(d=files) for a in argv], capsys)
    assert any(w in err for w in ("is under the file", "bytes long", "is a file",
                                  "is a folder")), err
    assert LONG not in os.listdir(files)                 # nothing was created


EVERY_OUTPUT = [(option, flag) for option, driver in run.OPTIONS.items()
                for flag in driver.PATHS.outputs + driver.PATHS.folders]


@pytest.mark.parametrize("option, flag", EVERY_OUTPUT, ids=[" ".join(c) for c in EVERY_OUTPUT])
@pytest.mark.parametrize("where", ["{d}/" + LONG, "{d}/train.txt/x", "{d}/a\0b"])
def test_every_output_flag_of_every_option_is_checked(files, capsys, option, flag, where):
    """From the tables themselves: each output flag of each option, given a 300-byte name or a
    path under a file, is one line before any work (nothing parsed, read or created)."""
    required = ["--data", str(files / "data.jsonl")] if option == "eval" else []
    err = run_cli(["--option", option, *required, flag, where.format(d=files)], capsys)
    assert flag.lstrip("-").split("_")[0] in err
    assert any(w in err for w in ("bytes long", "under the file", "NUL byte")), err


def test_a_read_only_folder_is_refused(files, capsys, monkeypatch):
    """Not writable (os.access says so; as root, chmod would not stop a write, so the check is
    driven through os.access)."""
    locked = files / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked
                        else real(p, mode))
    err = run_cli(["--option", "eval", "--data", str(files / "data.jsonl"), "--out_dir",
                   str(locked / "plots"), *[a.format(d=files) for a in MISSING]], capsys)
    assert "is not writable" in err and "no-such-model" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_folder_is_refused(files, capsys):
    locked = files / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = run_cli(["--option", "memory", "--preset", "stories42m", "--json",
                       str(locked / "m.json")], capsys)
    finally:
        locked.chmod(0o700)
    assert "is not writable" in err


@pytest.mark.parametrize("argv, words", [
    (["--option", "sft", "--train", "{o}/summary.json", "--out_dir", "{o}"],
     "--out_dir's summary.json {o}/summary.json is the --train file"),
    (["--option", "sft", "--train", "{d}/train.jsonl", "--test", "{o}/submission.csv",
      "--out_dir", "{o}"], "--out_dir's submission.csv {o}/submission.csv is the --test file"),
    (["--option", "sft", "--adapter", "{d}/adapter", "--test", "{o}/submission.csv",
      "--out_dir", "{o}"], "--out_dir's submission.csv .* is the --test file"),
    (["--option", "ssm", "--train", "{o}/ssm-results.json", "--out_dir", "{o}"],
     "--out_dir's ssm-results.json .* is the --train file"),
    (["--option", "ssm_compare", "--test", "{o}/mamba-submission.csv", "--out_dir", "{o}"],
     "--out_dir's mamba-submission.csv .* is the --test file"),
])
def test_files_written_under_fixed_names_never_replace_an_input(tmp_path, capsys, argv, words):
    """Outputs a driver writes in --out_dir without a flag (submission.csv when --submission is
    left out, summary.json, <model>-results.json, ...) are checked like the output flags."""
    out, data_dir = tmp_path / "out", tmp_path / "data"
    out.mkdir(), data_dir.mkdir()
    for name in ("summary.json", "submission.csv", "ssm-results.json", "mamba-submission.csv"):
        (out / name).write_text("{}", encoding="utf-8")
    before = {p: p.read_bytes() for p in out.iterdir()}
    err = run_cli([a.format(o=out, d=data_dir) for a in argv], capsys)
    assert re.search(words.format(o=out), err), err
    assert {p: p.read_bytes() for p in out.iterdir()} == before
