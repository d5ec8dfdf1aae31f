"""Tests for run_eval.py: `run.py --option eval` end to end on a tiny Llama.

Run: .venv/bin/python -m pytest tests/test_run_eval.py -q   (CPU, ~30 s)

Oracles: every log-likelihood in the JSON equals scoring.continuation_logprobs_reference (one full
forward of context + continuation, tokens split as lm-eval's _encode_pair) on the model loaded
alone; acc from those values by hand; the adapter's column equals the same reference on the model
with the adapter loaded alone; bad flags and files are one line before any model loads.
"""
import json

import pytest
import torch

import evaluation
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
def adapter(base_folder, task, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("sft")
    run.main(["--option", "sft", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
              "--pretrained-model-path", str(base_folder), "--lr", "5e-2",
              "--max_steps_per_epoch", "2", "--no-zero_shot", "--out_dir", str(out)])
    return out / "adapter"


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
