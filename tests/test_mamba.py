"""Tests for mamba.py: the selective scan (loop and chunked), the Mamba mixer, the block.

Run: .venv/bin/pytest tests/test_mamba.py -q   (CPU, about ten seconds; transformers' import is
most of it)

Oracles: an explicit float64 unrolled sum y_t = sum_k C_t . (prod_{j=k+1..t} A_bar_j) B_bar_k x_k
+ D x_t for the loop; the loop (selective_scan_reference) for the chunked scan, values and
gradients; transformers' MambaMixer with the same weights for the whole mixer: its pure-PyTorch
("slow") path, the one it takes on a CPU without the mamba_ssm / causal_conv1d CUDA packages (it
says so in its "falling back to its reference PyTorch implementation" warnings), outputs and
gradients; the same sequence with and without right padding; softplus for inverse_softplus.
(The CLI path `--option ssm --layer mamba` is tested in tests/test_run_ssm.py.)
"""
import math

import pytest
import torch

import mamba
import s4
import ssm


def random_inputs(batch=2, H=3, L=23, N=4, seed=0, dtype=torch.float32):
    """x, dt, A, B, C, D, h0 of a selective scan; dt in (0, 0.5], A in [-3, 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, H, L, generator=g)
    dt = 0.5 * torch.rand(batch, H, L, generator=g) + 1e-3
    A = -3 * torch.rand(H, N, generator=g) - 1e-2
    B, C = torch.randn(batch, L, N, generator=g), torch.randn(batch, L, N, generator=g)
    D, h0 = torch.randn(H, generator=g), torch.randn(batch, H, N, generator=g)
    return [t.to(dtype) for t in (x, dt, A, B, C, D, h0)]


# ----------------------------------------------------------------------------
# the scans

def test_reference_scan_equals_unrolled_sum():
    x, dt, A, B, C, D, _ = random_inputs(L=9, dtype=torch.float64)
    y, h = mamba.selective_scan_reference(x, dt, A, B, C, D)
    expected = D[:, None] * x
    for t in range(9):
        for k in range(t + 1):
            decay = torch.exp(A[None, :, :] * dt[:, :, k + 1:t + 1].sum(-1)[..., None])  # (B, H, N)
            B_bar = dt[:, :, k, None] * B[:, None, k, :]                              # (B, H, N)
            expected[:, :, t] += (C[:, None, t, :] * decay * B_bar).sum(-1) * x[:, :, k]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)   # fp64: roundoff only
    assert h.shape == (2, 3, 4)


@pytest.mark.parametrize("L,chunk", [(1, None), (7, None), (23, None), (23, 5), (64, 8),
                                     (129, None), (37, 1), (10, 16)])
def test_chunked_scan_equals_loop_values_and_gradients(L, chunk):
    """Lengths not divisible by the chunk, one chunk longer than L, chunks of one step."""
    inputs = [t.requires_grad_() for t in random_inputs(L=L, seed=L)]
    y_loop, h_loop = mamba.selective_scan_reference(*inputs)
    y_fast, h_fast = mamba.selective_scan_chunked(*inputs, chunk=chunk)
    # fp32, the same products summed in another order: 1e-5 relative to the largest entry
    scale = y_loop.abs().max().item()
    torch.testing.assert_close(y_fast, y_loop, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(h_fast, h_loop, rtol=1e-5, atol=1e-5 * h_loop.abs().max().item())
    weights = torch.randn_like(y_loop)
    loss_loop = (y_loop * weights).sum() + h_loop.square().sum()
    loss_fast = (y_fast * weights).sum() + h_fast.square().sum()
    grads_loop = torch.autograd.grad(loss_loop, inputs)
    grads_fast = torch.autograd.grad(loss_fast, inputs)
    for name, g_fast, g_loop in zip("x dt A B C D h".split(), grads_fast, grads_loop):
        torch.testing.assert_close(g_fast, g_loop, rtol=1e-5, atol=1e-5 * g_loop.abs().max().item(),
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_scan_state_continues_across_calls():
    """Scanning two halves, the second from the first's last state, equals one scan."""
    x, dt, A, B, C, D, _ = random_inputs(L=30)
    y, h = mamba.selective_scan_chunked(x, dt, A, B, C, D)
    y1, h1 = mamba.selective_scan_chunked(x[..., :13], dt[..., :13], A, B[:, :13], C[:, :13], D)
    y2, h2 = mamba.selective_scan_chunked(x[..., 13:], dt[..., 13:], A, B[:, 13:], C[:, 13:], D,
                                          h=h1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, h, rtol=1e-5, atol=1e-5)


def test_long_sequence_with_large_steps_stays_finite_and_equal():
    """dt A down to -50 a step: the cumulative log decay reaches -10^5 within a chunk, far below
    fp32's exp range (-88); every exp the chunked scan takes has an argument <= 0."""
    x, dt, A, B, C, D, _ = random_inputs(batch=1, H=2, L=4096, N=3)
    dt = dt * 30
    A = A * 5
    y_fast, _ = mamba.selective_scan_chunked(x, dt, A, B, C, D)
    y_loop, _ = mamba.selective_scan_reference(x, dt, A, B, C, D)
    assert torch.isfinite(y_fast).all()
    torch.testing.assert_close(y_fast, y_loop, rtol=1e-5, atol=1e-5 * y_loop.abs().max().item())


# ----------------------------------------------------------------------------
# the mixer: initialization, and transformers' MambaMixer as the oracle

def test_inverse_softplus_and_initialization():
    y = torch.tensor([1e-4, 1e-3, 0.05, 0.1, 3.0], dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.softplus(mamba.inverse_softplus(y)), y)
    torch.manual_seed(0)
    mixer = mamba.MambaMixer(dim=32, N=5)
    assert (mixer.H, mixer.R) == (64, 2)                       # E = 2, R = ceil(32 / 16)
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 6.0).expand(64, 5))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)      # Delta at x = 0: the paper's range
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.max() / dt.min() > 10                            # log-uniform: spread over the range
    assert torch.equal(mixer.D.detach(), torch.ones(64))


def transformers_mixer(dim, N, R, seed=0):
    """transformers' MambaMixer on a CPU (pure-PyTorch path) and ours with its weights."""
    pytest.importorskip("transformers")
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    config = MambaConfig(hidden_size=dim, state_size=N, expand=2, conv_kernel=4, time_step_rank=R,
                         num_hidden_layers=1, use_mambapy=False, use_associative_scan=False)
    torch.manual_seed(seed)
    reference = MambaMixer(config, layer_idx=0)
    with torch.no_grad():                                      # not the init: a generic point
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = mamba.MambaMixer(dim, N, expand=2, d_conv=4, dt_rank=R)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_mixer_equals_transformers_slow_path(scan):
    reference, ours = transformers_mixer(dim=8, N=4, R=2)
    ours.scan = scan
    u = torch.randn(3, 37, 8)
    mask = torch.ones(3, 37, dtype=torch.long)
    mask[1, 20:], mask[2, 5:] = 0, 0
    for m in (None, mask):
        expected = reference(u, attention_mask=m)
        got = ours(u, m)
        # fp32; our loop is transformers' op for op, the chunked scan sums in another order
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        weights = torch.randn_like(expected)
        (expected * weights).sum().backward()
        (got * weights).sum().backward()
        theirs = dict(reference.named_parameters())
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-5,
                                       atol=1e-5 * theirs[name].grad.abs().max().item(),
                                       msg=lambda msg, name=name: f"gradient of {name}: {msg}")
        reference.zero_grad()
        ours.zero_grad()


# ----------------------------------------------------------------------------
# the block inside ssm.py's classifier

@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_ignores_right_padding(bidirectional):
    torch.manual_seed(0)
    config = ssm.SSMConfig.tiny(layer="mamba", init="s4d-real", bidirectional=bidirectional,
                                pooling="meanmax")
    model = s4.build_model(config).eval()
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    padded = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0]])
    # fp32, the same tokens: only the chunk layout of the scan differs with the length
    torch.testing.assert_close(model(padded, (padded != 0).long()), model(tokens),
                               rtol=1e-5, atol=1e-6)


def test_zero_init_branch_is_identity_and_a_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    config = ssm.SSMConfig.tiny(layer="mamba", init="s4d-real", bidirectional=True,
                                zero_init_branch=True)
    block = mamba.MambaBlock(config)
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(block(x), x)
    model = s4.build_model(ssm.SSMConfig.tiny(layer="mamba", init="s4d-real", bidirectional=True))
    assert isinstance(model.blocks[0], mamba.MambaBlock)
    logits = model(torch.randint(1, 20, (2, 9)))
    logits.square().sum().backward()
    assert logits.shape == (2, 3)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_dt_rank_default_follows_the_paper():
    assert mamba.MambaMixer(dim=40, N=2).R == math.ceil(40 / 16)
    assert mamba.MambaMixer(dim=40, N=2, dt_rank=7).x_proj.out_features == 7 + 2 * 2
