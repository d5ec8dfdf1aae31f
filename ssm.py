"""A basic diagonal state-space model (SSM) text classifier: discretize, then scan in a plain loop.

Continuous-time SSM, one independent copy per channel h = 1..H, complex state x(t) in C^N
(Gu, Goel & Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces" (S4),
arXiv:2111.00396, Eq. 1; the diagonal case: Gu et al. 2022, S4D, arXiv:2206.11893, Sec. 2):
    x'(t) = A x(t) + B u(t),    y(t) = Re(C x(t)) + D u(t),    A = diag(a_1 .. a_N)
Stability: Re(a_n) = -exp(log_A_real) < 0, so every mode decays; dt = exp(log_dt) is clamped.
N complex modes are a real state of size 2N (each mode stands for a conjugate pair; Re() sums it).

Discretization with step dt (S4 Sec. 2.3, Eq. 3; S4D Sec. 3.1), elementwise since A is diagonal:
    zero-order hold  A_bar = exp(dt A),                 B_bar = (A_bar - 1) / A * B
    bilinear         A_bar = (1 + dt A/2) / (1 - dt A/2), B_bar = dt B / (1 - dt A/2)
The recurrence ("scan"), h_{-1} = 0, for t = 0 .. L-1 (S4 Eq. 3):
    h_t = A_bar * h_{t-1} + B_bar u_t,    y_t = Re(C h_t) + D u_t
Unrolled, y = K * u + D u with K_k = Re(C A_bar^k B_bar): s4.py computes K at once and convolves by
FFT; here the loop over t is the readable reference (and the slow "basic SSM" of seed 000).

Classifier (shared with s4.py; the S4 repository's example.py layout, pre-norm):
    x = Embedding(tokens)                                   (B, L, H)
    per block: x = x + Dropout(Mix(Dropout(GELU(SSM(Norm(x))))))   Mix = GLU(Linear(H, 2H)) or GELU(Linear)
    pooled = sum_t mask_t x_t / sum_t mask_t                (B, H) masked mean over real tokens
             (or max_t over real tokens, or both concatenated: (B, 2H); config.pooling)
    logits = Linear(Norm(pooled))                           (B, num_classes)
The SSM is causal and batches are right-padded, so real positions never see a pad token.
Options: bidirectional (a second SSM on the reversed sequence, pads zeroed), word dropout
(training only), zero-initialised mixing layers (each block starts as the identity).

Shapes: B batch, L sequence length (tokens), H channels (d_model), N complex state size per channel.
Data, tokenizers, training and the CLI (`run.py --option ssm | s4 | ssm_compare`): run_ssm.py.
The selective SSM (Mamba, layer "mamba": input-dependent dt, B, C) is in mamba.py.
Tests: tests/test_ssm.py (ZOH/bilinear against closed forms and torch.matrix_exp, scan against an
explicit dense recurrence, gradients reach A, B, C, dt, padding invariance, pooling, word dropout);
tests/test_s4.py checks this scan against the FFT convolution.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# config

@dataclass
class SSMConfig:
    vocab_size: int = 258          # V: token ids 0..V-1 (bytes tokenizer: 256 bytes + pad + bos)
    num_classes: int = 14          # output classes (DBpedia-14)
    d_model: int = 128             # H: channels, one independent SSM per channel
    n_layers: int = 4              # stacked SSM blocks
    d_state: int = 64              # N: complex state size per channel (a real state of size 2N)
    dropout: float = 0.1           # dropout inside blocks and on the embedding
    token_dropout: float = 0.0     # training only: drop this fraction of tokens (pad + unmasked)
    layer: str = "ssm"             # "ssm" loop scan | "s4d" diagonal + FFT | "s4" DPLR + Cauchy + FFT
                                   # | "mamba" selective SSM (mamba.py; N is then a real state size)
    init: str = "random"           # A init: "random" | "s4d-lin" | "s4d-inv" | "s4d-legs" | "legs"
                                   # | "s4d-real" (A = -(1..N), Mamba's and only Mamba's)
    discretization: str = "zoh"    # "zoh" (zero-order hold) | "bilinear" (Tustin)
    dt_min: float = 1e-3           # dt initialised log-uniform in [dt_min, dt_max] (S4 default)
    dt_max: float = 1e-1           # upper end of the dt init range
    mixing: str = "glu"            # channel mixing after the SSM: "glu" | "gelu"
    bidirectional: bool = False    # also run the SSM right-to-left (non-causal; sums both outputs)
    zero_init_branch: bool = False  # zero-init each block's mixing layer: blocks start as identity
    pooling: str = "mean"          # over real tokens: "mean" | "max" | "meanmax" (both, concatenated)
    pad_id: int = 0                # token id of padding (masked out of the pooling)
    expand: int = 2                # mamba: E, inner channels E * d_model (Gu & Dao 2023, Sec. 3.4)
    d_conv: int = 4                # mamba: width of the causal depthwise convolution
    dt_rank: int = 0               # mamba: rank R of the Delta projection (0: ceil(d_model / 16))

    def __post_init__(self):
        choices = {"layer": ("ssm", "s4d", "s4", "mamba"), "discretization": ("zoh", "bilinear"),
                   "mixing": ("glu", "gelu"), "pooling": ("mean", "max", "meanmax"),
                   "init": ("random", "s4d-lin", "s4d-inv", "s4d-legs", "legs", "s4d-real")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"SSMConfig.{field}={getattr(self, field)!r}: use one of {allowed}")
        if (self.layer == "mamba") != (self.init == "s4d-real"):
            raise ValueError(f"SSMConfig layer={self.layer!r}, init={self.init!r}: layer 'mamba' "
                             "takes init 's4d-real' (its only init), and no other layer does")
        for field in ("vocab_size", "num_classes", "d_model", "n_layers", "d_state", "expand",
                      "d_conv"):
            if getattr(self, field) < 1:
                raise ValueError(f"SSMConfig.{field}={getattr(self, field)}: must be >= 1")
        if self.dt_rank < 0:
            raise ValueError(f"SSMConfig.dt_rank={self.dt_rank}: must be >= 0 (0: ceil(d_model / 16))")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"SSMConfig dt_min={self.dt_min}, dt_max={self.dt_max}: "
                             "need 0 < dt_min <= dt_max")
        for field in ("dropout", "token_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"SSMConfig.{field}={getattr(self, field)}: must be in [0, 1)")

    @classmethod
    def tiny(cls, **overrides):
        """A few thousand parameters, for tests."""
        return cls(**{"vocab_size": 20, "num_classes": 3, "d_model": 8, "n_layers": 2,
                      "d_state": 4, "dropout": 0.0, **overrides})


# ----------------------------------------------------------------------------
# the maths: discretization and the recurrent scan

def discretize_zoh(A, B, dt):
    """Zero-order hold: A_bar = exp(dt A), B_bar = (A_bar - 1) / A * B. A, B (H, N) complex; dt (H,)."""
    dtA = dt[:, None] * A                                     # (H, N)
    A_bar = torch.exp(dtA)                                    # (H, N)
    return A_bar, (A_bar - 1) / A * B                         # (H, N), (H, N)


def discretize_bilinear(A, B, dt):
    """Bilinear (Tustin): A_bar = (1 + dt A/2) / (1 - dt A/2), B_bar = dt B / (1 - dt A/2)."""
    half = dt[:, None] * A / 2                                # (H, N)
    A_bar = (1 + half) / (1 - half)                           # (H, N)
    return A_bar, dt[:, None] * B / (1 - half)                # (H, N), (H, N)


DISCRETIZE = {"zoh": discretize_zoh, "bilinear": discretize_bilinear}


def scan(A_bar, B_bar, C, u, h=None):
    """h_t = A_bar h_{t-1} + B_bar u_t, y_t = Re(C h_t), a plain Python loop over t (no D term).

    A_bar, B_bar, C (H, N) complex; u (B, H, L) real; h (B, H, N) initial state (zeros if None).
    Returns y (B, H, L) and the last state h (B, H, N). One small step per token: O(L) sequential
    work, which is why it is slow on parallel hardware (s4.py replaces it with one FFT convolution).
    """
    batch, H, L = u.shape
    if h is None:
        h = torch.zeros(batch, H, A_bar.shape[-1], dtype=A_bar.dtype, device=u.device)  # (B, H, N)
    ys = []
    for t in range(L):
        h = A_bar * h + B_bar * u[:, :, t, None]              # (B, H, N)
        ys.append(torch.einsum("bhn,hn->bh", h, C).real)      # (B, H)
    return torch.stack(ys, dim=-1), h                         # (B, H, L), (B, H, N)


# ----------------------------------------------------------------------------
# the basic SSM layer (seed 000's DiagonalSSM: __init__, _discrete, _forward)

def random_diagonal_init(H, N, generator=None):
    """The "basic" SSM init, no HiPPO structure: Re(a) ~ -U(0.1, 1), Im(a) ~ U(0, pi N), B ~ CN(0, 1)."""
    real = -(0.1 + 0.9 * torch.rand(H, N, generator=generator))                 # (H, N)
    imag = math.pi * N * torch.rand(H, N, generator=generator)                  # (H, N)
    B = torch.randn(H, N, dtype=torch.cfloat, generator=generator)              # (H, N)
    return torch.complex(real, imag), B


class DiagonalSSM(nn.Module):
    """H independent diagonal SSMs of N complex modes: (B, H, L) -> (B, H, L), via the loop scan.

    Complex parameters are stored as real (..., 2) pairs (view_as_real), so optimizers and
    state_dicts see plain float tensors. A = -exp(log_A_real) + i A_imag keeps Re(A) < 0.
    """

    def __init__(self, H, N, A=None, B=None, discretization="zoh", dt_min=1e-3, dt_max=1e-1,
                 dt_clamp=(1e-4, 1.0)):
        super().__init__()
        if A is None:
            A, B_init = random_diagonal_init(H, N)
            B = B_init if B is None else B
        A = A.to(torch.cfloat).expand(H, N)
        B = (torch.ones(H, N, dtype=torch.cfloat) if B is None else B.to(torch.cfloat)).expand(H, N)
        self.H, self.N, self.discretization, self.dt_clamp = H, N, discretization, dt_clamp
        log_dt = math.log(dt_min) + torch.rand(H) * (math.log(dt_max) - math.log(dt_min))  # (H,)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.log(-A.real.clamp(max=-1e-4)).clone())  # (H, N)
        self.A_imag = nn.Parameter(A.imag.clone())                                   # (H, N)
        self.B = nn.Parameter(torch.view_as_real(B.clone()))                         # (H, N, 2)
        C = torch.randn(H, N, dtype=torch.cfloat) * math.sqrt(0.5)  # CN(0, 1/2): Re(C h) ~ unit scale
        self.C = nn.Parameter(torch.view_as_real(C))                                 # (H, N, 2)
        self.D = nn.Parameter(torch.randn(H))                                        # (H,)

    def continuous(self):
        """A, B, C (H, N) complex and dt (H,), with the stability guards applied (fp32)."""
        A = torch.complex(-torch.exp(self.log_A_real.float()).clamp(min=1e-4),
                          self.A_imag.float())                                        # (H, N)
        dt = torch.exp(self.log_dt.float()).clamp(*self.dt_clamp)                     # (H,)
        return A, torch.view_as_complex(self.B.float()), torch.view_as_complex(self.C.float()), dt

    def _discrete(self):
        """A_bar, B_bar, C (H, N) complex and D (H,): ZOH or bilinear (see the module docstring)."""
        A, B, C, dt = self.continuous()
        A_bar, B_bar = DISCRETIZE[self.discretization](A, B, dt)
        return A_bar, B_bar, C, self.D.float()

    def _forward(self, u):
        """The recurrent scan: y_t = Re(C h_t) + D u_t, h_t = A_bar h_{t-1} + B_bar u_t. u (B, H, L)."""
        A_bar, B_bar, C, D = self._discrete()
        y, _ = scan(A_bar, B_bar, C, u.float())               # (B, H, L)
        return (y + D[:, None] * u.float()).to(u.dtype)       # (B, H, L)

    def forward(self, u):
        return self._forward(u)

    def step(self, u_t, h):
        """One recurrent step for inference: u_t (B, H), h (B, H, N) -> y_t (B, H), new h."""
        A_bar, B_bar, C, D = self._discrete()
        h = A_bar * h + B_bar * u_t[..., None]                # (B, H, N)
        return torch.einsum("bhn,hn->bh", h, C).real + D * u_t, h

    def initial_state(self, batch):
        return torch.zeros(batch, self.H, self.N, dtype=torch.cfloat, device=self.D.device)


# ----------------------------------------------------------------------------
# the classifier shared by ssm.py and s4.py

class SSMBlock(nn.Module):
    """Pre-norm residual block: x + Dropout(Mix(Dropout(GELU(SSM(Norm(x)))))). x (B, L, H)."""

    def __init__(self, config):
        super().__init__()
        H = config.d_model
        self.norm = nn.LayerNorm(H)
        self.layer = self.make_layer(config)
        self.layer_reverse = self.make_layer(config) if config.bidirectional else None
        self.mixing = config.mixing
        self.mix = nn.Linear(H, 2 * H if config.mixing == "glu" else H)
        if config.zero_init_branch:   # block starts as identity (Fixup, arXiv:1901.09321, Sec. 3)
            nn.init.zeros_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)
        self.dropout = nn.Dropout(config.dropout)

    def make_layer(self, config):
        """The sequence layer (B, H, L) -> (B, H, L); s4.FFTSSMBlock overrides this. config.init
        "random" draws A here; an S4D init (--ssm_init s4d-lin ...) takes s4.s4d_init's A and B
        (imported at call time: s4.py builds on this file)."""
        A = B = None
        if config.init != "random":
            import s4
            A, B = s4.s4d_init(config.init, config.d_state)
        return DiagonalSSM(config.d_model, config.d_state, A=A, B=B,
                           discretization=config.discretization, dt_min=config.dt_min,
                           dt_max=config.dt_max)

    def forward(self, x, mask=None):
        u = self.norm(x).transpose(1, 2)                      # (B, H, L)
        if mask is not None:
            u = u * mask[:, None, :].to(u.dtype)              # pads -> 0 (matters only right-to-left)
        y = self.layer(u)                                     # (B, H, L)
        if self.layer_reverse is not None:
            y = y + self.layer_reverse(u.flip(-1)).flip(-1)   # (B, H, L)
        y = self.dropout(F.gelu(y)).transpose(1, 2)           # (B, L, H)
        y = self.mix(y)                                       # (B, L, 2H) or (B, L, H)
        y = F.glu(y, dim=-1) if self.mixing == "glu" else F.gelu(y)   # (B, L, H)
        return x + self.dropout(y)                            # (B, L, H)


class SSMClassifier(nn.Module):
    """Embedding -> n_layers blocks -> masked mean pooling -> linear. tokens (B, L) -> logits (B, C)."""

    def __init__(self, config, block_cls=SSMBlock):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([block_cls(config) for _ in range(config.n_layers)])
        pooled_dim = 2 * config.d_model if config.pooling == "meanmax" else config.d_model
        self.norm = nn.LayerNorm(pooled_dim)
        self.head = nn.Linear(pooled_dim, config.num_classes)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens, attention_mask=None):
        """tokens (B, L) long; attention_mask (B, L) 1 real / 0 pad (default: tokens != pad_id)."""
        if attention_mask is None:
            attention_mask = (tokens != self.config.pad_id).long()    # (B, L)
        if self.training and self.config.token_dropout > 0:
            tokens, attention_mask = self.drop_tokens(tokens, attention_mask)
        mask = attention_mask.float()                                 # (B, L)
        x = self.dropout(self.embedding(tokens))                      # (B, L, H)
        for block in self.blocks:
            x = block(x, mask if self.config.bidirectional else None)  # (B, L, H)
        return self.head(self.norm(self.pool(x, mask)))               # (B, num_classes)

    def pool(self, x, mask):
        """x (B, L, H), mask (B, L) 1 real / 0 pad -> (B, H), or (B, 2H) for "meanmax"."""
        mean = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, H)
        if self.config.pooling == "mean":
            return mean
        top = x.masked_fill(mask[..., None] == 0, float("-inf")).amax(1)            # (B, H)
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)  # an all-pad row -> 0
        return top if self.config.pooling == "max" else torch.cat([mean, top], dim=-1)

    def drop_tokens(self, tokens, attention_mask):
        """Word dropout (Iyyer et al. 2015, ACL, Sec. 3.2): random tokens -> pad, out of the mean."""
        drop = torch.rand(tokens.shape, device=tokens.device) < self.config.token_dropout  # (B, L)
        drop[:, 0] = False                                    # keep bos: no row is emptied
        return tokens.masked_fill(drop, self.config.pad_id), attention_mask * (~drop).long()
