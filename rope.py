"""Rotary position embeddings (RoPE) in Meta's interleaved-pairs and Hugging Face's half-split layouts.

RoPE rotates each 2-D pair of a query/key head vector by an angle proportional to its position, so
the dot product q_m . k_n depends only on the offset m - n (Su et al. 2021, "RoFormer", arXiv
2104.09864, Section 3.4.2, equations 13-15):

    theta_i = theta^(-2i / head_dim),            i = 0 .. head_dim/2 - 1   (theta = rope_theta)
    angle(m, i) = m * theta_i                    (m = position of the token)
    (x_a, x_b) -> (x_a cos(angle) - x_b sin(angle),  x_a sin(angle) + x_b cos(angle))

    As complex numbers (Meta's formulation): z_i = x_a + j x_b,  z_i -> z_i * exp(j angle(m, i)).

Which two coordinates form pair i is a layout choice that must match the checkpoint:
    interleaved (Meta, llama2.c, GGUF):  pair i = (x[2i], x[2i+1])
    half-split  (Hugging Face):          pair i = (x[i], x[i + head_dim/2]),  i.e. rotate_half
Both compute the same attention scores once the rows of wq/wk are permuted inside each head
(permute_interleaved_to_half / permute_half_to_interleaved, the `permute` of transformers'
convert_llama_weights_to_hf.py).

Llama 3 frequency scaling (Llama 3.1 reference `apply_scaling`, Grattafiori et al. 2024, arXiv
2407.21783; constants factor, low_freq_factor, high_freq_factor, original_max_seq_len; Llama 3.1
uses 8/1/4/8192 and Llama 3.2 uses 32/1/4/8192, meta_llama3_scaling(factor)). With wavelength
w_i = 2 pi / theta_i, low = original_max_seq_len / low_freq_factor and
high = original_max_seq_len / high_freq_factor:
    w_i < high:          theta_i                               (high frequencies kept)
    w_i > low:           theta_i / factor                      (low frequencies slowed down)
    otherwise:           (1 - s) theta_i / factor + s theta_i,
                         s = (original_max_seq_len / w_i - low_freq_factor)
                             / (high_freq_factor - low_freq_factor)

Shapes: B batch, T tokens, H heads, D head_dim; angles and cos/sin are (T, D/2) for positions shared
by all rows, or (B, T, D/2) for per-row positions (left-padded batches).

Tested in tests/test_rope.py: the two layouts agree after the row permutation, the scaling matches
a loop written from the Llama 3.1 formula (and Meta's constants), the complex and real
formulations agree, relative position property; tests/test_llama.py checks the whole model against
transformers' Llama.
"""
import math

import torch


# ----------------------------------------------------------------------------
# frequencies and angles

def rope_frequencies(head_dim, theta=10000.0, scaling=None):
    """theta_i = theta^(-2i/head_dim) -> (head_dim/2,) fp32, Llama 3 scaled when `scaling` is a dict
    with factor, low_freq_factor, high_freq_factor, original_max_seq_len."""
    if head_dim % 2:
        raise ValueError(f"RoPE head_dim={head_dim} is odd; rotary pairs need an even head_dim")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim     # (D/2,)
    freqs = 1.0 / (theta ** exponents)                                            # (D/2,)
    return freqs if scaling is None else apply_llama3_scaling(freqs, **scaling)


def apply_llama3_scaling(freqs, factor, low_freq_factor, high_freq_factor, original_max_seq_len):
    """Llama 3.1's `apply_scaling`, vectorised with torch.where (see the module docstring)."""
    wavelen = 2 * math.pi / freqs                                                 # (D/2,)
    low_freq_wavelen = original_max_seq_len / low_freq_factor
    high_freq_wavelen = original_max_seq_len / high_freq_factor
    smooth = ((original_max_seq_len / wavelen - low_freq_factor)
              / (high_freq_factor - low_freq_factor))                             # (D/2,)
    smoothed = (1 - smooth) * freqs / factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / factor, smoothed)
    return torch.where(wavelen < high_freq_wavelen, freqs, scaled)               # (D/2,)


def meta_llama3_scaling(factor):
    """The constants of Meta's Llama 3.1 reference apply_scaling (low_freq_factor 1,
    high_freq_factor 4, original_max_seq_len 8192) with `factor`: 8 in Llama 3.1, 32 in 3.2."""
    return dict(factor=float(factor), low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_seq_len=8192)


def rope_cos_sin(positions, freqs):
    """positions (T,) or (B, T) -> cos, sin of angle = position * theta_i, each (..., D/2) fp32."""
    angles = positions.to(torch.float32)[..., None] * freqs.to(positions.device)  # (..., T, D/2)
    return angles.cos(), angles.sin()


def precompute_freqs_cis(head_dim, max_seq_len, theta=10000.0, scaling=None):
    """Meta's table exp(j m theta_i) for m = 0 .. max_seq_len-1 -> complex64 (max_seq_len, D/2)."""
    freqs = rope_frequencies(head_dim, theta, scaling)                            # (D/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)  # (T, D/2)
    return torch.polar(torch.ones_like(angles), angles)                           # (T, D/2)


# ----------------------------------------------------------------------------
# applying the rotation

def _cos_sin(freqs_cis, x):
    """Complex table (T|B,T, D/2) or (cos, sin) pair -> cos, sin shaped (1|B, T, 1, D/2) for x."""
    if isinstance(freqs_cis, (tuple, list)):
        cos, sin = freqs_cis
    else:
        cos, sin = freqs_cis.real, freqs_cis.imag
    if cos.dim() == 2:                                       # shared positions: (T, D/2)
        cos, sin = cos[None], sin[None]                      # (1, T, D/2)
    assert cos.shape[1] == x.shape[1] and cos.shape[-1] * 2 == x.shape[-1], \
        f"RoPE table {tuple(cos.shape)} does not fit x {tuple(x.shape)}"
    return cos[:, :, None, :], sin[:, :, None, :]            # (1|B, T, 1, D/2)


def rotate_interleaved(x, cos, sin):
    """Interleaved pairs (x[2i], x[2i+1]) rotated; x (B, T, H, D), cos/sin (1|B, T, 1, D/2)."""
    pairs = x.float().unflatten(-1, (-1, 2))                 # (B, T, H, D/2, 2), rotation in fp32
    a, b = pairs[..., 0], pairs[..., 1]                      # (B, T, H, D/2)
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).type_as(x)                        # (B, T, H, D)


def rotate_half(x):
    """Hugging Face's helper: (x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_emb(q, k, freqs_cis):
    """RoPE on interleaved pairs (Meta / llama2.c / GGUF layout; seed 001's function name).

    q (B, T, n_heads, D), k (B, T, n_kv_heads, D); freqs_cis: Meta's complex table rows
    (T, D/2) or (B, T, D/2), or the real pair (cos, sin) of the same shape (what Llama passes:
    real tensors suit torch.compile better than complex ones). Returns rotated (q, k), dtypes kept.
    """
    cos, sin = _cos_sin(freqs_cis, q)
    return rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)


def apply_rotary_emb_complex(q, k, freqs_cis):
    """Reference: Meta's complex formulation z * exp(j angle), freqs_cis complex (T|B,T, D/2)."""
    freqs = freqs_cis[None] if freqs_cis.dim() == 2 else freqs_cis
    freqs = freqs[:, :, None, :]                                                  # (1|B, T, 1, D/2)
    q_c = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))          # (B, T, H, D/2)
    k_c = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    q_out = torch.view_as_real(q_c * freqs).flatten(3)                            # (B, T, H, D)
    k_out = torch.view_as_real(k_c * freqs).flatten(3)
    return q_out.type_as(q), k_out.type_as(k)


def apply_rotary_emb_half(q, k, freqs_cis):
    """RoPE in Hugging Face's half-split layout: x * cos + rotate_half(x) * sin, pair i = (x_i,
    x_{i+D/2}). Same arguments and shapes as apply_rotary_emb."""
    cos, sin = _cos_sin(freqs_cis, q)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)     # (1|B, T, 1, D)
    q_out = q.float() * cos + rotate_half(q.float()) * sin
    k_out = k.float() * cos + rotate_half(k.float()) * sin
    return q_out.type_as(q), k_out.type_as(k)


# ----------------------------------------------------------------------------
# weight layouts: permute the output rows of wq / wk inside each head

def permute_interleaved_to_half(w, n_heads, head_dim=None):
    """Rows of a q/k projection (n_heads*D, ...) from interleaved pairs to half-split: inside each
    head, row 2i -> i and row 2i+1 -> i + D/2 (the `permute` of convert_llama_weights_to_hf.py)."""
    head_dim = head_dim or w.shape[0] // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def permute_half_to_interleaved(w, n_heads, head_dim=None):
    """Inverse of permute_interleaved_to_half: HF q/k rows (n_heads*D, ...) -> Meta's layout."""
    head_dim = head_dim or w.shape[0] // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, head_dim // 2, *rest).transpose(1, 2).reshape(w.shape)
