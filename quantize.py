"""4-bit weight-only quantization for fast CPU decoding (`run.py --dtype int4`).

Why: decoding one token at batch 1 multiplies a vector by every weight matrix, so its speed is
set by how many bytes of weights are read per token (BENCHMARKS.md, issue 2). fp32 reads 4 bytes
per weight; 4-bit groups read ~0.6. The default model ships as a Q4_1 GGUF anyway: its weights
already are 4-bit numbers, which the fp32 path dequantizes and then reads 8x over.

The format is GGUF's Q4_1 (ggml-quants.c, quantize_row_q4_1): each row is cut into groups of 32
input weights; a group keeps its minimum m and step d = (max - m) / 15, and each weight the
integer q = round((w - m) / d) in 0..15, so
    w ~= d * q + m                                          (exact for weights read from Q4_1)
torch's CPU int4 kernel (aten._weight_int4pack_mm_for_cpu) computes x @ W^T with W unpacked as
(q - 8) * scale + zero, so we pass scale = d and zero = m + 8 d. Activations run in bf16 inside
the kernel (its only input type); the layer casts back to the caller's dtype.

Int4Linear.forward is the fast path; Int4Linear.dequantize() gives the fp32 matrix it stands for,
and tests/test_quantize.py checks the kernel against F.linear with that matrix, and the round trip
against GGUF's own Q4_1 dequantizer.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

GROUP = 32   # weights per (d, m) pair, as in GGUF Q4_0 / Q4_1


def quantize_q4_1(weight, group_size=GROUP):
    """weight (N, K) float -> q (N, K) int32 in 0..15, d (N, K/g), m (N, K/g) float32."""
    N, K = weight.shape
    w = weight.float().reshape(N, K // group_size, group_size)           # (N, K/g, g)
    low, high = w.amin(-1), w.amax(-1)                                    # (N, K/g)
    d = (high - low) / 15
    inv_d = torch.where(d > 0, 1 / d, torch.zeros_like(d))               # a constant group: q = 0
    q = torch.round((w - low[..., None]) * inv_d[..., None]).clamp(0, 15)
    return q.reshape(N, K).to(torch.int32), d, low


def dequantize_q4_1(q, d, m, group_size=GROUP):
    """The reference: w = d * q + m per group. q (N, K), d and m (N, K/g) -> (N, K) float32."""
    return q.float() * d.repeat_interleave(group_size, 1) + m.repeat_interleave(group_size, 1)


class Int4Linear(nn.Module):
    """A bias-free nn.Linear whose weight is stored as 4-bit groups (inference only)."""

    def __init__(self, linear, group_size=GROUP):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size
        q, d, m = quantize_q4_1(linear.weight.detach(), group_size)
        self.register_buffer("q", q.to(torch.uint8))       # (N, K), kept for dequantize()
        self.register_buffer("d", d)                       # (N, K/g)
        self.register_buffer("m", m)                       # (N, K/g)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        zero = m + 8 * d                                   # the kernel unpacks (q - 8) * d + zero
        self.register_buffer("scales_and_zeros",
                             torch.stack([d.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous())

    def dequantize(self):
        """The fp32 (N, K) weight this layer multiplies by (up to the bf16 rounding of d, zero)."""
        return dequantize_q4_1(self.q, self.d, self.m, self.group_size)

    def forward(self, x):
        shape = x.shape                                                   # (..., K)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)           # (M, K)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size,
                                                       self.scales_and_zeros)  # (M, N)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def forward_reference(self, x):
        return F.linear(x, self.dequantize().to(x.dtype))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 g{self.group_size}"


def quantize_model_int4(model, group_size=GROUP, skip=("output",)):
    """Replace every bias-free nn.Linear whose input size divides into groups by Int4Linear.

    CPU only (the kernel is torch's CPU int4 kernel). Embeddings and norms stay in float, and so do
    the layers named in `skip`: by default the output head, which GGUF files keep at 6-8 bits
    (SmolLM2's is tied to its Q8_0 embedding) because 4-bit logits cost the most quality.
    Returns the number of layers replaced.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("--dtype int4 is a CPU decoding path; drop --use_gpu or use --dtype bfloat16")
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and module.bias is None
               and module.in_features % group_size == 0 and name not in skip]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int4Linear(module, group_size))
    return len(targets)
