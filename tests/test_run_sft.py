"""Tests for run_sft.py: `run.py --option sft` end to end on a tiny Llama with SmolLM2's tokenizer.

Run: .venv/bin/python -m pytest tests/test_run_sft.py -q

Oracles: peft's PeftModel.from_pretrained on transformers' LlamaForCausalLM read from the same
folder (the saved adapter must give the same logits as ours); the zero-shot validation loss of the
same run (training must lower it); the csv module (submission rows); the one-line error contract;
for every --method (ia3, prompt, ptuning, prefix, full) the run's own validation answers, which
the saved adapter alone must reproduce through --adapter.
"""
import csv
import json
import re

import pytest
import torch

import fused
import gguf_reader
import peft_format
import run
import weights

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

COLOURS = {"red": "warm", "orange": "warm", "yellow": "warm", "blue": "cold", "green": "cold",
           "purple": "cold"}


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory, default_model_path):
    """A tiny transformers Llama (vocab = SmolLM2's) saved as an HF folder, with SmolLM2's GGUF
    tokenizer beside it as tokenizer_gguf.json (our folder loader reads either)."""
    folder = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    metadata = {k: v for k, v in gguf_reader.read_gguf(default_model_path).metadata.items()
                if k.startswith("tokenizer.")}
    (folder / "tokenizer_gguf.json").write_text(json.dumps(metadata), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """`text;label` files: the temperature of a colour, 48 training and 6 test lines."""
    folder = tmp_path_factory.mktemp("task")
    names = list(COLOURS)
    (folder / "train.txt").write_text("".join(f"the colour is {names[i % 6]};{COLOURS[names[i % 6]]}\n"
                                              for i in range(48)))
    rows = [{"id": f"t{i}", "text": f"the colour is {c}", "label": COLOURS[c]}
            for i, c in enumerate(names)]
    (folder / "test.json").write_text(json.dumps(rows))
    return folder


@pytest.fixture(scope="module")
def trained(base_folder, task, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run.main(["--option", "sft", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
              "--test", str(task / "test.json"), "--pretrained-model-path", str(base_folder),
              "--lora_targets", "heavy", "--lora_rank", "4", "--lora_alpha", "8", "--lr", "3e-3",
              "--epochs", "4", "--batch_size", "6", "--eval_every_steps", "3",
              "--out_dir", str(out)])
    return out


def test_training_lowers_the_validation_loss_and_writes_everything(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["best"]["metrics"]["loss"] < summary["zero_shot"]["loss"]
    assert summary["parameters"]["trainable"] == summary["parameters"]["formula"]
    for name in ("split.json", "sft-history.json", "sft-curves.png", "confusion.png",
                 "val-predictions.jsonl", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "adapter/sft_config.json", "submission.csv"):
        assert (trained / name).is_file(), name
    split = json.loads((trained / "split.json").read_text())
    assert len(split["val"]) == 12 and not set(split["val"]) & set(split["train"])
    history = json.loads((trained / "sft-history.json").read_text())
    assert {"loss", "perplexity", "accuracy", "macro_f1"} <= set(history["evals"][0])


def test_submission_rows(trained):
    with open(trained / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "answer"] and [r[0] for r in rows[1:]] == [f"t{i}" for i in range(6)]
    assert {r[1] for r in rows[1:]} <= {"cold", "warm"}


def test_adapter_gives_peft_the_same_logits(trained, base_folder):
    """Ours: base folder + peft_format.load_adapter; peft: the same folder in transformers + the
    adapter.
    atol 1e-4: fp32, the same weights (Q/K rows permuted back to HF's layout on save)."""
    ours, _ = weights.load_pretrained(base_folder)
    peft_format.load_adapter(trained / "adapter", ours)
    theirs = peft.PeftModel.from_pretrained(
        transformers.LlamaForCausalLM.from_pretrained(base_folder), trained / "adapter").eval()
    ids = torch.randint(0, 49152, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], theirs(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_predict_only_from_the_saved_adapter(trained, base_folder, task, tmp_path, capsys):
    path = tmp_path / "sub.csv"
    run.main(["--option", "sft", "--adapter", str(trained / "adapter"), "--test",
              str(task / "test.json"), "--submission", str(path),
              "--pretrained-model-path", str(base_folder)])
    assert path.read_text() == (trained / "submission.csv").read_text()
    assert "Test accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("flags, words", [
    (["--lora_rank", "0"], "--lora_rank/--lora-rank: 0 is not allowed: must be an integer >= 1"),
    (["--val_ratio", "1.5"], "--val_ratio/--val-ratio: 1.5 is not allowed"),
    (["--lora_targets", "haevy"], "match no nn.Linear"),
    (["--adapter", "/no/such"], "no sft_config.json"),
    (["--lr", "nan"], "--lr: nan is not allowed: must be a finite number"),
    (["--submission", "."], "--submission: . is a folder"),
    (["--fsdp"], "--fsdp shards the model over torchrun's processes"),
])
def test_bad_options_are_one_line_errors(task, base_folder, capsys, flags, words):
    argv = ["--option", "sft", "--train", str(task / "train.txt"), "--test", str(task / "test.json"),
            "--pretrained-model-path", str(base_folder), *flags]
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("flags", [["--method", "prompt"], ["--method", "prefix"],
                                   ["--adapter", "TMP"]])
def test_fsdp_is_for_the_methods_whose_model_is_the_llama(task, tmp_path, monkeypatch, flags):
    """Under torchrun (WORLD_SIZE 2), --fsdp with a virtual-token method or --adapter is refused
    before any work."""
    import argparse
    import run_sft
    parser = argparse.ArgumentParser()
    run_sft.add_arguments(parser, "sft")
    args = parser.parse_args(["--train", str(task / "train.txt"), "--test", str(task / "test.json"),
                              "--fsdp", *[str(tmp_path) if f == "TMP" else f for f in flags]])
    if args.adapter:
        (tmp_path / run_sft.SFT_CONFIG).write_text("{}")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=re.escape("--fsdp trains --method lora | ia3 | full")):
        run_sft.check_arguments(args)
    args.method, args.adapter = "lora", None
    run_sft.check_arguments(args)                                  # lora is allowed


# ----------------------------------------------------------------------------
# every --method end to end: a short run, then the saved adapter alone answers the same

METHOD_FLAGS = {   # --method -> extra flags; generate mode runs left-padded cached generation
    "ia3": [],
    "prompt": ["--num_virtual_tokens", "4", "--answer_mode", "generate", "--max_new_tokens", "2"],
    "ptuning": ["--num_virtual_tokens", "4", "--encoder_hidden_size", "16"],
    "prefix": ["--num_virtual_tokens", "4", "--prefix_projection", "--answer_mode", "generate",
               "--max_new_tokens", "2"],
    "full": [],
}


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_each_method_trains_saves_and_reloads_to_the_same_answers(method, base_folder, task,
                                                                  tmp_path):
    """Oracle: the run's own validation answers (val-predictions.jsonl): `--adapter` (the adapter
    folder, or the full model) on the validation file must answer it the same; the trainable
    count equals the method's formula; the adapter is in peft's layout with the method named."""
    out, flags = tmp_path / "run", METHOD_FLAGS[method]
    run.main(["--option", "sft", "--method", method, "--train", str(task / "train.txt"),
              "--val", str(task / "test.json"), "--pretrained-model-path", str(base_folder),
              "--lr", "1e-2", "--epochs", "1", "--max_steps_per_epoch", "2", "--batch_size", "8",
              "--no-zero_shot", "--out_dir", str(out), *flags])
    summary = json.loads((out / "summary.json").read_text())
    params = summary["parameters"]
    assert params["trainable"] == (params["total"] if method == "full" else params["formula"])
    folder = out / ("model" if method == "full" else "adapter")
    saved = json.loads((folder / "sft_config.json").read_text())
    assert saved["method"] == method
    if method != "full":
        peft_type = json.loads((folder / "adapter_config.json").read_text())["peft_type"]
        assert peft_type == {"ia3": "IA3", "prompt": "PROMPT_TUNING", "ptuning": "P_TUNING",
                             "prefix": "PREFIX_TUNING"}[method]
    val = [json.loads(line) for line in (out / "val-predictions.jsonl").read_text().splitlines()]
    path = tmp_path / "again.csv"
    run.main(["--option", "sft", "--adapter", str(folder), "--test", str(task / "test.json"),
              "--submission", str(path), "--pretrained-model-path", str(base_folder), *flags])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    fallback = saved["labels"][0]                  # what the submission writes for unparsed
    assert rows == [[v["id"], v["predicted"] or fallback] for v in val]


@pytest.mark.parametrize("extra, saved", [
    ([], "adapter/adapter_model.safetensors"),                               # DDP
    (["--fsdp", "--method", "full"], "model/model.safetensors"),             # FSDP, every weight
    (["--fsdp", "--gradient_checkpointing", "--grad_accum", "2"],             # FSDP, LoRA
     "adapter/adapter_model.safetensors")])
def test_torchrun_two_ranks_train_and_save_what_one_process_does(task, base_folder, tmp_path,
                                                                   extra, saved):
    """`torchrun --nproc_per_node 2 run.py --option sft --batch_size 3` == one process with
    --batch_size 6 (each rank a strided half of every global batch; DDP averages gradients, or
    FSDP reduce-scatters them into each rank's shard and the save gathers the shards).
    No dropout (the ranks' RNG streams differ); atol 1e-5: the same sums in another order."""
    import subprocess
    import sys
    from pathlib import Path
    import safetensors_io
    root = Path(__file__).resolve().parents[1]
    common = ["--option", "sft", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
              "--pretrained-model-path", str(base_folder), "--lora_targets", "light",
              "--lora_rank", "2", "--lora_dropout", "0", "--lr", "3e-3", "--epochs", "1",
              "--no-zero_shot"]
    one = [*common, "--batch_size", "6", "--out_dir", str(tmp_path / "one")]
    if extra:                                  # the same maths: the split projections
        one += ["--no-fused"] + [flag for flag in extra if flag != "--fsdp"]
    subprocess.run([sys.executable, str(root / "run.py"), *one], check=True, capture_output=True,
                   timeout=300)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", str(root / "run.py"), *common, *extra,
                           "--batch_size", "3", "--out_dir", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (safetensors_io.read_safetensors(tmp_path / k / saved) for k in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
    losses = [[s["loss"] for s in json.loads((tmp_path / k / "sft-history.json").read_text())["steps"]]
              for k in ("one", "two")]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-5, rtol=1e-5)
    assert ("FSDP: 2 processes" in done.stdout) == ("--fsdp" in extra)     # rank 0 prints


def test_submission_keeps_every_test_row_and_refuses_a_test_limit(base_folder, task, tmp_path,
                                                                  capsys):
    """--max_eval_examples cuts the validation records only: the submission still answers all
    6 test rows (oracle: the csv module); --max_test_examples is one error line before any work."""
    out = tmp_path / "run"
    run.main(["--option", "sft", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
              "--test", str(task / "test.json"), "--pretrained-model-path", str(base_folder),
              "--max_eval_examples", "3", "--max_steps_per_epoch", "1", "--no-zero_shot",
              "--out_dir", str(out)])
    with open(out / "submission.csv", newline="") as f:
        assert [r[0] for r in list(csv.reader(f))[1:]] == [f"t{i}" for i in range(6)]
    assert json.loads((out / "summary.json").read_text())["examples"]["val"] == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "sft", "--train", str(task / "train.txt"), "--test",
                  str(task / "test.json"), "--max_test_examples", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max_test_examples 2: the submission answers every --test row" \
        in err[0], err


def test_compiled_blocks_train_what_eager_trains(base_folder, task, tmp_path, capsys,
                                                  monkeypatch):
    """--compile (fused.compile_model: every block one torch.compile graph) reaches the CLI and
    changes nothing a run writes: the per-step losses and the saved adapter equal the eager
    run's (the eager backend traces the same graph without generating code; tolerance 1e-6:
    the same fp32 kernels). --compile with --fsdp is one error line."""
    compiled, compile_model = [], fused.compile_model
    monkeypatch.setattr(fused, "compile_model",
                        lambda model, **kw: compiled.append(kw) or compile_model(model, **kw))
    runs = {}
    for extra in ([], ["--compile", "--compile_backend", "eager"]):
        out = tmp_path / f"run{len(extra)}"
        run.main(["--option", "sft", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
                  "--pretrained-model-path", str(base_folder), "--lr", "1e-2",
                  "--max_steps_per_epoch", "2", "--batch_size", "8", "--no-zero_shot",
                  "--out_dir", str(out), *extra])
        history = json.loads((out / "sft-history.json").read_text())
        runs[bool(extra)] = ([s["loss"] for s in history["steps"]],
                             safetensors_torch.load_file(out / "adapter" /
                                                         "adapter_model.safetensors"))
    assert compiled == [{"backend": "eager"}]                  # the flag reached the model
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6, abs=1e-6)
    for name, tensor in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], tensor, rtol=1e-6, atol=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run.main(["--option", "sft", "--train", str(task / "train.txt"), "--compile", "--fsdp"])
    assert "--compile with --fsdp" in capsys.readouterr().err
