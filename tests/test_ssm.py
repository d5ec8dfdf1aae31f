"""Tests for ssm.py: discretizations, the loop scan, gradients, the classifier.

Run: .venv/bin/pytest tests/test_ssm.py -q   (CPU, a few seconds)

Oracles: torch.linalg.matrix_exp of the block matrix [[A, B], [0, 0]] for zero-order hold (its top
right block is int_0^dt e^{As} ds B = A^{-1}(e^{A dt} - I) B); dense torch.linalg.solve for bilinear;
the unrolled sum y_t = sum_k Re(C A_bar^(t-k) B_bar) u_k in float64 for the scan; the same
sequence with and without right padding for the mask; explicit loops for the pooling.
(The JSON data reader is tested in tests/test_data.py, the tokenizers and the CLI in
tests/test_run_ssm.py.)
"""
import pytest
import torch

import ssm


def random_system(H=3, N=4, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    A, B = ssm.random_diagonal_init(H, N, generator=g)
    C = torch.randn(H, N, dtype=torch.cfloat, generator=g)
    dt = torch.exp(torch.empty(H).uniform_(-6, -1, generator=g))
    return A.to(dtype), B.to(dtype), C.to(dtype), dt.to(torch.float64)


def test_zoh_matches_block_matrix_exponential():
    A, B, _, dt = random_system()
    A_bar, B_bar = ssm.discretize_zoh(A, B, dt)
    for h in range(A.shape[0]):
        N = A.shape[1]
        block = torch.zeros(N + 1, N + 1, dtype=A.dtype)
        block[:N, :N] = torch.diag(A[h])
        block[:N, N] = B[h]
        expm = torch.linalg.matrix_exp(block * dt[h])
        # fp64 throughout: agreement to ~1e-12 is roundoff of matrix_exp's Pade approximant
        torch.testing.assert_close(A_bar[h], torch.diagonal(expm[:N, :N]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(B_bar[h], expm[:N, N], rtol=1e-10, atol=1e-12)


def test_bilinear_matches_dense_solve_and_approaches_zoh():
    A, B, _, dt = random_system()
    A_bar, B_bar = ssm.discretize_bilinear(A, B, dt)
    eye = torch.eye(A.shape[1], dtype=A.dtype)
    for h in range(A.shape[0]):
        left = eye - dt[h] / 2 * torch.diag(A[h])
        dense_A = torch.linalg.solve(left, eye + dt[h] / 2 * torch.diag(A[h]))
        torch.testing.assert_close(A_bar[h], torch.diagonal(dense_A), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(B_bar[h], torch.linalg.solve(left, dt[h] * B[h]),
                                   rtol=1e-12, atol=1e-12)
    # both are one-step approximations of exp(dt A); they differ by O((dt |A|)^3)
    small = torch.full_like(dt, 1e-4)
    zoh, bil = ssm.discretize_zoh(A, B, small)[0], ssm.discretize_bilinear(A, B, small)[0]
    assert (zoh - bil).abs().max() < 1e-6


def test_scan_equals_unrolled_sum():
    A, B, C, dt = random_system()
    A_bar, B_bar = ssm.discretize_zoh(A, B, dt)
    u = torch.randn(2, 3, 12, dtype=torch.float64)
    y, h_last = ssm.scan(A_bar, B_bar, C, u)
    expected = torch.zeros_like(y)
    for t in range(12):
        for k in range(t + 1):
            expected[..., t] += (C * A_bar ** (t - k) * B_bar).sum(-1).real * u[..., k]
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)   # fp64: roundoff only
    # the returned state continues the recurrence: scanning in two halves == one scan
    y1, h1 = ssm.scan(A_bar, B_bar, C, u[..., :5])
    y2, h2 = ssm.scan(A_bar, B_bar, C, u[..., 5:], h=h1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y)
    torch.testing.assert_close(h2, h_last)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_step_equals_forward_and_gradients_reach_every_parameter(discretization):
    torch.manual_seed(0)
    layer = ssm.DiagonalSSM(3, 4, discretization=discretization)
    u = torch.randn(2, 3, 10)
    y = layer(u)
    h, ys = layer.initial_state(2), []
    for t in range(10):
        y_t, h = layer.step(u[:, :, t], h)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), y, rtol=1e-5, atol=1e-5)   # same fp32 ops
    y.square().sum().backward()
    for name, p in layer.named_parameters():   # log_dt, log_A_real, A_imag, B, C, D
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_stability_guards_keep_long_scan_finite():
    torch.manual_seed(0)
    layer = ssm.DiagonalSSM(2, 4)
    with torch.no_grad():
        layer.log_A_real.fill_(-30.0)    # Re(A) would be -1e-13: the guard clamps it to -1e-4
        layer.log_dt.fill_(10.0)         # dt would be e^10: clamped to 1
    A_bar, _, _, _ = layer._discrete()
    assert A_bar.abs().max() < 1
    y = layer(torch.randn(1, 2, 3000))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("bidirectional,pooling", [(False, "mean"), (True, "mean"),
                                                   (False, "max"), (True, "meanmax")])
def test_classifier_ignores_right_padding(bidirectional, pooling):
    torch.manual_seed(0)
    config = ssm.SSMConfig.tiny(bidirectional=bidirectional, pooling=pooling)
    model = ssm.SSMClassifier(config).eval()
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    padded = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0]])
    mask = (padded != 0).long()
    torch.testing.assert_close(model(padded, mask), model(tokens), rtol=1e-5, atol=1e-6)
    assert model(padded).shape == (1, 3)


def test_pooling_mean_and_max_against_explicit_loops():
    model = ssm.SSMClassifier(ssm.SSMConfig.tiny(pooling="meanmax"))
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).float()
    pooled = model.pool(x, mask)
    for b, n in enumerate([3, 5]):
        torch.testing.assert_close(pooled[b, :8], x[b, :n].mean(0))
        torch.testing.assert_close(pooled[b, 8:], x[b, :n].max(0).values)


def test_zero_init_branch_starts_as_bag_of_embeddings():
    torch.manual_seed(0)
    model = ssm.SSMClassifier(ssm.SSMConfig.tiny(zero_init_branch=True)).eval()
    tokens = torch.tensor([[3, 4, 5, 6]])
    mean = model.embedding(tokens).mean(1)
    torch.testing.assert_close(model(tokens), model.head(model.norm(mean)))


def test_token_dropout_only_in_training_and_keeps_bos():
    torch.manual_seed(0)
    model = ssm.SSMClassifier(ssm.SSMConfig.tiny(token_dropout=0.5))
    tokens = torch.randint(1, 20, (64, 10))
    dropped, mask = model.drop_tokens(tokens, torch.ones_like(tokens))
    assert (dropped[:, 0] == tokens[:, 0]).all() and (mask[:, 0] == 1).all()
    assert ((dropped == 0) == (mask == 0)).all() and 0.4 < (mask[:, 1:] == 0).float().mean() < 0.6
    model.eval()   # evaluation sees every token: same output as without token dropout
    plain = ssm.SSMClassifier(ssm.SSMConfig.tiny()).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(tokens), plain(tokens))


def test_config_errors():
    with pytest.raises(ValueError, match="SSMConfig.layer"):
        ssm.SSMConfig(layer="lstm")
    with pytest.raises(ValueError, match="layer 'mamba' takes init 's4d-real'"):
        ssm.SSMConfig(layer="mamba")                  # Mamba's A is S4D-Real, and only Mamba's
    with pytest.raises(ValueError, match="layer 'mamba' takes init 's4d-real'"):
        ssm.SSMConfig(layer="s4d", init="s4d-real")
    assert ssm.SSMConfig(layer="mamba", init="s4d-real").expand == 2
    with pytest.raises(ValueError, match="dt_min"):
        ssm.SSMConfig(dt_min=0.5, dt_max=0.1)


@pytest.mark.parametrize("init", ["s4d-lin", "s4d-inv", "s4d-legs"])
def test_basic_ssm_takes_its_s4d_init(init):
    """--ssm_init reaches the basic SSM: its A and B are s4.s4d_init's (oracle: that function),
    and "random" draws others."""
    import s4
    config = ssm.SSMConfig(vocab_size=16, num_classes=2, d_model=4, d_state=8, init=init)
    layer = ssm.SSMBlock(config).layer
    A, B, _, _ = layer.continuous()
    A_ref, B_ref = s4.s4d_init(init, 8)
    torch.testing.assert_close(A.imag, A_ref.imag.float().expand(4, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(A.real, A_ref.real.float().clamp(max=-1e-4).expand(4, 8),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(B, B_ref.to(torch.cfloat).expand(4, 8))
    random = ssm.SSMBlock(ssm.SSMConfig(vocab_size=16, num_classes=2, d_model=4, d_state=8)).layer
    assert not torch.allclose(random.continuous()[0].imag, A.imag)
