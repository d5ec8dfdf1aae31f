"""Tests for benchmarks/bench_sft.py: the Trainer side's collator and scoring rule, and the smoke
run end to end (ours packed, transformers' Trainer + peft, one JSON).

Run: .venv/bin/python -m pytest tests/test_bench_sft.py -q   (CPU, ~60 s on 2 idle cores; the
smoke run, 8 examples, ours packed and the Trainer, skips without the shared emotion data, the
default model, transformers, peft or gguf)

Oracles: the collator against the layout sft.collate gives our trainer (right padding, mask 0,
label -100); hf_label_scores (the rule the Trainer's model is scored by: prompt prefilled once,
labels read from the KV cache) on transformers' LlamaForCausalLM wrapped by peft, against our
readable scoring.label_scores_reference on a tiny Llama with the same weights (the twin of
bench_speed.build_hf): fp32, 1e-4 (summation order only; LoRA's B = 0 adds nothing). The smoke
run: both sides count the same real tokens (the same ids went in), the same steps and
validation records; no assertion on speed (timings at this size mean nothing).
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sft  # noqa: E402
import llama  # noqa: E402
import scoring  # noqa: E402
import sft  # noqa: E402
import weights  # noqa: E402
from conftest import need_data  # noqa: E402


def test_collator_right_pads_like_ours():
    seqs = [([5, 6, 7, 8], 2), ([9, 10], 1)]
    rows = [{"input_ids": ids, "labels": sft.masked_labels(ids, n)} for ids, n in seqs]
    got = bench_sft.right_pad_collator(0)(rows)
    ours = sft.collate(seqs, 0)
    assert torch.equal(got["input_ids"], ours["tokens"])
    assert torch.equal(got["attention_mask"], ours["attention_mask"].long())
    assert torch.equal(got["labels"], ours["labels"])


def test_hf_label_scores_equal_our_rule():
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import bench_speed
    torch.manual_seed(0)
    ours = llama.Llama(llama.LlamaConfig.tiny()).eval()
    hf = peft.get_peft_model(bench_speed.build_hf(ours), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=bench_sft.LORA["targets"], task_type="CAUSAL_LM"))
    hf.eval()
    prompts = [[3, 17, 90, 4, 5], [8, 9], [40, 41, 42, 43, 44, 45, 46, 47], [100]]
    labels = [[11], [12, 13], [14, 15, 16]]          # one, two and three tokens
    with torch.no_grad():
        want = torch.stack([scoring.label_scores_reference(ours, p, labels) for p in prompts])
        got = bench_sft.hf_label_scores(hf, prompts, labels, 0, torch.device("cpu"))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_smoke_run_has_both_sides(tmp_path, capsys):
    for module in ("transformers", "peft", "gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed: the Trainer side cannot run "
                        "(pip install -r requirements-dev.txt)")
    train, val = need_data("emotion", "train.txt"), need_data("emotion", "val.txt")
    try:
        weights.default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    out = tmp_path / "sft.json"
    report = bench_sft.main(["--train", str(train), "--val", str(val), "--max_train_examples",
                             "8", "--max_eval_examples", "4", "--max_len", "128",
                             "--variants", "packing", "--threads", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["rows"]] == ["packing", "trainer"]
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    tokens = {r["tokens"] for r in saved["rows"]}
    assert len(tokens) == 1 and 8 * 50 < tokens.pop() < 8 * 128      # the same real tokens
    for row in saved["rows"]:
        assert row["steps"] == 1 and row["n_train"] == 8 and row["n_val"] == 4
        assert 0 < row["train_s"] < row["wall_s"] and row["tokens_per_s"] > 0
        assert 100 < row["peak_rss_mb"] < 64 * 1024
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        assert row["train_loss"] > 0
    assert saved["rows"][1]["threads_seen"] == 2
    printed = capsys.readouterr().out
    assert "| transformers Trainer + peft |" in printed and "the same on every side" in printed
    assert "machine:" in printed and "cores" in printed
