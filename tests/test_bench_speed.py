"""Tests for benchmarks/bench_speed.py: its --smoke run, end to end (tiny shapes, no timing claims).

Run: .venv/bin/python -m pytest tests/test_bench_speed.py -q   (CPU, ~20 s)

Oracles: transformers (+ peft) on the same weights, when installed: the first training step's
loss (the same next-token cross-entropy: ours chunked, theirs on full logits, fp32: 1e-4 on a
loss of ~5.5, summation order only), the same greedy ids, the same label log-probabilities;
the JSON file read back. No assertion on speed: timings here mean nothing.
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_speed  # noqa: E402

WORKLOADS = ["lora_light", "lora_heavy", "full", "decode_b1", "decode_b8", "score"]


def test_smoke_run_rows_agree_with_transformers_and_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    results = bench_speed.main(["--smoke", "--threads", "1", "--json", str(out)])
    assert [r["workload"] for r in results] == WORKLOADS
    for row in results:
        assert row["ours"]["value"] > 0 and row["threads"] == 1 and row["shape"] == "tiny"
    assert results[3]["ours_int4"]["value"] > 0                 # the int4 decoding path ran
    saved = json.loads(out.read_text())
    assert [r["workload"] for r in saved["results"]] == WORKLOADS
    printed = capsys.readouterr().out
    assert "| tiny | 1 | lora_heavy (tok/s) |" in printed and "no timing claims" in printed
    if not bench_speed.have("transformers") or not bench_speed.have("peft"):
        pytest.skip("transformers / peft not installed: ours-only rows checked")
    for row in results[:3]:
        assert row["ours"]["loss"] == pytest.approx(row["transformers"]["loss"], abs=1e-4)
    assert results[3]["same_ids_as_transformers"] and results[4]["same_ids_as_transformers"]
    assert results[5]["max_score_diff"] < 1e-4


def test_gpu_only_shape_is_refused_on_cpu():
    if bench_speed.torch.cuda.is_available():
        pytest.skip("a GPU is present: the 1B shape is allowed")
    with pytest.raises(SystemExit, match="GPU only"):
        bench_speed.main(["--smoke", "--shapes", "llama32_1b"])
