"""Reliability round 3, part 2: every file llmlab reads is checked, every allocation is bounded,
--resume refuses another run, torchrun's variables are checked (issue 24).

Run: .venv/bin/python -m pytest tests/test_reliability_inputs.py -q   (about 20 s)

Oracle: the contract itself. Each hostile input (a table row) must end in one ValueError /
FileNotFoundError line (run.main: exit 2, one stderr line) that names the file or flag and, for
sizes, the bound; never a traceback, RecursionError, an allocation, or a silent accept.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import adapters
import checkpoint
import data
import distributed
import file_checks
import llama
import lora
import options
import peft_format
import run
import sft
import train

ROOT = Path(__file__).resolve().parents[1]
BOUND = str(options.MAX_SIZE)


def one_line(err):
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def run_cli(argv, capsys):
    """run.main's exit code and its stderr (a user error: one 'error:' line, exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


# ----------------------------------------------------------------------------
# 1. one checked reader per format

@pytest.mark.parametrize("depth", [65, 900, 100_000])
def test_deep_json_is_one_line_naming_the_file_and_the_limit(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text("[" * depth + "]" * depth, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        file_checks.read_json(path, kind=None)
    assert str(path) in one_line(err) and str(file_checks.MAX_JSON_DEPTH) in str(err.value)


def test_json_at_the_depth_limit_is_read():
    depth = file_checks.MAX_JSON_DEPTH
    assert file_checks.json_depth(file_checks.json_value("[" * depth + "]" * depth, "x", list)) \
        == depth


@pytest.mark.parametrize("reader", [
    lambda p: file_checks.read_text(p, "--text"),
    lambda p: file_checks.read_json(p, kind=None),
    lambda p: data.read_examples(p, flag="--train"),             # seed 001 `LABEL ||| TEXT`
    lambda p: data.read_label_names(p),                          # seed 001 label mapping
    lambda p: data.read_json_rows(p, ()),
    lambda p: sft.read_records(p),
])
def test_utf8_errors_name_the_file_and_the_byte_offset(tmp_path, reader):
    path = tmp_path / "bad.txt"
    path.write_bytes(b'1 ||| fine\n0 ||| caf\xe9\n')
    with pytest.raises(ValueError) as err:
        reader(path)
    assert str(path) in one_line(err) and "byte 20" in str(err.value)


@pytest.mark.parametrize("content", ['{"0": "bad"}', "3", '[["bad"], "good"]'])
def test_label_names_not_a_list_of_strings(tmp_path, content):
    path = tmp_path / "labels.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        data.read_label_names(path)
    assert str(path) in one_line(err)


@pytest.mark.parametrize("row, field", [
    ({"id": [1], "instruction": "a", "answer": "x"}, "id"),
    ({"id": {"a": 1}, "text": "a", "label": "x"}, "id"),
    ({"instruction": {"a": 1}, "answer": "x"}, "instruction"),
    ({"instruction": "a", "input": ["b"], "answer": "x"}, "input"),
    ({"question": 3, "answer": True}, "question"),
    ({"text": "a", "label": [1]}, "label"),
])
def test_records_with_values_of_the_wrong_kind(tmp_path, row, field):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([row]), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        sft.read_records(path)
    assert str(path) in one_line(err) and repr(field) in str(err.value)


LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
PROMPT = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}


@pytest.mark.parametrize("config, needle", [
    ([LORA], "JSON object"),
    ("LORA", "JSON object"),
    ({"r": 8}, "'peft_type' is missing"),
    ({"peft_type": 3}, "'peft_type'"),
    ({**LORA, "r": 10 ** 9}, BOUND),
    ({**LORA, "r": 1e9}, "'r'"),
    ({**LORA, "r": "8"}, "'r'"),
    ({**LORA, "r": 0}, "'r'"),
    ({**LORA, "r": True}, "'r'"),
    ({k: v for k, v in LORA.items() if k != "r"}, "'r' is missing"),
    ({**LORA, "lora_alpha": "x"}, "'lora_alpha'"),
    ({**LORA, "lora_dropout": 2}, "'lora_dropout'"),
    ({**LORA, "target_modules": "q_proj"}, "'target_modules'"),
    ({**LORA, "target_modules": [1]}, "'target_modules'"),
    ({**LORA, "target_modules": []}, "'target_modules'"),
    ({"peft_type": "IA3", "target_modules": {"a": 1}}, "'target_modules'"),
    ({**PROMPT, "num_virtual_tokens": 10 ** 8}, BOUND),
    ({**PROMPT, "num_virtual_tokens": None}, "'num_virtual_tokens'"),
    ({**PROMPT, "peft_type": "P_TUNING", "encoder_hidden_size": 10 ** 9}, BOUND),
    ({**PROMPT, "peft_type": "PREFIX_TUNING", "encoder_hidden_size": 10 ** 9}, BOUND),
    ({**PROMPT, "peft_type": "PREFIX_TUNING", "prefix_projection": "yes"}, "prefix_projection"),
])
def test_adapter_config_is_checked_field_by_field(tmp_path, config, needle):
    (tmp_path / peft_format.ADAPTER_CONFIG).write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / peft_format.ADAPTER_WEIGHTS).write_bytes(b"")
    with pytest.raises(ValueError) as err:
        peft_format.read_config(tmp_path)
    assert peft_format.ADAPTER_CONFIG in one_line(err) and needle in str(err.value)


SFT_CONFIG = {"method": "lora", "labels": ["no", "yes"], "template": "alpaca", "max_len": 64,
              "base_model": None, "base_config": {}}


@pytest.mark.parametrize("config, needle", [
    ([SFT_CONFIG], "JSON object"),
    ({k: v for k, v in SFT_CONFIG.items() if k != "method"}, "'method' is missing"),
    ({**SFT_CONFIG, "method": "magic"}, "'method'"),
    ({**SFT_CONFIG, "labels": "no,yes"}, "'labels'"),
    ({**SFT_CONFIG, "labels": [1, 2]}, "'labels'"),
    ({**SFT_CONFIG, "template": 3}, "'template'"),
    ({**SFT_CONFIG, "max_len": 10 ** 9}, BOUND),
    ({**SFT_CONFIG, "max_len": "64"}, "'max_len'"),
    ({**SFT_CONFIG, "base_model": ["m"]}, "'base_model'"),
    ({**SFT_CONFIG, "base_config": []}, "'base_config'"),
])
def test_sft_config_is_checked_before_the_model_loads(tmp_path, capsys, config, needle):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "sft_config.json").write_text(json.dumps(config), encoding="utf-8")
    test = tmp_path / "test.json"
    test.write_text('[{"id": 1, "instruction": "a"}]', encoding="utf-8")
    err = run_cli(["--option", "sft", "--adapter", str(tmp_path / "adapter"), "--test", str(test),
                   "--submission", str(tmp_path / "sub.csv"), "--out_dir", str(tmp_path / "o")],
                  capsys)
    assert "sft_config.json" in err and needle in err


PICO = {"format": checkpoint.PICO_FORMAT, "config": {}, "tokenizer": "byte", "optimizer": None}


def pico_meta(**config):
    from dataclasses import asdict
    import pico
    return {**PICO, "config": {**asdict(pico.PicoConfig.tiny()), **config}}


@pytest.mark.parametrize("meta, needle", [
    ({**PICO, "config": [1, 2]}, "'config'"),
    ({k: v for k, v in PICO.items() if k != "config"}, "'config' is missing"),
    ({**pico_meta(), "tokenizer": "magic"}, "'tokenizer'"),
    ({**pico_meta(), "steps": "abc"}, "'steps'"),
    (pico_meta(dim=10 ** 9), BOUND),
    (pico_meta(dim="16"), "'dim'"),
    (pico_meta(n_layers=0), "'n_layers'"),
    (pico_meta(model="rnn"), "PicoConfig.model"),
    (pico_meta(vocab_size=65536, dim=65536, n_heads=1), str(options.MAX_ELEMENTS)),
    ({**pico_meta(), "config": {k: v for k, v in pico_meta()["config"].items() if k != "dim"}},
     "'dim' is missing"),
])
def test_pico_checkpoint_is_checked_before_the_model_is_built(tmp_path, meta, needle):
    (tmp_path / "pico.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        checkpoint.load_pico(tmp_path)
    assert "pico.json" in one_line(err) and needle in str(err.value)


# ----------------------------------------------------------------------------
# 2. bounded allocations: one bound (options.MAX_SIZE, MAX_ELEMENTS) or the model's own dims

@pytest.mark.parametrize("make, flag", [
    (lambda: lora.LoraConfig(r=10 ** 8), "--lora_rank"),
    (lambda: adapters.PromptTuningConfig(10 ** 8), "--num_virtual_tokens"),
    (lambda: adapters.PTuningConfig(10 ** 8), "--num_virtual_tokens"),
    (lambda: adapters.PTuningConfig(20, "MLP", 10 ** 9), "--encoder_hidden_size"),
    (lambda: adapters.PrefixTuningConfig(20, True, 10 ** 9), "--encoder_hidden_size"),
])
def test_adapter_sizes_are_bounded_before_any_allocation(make, flag):
    with pytest.raises(ValueError) as err:
        make()
    assert flag in one_line(err) and BOUND in str(err.value) and "MAX_SIZE" in str(err.value)


def tiny_llama():
    return llama.Llama(llama.LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                         vocab_size=32, hidden_dim=32, max_seq_len=24))


@pytest.mark.parametrize("config, needle", [
    (adapters.PromptTuningConfig(24), "max_seq_len 24"),
    (adapters.PrefixTuningConfig(100), "max_seq_len 24"),
    (lora.LoraConfig(r=33, target_modules=["wq"]), "max(in, out)"),
])
def test_adapter_sizes_are_bounded_by_the_model(config, needle):
    with pytest.raises(ValueError) as err:
        adapters.adapt(tiny_llama(), config)
    assert needle in one_line(err)


@pytest.mark.parametrize("config, field", [
    ({**LORA, "target_modules": ["attn.c_attn"]}, "target_modules"),
    ({"peft_type": "IA3", "target_modules": ["c_fc"], "feedforward_modules": []},
     "target_modules"),
    ({**PROMPT, "num_virtual_tokens": 30}, "num_virtual_tokens"),
])
def test_a_loaded_adapter_blames_its_file_not_a_flag(tmp_path, config, field):
    """Errors inside adapter_config.json name the file and its field, never a flag the user did
    not pass (--lora_targets, --ia3_targets, --num_virtual_tokens)."""
    (tmp_path / peft_format.ADAPTER_CONFIG).write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / peft_format.ADAPTER_WEIGHTS).write_bytes(b"")
    with pytest.raises(ValueError) as err:
        peft_format.load_adapter(tmp_path, tiny_llama())
    line = one_line(err)
    assert f"{tmp_path / peft_format.ADAPTER_CONFIG}: {field}" in line and "--" not in line


@pytest.mark.parametrize("argv, needle", [
    (["--option", "sweep", "--ranks", "1,1000000000"], BOUND),
    (["--option", "memory", "--preset", "smollm2_135m", "--lora_rank", "1000000000"], BOUND),
    (["--option", "memory", "--preset", "smollm2_135m", "--batch_size", "1000000000"], BOUND),
    (["--option", "memory", "--preset", "smollm2_135m", "--batch_size", "4096",
      "--max_len", "2048", "--measure_steps", "1"], str(options.MAX_ELEMENTS)),
])
def test_size_flags_are_bounded_before_any_work(tmp_path, capsys, argv, needle):
    train_file = tmp_path / "t.json"
    train_file.write_text('[{"instruction": "a", "answer": "x"}]', encoding="utf-8")
    extra = ["--train", str(train_file), "--out_dir", str(tmp_path)] if "sweep" in argv else []
    assert needle in run_cli(argv + extra, capsys)


def test_options_size_type_names_the_bound():
    assert options.size("65536") == 65536
    with pytest.raises(argparse.ArgumentTypeError, match="MAX_SIZE"):
        options.size("65537")


# ----------------------------------------------------------------------------
# 3. --resume: the same run, a complete and well-formed checkpoint

def toy_fit(folder, resume=False, identity=None, width=4, start_if_missing=False, epochs=1):
    torch.manual_seed(0)
    model = torch.nn.Linear(width, 3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, width, generator=g), torch.randint(0, 3, (2,), generator=g))
               for _ in range(3)]
    config = train.TrainConfig(epochs=epochs, lr=1e-2, progress=False, checkpoint_dir=str(folder),
                               checkpoint_every_steps=1, resume=resume, identity=identity,
                               start_if_missing=start_if_missing)
    loss = lambda m, b: (F.cross_entropy(m(b[0]), b[1], reduction="sum"), len(b[1]))  # noqa
    return train.fit(model, batches, loss, config)


RUN = {"seed": 1337, "batch_size": 8, "grad_accum": 1, "method": "lora",
       "train": "sha256:aa", "lora_rank": 4}


@pytest.mark.parametrize("change", [{"seed": 1}, {"batch_size": 4}, {"grad_accum": 2},
                                    {"method": "ia3"}, {"train": "sha256:bb"}, {"lora_rank": 8}])
def test_resume_refuses_another_run_naming_what_differs(tmp_path, change):
    toy_fit(tmp_path / "ckpt", identity=RUN)
    with pytest.raises(ValueError) as err:
        toy_fit(tmp_path / "ckpt", resume=True, identity={**RUN, **change}, epochs=2)
    key = next(iter(change))
    assert f"{key} {change[key]}" in one_line(err) and "checkpoint:" in str(err.value)


def test_resume_refuses_other_trainable_shapes(tmp_path):
    toy_fit(tmp_path / "ckpt", identity=RUN)
    with pytest.raises(ValueError, match="trainable"):
        toy_fit(tmp_path / "ckpt", resume=True, identity=RUN, width=5, epochs=2)
    model = torch.nn.Linear(5, 3)                    # the shape check behind the identity
    with pytest.raises(ValueError, match=r"weight is \(3, 4\) in the checkpoint but \(3, 5\)"):
        checkpoint.restore(tmp_path / "ckpt", model,
                           train.make_optimizer(model, train.TrainConfig()))


def test_resume_of_the_same_run_continues(tmp_path, capsys):
    toy_fit(tmp_path / "ckpt", identity=RUN)
    history = toy_fit(tmp_path / "ckpt", resume=True, identity=dict(RUN), epochs=2)
    assert "resumed from" in capsys.readouterr().out and len(history["epochs"]) == 2


def test_resume_of_a_checkpoint_written_before_epoch_tokens(tmp_path):
    """state.json files from before the epoch's token count was saved still resume."""
    toy_fit(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "state.json"
    state = json.loads(path.read_text())
    assert state.pop("epoch_tokens") == 0
    path.write_text(json.dumps(state))
    assert len(toy_fit(tmp_path / "ckpt", resume=True, epochs=2)["epochs"]) == 2


def test_resume_with_no_checkpoint_is_refused_unless_asked_to_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume_or_start"):
        toy_fit(tmp_path / "none", resume=True)
    assert toy_fit(tmp_path / "none", resume=True, start_if_missing=True)["epochs"]


def test_config_from_args_records_flags_and_data_digests(tmp_path):
    """The identity of a command line: a data file by its digest (not its path), budgets and
    outputs left out; --resume_or_start implies --resume."""
    parser = argparse.ArgumentParser()
    train.add_training_arguments(parser, epochs=1, lr=1e-3, batch_size=8)
    parser.add_argument("--out_dir", default=str(tmp_path))
    parser.add_argument("--train")
    parser.add_argument("--seed", type=int, default=1)
    data_file = tmp_path / "train.txt"
    data_file.write_text("1 ||| a\n", encoding="utf-8")
    config = train.config_from_args(parser.parse_args(["--train", str(data_file),
                                                       "--resume_or_start"]), name="toy")
    assert config.resume and config.start_if_missing
    assert config.identity["train"] == checkpoint.file_digest(data_file)
    assert "epochs" not in config.identity and config.identity["batch_size"] == 8
    data_file.write_text("0 ||| a\n", encoding="utf-8")          # same path, other data
    other = checkpoint.run_identity(parser.parse_args(["--train", str(data_file)]))
    with pytest.raises(ValueError, match="train sha256"):
        checkpoint.check_identity(config.identity, other, "ckpt")


def test_pico_resume_or_start_starts_then_continues(tmp_path, capsys):
    """pico: --resume with nothing saved is one line; --resume_or_start trains fresh, then
    continues the saved run (oracle: pico.json's step count, 2 then 4)."""
    text = tmp_path / "seqs.txt"
    text.write_text("".join(" ".join(str(i + j) for j in range(12)) + "\n" for i in range(200)))
    common = ["--option", "pico", "--tokenizer", "byte", "--input_files", str(text),
              "--tinystories_weight", "0", "--block_size", "16", "--embed_size", "16",
              "--hidden_dim", "32", "--n_heads", "2", "--batch_size", "4",
              "--max_steps_per_epoch", "2", "--eval_batches", "1", "--max_new_tokens", "2",
              "--sweep_ps", "1.0", "--sweep_samples", "1", "--prompt", "0 1",
              "--no_progress", "--out_dir", str(tmp_path / "out")]
    assert "no pico.json there" in run_cli(common + ["--resume"], capsys)
    saved = tmp_path / "out" / "pico-transformer" / "pico.json"
    for steps in (2, 4):
        run.main(common + ["--resume_or_start"])
        assert json.loads(saved.read_text())["steps"] == steps


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s.update(step="abc"), "'step'"),
    (lambda s: s.pop("epoch"), "'epoch' is missing"),
    (lambda s: s.update(epoch=-1), "'epoch'"),
    (lambda s: s.update(epoch_tokens=-1), "'epoch_tokens'"),
    (lambda s: s.update(history=[1]), "'history'"),
    (lambda s: s.update(rng={"python": 1}), "training checkpoint"),
    (lambda s: s.update(optimizer={"param_groups": 3, "scalars": {}}), "training checkpoint"),
])
def test_resume_checks_every_field_of_state_json(tmp_path, edit, needle):
    toy_fit(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError) as err:
        toy_fit(tmp_path / "ckpt", resume=True, epochs=2)
    assert "state.json" in one_line(err) and needle in str(err.value)


# ----------------------------------------------------------------------------
# 4. torchrun's variables

@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK='5'"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x'"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"},
     "MASTER_PORT='99999'"),
])
def test_torchrun_variables_are_checked(monkeypatch, env, needle):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as err:
        distributed.init_from_env(False)
    assert needle in one_line(err)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_rendezvous_that_never_completes_stops_in_the_stated_time(rank):
    """A stale WORLD_SIZE=2 outside torchrun: rank 0 waits for a second process, rank 1 for a
    master; both stop after --rendezvous_timeout_s with one line naming the variables."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank, "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29400 + int(rank) + os.getpid() % 500)}
    done = subprocess.run([sys.executable, "run.py", "--option", "generate",
                           "--rendezvous_timeout_s", "2"], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True)
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "did not form within 2 s" in err[0] and "WORLD_SIZE=2" in err[0]
    assert "--rendezvous_timeout_s" in err[0]


def test_deep_safetensors_header_is_one_line(tmp_path):
    import struct
    import safetensors_io
    blob = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":' + b"[" * 200 \
        + b"]" * 200 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
    with pytest.raises(ValueError) as err:
        safetensors_io.read_safetensors(path)
    assert str(path) in one_line(err) and "MAX_JSON_DEPTH" in str(err.value)


@pytest.mark.parametrize("argv", [
    ["--option", "pico", "--embed_size", "1000000000"],
    ["--option", "ssm", "--d_model", "1000000000"],
    ["--option", "lora", "--lora_rank", "100000000"],
])
def test_model_size_flags_are_bounded_while_parsing(capsys, argv):
    assert "MAX_SIZE" in run_cli(argv, capsys)


def test_two_processes_still_form_a_group_when_rank_1_starts_first(tmp_path):
    """The check does not get in the way: rank 1 waits for rank 0's store, then both join and
    all-reduce (oracle: 1 + 2 = 3)."""
    import socket
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import distributed; "
              "distributed.init_from_env(False, 30); "
              "t = distributed.all_reduce_sum(torch.tensor([distributed.rank() + 1.0])); "
              "print(float(t)); distributed.leave()")
    procs = []
    for rank in ("1", "0"):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank,
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(ROOT)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(1.0)
    outs = [p.communicate(timeout=90) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[1][0].strip().splitlines()[-1] == "3.0", outs   # rank 0 prints (1 is silent)
