"""Tests for run_eval.py: `run.py --option eval` end to end on a tiny Llama.

Run: .venv/bin/python -m pytest tests/test_run_eval.py -q   (CPU, ~30 s)

Oracles: every log-likelihood in the JSON equals scoring.continuation_logprobs_reference (one full
forward of context + continuation, tokens split as lm-eval's _encode_pair) on the model loaded
alone; acc from those values by hand; the adapter's column equals the same reference on the model
with the adapter loaded alone; bad flags and files are one line before any model loads, an
adapter for another model one line before any scoring. `--option sft --eval_data`: its before /
after / difference rows equal --option eval on the base and on the run's saved adapter.
"""
import contextlib
import io
import json

import pytest
import torch

import adapters
import evaluation
import llama
import lora
import peft_format
import run
import scoring
from test_run_sft import base_folder, task  # noqa: F401  (module fixtures)

ARC = [{"question": f"Which colour is number {i}?",
        "choices": {"text": ["red", "green", "blue"], "label": ["A", "B", "C"]},
        "answerKey": "ABC"[i % 3]} for i in range(5)]
PIQA = [{"goal": f"Open jar {i}", "sol1": "twist the lid", "sol2": "hit it", "label": i % 2}
        for i in range(4)]


def write(folder, name, rows):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reference(model, tokenizer, path):
    """Per question, per choice: the readable one-forward-per-choice log-likelihood."""
    _, questions = evaluation.read_questions(path)
    with torch.no_grad():
        return [[float(scoring.continuation_logprobs_reference(
            model, *evaluation.encode_pair(tokenizer, c, x))) for c, x in q.requests]
            for q in questions]


@pytest.fixture(scope="module")
def tuned(base_folder, task, tmp_path_factory):  # noqa: F811
    """One --option sft run with --eval_data: (its OUT_DIR, the eval files, what it printed)."""
    out, folder = tmp_path_factory.mktemp("sft"), tmp_path_factory.mktemp("mc")
    files = [str(write(folder, "arc.jsonl", ARC)), str(write(folder, "piqa.jsonl", PIQA))]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run.main(["--option", "sft", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
                  "--pretrained-model-path", str(base_folder), "--lr", "5e-2",
                  "--max_steps_per_epoch", "2", "--no-zero_shot", "--out_dir", str(out),
                  "--eval_data", *files])
    return out, files, printed.getvalue()


@pytest.fixture(scope="module")
def adapter(tuned):
    return tuned[0] / "adapter"


def test_base_and_adapter_scored_in_one_run(base_folder, adapter, tmp_path, capsys):  # noqa: F811
    files = [write(tmp_path, "arc.jsonl", ARC), write(tmp_path, "piqa.jsonl", PIQA)]
    out = tmp_path / "eval.json"
    run.main(["--option", "eval", "--data", *map(str, files), "--pretrained-model-path",
              str(base_folder), "--adapter", str(adapter), "--batch_size", "2", "--json",
              str(out), "--out_dir", str(tmp_path / "plots")])
    printed = capsys.readouterr().out
    assert "| arc (ai2_arc) | 5 |" in printed and "| piqa (piqa) | 4 |" in printed
    results = json.loads(out.read_text())["results"]
    assert [(r["task"], r["model"]) for r in results] == [
        ("ai2_arc", "base"), ("piqa", "base"), ("ai2_arc", str(adapter)), ("piqa", str(adapter))]
    assert set(results[0]) >= {"data", "task", "model", "n", "acc", "acc_norm", "predictions",
                               "loglikelihoods"}
    base, tok = scoring.load_model(base_folder, torch.device("cpu"))
    tuned, _ = peft_format.load_adapter(adapter, scoring.load_model(base_folder, "cpu")[0])
    for r in results:
        model = base if r["model"] == "base" else tuned.eval()
        oracle = reference(model, tok, r["data"])
        for ours, ref in zip(r["loglikelihoods"], oracle):
            assert ours == pytest.approx(ref, abs=1e-4)
        assert r["predictions"] == [max(range(len(ll)), key=ll.__getitem__) for ll in oracle]
    assert results[0]["loglikelihoods"] != results[2]["loglikelihoods"]   # the adapter counts
    assert (tmp_path / "plots" / "eval.png").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--data", "/no/such.jsonl"], "no such file"),
    (["--data", "BAD"], "match no layout"),
    (["--data", "ARC", "--limit", "0"], "--limit: 0 is not allowed"),
    (["--data", "ARC", "--adapter", "/no/adapter"], "/no/adapter"),
])
def test_bad_flags_and_files_are_one_line_before_loading(tmp_path, monkeypatch, capsys, argv,
                                                         words):
    monkeypatch.setattr(scoring, "load_model", lambda *a: pytest.fail("the model was loaded"))
    files = {"ARC": write(tmp_path, "arc.jsonl", ARC),
             "BAD": write(tmp_path, "bad.jsonl", [{"foo": 1}])}
    argv = [str(files.get(a, a)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "eval", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_an_adapter_for_another_model_is_one_line_before_any_scoring(
        base_folder, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A LoRA adapter saved from a Llama of another width: its shapes do not fit the base."""
    other = llama.Llama(llama.LlamaConfig.tiny(vocab_size=49152))
    config = lora.LoraConfig(r=2, target_modules=["q_proj"])
    lora.inject_lora(other, config)
    folder = peft_format.save_adapter(tmp_path / "other", other, config)
    monkeypatch.setattr(evaluation, "score_questions",
                        lambda *a, **k: pytest.fail("scored before every adapter was checked"))
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "eval", "--data", str(write(tmp_path, "arc.jsonl", ARC)),
                  "--pretrained-model-path", str(base_folder), "--adapter", str(folder),
                  "--out_dir", str(tmp_path / "plots")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--adapter {folder}:" in err[0] and "shape" in err[0], err
    assert not (tmp_path / "plots").exists()


def test_sft_eval_data_is_what_fine_tuning_cost(tuned, base_folder, tmp_path):  # noqa: F811
    """Oracle: --option eval of the same files on the base model (before) and with the run's
    saved adapter (after), a separate load of each; the differences by subtraction."""
    out, files, printed = tuned
    assert "what fine-tuning cost" in printed and "| arc (ai2_arc) | 5 |" in printed
    rows = json.loads((out / "summary.json").read_text())["fine_tuning_cost"]
    assert json.loads((out / "sft-history.json").read_text())["fine_tuning_cost"] == rows
    run.main(["--option", "eval", "--data", *files, "--pretrained-model-path", str(base_folder),
              "--adapter", str(out / "adapter"), "--json", str(tmp_path / "e.json"),
              "--out_dir", str(tmp_path)])
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert [(r["data"], r["task"], r["n"]) for r in rows] == [
        (files[0], "ai2_arc", 5), (files[1], "piqa", 4)]
    for row, before, after in zip(rows, results[:2], results[2:]):
        assert row["before"] == {k: before[k] for k in ("acc", "acc_norm")}
        assert row["after"] == {k: after[k] for k in ("acc", "acc_norm")}
        assert row["difference"]["acc"] == pytest.approx(after["acc"] - before["acc"])


@pytest.mark.parametrize("argv, words", [
    (["--eval_limit", "3"], "--eval_limit cuts the --eval_data files"),
    (["--eval_data", "BAD"], "match no layout"),
    (["--eval_data", "ARC", "--adapter", "/x", "--test", "ARC"], "--option eval --data FILE"),
])
def test_sft_eval_data_bad_flags_are_one_line_before_loading(
        task, tmp_path, monkeypatch, capsys, argv, words):  # noqa: F811
    monkeypatch.setattr(scoring, "load_model", lambda *a: pytest.fail("the model was loaded"))
    files = {"ARC": write(tmp_path, "arc.jsonl", ARC),
             "BAD": write(tmp_path, "bad.jsonl", [{"foo": 1}])}
    argv = [str(files.get(a, a)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "sft", "--train", str(task / "train.txt"), "--out_dir",
                  str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_every_adapter_method_scored_over_one_base(base_folder, tmp_path):  # noqa: F811
    """LoRA and IA3 (Linears wrapped: the tree path), prompt and prefix tuning (wrappers: the
    KV-cache path), each made with random non-zero weights and saved in peft's layout, scored in
    one --option eval run; oracle: the reference log-likelihoods of each adapter loaded alone."""
    configs = {"lora": lora.LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"]),
               "ia3": adapters.IA3Config(),
               "prompt": adapters.PromptTuningConfig(num_virtual_tokens=3),
               "prefix": adapters.PrefixTuningConfig(num_virtual_tokens=3)}
    folders = []
    torch.manual_seed(0)
    for name, config in configs.items():
        model = adapters.adapt(scoring.load_model(base_folder, "cpu")[0], config)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        folders.append(str(peft_format.save_adapter(tmp_path / name, model, config)))
    data, out = write(tmp_path, "arc.jsonl", ARC), tmp_path / "eval.json"
    run.main(["--option", "eval", "--data", str(data), "--pretrained-model-path",
              str(base_folder), "--adapter", *folders, "--batch_size", "2", "--json", str(out),
              "--out_dir", str(tmp_path / "plots")])
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["base", "lora", "ia3", "prompt", "prefix"]
    _, tok = scoring.load_model(base_folder, "cpu")
    seen = set()
    for r, folder in zip(results[1:], folders):
        alone, _ = peft_format.load_adapter(folder, scoring.load_model(base_folder, "cpu")[0])
        oracle = reference(alone.eval(), tok, data)
        for ours, ref in zip(r["loglikelihoods"], oracle):
            assert ours == pytest.approx(ref, abs=1e-4), r["model"]
        seen.add(json.dumps(r["loglikelihoods"]))
    assert len(seen) == 4 and json.dumps(results[0]["loglikelihoods"]) not in seen
