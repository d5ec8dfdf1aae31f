"""Tests for run_classifier.py: `run.py --option prompt | finetune | lora` end to end.

Run: .venv/bin/pytest tests/test_run_classifier.py -q   (CPU, tiny random Llama; the torchrun
FSDP case loads the default model)

Oracles: files written by run.main on temp files; seed 000's preset lists and r * (in + out) from
the base Linears' shapes for --lora_targets; one process for the torchrun FSDP runs.
"""
import json

import pytest
import torch
from torch import nn

import classifier
import data
import run
import scoring
from conftest import need_data
from test_classifier import tiny_llama, tokenizer_for

llama = pytest.importorskip("llama")


def write_task(tmp_path):
    names = ["bad", "good"]
    (tmp_path / "labels.json").write_text(json.dumps(names))
    lines = [f"{i % 2} ||| {'nice film' if i % 2 else 'awful movie'} number {i}" for i in range(12)]
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def cli(tmp_path, option, *extra):
    return ["--option", option, "--batch_size", "4", "--train", str(tmp_path / "train.txt"),
            "--dev", str(tmp_path / "dev.txt"), "--test", str(tmp_path / "test.txt"),
            "--label-names", str(tmp_path / "labels.json"),
            "--dev_out", str(tmp_path / f"{option}-dev-output.txt"),
            "--test_out", str(tmp_path / f"{option}-test-output.txt"),
            "--out_dir", str(tmp_path / "runs"), *extra]


@pytest.mark.parametrize("option, extra", [
    ("prompt", []),
    ("prompt", ["--calibrate"]),
    ("finetune", ["--epochs", "1", "--lr", "1e-3"]),
    ("finetune", ["--epochs", "1", "--lr", "1e-3", "--head_input", "text"]),
    ("lora", ["--epochs", "1", "--lr", "1e-3", "--lora_rank", "2", "--lora_alpha", "1.0"]),
])
def test_cli_end_to_end(tmp_path, monkeypatch, capsys, option, extra):
    """run.main on temp files: output files in minllama's format, accuracy lines, history files."""
    if option == "lora":
        pytest.importorskip("lora")
    model = tiny_llama()
    monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
    run.main(cli(write_task(tmp_path), option, *extra))
    out = capsys.readouterr().out
    assert "Dev Accuracy: " in out and "Test Accuracy: " in out
    dev_lines = (tmp_path / f"{option}-dev-output.txt").read_text().splitlines()
    src = (tmp_path / "dev.txt").read_text().splitlines()
    assert [ln.split(" ||| ")[1] for ln in dev_lines] == [ln.split(" ||| ")[1] for ln in src]
    assert all(ln.split(" ||| ")[0] in ("0", "1") for ln in dev_lines)
    summary = json.loads((tmp_path / "runs" / f"{option}-train-summary.json").read_text())
    assert 0 <= summary["dev_accuracy"] <= 1
    if option != "prompt":
        assert (tmp_path / "runs" / f"{option}-train-history.json").exists()
        assert (tmp_path / "runs" / f"{option}-train-curves.png").exists()
    if option == "lora":     # the adapter is saved alone (peft's layout) and reloads exactly
        import lora
        import peft_format
        folder = tmp_path / "runs" / "lora-train-adapter"
        assert summary["adapter"] == str(folder) and (folder / "classifier_head.safetensors").is_file()
        fresh = tiny_llama()
        peft_format.load_adapter(folder, fresh)
        trained = dict(lora.lora_layers(model))
        for name, layer in lora.lora_layers(fresh):
            torch.testing.assert_close(layer.lora_B, trained[name].lora_B, atol=0, rtol=0)


# Seed 000 part 2's target settings, written out in llama2.c spelling (q_proj = wq, ...).
PRESET_LINEARS = {"light": ["wq", "wv"], "medium": ["wq", "wk", "wv", "w3", "w2"],
                  "heavy": ["wq", "wk", "wv", "wo", "w3", "w2", "w1"]}


@pytest.mark.parametrize("spec, preset", [
    ("heavy", "heavy"), ("medium", "medium"), ("light", "light"),
    ("q_proj,k_proj,v_proj,o_proj,up_proj,down_proj,gate_proj", "heavy"),
    ("wq,wk,wv,wo,w1,w2,w3", "heavy"), ("q_proj,v_proj", "light"), (None, "light"),
])
def test_cli_lora_targets_presets_and_names(tmp_path, monkeypatch, capsys, spec, preset):
    """--lora_targets as a preset or a comma list in either spelling (None: the default wq,wv)
    adapts exactly the preset's Linears: layer count and trainable parameters from the shapes."""
    model = tiny_llama()
    rank, num_labels = 2, 2
    adapted = [m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.rpartition(".")[2] in PRESET_LINEARS[preset]]
    head = (model.config.dim + 1) * num_labels
    want = head + sum(rank * (m.in_features + m.out_features) for m in adapted)
    monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
    extra = [] if spec is None else ["--lora_targets", spec]
    run.main(cli(write_task(tmp_path), "lora", "--epochs", "1", "--max_steps_per_epoch", "1",
                 "--lora_rank", str(rank), *extra))
    assert f"on {len(adapted)} layers" in capsys.readouterr().out
    assert len(adapted) == model.config.n_layers * len(PRESET_LINEARS[preset])
    summary = json.loads((tmp_path / "runs" / "lora-train-summary.json").read_text())
    assert summary["trainable_parameters"] == want


def test_cli_lora_targets_unknown_name_one_line_error(tmp_path, monkeypatch, capsys):
    model = tiny_llama()
    monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
    with pytest.raises(SystemExit) as err:
        run.main(cli(write_task(tmp_path), "lora", "--lora_targets", "haevy"))
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --lora_targets ['haevy'] match no")
    assert "available names: " in lines[0] and "wq" in lines[0]


def test_cli_warns_when_gold_labels_are_placeholders(tmp_path, monkeypatch, capsys):
    """A test file whose labels are all 0 (as CFIMDB's) gets the warning; a real dev file not."""
    model = tiny_llama()
    monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
    task = write_task(tmp_path)
    (task / "test.txt").write_text("".join(f"0 ||| review number {i}\n" for i in range(6)))
    run.main(cli(task, "prompt"))
    lines = capsys.readouterr().out.splitlines()
    test_line = [ln for ln in lines if ln.startswith("Test Accuracy: ")]
    dev_line = [ln for ln in lines if ln.startswith("Dev Accuracy: ")]
    assert len(test_line) == 1 and test_line[0].endswith(
        " (warning: every gold label in test.txt is 0, so this accuracy measures nothing)")
    assert len(dev_line) == 1 and "warning" not in dev_line[0]
    summary = json.loads((tmp_path / "runs" / "prompt-train-summary.json").read_text())
    assert summary["dev_accuracy_warning"] is None and "every gold label" in summary[
        "test_accuracy_warning"]
    assert classifier.placeholder_labels_warning(
        [data.Example(label=1, text="x", line=1)] * 2, "a/b.txt").startswith(
        "warning: every gold label in b.txt is 1")


@pytest.mark.parametrize("option, extra, message", [
    ("lora", ["--lora_rank", "0"], "error: argument --lora_rank/--lora-rank: 0 is not allowed: "
     "must be an integer >= 1"),
    ("finetune", ["--batch_size", "0"], "error: argument --batch_size/--batch-size: 0 is not "
     "allowed: must be an integer >= 1"),
    ("finetune", ["--dev_out", "."], "error: argument --dev_out/--dev-out: . is a folder"),
    ("finetune", ["--hidden_dropout_prob", "1.5"], "error: argument --hidden_dropout_prob"),
    ("lora", ["--lora_targets", " , "], "error: --lora_targets ' , ': target_modules is empty"),
    ("finetune", ["--fsdp"], "error: --fsdp shards the model over torchrun's processes"),
])
def test_cli_bad_flags_one_line_error(tmp_path, capsys, option, extra, message):
    with pytest.raises(SystemExit) as err:
        run.main(cli(write_task(tmp_path), option, *extra))
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(message)


def test_cli_missing_file_and_unknown_label(tmp_path, capsys):
    task = write_task(tmp_path)
    argv = cli(task, "prompt")
    argv[argv.index("--dev") + 1] = str(tmp_path / "missing.txt")
    with pytest.raises(SystemExit):
        run.main(argv)
    assert "missing.txt (--dev): file not found" in capsys.readouterr().err
    (task / "train.txt").write_text("7 ||| odd label\n")
    with pytest.raises(SystemExit):
        run.main(cli(task, "prompt"))
    assert "train.txt:1: label 7 is not in the label mapping" in capsys.readouterr().err


def test_cli_with_a_saved_checkpoint(tmp_path, capsys):
    """No monkeypatching: a tiny Llama saved by weights.save_model_folder with the Llama 2
    SentencePiece tokenizer, loaded by --pretrained-model-path, fine-tuned and LoRA-tuned."""
    weights = pytest.importorskip("weights")
    sp_model = need_data("tokenizers", "llama2-tokenizer.model")
    torch.manual_seed(0)
    config = llama.LlamaConfig.tiny(vocab_size=32000, dim=32, hidden_dim=64)
    model = llama.Llama(config)
    weights.save_model_folder(tmp_path / "ckpt", config, model.state_dict(),
                            {"kind": "sentencepiece", "path": str(sp_model)})
    task = write_task(tmp_path)
    for option, extra in [("finetune", []), ("lora", ["--lora_rank", "2"])]:
        run.main(cli(task, option, "--epochs", "1", "--pretrained-model-path",
                     str(tmp_path / "ckpt"), *extra))
        assert "Dev Accuracy: " in capsys.readouterr().out
        assert len((task / f"{option}-test-output.txt").read_text().splitlines()) == 12


@pytest.mark.parametrize("option", ["lora", "finetune"])
def test_torchrun_fsdp_trains_and_saves_what_one_process_does(tmp_path, default_model_path,
                                                              option):
    """`torchrun --nproc_per_node 2 run.py --option lora|finetune --fsdp --batch_size 2` == one
    process with --batch_size 4 (the split projections, no dropout: the ranks' RNG streams
    differ): the same dev predictions, losses and, for lora, the same saved adapter and head
    (gathered from the shards). A tiny Llama with SmolLM2's tokenizer, saved as a checkpoint."""
    import subprocess
    import sys
    from pathlib import Path
    import gguf_reader
    import safetensors_io
    import weights
    metadata = {k: v for k, v in gguf_reader.read_gguf(default_model_path).metadata.items()
                if k.startswith("tokenizer.")}
    torch.manual_seed(0)
    config = llama.LlamaConfig.tiny(vocab_size=len(metadata["tokenizer.ggml.tokens"]), dim=32,
                                    hidden_dim=64)
    weights.save_model_folder(tmp_path / "ckpt", config, llama.Llama(config).state_dict(),
                            {"kind": "gguf", "metadata": metadata})
    task = write_task(tmp_path)
    root = Path(__file__).resolve().parents[1]
    results = {}
    for name, launch, batch in [("one", [], "4"), ("two", ["-m", "torch.distributed.run",
                                 "--nproc_per_node", "2", "--standalone"], "2")]:
        out = tmp_path / name
        command = cli(task, option, "--epochs", "2", "--lr", "1e-2", "--hidden_dropout_prob", "0",
                      "--pretrained-model-path", str(tmp_path / "ckpt"), "--no-fused")
        command[command.index("--batch_size") + 1] = batch
        for flag in ("--dev_out", "--test_out"):
            command[command.index(flag) + 1] = str(out / Path(command[command.index(flag) + 1]).name)
        command[command.index("--out_dir") + 1] = str(out)
        done = subprocess.run([sys.executable, *launch, str(root / "run.py"), *command,
                               *(["--fsdp"] if launch else [])], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("FSDP: 2 processes" in done.stdout) == bool(launch)
        history = json.loads((out / f"{option}-train-history.json").read_text())
        results[name] = ((out / f"{option}-dev-output.txt").read_text(),
                         [s["loss"] for s in history["steps"]], out / f"{option}-train-adapter")
    assert results["two"][0] == results["one"][0]
    torch.testing.assert_close(torch.tensor(results["two"][1]), torch.tensor(results["one"][1]),
                               atol=1e-5, rtol=1e-5)
    if option == "lora":
        for file in ("adapter_model.safetensors", "classifier_head.safetensors"):
            a, b = (safetensors_io.read_safetensors(results[k][2] / file) for k in ("one", "two"))
            assert a.keys() == b.keys() and a
            for key in a:
                torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_max_eval_examples_cuts_dev_only_and_the_test_output_keeps_every_line(tmp_path,
                                                                               monkeypatch):
    """--max_eval_examples 4 gives 4 dev predictions and all 20 test lines (oracle: the files'
    line counts and texts); only --max_test_examples cuts the test file."""
    model = tiny_llama()
    monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
    task = write_task(tmp_path)
    (task / "test.txt").write_text("".join(f"{i % 2} ||| test review {i}\n" for i in range(20)))
    run.main(cli(task, "prompt", "--max_eval_examples", "4"))
    assert len((task / "prompt-dev-output.txt").read_text().splitlines()) == 4
    test_lines = (task / "prompt-test-output.txt").read_text().splitlines()
    assert [ln.split(" ||| ")[1] for ln in test_lines] == [f"test review {i}" for i in range(20)]
    run.main(cli(task, "prompt", "--max_eval_examples", "4", "--max_test_examples", "5"))
    assert len((task / "prompt-test-output.txt").read_text().splitlines()) == 5


@pytest.mark.parametrize("option", ["finetune", "lora"])
def test_packed_run_takes_the_steps_of_the_padded_run(tmp_path, monkeypatch, capsys, option):
    """--packing (the default) and --no-packing: the same batches, so the same losses, dev
    predictions and summary accuracy (to fp32 rounding); the summary records which ran."""
    task, runs = write_task(tmp_path), {}
    for packing in ("--packing", "--no-packing"):
        model = tiny_llama()
        monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
        run.main(cli(task, option, "--epochs", "2", "--lr", "1e-2", "--out_dir",
                     str(tmp_path / packing), packing))
        runs[packing] = (json.loads((tmp_path / packing / f"{option}-train-summary.json").read_text()),
                         json.loads((tmp_path / packing / f"{option}-train-history.json").read_text()),
                         (tmp_path / f"{option}-dev-output.txt").read_text())
    (packed, history, dev), (padded, history_ref, dev_ref) = runs["--packing"], runs["--no-packing"]
    assert packed["args"]["packing"] is True and padded["args"]["packing"] is False
    assert dev == dev_ref and packed["dev_accuracy"] == padded["dev_accuracy"]
    losses = [s["loss"] for s in history["steps"]]
    assert len(losses) == len(history_ref["steps"]) == 6
    assert losses == pytest.approx([s["loss"] for s in history_ref["steps"]], rel=1e-4)


def test_packing_under_torchrun_is_one_line(tmp_path, monkeypatch, capsys):
    """Default off under torchrun (DDP / FSDP hooks run in forward); an explicit --packing: one
    line before any work."""
    import run_classifier
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = run_classifier.argparse.Namespace(packing=None, fsdp=False)
    assert run_classifier.resolve_packing(args) is False
    monkeypatch.delenv("WORLD_SIZE")
    assert run_classifier.resolve_packing(args) is True
    import distributed
    monkeypatch.setattr(distributed, "init_from_env", lambda *a: None)   # as if torchrun joined
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as err:
        run.main(cli(write_task(tmp_path), "lora", "--packing"))
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--packing: under torchrun (WORLD_SIZE 2)" in lines[0], lines
