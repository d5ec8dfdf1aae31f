"""Tests for rope.py: both RoPE layouts, Llama 3 frequency scaling, complex vs real formulations.

Run: .venv/bin/pytest tests/test_rope.py -q   (CPU, < 5 s)

Oracles: a second formulation of the same maths (Meta's complex multiplication vs the real
rotation; the half-split layout on permuted weights vs interleaved on the originals); the Llama 3.1
`apply_scaling` formula written here as a plain Python loop over frequencies; the relative-position
property q_m . k_n = f(m - n) that defines RoPE. Tolerances: everything is fp32 trig on O(1)
values, so results agree to a few ulps (atol 1e-5 leaves room, a wrong pair/angle gives O(1)).
"""
import math

import pytest
import torch

import rope

TOL = dict(atol=1e-5, rtol=1e-5)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def llama31_apply_scaling_oracle(freqs, factor, low_freq_factor, high_freq_factor,
                                 original_max_seq_len):
    """Llama 3.1's reference `apply_scaling` (meta-llama/llama-models), one frequency at a time."""
    low_freq_wavelen = original_max_seq_len / low_freq_factor
    high_freq_wavelen = original_max_seq_len / high_freq_factor
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = ((original_max_seq_len / wavelen - low_freq_factor)
                      / (high_freq_factor - low_freq_factor))
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return new_freqs


@pytest.mark.parametrize("scaling", [dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_seq_len=8192),     # Llama 3.2
                                     dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_seq_len=8192)])    # Llama 3.1
def test_llama3_scaling_matches_reference_formula(scaling):
    plain = rope.rope_frequencies(128, 500000.0)
    expected = torch.tensor(llama31_apply_scaling_oracle(plain.tolist(), **scaling))
    scaled = rope.rope_frequencies(128, 500000.0, scaling)
    torch.testing.assert_close(scaled, expected.float(), atol=0, rtol=1e-6)
    # all three regimes occur with these constants: kept, divided by factor, smoothed
    kept, divided = scaled == plain, torch.isclose(scaled, plain / scaling["factor"])
    assert kept.any() and divided.any() and (~kept & ~divided).any()


def test_meta_llama3_scaling_constants():
    """Meta's Llama 3.1 reference apply_scaling: low 1, high 4, old context 8192; the factor is
    8 (3.1) or 32 (3.2), as in the parametrised dicts above, written out by hand."""
    assert rope.meta_llama3_scaling(8) == dict(factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_seq_len=8192)
    assert rope.meta_llama3_scaling(32.0)["factor"] == 32.0


def test_frequencies_follow_roformer():
    """theta_i = theta^(-2i/D) (RoFormer equation 15)."""
    freqs = rope.rope_frequencies(8, 10000.0)
    expected = torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)])
    torch.testing.assert_close(freqs, expected, atol=0, rtol=1e-6)


def test_precompute_freqs_cis_is_exp_of_angles():
    table = rope.precompute_freqs_cis(16, 12, theta=100.0)
    assert table.shape == (12, 8) and table.dtype == torch.complex64
    cos, sin = rope.rope_cos_sin(torch.arange(12), rope.rope_frequencies(16, 100.0))
    torch.testing.assert_close(table.real, cos, **TOL)
    torch.testing.assert_close(table.imag, sin, **TOL)
    torch.testing.assert_close(table.abs(), torch.ones(12, 8), **TOL)


def test_complex_and_real_formulations_agree():
    q, k = randn(2, 7, 4, 16, seed=1), randn(2, 7, 2, 16, seed=2)
    table = rope.precompute_freqs_cis(16, 7, theta=10000.0)
    q_c, k_c = rope.apply_rotary_emb_complex(q, k, table)
    q_r, k_r = rope.apply_rotary_emb(q, k, table)                          # complex table in
    q_p, k_p = rope.apply_rotary_emb(q, k, (table.real, table.imag))       # (cos, sin) pair in
    for got, expected in [(q_r, q_c), (k_r, k_c), (q_p, q_c), (k_p, k_c)]:
        torch.testing.assert_close(got, expected, **TOL)
    # rotation keeps each pair's length
    torch.testing.assert_close(q_r.unflatten(-1, (-1, 2)).norm(dim=-1),
                               q.unflatten(-1, (-1, 2)).norm(dim=-1), **TOL)


def test_layouts_agree_after_row_permutation():
    """Interleaved RoPE on Meta-layout q/k == half-split RoPE on HF-layout (permuted) q/k."""
    n_heads, n_kv, D, dim, T = 4, 2, 16, 32, 9
    x = randn(1, T, dim, seed=3)
    wq, wk = randn(n_heads * D, dim, seed=4), randn(n_kv * D, dim, seed=5)  # interleaved layout
    wq_hf = rope.permute_interleaved_to_half(wq, n_heads, D)
    wk_hf = rope.permute_interleaved_to_half(wk, n_kv, D)
    cos_sin = rope.rope_cos_sin(torch.arange(T), rope.rope_frequencies(D, 10000.0))
    q, k = rope.apply_rotary_emb((x @ wq.T).view(1, T, n_heads, D), (x @ wk.T).view(1, T, n_kv, D),
                                 cos_sin)
    q_hf, k_hf = rope.apply_rotary_emb_half((x @ wq_hf.T).view(1, T, n_heads, D),
                                            (x @ wk_hf.T).view(1, T, n_kv, D), cos_sin)
    # the rotated vectors are the same up to the same within-head permutation
    torch.testing.assert_close(rope.permute_interleaved_to_half(q.reshape(T, -1).T, n_heads).T,
                               q_hf.reshape(T, -1), **TOL)
    # so the attention scores (what the model sees) are equal
    scores = torch.einsum("bthd,bshd->bhts", q[:, :, ::2], k)             # q heads 0, 2 vs kv 0, 1
    scores_hf = torch.einsum("bthd,bshd->bhts", q_hf[:, :, ::2], k_hf)
    torch.testing.assert_close(scores, scores_hf, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("shape", [(6 * 8, 10), (6 * 8,), (6 * 8, 3, 2)])
def test_permutations_are_inverse(shape):
    w = randn(*shape, seed=6)
    there = rope.permute_interleaved_to_half(w, 6, 8)
    assert not torch.equal(there, w)
    torch.testing.assert_close(rope.permute_half_to_interleaved(there, 6, 8), w, atol=0, rtol=0)
    # head_dim may be left out (lora.py calls it with n_heads only)
    torch.testing.assert_close(rope.permute_half_to_interleaved(there, 6), w, atol=0, rtol=0)


def test_permutation_moves_pairs_to_halves():
    """Inside a head, interleaved row 2i -> half row i, row 2i+1 -> row i + D/2."""
    w = torch.arange(8.0)[:, None]                                        # one head, D = 8
    assert rope.permute_interleaved_to_half(w, 1).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_relative_position_property():
    """q_m . k_n depends only on m - n: shifting both positions by s leaves scores unchanged."""
    D, freqs = 16, rope.rope_frequencies(16, 10000.0)
    q, k = randn(1, 1, 1, D, seed=7), randn(1, 1, 1, D, seed=8)

    def score(m, n):
        q_m, _ = rope.apply_rotary_emb(q, q, rope.rope_cos_sin(torch.tensor([m]), freqs))
        k_n, _ = rope.apply_rotary_emb(k, k, rope.rope_cos_sin(torch.tensor([n]), freqs))
        return (q_m * k_n).sum()

    torch.testing.assert_close(score(5, 2), score(105, 102), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score(0, 0), (q * k).sum(), **TOL)


def test_per_row_positions_equal_rowwise_application():
    """Positions (B, T) (left-padded rows) == applying each row's positions on its own."""
    freqs = rope.rope_frequencies(8, 10000.0)
    q, k = randn(2, 5, 2, 8, seed=9), randn(2, 5, 1, 8, seed=10)
    positions = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    q_b, k_b = rope.apply_rotary_emb(q, k, rope.rope_cos_sin(positions, freqs))
    for row in range(2):
        q_r, k_r = rope.apply_rotary_emb(q[row:row + 1], k[row:row + 1],
                                         rope.rope_cos_sin(positions[row], freqs))
        torch.testing.assert_close(q_b[row:row + 1], q_r, atol=0, rtol=0)
        torch.testing.assert_close(k_b[row:row + 1], k_r, atol=0, rtol=0)


def test_dtype_kept_and_odd_head_dim_refused():
    q = randn(1, 3, 2, 8, seed=11).bfloat16()
    q_r, _ = rope.apply_rotary_emb(q, q, rope.precompute_freqs_cis(8, 3))
    assert q_r.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="head_dim=7"):
        rope.rope_frequencies(7)
