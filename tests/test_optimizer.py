"""Tests for optimizer.py: AdamW, lr_at, clip_grad_norm.

Run: .venv/bin/pytest tests/test_optimizer.py -q

Oracles: torch.optim.AdamW (200 steps on a small MLP, several lr / betas / weight-decay settings);
our own loop path vs our foreach path; values of the schedule formulas worked out by hand;
torch.nn.utils.clip_grad_norm_.
"""
import math

import pytest
import torch
from torch import nn

import optimizer

SETTINGS = [  # (lr, betas, weight_decay)
    (1e-3, (0.9, 0.999), 0.0),
    (3e-3, (0.8, 0.99), 0.1),
    (1e-2, (0.5, 0.9), 0.01),
]


def make_mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def train(model, opt, steps=200, seed=1):
    """`steps` optimizer steps on a fixed random regression problem; returns the parameters."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(32, 8, generator=gen).to(dtype)
    y = torch.randn(32, 4, generator=gen).to(dtype)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("lr,betas,wd", SETTINGS)
@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_matches_torch_fp64(lr, betas, wd, foreach):
    """fp64: agreement to 1e-10 shows the maths is the same (rounding differences only)."""
    ours, ref = make_mlp(torch.float64), make_mlp(torch.float64)
    got = train(ours, optimizer.AdamW(ours.parameters(), lr=lr, betas=betas, eps=1e-8,
                                      weight_decay=wd, foreach=foreach))
    want = train(ref, torch.optim.AdamW(ref.parameters(), lr=lr, betas=betas, eps=1e-8,
                                        weight_decay=wd))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("lr,betas,wd", SETTINGS)
def test_adamw_matches_torch_fp32(lr, betas, wd):
    """fp32: same op order as torch's single-tensor AdamW, so 200 steps stay within 1e-6."""
    ours, ref = make_mlp(torch.float32), make_mlp(torch.float32)
    got = train(ours, optimizer.AdamW(ours.parameters(), lr=lr, betas=betas, eps=1e-8,
                                      weight_decay=wd))
    want = train(ref, torch.optim.AdamW(ref.parameters(), lr=lr, betas=betas, eps=1e-8,
                                        weight_decay=wd, foreach=False))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("correct_bias", [True, False])
def test_foreach_equals_loop(correct_bias):
    """On CPU the foreach ops run the same per-tensor kernels: results are bitwise equal."""
    a, b = make_mlp(torch.float32), make_mlp(torch.float32)
    kwargs = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05,
                  correct_bias=correct_bias)
    got = train(a, optimizer.AdamW(a.parameters(), foreach=True, **kwargs), steps=50)
    want = train(b, optimizer.AdamW(b.parameters(), foreach=False, **kwargs), steps=50)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_first_step_by_hand():
    """Step 1 with bias correction: m_hat = g, v_hat = g^2, so theta moves by lr*g/(|g|+eps)."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    p.grad = torch.tensor([0.5, -4.0, 0.0], dtype=torch.float64)
    opt = optimizer.AdamW([p], lr=0.1, weight_decay=0.2, eps=1e-8)
    opt.step()
    start = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    decayed = start * (1 - 0.1 * 0.2)
    g = torch.tensor([0.5, -4.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), decayed - 0.1 * g / (g.abs() + 1e-8))


def test_params_without_grad_are_skipped_and_bad_lr_rejected():
    a = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.ones(3))
    a.grad = torch.ones(3)
    opt = optimizer.AdamW([a, b], lr=0.1)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    with pytest.raises(ValueError, match="--lr"):
        optimizer.AdamW([a], lr=-1.0)


def test_lr_at_key_steps():
    """Warmup ramps to base_lr; cosine halfway is the midpoint; the end is the floor."""
    lr = 1.0
    assert optimizer.lr_at(0, lr, 4, 20) == pytest.approx(0.25)
    assert optimizer.lr_at(3, lr, 4, 20) == pytest.approx(1.0)
    assert optimizer.lr_at(4, lr, 4, 20) == pytest.approx(1.0)              # decay starts at 1
    assert optimizer.lr_at(12, lr, 4, 20) == pytest.approx(0.5)             # p = 1/2
    assert optimizer.lr_at(8, lr, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert optimizer.lr_at(20, lr, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert optimizer.lr_at(99, lr, 4, 20, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert optimizer.lr_at(12, 2.0, 4, 20, schedule="cosine", min_lr_ratio=0.1) == \
        pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert optimizer.lr_at(12, lr, 4, 20, schedule="linear") == pytest.approx(0.5)
    assert optimizer.lr_at(18, lr, 4, 20, schedule="linear") == pytest.approx(2 / 16)
    assert optimizer.lr_at(0, lr, 0, 20, schedule="linear") == pytest.approx(1.0)
    assert optimizer.lr_at(2, lr, 4, 20, schedule="constant") == pytest.approx(0.75)
    assert optimizer.lr_at(15, lr, 4, 20, schedule="constant") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="--schedule"):
        optimizer.lr_at(0, lr, 0, 10, schedule="step")


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    a, b = make_mlp(torch.float32), make_mlp(torch.float32)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    for m in (a, b):
        (m(x) ** 2).sum().backward()
    got = optimizer.clip_grad_norm(a.parameters(), max_norm)
    want = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    torch.testing.assert_close(got, want)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_clip_grad_norm_no_grads():
    assert float(optimizer.clip_grad_norm([nn.Parameter(torch.ones(2))], 1.0)) == 0.0
