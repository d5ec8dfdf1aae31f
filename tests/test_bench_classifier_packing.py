"""Tests for benchmarks/bench_classifier_packing.py: the padded-vs-packed step benchmark end to
end on a tiny Llama and a written task (seconds; no assertion on speed).

Run: .venv/bin/python -m pytest tests/test_bench_classifier_packing.py -q   (CPU, ~5 s)

Oracles: the slot counts computed here from the shuffled batches (padded: each batch's longest
prompt x its size; packed: packing.rows' layout), and the benchmark's own check that the packed
and padded losses agree (it exits otherwise).
"""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_classifier_packing  # noqa: E402
import classifier  # noqa: E402
import data  # noqa: E402
import scoring  # noqa: E402
from test_classifier import tiny_llama, tokenizer_for  # noqa: E402


def test_bench_runs_both_options_and_counts_the_slots(tmp_path, monkeypatch, capsys):
    names = ["bad", "good"]
    (tmp_path / "toy-label-mapping.json").write_text(json.dumps(names))
    lines = [f"{i % 2} ||| {'word ' * (1 + 7 * i % 23)}review {i}" for i in range(24)]
    for split in ("train", "dev", "test"):
        (tmp_path / f"toy-{split}.txt").write_text("\n".join(lines) + "\n")
    model = tiny_llama()
    monkeypatch.setattr(scoring, "load_model", lambda path, device: (model, tokenizer_for(model)))
    out, threads = tmp_path / "bench.json", torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)   # --threads: not this process's
    bench_classifier_packing.main(["--data", str(tmp_path), "--task", "toy", "--batch_size", "4",
                                   "--steps", "3", "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["option"] for r in rows] == ["finetune", "lora"]
    tok = tokenizer_for(model)
    examples = data.read_examples(str(tmp_path / "toy-train.txt"), num_labels=2)
    seqs = classifier.encode_split(examples, tok, None, classifier.PROMPT_TEMPLATE, names)
    batches = data.Batches(seqs, [e.label for e in examples], 4, tok.pad_id, seed=1337, shuffle=True)
    timed = [b for _, b in zip(range(4), batches)][1:]              # after the warm-up batch
    real = sum(len(seqs[i]) for b in timed for i in b["index"])
    padded = sum(b["tokens"].numel() for b in timed)
    packed = sum(classifier.packed_batch([seqs[i] for i in b["index"]], [0] * len(b["index"]),
                                         tok.pad_id, max(map(len, seqs)))["tokens"].numel()
                 for b in timed)
    for r in rows:
        assert r["steps"] == 3 and len(r["seconds"]["padded"]) == len(r["seconds"]["packed"]) == 3
        assert r["slots_per_token"]["padded"] == padded / real
        assert r["slots_per_token"]["packed"] == packed / real < padded / real
        assert r["ratio"] > 0
    table = capsys.readouterr().out
    assert "| finetune | 3 |" in table and "| lora | 3 |" in table
    assert torch.get_num_threads() == threads
