"""Tests for checkpoint.py and train.fit's resume: a SIGKILLed run continues to the same result.

Run: .venv/bin/python -m pytest tests/test_checkpoint.py -q   (about 20 s: child processes)

Oracles: an uninterrupted run of the same script (weights and every logged loss must be
bit-identical on CPU); torch.optim.AdamW's own state_dict (optimizer round trip); the folder's
contents after a save that fails midway; hand-written Progress records (the resumed-epoch skip).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import safetensors_io

ROOT = Path(__file__).resolve().parents[1]

# A small but complete training: shuffled data.Batches, dropout (global RNG), AdamW, cosine
# schedule with warmup, accumulation, evaluation with best-state restore, three epochs.
CHILD = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
import torch, torch.nn as nn, torch.nn.functional as F
import data, safetensors_io, train
out, resume = sys.argv[2], sys.argv[3] == "resume"
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
seqs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (48,), generator=g)]
labels = [s[0] % 3 for s in seqs]
model = nn.Sequential(nn.Embedding(50, 16), nn.Dropout(0.3), nn.Linear(16, 3))
def loss_fn(m, b):
    time.sleep(0.02)
    h = (m[1](m[0](b["tokens"])) * b["attention_mask"][..., None]).sum(1) / b["attention_mask"].sum(1, keepdim=True)
    return F.cross_entropy(m[2](h), b["labels"], reduction="sum"), len(b["labels"])
def evaluate(m):
    loss, n = loss_fn(m, next(iter(data.Batches(seqs[:16], labels[:16], 16, 0))))
    return {"loss": float(loss) / n}
config = train.TrainConfig(epochs=3, lr=3e-2, schedule="cosine", warmup_steps=2, grad_accum_steps=2,
                           eval_every_steps=5, select_metric="loss", select_mode="min", progress=False,
                           checkpoint_dir=out + "/ckpt", checkpoint_every_steps=3, resume=resume)
history = train.fit(model, data.Batches(seqs, labels, 4, 0, shuffle=True, seed=5), loss_fn, config, evaluate)
safetensors_io.write_safetensors(out + "/final.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
open(out + "/losses.txt", "w").write(" ".join(repr(s["loss"]) for s in history["steps"]))
open(out + "/tokens.txt", "w").write(" ".join(str(e["tokens"]) for e in history["epochs"]))
'''


def child(out, mode):
    return [sys.executable, "-c", CHILD, str(ROOT), str(out), mode]


def kill_after(proc, state, step, timeout=120):
    """SIGKILL proc once its checkpoint's state.json says it has passed `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= step:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    subprocess.run(child(whole, "fresh"), check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(child(killed, "fresh"), stdout=subprocess.DEVNULL)
    kill_after(proc, killed / "ckpt" / "state.json", 7)
    assert not (killed / "final.safetensors").exists()           # it really died mid-run
    done = subprocess.run(child(killed, "resume"), check=True, capture_output=True, text=True,
                          timeout=120)
    assert "resumed from" in done.stdout
    a = safetensors_io.read_safetensors(whole / "final.safetensors")
    b = safetensors_io.read_safetensors(killed / "final.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (whole / "losses.txt").read_text() == (killed / "losses.txt").read_text()
    assert len((killed / "losses.txt").read_text().split()) == 18   # 3 epochs x 6 steps, one history
    # the epoch cut by the kill counts its tokens from before the kill too (tok/s is not halved)
    assert (whole / "tokens.txt").read_text() == (killed / "tokens.txt").read_text()


def test_optimizer_state_round_trip_and_half_written_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, meta = checkpoint.optimizer_state_tensors(opt)
    other = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    checkpoint.load_optimizer_state(other, tensors, json.loads(json.dumps(meta)))
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(other.state_dict()["state"][0][key]))
    folder = tmp_path / "ckpt"
    checkpoint.save(folder, {"w": model.weight.detach()}, None, opt, {"step": 1})
    real_write = safetensors_io.write_safetensors

    def dies_on_rng(path, tensors, metadata=None):
        if Path(path).name == "rng.safetensors":
            raise KeyboardInterrupt("killed while saving")
        real_write(path, tensors, metadata)

    monkeypatch.setattr(safetensors_io, "write_safetensors", dies_on_rng)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(folder, {"w": model.weight.detach() * 0}, None, opt, {"step": 2})
    *_, state = checkpoint.load(folder)
    assert state["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        checkpoint.load(tmp_path / "nothing")


def test_cli_ssm_killed_and_resumed_matches_uninterrupted(tmp_path):
    """The same through run.py: --option ssm (the slow loop scan, so a kill lands mid-run)."""
    rows = [{"id": i, "text": ("sport goal match " if i % 2 else "vote law court ") * (2 + i % 5),
             "label": i % 2} for i in range(160)]
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    d = str(tmp_path / "d.json")

    def argv(out, *extra):
        return [sys.executable, str(ROOT / "run.py"), "--option", "ssm", "--train", d, "--val", d,
                "--test", d, "--tokenizer", "bytes", "--d_model", "8", "--d_state", "4",
                "--epochs", "3", "--batch_size", "8", "--max_len", "64", "--no_progress",
                "--checkpoint_every_steps", "4", "--out_dir", str(out), *extra]

    subprocess.run(argv(tmp_path / "whole"), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(argv(tmp_path / "killed"), stdout=subprocess.DEVNULL)
    kill_after(proc, tmp_path / "killed" / "ssm-checkpoint" / "state.json", 24)
    assert not (tmp_path / "killed" / "ssm-results.json").exists()
    subprocess.run(argv(tmp_path / "killed", "--resume"), check=True, capture_output=True,
                   timeout=300)
    whole, resumed = (json.loads((tmp_path / k / "ssm-history.json").read_text())
                      for k in ("whole", "killed"))
    assert [s["loss"] for s in resumed["steps"]] == [s["loss"] for s in whole["steps"]]
    assert len(whole["steps"]) == 60
    a, b = (json.loads((tmp_path / k / "ssm-results.json").read_text()) for k in ("whole", "killed"))
    assert (a["val_loss"], a["val_accuracy"]) == (b["val_loss"], b["val_accuracy"])


def test_corrupt_json_is_one_line_naming_the_file(tmp_path):
    """state.json and pico.json go through file_checks.read_json: one line naming the file."""
    for name, read in [("state.json", checkpoint.load), ("pico.json", checkpoint.load_pico)]:
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text("{not json", encoding="utf-8")
        with pytest.raises(ValueError, match=f"{name}.*not valid JSON") as err:
            read(folder)
        assert "\n" not in str(err.value)


def test_resume_skips_exactly_the_steps_done_in_the_saved_epoch():
    """epoch_part: the saved epoch continues from its counters, every other epoch from zero."""
    saved = checkpoint.Progress(step=7, epoch=1, steps_in_epoch=3, epoch_loss=2.5)
    assert checkpoint.epoch_part(saved, 1) is saved
    assert checkpoint.epoch_part(saved, 2) == checkpoint.Progress(epoch=2)
    assert [checkpoint.due(s, 3) for s in range(1, 7)] == [False, False, True] * 2
    assert not checkpoint.due(3, None)
