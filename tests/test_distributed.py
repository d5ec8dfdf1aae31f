"""Tests for distributed.py: the device rule, and DDP and FSDP training under torchrun.

Run: .venv/bin/python -m pytest tests/test_distributed.py -q   (about 40 s: torchrun on the CPU)

Oracle: one process training on the same data with the same global batch (2 ranks x 4 rows ==
1 process x 8 rows): the logged losses and final weights must agree to fp32 rounding (the two
ranks' gradient sums are added in another order: atol 1e-6). For FSDP the final weights are
gathered from the shards (distributed.full_state_dict), and a run resumed from an FSDP
checkpoint must land on the same losses and weights.
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
out, batch, mode, leg = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
seqs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (64,), generator=g)]
labels = [s[0] % 3 for s in seqs]
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 16)
    def forward(self, h):
        return h + torch.tanh(self.linear(h))
class Net(nn.Module):                  # a loss function must call model(...): DDP's hooks are there
    def __init__(self):
        super().__init__()
        self.embedding, self.head = nn.Embedding(50, 16), nn.Linear(16, 3)
        self.layers = nn.ModuleList(Block() for _ in range(2))    # FSDP's units
    def forward(self, tokens, mask):
        h = self.embedding(tokens)
        for layer in self.layers:
            h = layer(h)
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
model = Net()
if mode == "fsdp":
    distributed.shard(model, torch.device("cpu"))
def loss_fn(m, b):                     # the head read outside forward, as sft.answer_loss does
    logits = F.linear(m(b["tokens"], b["attention_mask"]), m.head.weight, m.head.bias)
    return F.cross_entropy(logits, b["labels"], reduction="sum"), len(b["labels"])
dev = next(iter(data.Batches(seqs[:16], labels[:16], 16, 0)))
evaluate = lambda m: {"loss": float(loss_fn(m, dev)[0]) / 16}
config = train.TrainConfig(epochs=1 if leg == "first" else 2, total_steps=8, lr=3e-2,
                           schedule="cosine", warmup_steps=1, grad_accum_steps=2, progress=False,
                           max_grad_norm=0.5, select_metric="loss", select_mode="min",
                           checkpoint_dir=None if leg == "all" else out + "/checkpoint",
                           resume=leg == "second")
history = train.fit(model, data.Batches(seqs, labels, batch, 0, shuffle=True, seed=5, shard=True),
                    loss_fn, config, evaluate)
state = distributed.full_state_dict(model)       # every rank gathers, rank 0 writes
if distributed.is_main():
    safetensors_io.write_safetensors(out + "/final.safetensors", {k: v.contiguous() for k, v in state.items()})
    open(out + "/losses.txt", "w").write(" ".join(repr(s["loss"]) for s in history["steps"]))
'''


def test_cpu_without_use_gpu_and_a_clear_error_without_cuda():
    assert distributed.pick_device(False) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            distributed.pick_device(True)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()


def run_script(tmp_path, out, batch, mode="one", leg="all", ranks=2):
    """SCRIPT in one process (mode "one") or under torchrun with 2 gloo ranks (ddp, fsdp)."""
    out.mkdir(exist_ok=True)
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    launch = [] if mode == "one" else ["-m", "torch.distributed.run", "--nproc_per_node",
                                       str(ranks), "--standalone"]
    done = subprocess.run([sys.executable, *launch, str(script), str(ROOT), str(out), str(batch),
                           mode, leg], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]
    return done


def assert_same_run(a_dir, b_dir):
    losses = [[float(x) for x in (d / "losses.txt").read_text().split()] for d in (a_dir, b_dir)]
    assert len(losses[0]) == len(losses[1]) == 8                 # 64 rows / 8 / 2 accum x 2 epochs
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-6, rtol=1e-6)
    a = safetensors_io.read_safetensors(a_dir / "final.safetensors")
    b = safetensors_io.read_safetensors(b_dir / "final.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The oracle: one process, batch 8."""
    tmp = tmp_path_factory.mktemp("one")
    run_script(tmp, tmp / "one", 8)
    return tmp / "one"


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_ranks_train_like_one_process(single, tmp_path, mode):
    """2 ranks x batch 4 (DDP, or FSDP with every weight sharded) == 1 process x batch 8."""
    done = run_script(tmp_path, tmp_path / mode, 4, mode)
    assert ("FSDP: 2 processes" in done.stdout) == (mode == "fsdp")
    assert_same_run(single, tmp_path / mode)


def test_fsdp_resumes_from_its_gathered_checkpoint(single, tmp_path):
    """Epoch 1 under FSDP writes a checkpoint (shards and AdamW moments gathered into full
    tensors); a second FSDP run resumes it for epoch 2: losses and weights == the uninterrupted
    single-process run, and the checkpoint holds full-size tensors."""
    out = tmp_path / "fsdp"
    run_script(tmp_path, out, 4, "fsdp", leg="first")
    weights = safetensors_io.read_safetensors(out / "checkpoint" / "model.safetensors")
    assert weights["embedding.weight"].shape == (50, 16)           # gathered, not a (25, 16) shard
    moments = safetensors_io.read_safetensors(out / "checkpoint" / "optimizer.safetensors")
    assert {tuple(v.shape) for v in moments.values()} >= {(50, 16), (16, 16)}
    done = run_script(tmp_path, out, 4, "fsdp", leg="second")
    assert "resumed from" in done.stdout
    assert_same_run(single, out)


def test_fsdp_is_refused_outside_torchrun():
    with pytest.raises(ValueError, match="--fsdp shards the model over torchrun"):
        distributed.check_fsdp(True)
    distributed.check_fsdp(False)
