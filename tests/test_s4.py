"""Tests for s4.py: HiPPO, kernels, FFT convolution == recurrent scan, step mode.

Run: .venv/bin/pytest tests/test_s4.py -q   (CPU, about ten seconds)

Oracles: the HiPPO-LegS closed form written as a double loop; the dense matrix rebuilt from the
NPLR factors; explicit powers C A_bar^k B_bar (diagonal: elementwise pow; DPLR: dense
torch.linalg.matrix_power) for the kernels; torch.nn.functional.conv1d for the FFT convolution;
ssm.scan (the loop of ssm.py) for FFT conv == recurrence; the layer's own step loop for
step == convolution. (The CLI, naive Bayes and timing are tested in tests/test_run_ssm.py.)
"""
import math

import pytest
import torch

import s4
import ssm


def test_hippo_legs_equals_closed_form():
    N = 7
    A, B = s4.hippo_legs(N)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1))
        for k in range(N):
            closed = (-math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1) if n > k
                      else -(n + 1) if n == k else 0.0)
            assert A[n, k].item() == pytest.approx(closed, abs=1e-12)


def test_nplr_form_rebuilds_hippo_and_s4d_inits():
    N = 8
    A, B = s4.hippo_legs(N)
    Lambda, P, B_v, V = s4.nplr_legs(N)
    rebuilt = V @ (torch.diag(Lambda) - P[:, None] * P.conj()[None, :]) @ V.conj().T
    # fp64 eigendecomposition: 1e-10 is roundoff of eigh on an 8 x 8 matrix
    torch.testing.assert_close(rebuilt, A.to(rebuilt.dtype), rtol=0, atol=1e-10)
    torch.testing.assert_close(V @ B_v, B.to(V.dtype), rtol=0, atol=1e-10)
    assert torch.allclose(Lambda.real, torch.full((N,), -0.5, dtype=torch.float64))
    # S4D-LegS keeps the N modes with Im > 0 of the 2N-state NPLR (conjugate pairs)
    A_legs, _ = s4.s4d_init("s4d-legs", 4)
    full, _, _, _ = s4.nplr_legs(8)
    torch.testing.assert_close(A_legs.imag.sort().values.double(),
                               full.imag[full.imag > 0].sort().values, rtol=1e-5, atol=1e-5)
    A_lin, _ = s4.s4d_init("s4d-lin", 4)
    torch.testing.assert_close(A_lin, torch.tensor([-0.5 + 1j * math.pi * n for n in range(4)],
                                                   dtype=torch.cfloat))


@pytest.mark.parametrize("discretize", [ssm.discretize_zoh, ssm.discretize_bilinear])
def test_vandermonde_kernel_equals_explicit_powers(discretize):
    A, B = s4.s4d_init("s4d-inv", 6)
    C = torch.randn(3, 6, dtype=torch.cfloat)
    dt = torch.tensor([0.001, 0.01, 0.1])
    A_bar, B_bar = discretize(A.expand(3, 6).cdouble(), B.expand(3, 6).cdouble(), dt.double())
    K = s4.ssm_kernel(A_bar, B_bar, C.cdouble(), 50)
    powers = torch.stack([(C.cdouble() * A_bar ** k * B_bar).sum(-1).real for k in range(50)], -1)
    torch.testing.assert_close(K, powers, rtol=1e-10, atol=1e-10)   # fp64: exp(k log a) vs a^k


@pytest.mark.parametrize("L", [1, 2, 7, 49, 50, 1000])
def test_blocked_kernel_equals_vandermonde_kernel(L):
    torch.manual_seed(0)
    A, B = s4.s4d_init("s4d-legs", 8)
    A_bar, B_bar = ssm.discretize_zoh(A.expand(4, 8), B.expand(4, 8),
                                      torch.tensor([0.001, 0.01, 0.1, 0.5]))
    C = torch.randn(4, 8, dtype=torch.cfloat)
    fast, plain = s4.ssm_kernel_blocked(A_bar, B_bar, C, L), s4.ssm_kernel(A_bar, B_bar, C, L)
    assert fast.shape == (4, L)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_causal_fft_conv_equals_conv1d():
    u, K = torch.randn(2, 3, 40), torch.randn(3, 40)
    # conv1d is a cross-correlation: flip K and left-pad by L - 1 for a causal convolution
    direct = torch.nn.functional.conv1d(torch.nn.functional.pad(u, (39, 0)), K.flip(-1)[:, None],
                                        groups=3)
    torch.testing.assert_close(s4.causal_fft_conv(u, K), direct, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # the FFT stays fp32 under autocast
        torch.testing.assert_close(s4.causal_fft_conv(u, K), direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init", ["s4d-legs", "s4d-lin", "s4d-inv"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_fft_convolution_equals_recurrent_scan(init, discretization):
    torch.manual_seed(0)
    A, B = s4.s4d_init(init, 16)
    layer = s4.S4DLayer(4, 16, A=A, B=B, discretization=discretization)
    u = torch.randn(2, 4, 300)
    # fp32 both ways; |y| is O(5) and sums of 300 terms: 1e-4 leaves room for roundoff only
    torch.testing.assert_close(layer(u), layer._forward(u), rtol=1e-4, atol=1e-4)


def test_cauchy_kernel_equals_dense_powers():
    torch.manual_seed(0)
    layer = s4.S4Layer(3, 8)
    Lambda, P, B, C_tilde, dt = [x.cdouble() if x.is_complex() else x.double() for x in layer.dplr()]
    L = 64
    K = s4.cauchy_dplr_kernel(Lambda, P, B, C_tilde, dt, L)
    A_bar, B_bar = s4.dplr_dense_bilinear(Lambda, P, B, dt)
    eye = torch.eye(8, dtype=A_bar.dtype)
    C = torch.linalg.solve((eye - torch.linalg.matrix_power(A_bar, L)).mT, C_tilde[..., None])[..., 0]
    dense = torch.stack([torch.einsum("hn,hnm,hm->h", C, torch.linalg.matrix_power(A_bar, k), B_bar).real
                         for k in range(L)], -1)
    torch.testing.assert_close(K, dense, rtol=1e-9, atol=1e-9)   # fp64, Woodbury vs dense


@pytest.mark.parametrize("kind", ["s4d", "s4"])
def test_step_mode_equals_convolution_mode(kind):
    torch.manual_seed(0)
    L = 64
    if kind == "s4":
        layer = s4.S4Layer(3, 8)
        recurrent = layer.recurrent(L)
        step = lambda u_t, h: layer.step(u_t, h, recurrent)   # noqa: E731
    else:
        A, B = s4.s4d_init("s4d-legs", 8)
        layer = s4.S4DLayer(3, 8, A=A, B=B, discretization="bilinear")
        step = layer.step
    u = torch.randn(2, 3, L)
    h, ys = layer.initial_state(2), []
    for t in range(L):
        y_t, h = step(u[:, :, t], h)
        ys.append(y_t)
    # fp32; the DPLR path also inverts (I - A_bar^L): 1e-4 absolute on outputs of size O(3)
    torch.testing.assert_close(torch.stack(ys, -1), layer(u), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["s4d", "s4"])
def test_gradients_reach_every_parameter_and_long_inputs_stay_finite(kind):
    torch.manual_seed(0)
    layer = s4.S4Layer(2, 8) if kind == "s4" else s4.S4DLayer(2, 8, *s4.s4d_init("s4d-legs", 8))
    layer(torch.randn(2, 2, 100)).square().sum().backward()
    for name, p in layer.named_parameters():   # A (log real, imag), B (and P), C, D, log_dt
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        y = layer(torch.randn(1, 2, 8192) * 10)
    assert torch.isfinite(y).all()


def test_models_build_and_train_a_step():
    for layer in ("ssm", "s4d", "s4"):
        model = s4.build_model(ssm.SSMConfig.tiny(layer=layer, init="legs" if layer == "s4" else "s4d-lin"))
        logits = model(torch.randint(1, 20, (2, 9)))
        logits.sum().backward()
        assert logits.shape == (2, 3)
