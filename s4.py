"""S4: the SSM of ssm.py made fast and stable: HiPPO init, a convolution kernel, FFT convolution.

1. HiPPO-LegS (Gu et al. 2020, arXiv:2008.07669, Sec. 3 / Appendix D.3), the A that makes the
   state an optimal Legendre summary of the past:
       A_nk = -sqrt(2n+1) sqrt(2k+1) if n > k,  -(n+1) if n = k,  0 if n < k;   B_n = sqrt(2n+1)
2. NPLR / DPLR form (S4, Gu, Goel & Re 2022, arXiv:2111.00396, Sec. 3.3, Theorem 1):
       A = V (Lambda - P Q^*) V^*,  P = Q = V^* sqrt(n + 1/2)   (A + P P^T is normal: -1/2 I + skew)
   Diagonal inits (S4D, Gu et al. 2022, arXiv:2206.11893, Sec. 4), n = 0..N-1 complex modes:
       S4D-LegS: the Lambda of the NPLR form above (modes with Im > 0), B = V^* B
       S4D-Lin:  a_n = -1/2 + i pi n          S4D-Inv: a_n = -1/2 + i (2N/pi) (2N/(2n+1) - 1)
3. The SSM convolution kernel (S4 Eq. 4-5): unrolling h_t = A_bar h_{t-1} + B_bar u_t gives
       y_t = sum_k K_k u_{t-k} + D u_t,   K_k = Re(C A_bar^k B_bar),  k = 0..L-1
   Diagonal A: K = Re((C * B_bar) @ Vandermonde(A_bar)), Vandermonde[n, k] = A_bar_n^k (S4D Eq. 5);
     the fast path splits k = a S + b (S ~ sqrt L) so no (H, N, L) matrix is built (ssm_kernel_blocked).
   DPLR A (full S4): the truncated generating function at the roots of unity omega_k = e^{-2 pi i k/L},
       K^(omega) = C~ (I - A_bar omega)^{-1} B_bar,   C~ = C (I - A_bar^L)  (C~ is what S4 learns)
     = 2/(1+omega) C~ [g(omega) - A]^{-1} B,          g(omega) = (2/dt) (1-omega)/(1+omega) (bilinear)
     and Woodbury turns [g - Lambda + P Q^*]^{-1} into Cauchy sums k_ab = sum_n a_n b_n / (g - Lambda_n):
       K^ = 2/(1+omega) [k_{C~,B} - k_{C~,P} (1 + k_{Q*,P})^{-1} k_{Q*,B}],  K = Re(iFFT(K^))  (S4 Alg. 1)
4. Causal convolution by FFT: y = irfft(rfft(u, 2L) * rfft(K, 2L))[:L] (zero-padding to 2L makes the
   circular convolution causal), O(L log L) instead of the scan's L sequential steps, in fp32.
5. Recurrent `step` mode (inference): h = A_bar h + B_bar u_t, y = Re(C h) + D u_t; for DPLR with
   dense A_bar (N x N) and C = C~ (I - A_bar^L)^{-1}.

Shapes: B batch, L length, H channels, N complex state size. The classifier is ssm.py's
(build_model puts these layers, or mamba.py's block, in it); data, training, the baseline, timing
and the CLI (`run.py --option ssm | s4 | ssm_compare`) are in run_ssm.py.
Tests: tests/test_s4.py (FFT conv == ssm.scan for ZOH and bilinear; Vandermonde kernel == explicit
powers C A_bar^k B_bar; HiPPO-LegS == closed form and == its NPLR form; Cauchy kernel == dense powers;
step mode == convolution mode; gradients; no NaN at L = 8192; every model builds and backprops).
"""
import math

import torch
import torch.nn as nn

import mamba
import ssm


# ----------------------------------------------------------------------------
# HiPPO-LegS, its NPLR form, and the diagonal inits

def hippo_legs(N):
    """HiPPO-LegS A (N, N) and B (N,) in float64, built as -(tril(p p^T) - diag(n)), p_n = sqrt(2n+1)."""
    p = torch.sqrt(1 + 2 * torch.arange(N, dtype=torch.float64))        # (N,)
    A = torch.tril(p[:, None] * p[None, :]) - torch.diag(torch.arange(N, dtype=torch.float64))
    return -A, p.clone()                                                  # (N, N), (N,)


def nplr_legs(N):
    """Lambda (N,), P (N,), B (N,) complex128 and V (N, N) with A = V (diag(Lambda) - P P^*) V^*."""
    A, B = hippo_legs(N)
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)           # (N,)
    S = A + p[:, None] * p[None, :]                  # normal part: -1/2 I + skew-symmetric
    S_skew = S - torch.diag(torch.diagonal(S))       # (N, N) skew-symmetric
    imag, V = torch.linalg.eigh(S_skew.to(torch.complex128) * -1j)  # -i * skew is Hermitian
    Lambda = torch.diagonal(S).mean() + 1j * imag                    # (N,) all real parts -1/2
    Vh = V.conj().T
    return Lambda, Vh @ p.to(V.dtype), Vh @ B.to(V.dtype), V


def s4d_init(kind, N):
    """Diagonal A (N,) and B (N,) complex64 for S4D-LegS / -Lin / -Inv (N complex modes)."""
    n = torch.arange(N, dtype=torch.float64)
    if kind == "s4d-lin":
        A, B = -0.5 + 1j * math.pi * n, torch.ones(N)
    elif kind == "s4d-inv":
        A, B = -0.5 + 1j * (2 * N / math.pi) * (2 * N / (2 * n + 1) - 1), torch.ones(N)
    elif kind in ("s4d-legs", "legs"):
        Lambda, _, B, _ = nplr_legs(2 * N)           # 2N real modes = N conjugate pairs
        keep = torch.argsort(Lambda.imag, descending=True)[:N]
        A, B = Lambda[keep], B[keep]
    else:
        raise ValueError(f"init {kind!r}: use s4d-lin, s4d-inv or s4d-legs for a diagonal S4")
    return A.to(torch.cfloat), B.to(torch.cfloat)


# ----------------------------------------------------------------------------
# the kernel and the FFT convolution

def ssm_kernel(A_bar, B_bar, C, L):
    """K_k = Re(sum_n C_n B_bar_n A_bar_n^k), k < L, via a Vandermonde product. (H, N) -> (H, L)."""
    k = torch.arange(L, device=A_bar.device, dtype=A_bar.real.dtype)            # (L,)
    vandermonde = torch.exp(torch.log(A_bar)[..., None] * k)                     # (H, N, L)
    return torch.einsum("hn,hnl->hl", C * B_bar, vandermonde).real               # (H, L)


def ssm_kernel_blocked(A_bar, B_bar, C, L):
    """ssm_kernel without the (H, N, L) Vandermonde matrix: the fast path S4DLayer uses.

    Write k = a S + b with S = ceil(sqrt(L)), 0 <= b < S. Then A_bar^k = A_bar^(aS) A_bar^b, so
        K[a S + b] = Re(sum_n (C B_bar A_bar^(aS))_n (A_bar^b)_n)
    is one complex matrix product per channel, (L/S, N) @ (N, S): two exps on (H, N, sqrt L)
    instead of one on (H, N, L) (complex exp is what the plain version spends its time on).
    """
    S = math.isqrt(L - 1) + 1                                                    # S * S >= L
    n_blocks = -(-L // S)                                                        # ceil(L / S)
    log_A = torch.log(A_bar)[..., None]                                          # (H, N, 1)
    b = torch.arange(S, device=A_bar.device, dtype=A_bar.real.dtype)             # (S,)
    a = torch.arange(n_blocks, device=A_bar.device, dtype=A_bar.real.dtype) * S  # (L/S,)
    inner = torch.exp(log_A * b)                                                 # (H, N, S)
    outer = (C * B_bar)[..., None] * torch.exp(log_A * a)                        # (H, N, L/S)
    K = torch.bmm(outer.transpose(1, 2), inner).real                             # (H, L/S, S)
    return K.reshape(K.shape[0], -1)[:, :L]                                      # (H, L)


def causal_fft_conv(u, K):
    """y_t = sum_{k<=t} K_k u_{t-k}: u (B, H, L), K (H, L) -> (B, H, L); fp32 even under autocast.

    Faster than the scan: two rfft of length 2L and one irfft, O(L log L) and fully parallel.
    """
    L = u.shape[-1]
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_f = torch.fft.rfft(u.float(), n=2 * L)                                 # (B, H, L+1)
        K_f = torch.fft.rfft(K.float(), n=2 * L)                                 # (H, L+1)
        y = torch.fft.irfft(u_f * K_f, n=2 * L)[..., :L]                         # (B, H, L)
    return y.to(u.dtype)


def cauchy_dplr_kernel(Lambda, P, B, C_tilde, dt, L):
    """The full S4 kernel (H, L) of A = diag(Lambda) - P P^* (bilinear), Woodbury + Cauchy sums.

    Lambda, P, B, C_tilde (H, N) complex; dt (H,). See item 3 of the module docstring.
    """
    k = torch.arange(L, device=Lambda.device, dtype=Lambda.real.dtype)
    omega = torch.exp(-2j * math.pi * k / L)                                     # (L,)
    g = (2.0 / dt)[:, None] * ((1 - omega) / (1 + omega))                        # (H, L)
    cauchy = 1.0 / (g[:, None, :] - Lambda[..., None])                           # (H, N, L)
    # the four Cauchy sums k_ab[h, l] = sum_n a_n b_n cauchy[h, n, l] as one batched product
    weights = torch.stack([C_tilde * B, C_tilde * P, P.conj() * B, P.conj() * P], dim=1)  # (H, 4, N)
    k_cb, k_cp, k_pb, k_pp = torch.bmm(weights, cauchy).unbind(1)                 # 4 x (H, L)
    K_hat = 2.0 / (1 + omega) * (k_cb - k_cp * k_pb / (1 + k_pp))                # (H, L)
    return torch.fft.ifft(K_hat, n=L).real                                       # (H, L)


def dplr_dense_bilinear(Lambda, P, B, dt):
    """Dense A_bar (H, N, N), B_bar (H, N) of A = diag(Lambda) - P P^*, bilinear (for step mode)."""
    N = Lambda.shape[-1]
    A = torch.diag_embed(Lambda) - P[..., :, None] * P.conj()[..., None, :]      # (H, N, N)
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    half = dt[:, None, None] / 2 * A                                             # (H, N, N)
    A_bar = torch.linalg.solve(eye - half, eye + half)                           # (H, N, N)
    B_bar = torch.linalg.solve(eye - half, dt[:, None, None] * B[..., None])[..., 0]  # (H, N)
    return A_bar, B_bar


# ----------------------------------------------------------------------------
# layers

class S4DLayer(ssm.DiagonalSSM):
    """Diagonal S4 (S4D): DiagonalSSM's parameters and _discrete, forward = kernel + FFT conv.

    Same numbers as DiagonalSSM._forward (tests/test_s4.py) at a fraction of the time; `step`
    (inherited) is the recurrent mode.
    """

    def forward(self, u):
        A_bar, B_bar, C, D = self._discrete()
        K = ssm_kernel_blocked(A_bar, B_bar, C, u.shape[-1])          # (H, L)
        return causal_fft_conv(u, K) + (D[:, None] * u.float()).to(u.dtype)   # (B, H, L)


class S4Layer(nn.Module):
    """Full S4: DPLR A = diag(Lambda) - P P^* from HiPPO-LegS, bilinear, Cauchy kernel, FFT conv.

    Learns Lambda (Re < 0 via log), P, B, C~ (S4's C tilde), D, dt per channel. C~ ties the kernel to
    the training length: step mode converts C = C~ (I - A_bar^L)^{-1} for a given L.
    """

    def __init__(self, H, N, dt_min=1e-3, dt_max=1e-1, dt_clamp=(1e-4, 1.0)):
        super().__init__()
        Lambda, P, B, _ = nplr_legs(N)
        self.H, self.N, self.dt_clamp = H, N, dt_clamp
        log_dt = math.log(dt_min) + torch.rand(H) * (math.log(dt_max) - math.log(dt_min))
        self.log_dt = nn.Parameter(log_dt)                                          # (H,)
        self.log_Lambda_real = nn.Parameter(torch.log(-Lambda.real).float().repeat(H, 1))  # (H, N)
        self.Lambda_imag = nn.Parameter(Lambda.imag.float().repeat(H, 1))           # (H, N)
        self.P = nn.Parameter(torch.view_as_real(P.to(torch.cfloat)).repeat(H, 1, 1))   # (H, N, 2)
        self.B = nn.Parameter(torch.view_as_real(B.to(torch.cfloat)).repeat(H, 1, 1))   # (H, N, 2)
        C = torch.randn(H, N, dtype=torch.cfloat) * math.sqrt(0.5)
        self.C_tilde = nn.Parameter(torch.view_as_real(C))                          # (H, N, 2)
        self.D = nn.Parameter(torch.randn(H))                                       # (H,)

    def dplr(self):
        """Lambda, P, B, C~ (H, N) complex and dt (H,), with Re(Lambda) < 0 and dt clamped."""
        Lambda = torch.complex(-torch.exp(self.log_Lambda_real.float()).clamp(min=1e-4),
                               self.Lambda_imag.float())
        as_complex = [torch.view_as_complex(p.float()) for p in (self.P, self.B, self.C_tilde)]
        return (Lambda, *as_complex, torch.exp(self.log_dt.float()).clamp(*self.dt_clamp))

    def forward(self, u):
        Lambda, P, B, C_tilde, dt = self.dplr()
        K = cauchy_dplr_kernel(Lambda, P, B, C_tilde, dt, u.shape[-1])    # (H, L)
        return causal_fft_conv(u, K) + (self.D[:, None] * u.float()).to(u.dtype)   # (B, H, L)

    def recurrent(self, L):
        """A_bar (H, N, N), B_bar (H, N), C (H, N) of the recurrence equal to forward() on length L."""
        Lambda, P, B, C_tilde, dt = self.dplr()
        A_bar, B_bar = dplr_dense_bilinear(Lambda, P, B, dt)
        eye = torch.eye(self.N, dtype=A_bar.dtype, device=A_bar.device)
        # C (I - A_bar^L) = C~  <=>  (I - A_bar^L)^T C^T = C~^T
        C = torch.linalg.solve((eye - torch.linalg.matrix_power(A_bar, L)).transpose(-1, -2),
                               C_tilde[..., None])[..., 0]                          # (H, N)
        return A_bar, B_bar, C

    def step(self, u_t, h, recurrent):
        """One step: u_t (B, H), h (B, H, N), recurrent = self.recurrent(L) -> y_t (B, H), h."""
        A_bar, B_bar, C = recurrent
        h = torch.einsum("hnm,bhm->bhn", A_bar, h) + B_bar * u_t[..., None]    # (B, H, N)
        return torch.einsum("bhn,hn->bh", h, C).real + self.D * u_t, h

    def initial_state(self, batch):
        return torch.zeros(batch, self.H, self.N, dtype=torch.cfloat, device=self.D.device)


class FFTSSMBlock(ssm.SSMBlock):
    """Seed 000's FFTSSMBlock: ssm.SSMBlock with an S4D (diagonal) or S4 (DPLR) layer inside."""

    def make_layer(self, config):
        if config.layer == "s4":
            return S4Layer(config.d_model, config.d_state, config.dt_min, config.dt_max)
        A, B = s4d_init(config.init, config.d_state)
        return S4DLayer(config.d_model, config.d_state, A=A, B=B,
                        discretization=config.discretization,
                        dt_min=config.dt_min, dt_max=config.dt_max)


def build_model(config):
    """The classifier for config.layer: "ssm" (loop scan), "s4d" or "s4" (FFT), "mamba" (mamba.py)."""
    blocks = {"ssm": ssm.SSMBlock, "mamba": mamba.MambaBlock}
    return ssm.SSMClassifier(config, blocks.get(config.layer, FFTSSMBlock))

