"""Tests for benchmarks/gpu_suite.sh and benchmarks/gpu_checks.py: the suite's smoke mode end to
end on the CPU, the report's verdict, and that the checks' tolerance catches a broken path.

Run: .venv/bin/python -m pytest tests/test_gpu_suite.py -q   (CPU, ~40 s on 2 idle cores; the
smoke suite is marked slow: it loads the default model and reads the shared data when present)

Oracles: the files the suite writes, read back (every step recorded, every check passed, the
markdown tables present); a report built from a failed step must say FAILED and exit 1; a device
twin whose final norm is scaled by 1.1 (a 10% scale bug) must FAIL both forward checks while the
true twin passes them (the tolerance is loose enough for bf16, tight enough for such a bug).
No GPU claims: in smoke mode the "device" is the CPU.
"""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_checks  # noqa: E402
import llama  # noqa: E402

STEPS = ["machine", "checks", "speed", "sft", "emotion"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_smoke_mode_writes_json_and_markdown(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert [s["step"] for s in report["steps"]] == STEPS
    assert all(s["status"] in ("ok", "skipped") for s in report["steps"]), report["steps"]
    assert report["ok"] and report["checks"]["all_pass"] and report["checks"]["smoke"]
    names = {c["check"] for c in report["checks"]["checks"]}
    assert {"forward_fp32", "forward_bf16", "lora_grads_bf16", "packed_loss_bf16",
            "compiled_bf16", "label_scores_bf16", "graph_decode_ids"} <= names
    markdown = (out / "gpu_suite.md").read_text()
    assert "| forward_bf16 |" in markdown and "result: OK" in markdown
    assert "## bench_speed" in markdown
    ran = {s["step"] for s in report["steps"] if s["status"] == "ok"}
    if "sft" in ran:
        assert report["sft"]["rows"][0]["variant"] == "packing"
        assert "## bench_sft" in markdown
    if "emotion" in ran:
        assert report["emotion"]["epochs"][0]["steps"] == 1


def test_report_of_a_failed_step_says_failed(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "steps.tsv").write_text("machine\tok\t1\texit 0\nspeed\tfailed\t30\texit 124\n")
    assert gpu_checks.report(tmp_path) == 1
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert not report["ok"]
    assert "result: FAILED (failed steps: speed)" in (tmp_path / "gpu_suite.md").read_text()


def test_forward_check_catches_a_perturbed_twin():
    torch.manual_seed(0)
    twin = llama.Llama(llama.LlamaConfig.tiny()).eval()
    cpu, lengths = torch.device("cpu"), [12, 7, 16]
    good = gpu_checks.check_forward(twin, gpu_checks.fast(copy.deepcopy(twin)), cpu, lengths)
    assert all(r["pass"] for r in good), good
    broken = copy.deepcopy(twin)
    with torch.no_grad():
        broken.norm.weight.mul_(1.1)          # a 10% scale bug in front of the output head
    bad = gpu_checks.check_forward(twin, gpu_checks.fast(broken), cpu, lengths)
    assert not any(r["pass"] for r in bad), bad
