"""Mamba: the selective state-space layer (S6), its scan as a loop and as a chunked parallel scan.

S4 (s4.py) keeps A, B, C and dt fixed over the sequence (linear time-invariant), which is what
lets it precompute one kernel K and convolve by FFT, and also what stops it from choosing, token by
token, what to keep. Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv:2312.00752) makes dt, B and C functions of the input (selection, Sec. 3.2,
Algorithm 2), one real diagonal SSM of N states per channel h = 1..H:
    B_t = Linear_N(x_t),  C_t = Linear_N(x_t)                                 (B, L, N) each
    dt_t = softplus(W_up (W_down x_t) + b)      W_down (R, H), W_up (H, R)    (B, H, L)
(Sec. 3.6 "Parameterization of Delta": s_Delta = Linear_H(Linear_R(x)), a rank-R projection, here
R = ceil(d_model / 16) as the reference code; b is the Delta bias, tau_Delta = softplus.)
Discretization, elementwise since A = diag(a_1 .. a_N) is diagonal (Sec. 2, Eq. 4):
    A_bar_t = exp(dt_t A)      zero-order hold, as in the paper
    B_bar_t = dt_t B_t         Euler. The paper's Eq. 4 writes ZOH's (dt A)^-1 (exp(dt A) - I) dt B;
                               the authors' reference code simplifies it to dt B (equal to first
                               order in dt A, "without affecting empirical performance",
                               state-spaces/mamba issue 114), and so do we and transformers
The recurrence, h_{-1} = 0 (Sec. 2, Eq. 2a-2b; Algorithm 2):
    h_t = A_bar_t * h_{t-1} + B_bar_t x_t      (B, H, N)
    y_t = C_t . h_t + D x_t                    (B, H)
Since A_bar_t depends on t there is no single kernel K: the FFT convolution of S4 is gone, and the
recurrence must be scanned. Two scans, tested equal:
  selective_scan_reference: the loop over t, the readable definition (L sequential steps).
  selective_scan_chunked: the three-phase blocked scan (Blelloch 1990, "Prefix Sums and Their
    Applications", CMU-CS-90-190), chunks of T ~ sqrt(L) steps. With the log decays
    a_t = dt_t A <= 0 and their within-chunk cumulative sums s_t = sum_{k<=t in chunk} a_k:
      1. every chunk, in parallel, runs the recurrence from a zero state: local states g_t
      2. across chunks, the state entering chunk c+1: h_in[c+1] = exp(s_last[c]) h_in[c] + g_last[c]
      3. fix-up, all positions at once: h_t = g_t + exp(s_t) h_in[chunk of t]
    2 sqrt(L) sequential steps instead of L. Every exp has an argument <= 0, so nothing overflows
    (the "exp(s_t) sum_k exp(-s_k) ..." cumulative-sum shortcut would, once s_t < -88 in fp32).
  (Mamba's CUDA kernel, Sec. 3.3.2, fuses the same scan into SRAM; we stay in plain PyTorch.)

Mamba mixer (Sec. 3.4, Figure 3; the reference code's names, so weights map 1:1 to transformers):
    x, z = split(in_proj(u))               2 x (B, H, L),  H = E * dim inner channels (E: expand)
    x = SiLU(causal depthwise conv1d(x))   width d_conv, left padding d_conv - 1
    y = S6(x) * SiLU(z)                    the gate z
    out = out_proj(y)                      (B, L, dim)
Initialization (Sec. 3.6): S4D-Real A = -(1, 2, .., N) per channel (stored as A_log = log(-A), so
A < 0 always); D = 1; the Delta bias b = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] =
[1e-3, 1e-1] (the paper's range), so that softplus(b) starts in that range.
Block (the classifier of ssm.py keeps its embedding, pooling and head): x + Dropout(Mixer(Norm(x)))
- the Mamba block replaces both the SSM and the GLU mixing layer, as in the paper. Bidirectional:
a second mixer on the reversed sequence, outputs summed (as ssm.SSMBlock does for S4); pads are
zeroed at the mixer's input and after its convolution (as transformers does), so right padding,
even read right to left, leaves the real positions unchanged.

Shapes: B batch, L length, dim = d_model, H = E * d_model inner channels, N real state size per
channel, R the rank of the Delta projection. Scans take x, dt (B, H, L), A (H, N), B_t, C_t
(B, L, N), D (H,), h (B, H, N). The CLI is run_ssm.py (`run.py --option ssm --layer mamba`).
Tests: tests/test_mamba.py (the chunked scan == the loop, values and gradients, lengths not
divisible by the chunk; the loop == an explicit float64 unrolled sum; the mixer == transformers'
MambaMixer slow path with the same weights, outputs and gradients; padding invariance; init).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# the maths: Delta's parameterization, discretization, the two scans

def inverse_softplus(y):
    """x with softplus(x) = log(1 + e^x) = y, for y > 0: x = log(e^y - 1) = y + log(1 - e^-y)."""
    return y + torch.log(-torch.expm1(-y))


def discretize_selective(A, B_t, dt_t):
    """ZOH for A, Euler for B: A_bar = exp(dt A), B_bar = dt B. A (H, N), B_t (B, N), dt_t (B, H).

    Returns A_bar, B_bar (B, H, N): the input-dependent pair of step t.
    """
    A_bar = torch.exp(dt_t[..., None] * A)                    # (B, H, N)
    return A_bar, dt_t[..., None] * B_t[:, None, :]           # (B, H, N), (B, H, N)


def selective_scan_reference(x, dt, A, B, C, D=None, h=None):
    """h_t = A_bar_t h_{t-1} + B_bar_t x_t, y_t = C_t . h_t + D x_t: the loop over t.

    x, dt (B, H, L); A (H, N); B, C (B, L, N); D (H,) or None; h (B, H, N) initial state (zeros
    if None). Returns y (B, H, L) and the last state h (B, H, N).
    """
    batch, H, L = x.shape
    if h is None:
        h = x.new_zeros(batch, H, A.shape[-1])                # (B, H, N)
    ys = []
    # unbind, not x[..., t]: one backward stack instead of a zero-filled gradient per step
    for x_t, dt_t, B_t, C_t in zip(x.unbind(-1), dt.unbind(-1), B.unbind(1), C.unbind(1)):
        A_bar, B_bar = discretize_selective(A, B_t, dt_t)     # (B, H, N) each
        h = A_bar * h + B_bar * x_t[..., None]                # (B, H, N)
        ys.append(torch.einsum("bhn,bn->bh", h, C_t))         # (B, H)
    y = torch.stack(ys, dim=-1)                               # (B, H, L)
    return (y if D is None else y + D[:, None] * x), h


def selective_scan_chunked(x, dt, A, B, C, D=None, h=None, chunk=None):
    """selective_scan_reference's numbers by the three-phase blocked scan (module docstring).

    chunk: T steps per chunk (default ceil(sqrt(L)), which minimises the T + L/T sequential steps).
    Faster than the loop: 2 sqrt(L) Python steps, each on L/T positions at once, instead of L.
    The sequence is right-padded to a multiple of T with dt = 0 and x = 0: A_bar = 1, B_bar x = 0,
    so the padded steps leave the state as it is (the last state is still h_{L-1}).
    """
    batch, H, L = x.shape
    N = A.shape[-1]
    T = chunk or math.isqrt(L - 1) + 1
    pad = -L % T
    x, dt = F.pad(x, (0, pad)), F.pad(dt, (0, pad))                       # (B, H, L')
    B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))             # (B, L', N)
    n = (L + pad) // T
    log_A_bar = (dt[..., None] * A[:, None, :]).view(batch, H, n, T, N)   # (B, H, n, T, N), <= 0
    Bx = ((dt * x)[..., None] * B[:, None]).view(batch, H, n, T, N)       # (B, H, n, T, N)
    # 1. the recurrence inside every chunk at once, from a zero state (unbind: see the loop)
    g, local = x.new_zeros(batch, H, n, N), []
    for A_bar_t, Bx_t in zip(torch.exp(log_A_bar).unbind(3), Bx.unbind(3)):
        g = A_bar_t * g + Bx_t                                            # (B, H, n, N)
        local.append(g)
    local = torch.stack(local, dim=3)                                     # (B, H, n, T, N)
    # 2. across chunks: the state entering each chunk; a chunk's decay is exp(sum of its a_t)
    s = torch.cumsum(log_A_bar, dim=3)                                    # (B, H, n, T, N)
    h = x.new_zeros(batch, H, N) if h is None else h                      # (B, H, N)
    entering = []
    for decay, g_last in zip(torch.exp(s[:, :, :, -1]).unbind(2), local[:, :, :, -1].unbind(2)):
        entering.append(h)
        h = decay * h + g_last                                            # (B, H, N)
    entering = torch.stack(entering, dim=2)                               # (B, H, n, N)
    # 3. fix-up: every state is its local state plus the decayed entering state
    states = local + torch.exp(s) * entering[:, :, :, None]               # (B, H, n, T, N)
    y = torch.einsum("bhctn,bctn->bhct", states, C.view(batch, n, T, N))  # (B, H, n, T)
    y = y.reshape(batch, H, n * T)[..., :L]                               # (B, H, L)
    return (y if D is None else y + D[:, None] * x[..., :L]), h


SCANS = {"reference": selective_scan_reference, "chunked": selective_scan_chunked}


# ----------------------------------------------------------------------------
# the Mamba mixer and block

class MambaMixer(nn.Module):
    """The Mamba layer (Sec. 3.4, Figure 3): (B, L, dim) -> (B, L, dim); names as transformers'.

    scan: "chunked" (the fast path) or "reference" (the loop); both give the same numbers.
    """

    def __init__(self, dim, N=16, expand=2, d_conv=4, dt_rank=0, dt_min=1e-3, dt_max=1e-1,
                 dt_floor=1e-4, scan="chunked"):
        super().__init__()
        H, R = expand * dim, dt_rank or math.ceil(dim / 16)
        self.H, self.N, self.R, self.scan = H, N, R, scan
        self.in_proj = nn.Linear(dim, 2 * H, bias=False)
        self.conv1d = nn.Conv1d(H, H, d_conv, groups=H, padding=d_conv - 1)   # depthwise
        self.x_proj = nn.Linear(H, R + 2 * N, bias=False)     # -> dt (rank R), B_t, C_t
        self.dt_proj = nn.Linear(R, H)                        # bias = the Delta bias b
        self.out_proj = nn.Linear(H, dim, bias=False)
        with torch.no_grad():   # Sec. 3.6 and the reference code's dt_init="random"
            nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
            log_dt = math.log(dt_min) + torch.rand(H) * (math.log(dt_max) - math.log(dt_min))
            self.dt_proj.bias.copy_(inverse_softplus(torch.exp(log_dt).clamp(min=dt_floor)))
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(H, 1)        # S4D-Real: -A
        self.A_log = nn.Parameter(torch.log(A))                             # (H, N)
        self.D = nn.Parameter(torch.ones(H))                                # (H,)

    def forward(self, u, mask=None):
        """u (B, L, dim); mask (B, L) 1 real / 0 pad, or None (nothing masked)."""
        L = u.shape[1]
        if mask is not None:
            u = u * mask[..., None].to(u.dtype)
        x, z = self.in_proj(u).transpose(1, 2).chunk(2, dim=1)          # 2 x (B, H, L)
        x = F.silu(self.conv1d(x)[..., :L])                             # (B, H, L) causal
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)                        # pads -> 0 before the scan
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.R, self.N, self.N], dim=-1)
        dt = F.softplus(self.dt_proj(dt)).transpose(1, 2)               # (B, H, L)
        with torch.autocast(device_type=u.device.type, enabled=False):  # the scan in fp32
            A = -torch.exp(self.A_log.float())                          # (H, N)
            y, _ = SCANS[self.scan](x.float(), dt.float(), A, B.float(), C.float(), self.D.float())
        y = y * F.silu(z.float())                                       # (B, H, L) gate
        return self.out_proj(y.to(u.dtype).transpose(1, 2))             # (B, L, dim)


class MambaBlock(nn.Module):
    """Pre-norm residual around the mixer: x + Dropout(Mixer(Norm(x))) (+ a right-to-left mixer).

    Takes an ssm.SSMConfig (layer "mamba"); same interface as ssm.SSMBlock: x (B, L, dim), mask.
    """

    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.mixer = self.make_mixer(config)
        self.mixer_reverse = self.make_mixer(config) if config.bidirectional else None
        self.dropout = nn.Dropout(config.dropout)
        if config.zero_init_branch:   # block starts as identity (Fixup, arXiv:1901.09321, Sec. 3)
            for mixer in (self.mixer, self.mixer_reverse):
                if mixer is not None:
                    nn.init.zeros_(mixer.out_proj.weight)

    @staticmethod
    def make_mixer(config):
        return MambaMixer(config.d_model, config.d_state, config.expand, config.d_conv,
                          config.dt_rank, config.dt_min, config.dt_max)

    def forward(self, x, mask=None):
        u = self.norm(x)                                                # (B, L, dim)
        y = self.mixer(u, mask)                                         # (B, L, dim)
        if self.mixer_reverse is not None:
            back = None if mask is None else mask.flip(1)
            y = y + self.mixer_reverse(u.flip(1), back).flip(1)         # (B, L, dim)
        return x + self.dropout(y)                                      # (B, L, dim)
