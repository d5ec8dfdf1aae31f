"""Tests for distributed.py: the device rule, and data-parallel training under torchrun.

Run: .venv/bin/python -m pytest tests/test_distributed.py -q   (about 20 s: torchrun on the CPU)

Oracle: one process training on the same data with the same global batch (2 ranks x 4 rows ==
1 process x 8 rows): the logged losses and final weights must agree to fp32 rounding (the two
ranks' gradient sums are added in another order: atol 1e-6).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed
import safetensors_io

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
import torch, torch.nn as nn, torch.nn.functional as F
import data, distributed, safetensors_io, train
distributed.init_from_env(use_gpu=False)
out, batch = sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
seqs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (64,), generator=g)]
labels = [s[0] % 3 for s in seqs]
class Net(nn.Module):                  # a loss function must call model(...): DDP's hooks are there
    def __init__(self):
        super().__init__()
        self.embedding, self.head = nn.Embedding(50, 16), nn.Linear(16, 3)
    def forward(self, tokens, mask):
        return self.head((self.embedding(tokens) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
model = Net()
def loss_fn(m, b):
    return F.cross_entropy(m(b["tokens"], b["attention_mask"]), b["labels"], reduction="sum"), len(b["labels"])
config = train.TrainConfig(epochs=2, lr=3e-2, schedule="cosine", warmup_steps=1, grad_accum_steps=2,
                           progress=False, max_grad_norm=0.5)
history = train.fit(model, data.Batches(seqs, labels, batch, 0, shuffle=True, seed=5, shard=True), loss_fn, config)
if distributed.is_main():
    safetensors_io.write_safetensors(out + "/final.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    open(out + "/losses.txt", "w").write(" ".join(repr(s["loss"]) for s in history["steps"]))
'''


def test_cpu_without_use_gpu_and_a_clear_error_without_cuda():
    assert distributed.pick_device(False) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            distributed.pick_device(True)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()


def test_two_gloo_ranks_train_like_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(one), "8"], check=True,
                   capture_output=True, timeout=120)
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", str(script), str(ROOT), str(two), "4"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]
    losses = [[float(x) for x in (d / "losses.txt").read_text().split()] for d in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 8                 # 64 rows / 8 / 2 accum x 2 epochs
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-6, rtol=1e-6)
    a = safetensors_io.read_safetensors(one / "final.safetensors")
    b = safetensors_io.read_safetensors(two / "final.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)
