"""Llama 2 / Llama 3 decoder-only transformer in plain PyTorch, with a KV cache and generation.

Architecture (Touvron et al. 2023, Llama 2, arXiv 2307.09288; Grattafiori et al. 2024, Llama 3,
arXiv 2407.21783), L pre-norm residual blocks over token embeddings x_0 = E[tokens]:
    h       = x + Attention(Norm(x))
    x_next  = h + FFN(Norm(h))
    logits  = W_out Norm(x_L)            (tied: W_out = E, Press & Wolf 2017, arXiv 1608.05859)
Norms, statistics in fp32 then cast back (llama2.c RMSNorm):
    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * g                (Zhang & Sennrich 2019, arXiv
                                                                 1910.07467, equation 4)
    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * g + b   (Ba et al. 2016, arXiv 1607.06450)
Attention (Vaswani et al. 2017, arXiv 1706.03762, equation 1), per head, RoPE (rope.py) on q, k:
    Attention(q, k, v) = softmax(q k^T / sqrt(head_dim) + M) v,  M = 0 where allowed, else -inf;
    M is causal and hides padding; T queries over S >= T keys are the last T positions (query t
    sees keys s <= t + S - T: the last query sees the last key, "bottom-right" alignment).
    Grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245): g = n_heads / n_kv_heads,
    kv head j serves query heads j*g .. j*g+g-1.
FFN, SwiGLU (Shazeer 2020, arXiv 2002.05202, equation 6):
    FFN(x) = W2 (silu(W1 x) * W3 x),   silu(a) = a * sigmoid(a)

KV cache (KVCache, held as model.cache): fixed-size keys and values of every layer and flags of
which slots hold real tokens, written in place with index_copy_. The decode step has no .item()
and no data-dependent branch, so it can be wrapped in torch.compile(mode="reduce-overhead") (CUDA
graphs) with start_pos a 0-d tensor.
Keys before the tokens: the T tokens come after n = start_pos keys and take RoPE positions n,
n+1, ...; each layer gets them from one keys/values source, kv.extend(k, v) -> (K, V): a cache
layer (KVCacheLayer) writes k, v at slots n .. n+T-1 and returns slots 0 .. S-1; a caller's source
puts n fixed keys and values in front (prefix tuning, adapters.py: P_k, P_v without RoPE, as
transformers does with peft's past_key_values). attention_inputs (a pure function) gives the
positions and the mask. Left padding: attention_mask (B, T) 1 = real, 0 = pad; positions count only
real keys (cumsum(mask) - 1 without keys before) and pad keys are masked out, so a left-padded row
computes what it computes alone.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost",
arXiv:1604.06174): with model.gradient_checkpointing = True, training keeps only each block's input
and recomputes the block during backward (use_reentrant=False, so it works when no input requires
grad, e.g. LoRA on a frozen base; the RNG state is replayed, so dropout masks match).

Fast paths are built by callers from these modules (fused.py, tested equal there): wq/wk/wv and
w1/w3 as one matmul each (Attention.wqkv, FeedForward.w13; None here: the split Linears are the
reference), the chunked cross-entropy, torch.compile; scoring.tree_logprobs calls blocks.

Shapes: B batch, T new tokens, S key slots, dim, n_heads, n_kv_heads, head_dim (D), V vocab.
Parameter names are llama2.c / Meta's (tok_embeddings, layers.{i}.attention.wq, ..., output);
weights.load_llama_state_dict loads them, filling a tied output and zero LayerNorm biases.
Tested in tests/test_llama.py: logits vs transformers' LlamaForCausalLM (GQA, tied, llama3 RoPE
scaling); RMSNorm vs F.rms_norm; LayerNorm vs nn.LayerNorm; math attention vs SDPA and both
backends vs a brute-force loop for T < S (GQA); attention_inputs' positions and mask vs ones
written by hand (cache flags untouched); cached decode vs full forward; generate vs
generate_no_cache; left-padded batch generation vs one prompt at a time; KVCache reset in place;
SDPA (GQA, no repeated K/V) vs the math path in training, gradients of every weight; n keys
from a caller's source (adapters.PrefixKV) vs the same keys written into the cache (padded rows
vs rows alone), their gradients with checkpointing; prefix tuning vs peft in test_adapters.py.
Size: about 600 lines, because seed 001 asks for the model, its norms and
compute_query_key_value_scores in this one file; the cache and attention inputs sit beside it.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import rope
import sample

# ----------------------------------------------------------------------------
# configuration

ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")
DERIVED = ("n_kv_heads", "head_dim", "hidden_dim")     # None: derived in __post_init__


@dataclass
class LlamaConfig:
    dim: int = 4096                      # model width (embedding size); defaults are Llama 2 7B's
    n_layers: int = 32                   # number of transformer blocks
    n_heads: int = 32                    # query heads
    n_kv_heads: Optional[int] = None     # key/value heads (GQA); None -> n_heads (multi-head)
    head_dim: Optional[int] = None       # width of one head; None -> dim // n_heads
    hidden_dim: Optional[int] = None     # SwiGLU width; None -> llama2.c rule from multiple_of
    multiple_of: int = 256               # llama2.c rounds hidden_dim up to a multiple of this
    vocab_size: int = 32000              # V, rows of tok_embeddings and output
    max_seq_len: int = 2048              # longest sequence (tokens) forward and the cache accept
    norm_eps: float = 1e-5               # epsilon inside the norm's square root
    rope_theta: float = 10000.0          # RoPE base theta
    rope_scaling: Optional[dict] = None  # Llama 3 scaling: a dict of ROPE_SCALING_KEYS, or None
    tie_embeddings: bool = False         # output.weight is tok_embeddings.weight
    norm: str = "rmsnorm"                # "rmsnorm" (Llama) or "layernorm" (seed 001's variant)
    dropout: float = 0.0                 # dropout on embeddings, attention probs, residual branches
    attn_backend: str = "sdpa"           # "sdpa" fused kernel, "math" compute_query_key_value_scores

    def __post_init__(self):
        self._check_types()
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"LlamaConfig: dim={self.dim} is not divisible by n_heads="
                                 f"{self.n_heads}; pick n_heads dividing dim or set head_dim")
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = llama2c_hidden_dim(self.dim, self.multiple_of)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig: n_heads={self.n_heads} is not a multiple of n_kv_heads="
                             f"{self.n_kv_heads}; pick n_kv_heads dividing n_heads")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim={self.head_dim} is odd; RoPE needs it even")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"LlamaConfig: norm={self.norm!r}; use 'rmsnorm' or 'layernorm'")
        if self.attn_backend not in ("math", "sdpa"):
            raise ValueError(f"LlamaConfig: attn_backend={self.attn_backend!r}; use 'math' or "
                             "'sdpa'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LlamaConfig: dropout={self.dropout} outside [0, 1); use e.g. 0.0 "
                             "or 0.1")
        self.rope_scaling = _check_rope_scaling(self.rope_scaling)

    def _check_types(self):
        """Sizes are positive ints (None where derived), before any // or % uses them."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim",
                     "multiple_of", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if not (type(value) is int and value >= 1 or value is None and name in DERIVED):
                raise ValueError(f"LlamaConfig: {name}={value!r} is not a positive int; fix {name}")
        if not (type(self.norm_eps) in (int, float) and 0 <= self.norm_eps < 1
                and type(self.rope_theta) in (int, float) and 1 <= self.rope_theta < math.inf):
            raise ValueError(f"LlamaConfig: norm_eps={self.norm_eps!r} must be in [0, 1) and "
                             f"rope_theta={self.rope_theta!r} a finite number >= 1")

    @classmethod
    def stories42m(cls):
        """Karpathy's llama2.c stories42M.pt (seed 001): 42M parameters trained on TinyStories."""
        return cls(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000,
                   max_seq_len=1024, multiple_of=32, hidden_dim=1376,  # 1376 = llama2c rule, 32
                   norm_eps=1e-5, tie_embeddings=True)

    @classmethod
    def smollm2_135m(cls):
        """SmolLM2-135M(-Instruct), numbers from its GGUF llama.* keys / config.json."""
        return cls(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                   vocab_size=49152, max_seq_len=8192, norm_eps=1e-5, rope_theta=100000.0,
                   tie_embeddings=True)

    @classmethod
    def llama32_1b(cls):
        """Llama-3.2-1B, numbers from Meta's params.json / HF config.json (128k context)."""
        return cls(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, hidden_dim=8192,
                   vocab_size=128256, max_seq_len=131072, norm_eps=1e-5, rope_theta=500000.0,
                   rope_scaling=rope.meta_llama3_scaling(32.0), tie_embeddings=True)

    @classmethod
    def tiny(cls, **overrides):
        """A few-kilobyte Llama 3 shape for tests: GQA, tied embeddings."""
        fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=256,
                      max_seq_len=128, rope_theta=10000.0, tie_embeddings=True)
        return cls(**{**fields, **overrides})


def llama2c_hidden_dim(dim, multiple_of=256, ffn_dim_multiplier=None):
    """SwiGLU width of Meta's / llama2.c's model.py: hidden = int(2/3 * 4 * dim), times
    ffn_dim_multiplier if given (Meta's Llama 2 70B and Llama 3), rounded up to a multiple of
    multiple_of. Keeps the parameter count of a 4*dim two-matrix FFN with three matrices."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def linear_shapes(config):
    """(in_features, out_features) of one block's seven Linears, by canonical name: wq, wk, wv, wo
    (attention; q = n_heads * head_dim, kv = n_kv_heads * head_dim) and w1, w2, w3 (SwiGLU).
    The one source of these shapes (weights_config.parameter_shapes, memory.py, LoRA's count)."""
    d, h = config.dim, config.hidden_dim
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return {"wq": (d, q), "wk": (d, kv), "wv": (d, kv), "wo": (q, d), "w1": (d, h),
            "w2": (h, d), "w3": (d, h)}


def _check_rope_scaling(scaling):
    """None, or a copy of our Llama 3 scaling dict: exactly ROPE_SCALING_KEYS, positive finite
    numbers, high_freq_factor > low_freq_factor (rope.py divides by their difference). Hugging
    Face's spellings are translated on loading (weights_config.hf_rope_scaling)."""
    if scaling is None:
        return None
    scaling = dict(scaling)
    if sorted(scaling) != sorted(ROPE_SCALING_KEYS):
        raise ValueError(f"LlamaConfig: rope_scaling keys {sorted(scaling)}; give exactly "
                         f"{ROPE_SCALING_KEYS}")
    if not (all(type(v) in (int, float) and 0 < v < math.inf for v in scaling.values())
            and scaling["high_freq_factor"] > scaling["low_freq_factor"]):
        raise ValueError(f"LlamaConfig: rope_scaling {scaling} needs positive finite numbers and "
                         f"high_freq_factor > low_freq_factor")
    return scaling


# ----------------------------------------------------------------------------
# attention maths (pure functions)

def causal_mask(T, S, device=None):
    """bool (T, S), True = may attend: the T queries are the last T of S positions, so query t
    sees keys 0 .. t + S - T (bottom-right aligned: the last query sees the last key)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


def causal_padding_mask(key_real, query_slots, key_slots):
    """Allowed (query, key) pairs -> bool (B, 1, T, S): key_slot <= query_slot and the key is a real
    token. A query always sees itself, so a pad query's row is never all -inf (no NaN)."""
    causal = key_slots[None, :] <= query_slots[:, None]                   # (T, S)
    allowed = causal[None] & key_real[:, None, :]                         # (B, T, S)
    allowed = allowed | (key_slots[None, :] == query_slots[:, None])[None]
    return allowed[:, None]                                               # (B, 1, T, S)


def real_tokens(tokens, attention_mask=None):
    """bool (B, T), True = a real token (attention_mask 1), False = padding; all real if None."""
    if attention_mask is None:
        return torch.ones_like(tokens, dtype=torch.bool)                  # (B, T)
    return attention_mask.bool()                                          # (B, T)


def attention_inputs(tokens, attention_mask=None, start_pos=0, cache_real=None):
    """Where T new tokens (B, T) sit after start_pos = n keys, and what they may attend to
    -> positions (1|B, T), mask (None = causal_mask, or bool (B, 1, T, S)), the tokens' key
    slots (T,) = n .. n+T-1, and the number of keys S.

    cache_real None (no cache): the n keys before are all real (e.g. a prefix), S = n + T, and
    without an attention_mask the mask is None (causal_mask's bottom-right alignment lets query t
    see keys 0 .. n + t). cache_real (B, S_max): KVCache.real, which slots hold real tokens (the
    new slots take attention_mask's flags here; the caller writes them into the cache); n an int
    gives S = n + T, a 0-d tensor S = S_max (fixed shapes for CUDA graphs: the mask hides slots
    not written yet). Positions count the real keys before a token, so a left-padded row gets the
    positions it has alone (cumsum(mask) - 1 without keys before)."""
    T = tokens.shape[1]
    slots = start_pos + torch.arange(T, device=tokens.device)             # (T,)
    if cache_real is None and attention_mask is None:
        return slots[None], None, slots, start_pos + T                    # (1, T)
    real = real_tokens(tokens, attention_mask)                            # (B, T)
    if cache_real is None:
        num_keys, key_real = start_pos + T, F.pad(real, (start_pos, 0), value=True)  # (B, S)
    else:
        num_keys = start_pos + T if isinstance(start_pos, int) else cache_real.shape[1]
        key_real = cache_real[:, :num_keys].index_copy(1, slots, real)    # (B, S)
    key_slots = torch.arange(num_keys, device=tokens.device)              # (S,)
    before = (key_real & (key_slots < start_pos)).sum(-1, keepdim=True)   # (B, 1)
    positions = (before + real.long().cumsum(-1) - 1).clamp(min=0)        # (B, T)
    return positions, causal_padding_mask(key_real, slots, key_slots), slots, num_keys


def repeat_kv(x, n_rep):
    """GQA: (B, n_kv_heads, S, D) -> (B, n_kv_heads * n_rep, S, D), kv head j copied to heads
    j*n_rep .. j*n_rep+n_rep-1 (repeat_interleave, the layout Meta and HF use)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def compute_query_key_value_scores(q, k, v, mask=None, dropout_p=0.0):
    """Readable attention: softmax(q k^T / sqrt(D) + M) v, written out (seed 001's function).

    q (B, n_heads, T, D), k and v (B, n_kv_heads, S, D); mask None = causal_mask(T, S) (the
    last query aligned to the last key), or bool (B|1, 1, T, S), True = may attend.
    -> (B, n_heads, T, D).
    """
    T, S = q.shape[-2], k.shape[-2]
    k = repeat_kv(k, q.shape[1] // k.shape[1])                            # (B, n_heads, S, D)
    v = repeat_kv(v, q.shape[1] // v.shape[1])                            # (B, n_heads, S, D)
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])   # (B, n_heads, T, S)
    if mask is None:
        mask = causal_mask(T, S, q.device)                                # (T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.softmax(scores, dim=-1).type_as(q)                          # softmax in fp32
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v                                                      # (B, n_heads, T, D)


def attention_sdpa(q, k, v, mask=None, dropout_p=0.0):
    """Fast path, same contract as compute_query_key_value_scores: F.scaled_dot_product_attention
    picks a fused kernel (flash / memory-efficient) that never stores the (T, S) probabilities and
    reads k, v once per group (enable_gqa) instead of copying them n_heads/n_kv_heads times.
    With mask None the alignment is the math path's bottom-right one: SDPA's is_causal is
    top-left aligned (query t sees keys 0..t), so it is used only when T == S; T == 1 needs no
    mask (its one query sees every key); other T < S get causal_mask(T, S)."""
    T, S = q.shape[-2], k.shape[-2]
    if mask is None and T not in (1, S):
        mask = causal_mask(T, S, q.device)                                # (T, S)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=mask is None and T == S, enable_gqa=gqa)


ATTENTION_BACKENDS = {"math": compute_query_key_value_scores, "sdpa": attention_sdpa}


# ----------------------------------------------------------------------------
# modules

class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g; x (..., dim)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()                               # statistics in fp32, then cast back
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LayerNorm(nn.Module):
    """LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * g + b, biased variance; x (..., dim)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        x32 = x.float()                               # statistics in fp32, then cast back
        centred = x32 - x32.mean(-1, keepdim=True)
        normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight + self.bias


def make_norm(config):
    return (RMSNorm if config.norm == "rmsnorm" else LayerNorm)(config.dim, config.norm_eps)


class KVCache(nn.Module):
    """Keys and values of every layer, and which slots hold real tokens, in fixed-size buffers:
        keys, values  (n_layers, max_batch, n_kv_heads, max_seq_len, head_dim)
        real          (max_batch, max_seq_len) bool, True = a real token (not padding) was written
    The capacity (max_batch, max_len) is read off the buffers. Written in place (index_copy_),
    never reallocated, so a captured CUDA graph keeps pointing at the same memory; buffers of a
    module, not function inputs, because torch.compile skips CUDA graphs for mutated inputs
    (measured: 600 vs 140-200 tokens/s on an H100). persistent=False: never saved in a state_dict. Attention reads and
    writes one layer through layer(...), a KVCacheLayer: a keys/values source (kv.extend).
    """

    def __init__(self, n_layers, max_batch, n_kv_heads, max_seq_len, head_dim,
                 dtype=torch.float32, device=None):
        super().__init__()
        shape = (n_layers, max_batch, n_kv_heads, max_seq_len, head_dim)
        for name in ("keys", "values"):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device),
                                 persistent=False)
        self.register_buffer("real", torch.zeros(max_batch, max_seq_len, dtype=torch.bool,
                                                 device=device), persistent=False)

    @property
    def max_batch(self):
        return self.real.shape[0]

    @property
    def max_len(self):
        return self.real.shape[1]

    def fits(self, batch, length):
        """Whether `batch` rows of `length` slots fit."""
        return batch <= self.max_batch and length <= self.max_len

    def check_fits(self, batch, start_pos, T):
        """ValueError unless rows 0..batch-1 and slots start_pos .. start_pos+T-1 exist (a 0-d
        tensor start_pos, a compiled decode step, is not checked: no .item())."""
        if not self.fits(batch, start_pos + T if isinstance(start_pos, int) else 0):
            raise ValueError(f"Llama.forward: batch {batch}, slots {start_pos}..{start_pos}+{T} do "
                             f"not fit the cache ({self.max_batch}, {self.max_len}); call "
                             f"setup_cache with more")

    def reset(self):
        """Zero every buffer in place (same storage, so captured CUDA graphs stay valid)."""
        for buffer in (self.keys, self.values, self.real):
            buffer.zero_()

    def write_real(self, slots, real):
        """Flag slots (T,) of rows 0..B-1 with real (B, T), True = a real token (not padding)."""
        self.real[:real.shape[0]].index_copy_(1, slots, real)

    def layer(self, index, slots, num_keys):
        """Layer `index` as the keys/values source of one call whose tokens sit at slots (T,)
        and attend to slots 0 .. num_keys-1."""
        return KVCacheLayer(self.keys[index], self.values[index], slots, num_keys)


class KVCacheLayer:
    """One layer of a KVCache for one call. extend(k, v) writes the call's k, v (B, n_kv_heads, T,
    D) at its slots, in place (index_copy_), and returns the keys and values of slots
    0 .. num_keys-1, each (B, n_kv_heads, S, D) in k's dtype."""

    def __init__(self, keys, values, slots, num_keys):
        self.keys, self.values = keys, values                  # (max_batch, n_kv_heads, S_max, D)
        self.slots, self.num_keys = slots, num_keys

    def extend(self, k, v):
        B = k.shape[0]
        keys, values = self.keys[:B], self.values[:B]                     # views
        keys.index_copy_(2, self.slots, k.to(keys.dtype))
        values.index_copy_(2, self.slots, v.to(values.dtype))
        S = self.num_keys
        return keys[:, :, :S].to(k.dtype), values[:, :, :S].to(v.dtype)  # (B, n_kv_heads, S, D)


class Attention(nn.Module):
    """Multi-head / grouped-query causal self-attention with RoPE; keys and values before this
    call's come from a keys/values source kv when one is passed (a KVCache layer, a prefix)."""

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.register_module("wqkv", None)  # fused.fuse: wq, wk, wv as one matmul (same names)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attend = ATTENTION_BACKENDS[config.attn_backend]

    def forward(self, x, cos_sin, mask=None, kv=None):
        """x (B, T, dim) -> (B, T, dim), attending to kv.extend(k, v) -> (K, V), each
        (B, n_kv_heads, S, D): the S keys and values before and of this call (KVCacheLayer:
        written into the cache; adapters.PrefixKV: n fixed ones in front); kv None: this call's
        keys and values only. mask: see attention_inputs."""
        B, T, _ = x.shape
        q, k, v = (self.wq(x), self.wk(x), self.wv(x)) if self.wqkv is None else self.wqkv(x)
        q = q.view(B, T, self.n_heads, self.head_dim)                  # (B, T, n_heads, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)               # (B, T, n_kv_heads, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)               # (B, T, n_kv_heads, D)
        q, k = rope.apply_rotary_emb(q, k, cos_sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if kv is not None:
            k, v = kv.extend(k, v)                                         # (B, n_kv_heads, S, D)
        dropout_p = self.dropout if self.training else 0.0
        out = self.attend(q, k, v, mask, dropout_p)                        # (B, n_heads, T, D)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, n_heads*D)
        return self.resid_dropout(self.wo(out))                           # (B, T, dim)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 gate, w3 up (dim -> hidden_dim), w2 down."""

    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.register_module("w13", None)   # fused.fuse: w1, w3 as one matmul (same names)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = (self.w1(x), self.w3(x)) if self.w13 is None else self.w13(x)  # (B, T, hidden)
        return self.dropout(self.w2(F.silu(gate) * up))                  # (B, T, dim)


class TransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention_norm, self.ffn_norm = make_norm(config), make_norm(config)
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos_sin, mask=None, kv=None):
        """x (B, T, dim) -> (B, T, dim); mask and the keys/values source kv go to Attention."""
        h = x + self.attention(self.attention_norm(x), cos_sin, mask, kv)  # (B, T, dim)
        return h + self.feed_forward(self.ffn_norm(h))                   # (B, T, dim)


def init_weights_(model, n_layers):
    """llama2.c's initialisation, in place: every Linear and Embedding weight ~ N(0, 0.02), then
    the residual-stream projections scaled down. GPT-2 (Radford et al. 2019, Sec. 2.3) scales them
    by 1/sqrt(N), N residual layers; llama2.c's model.py gives parameters ending in w3.weight and
    wo.weight std 0.02/sqrt(2 n_layers). The FFN's residual projection here is w2 (w3 is the up
    projection): w3 is llama2.c's choice, kept for parity with llama2.c."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith(("w3.weight", "wo.weight")):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))


def cache_flags(cache, config, tokens, start_pos, kv):
    """Check where the tokens (B, T) go -> the KVCache's real-token flags of rows 0..B-1
    (B, S_max) when the cache is used (start_pos given, kv None), else None. One-line errors:
    kv without start_pos, no cache, slots past the cache, more than max_seq_len keys."""
    (B, T), n = tokens.shape, 0 if start_pos is None else start_pos
    if kv is not None and start_pos is None:
        raise ValueError("Llama.forward: kv without start_pos; give start_pos = the number of "
                         "keys kv puts before the tokens")
    if kv is None and start_pos is not None:
        if cache is None:
            raise ValueError("Llama.forward: start_pos given but no KV cache; call "
                             "model.setup_cache(max_batch_size, max_seq_len) first")
        cache.check_fits(B, start_pos, T)
        return cache.real[:B]                                              # (B, S_max)
    if n + T > config.max_seq_len:
        raise ValueError(f"Llama.forward: {n} keys before + {T} tokens > max_seq_len="
                         f"{config.max_seq_len}; truncate the input")
    return None


class Llama(nn.Module):
    """The language model: tokens (B, T) -> (logits, hidden after the final norm)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = make_norm(config)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight                 # one Parameter
        # theta_i in fp32, never saved; _apply keeps it fp32 when the model is cast to bf16
        self.register_buffer("rope_freqs", self._rope_freqs(), persistent=False)  # (D/2,)
        self.register_module("cache", None)         # a KVCache, made by setup_cache
        self.gradient_checkpointing = False         # recompute blocks in backward (training only)
        init_weights_(self, config.n_layers)

    def _rope_freqs(self, device=None):
        c = self.config
        return rope.rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling).to(device)

    def _apply(self, fn, recurse=True):
        """Module.to(torch.bfloat16) would round theta_i to 8 bits (angle errors of radians at
        position 1000); rebuild the frequencies in fp32 on the new device instead."""
        super()._apply(fn, recurse)
        self.rope_freqs = self._rope_freqs(self.rope_freqs.device)
        return self

    # -- KV cache ---------------------------------------------------------------------------
    def setup_cache(self, max_batch_size, max_seq_len=None):
        """Allocate a zeroed KVCache as self.cache: max_batch_size rows of max_seq_len slots
        (default config.max_seq_len), in the model's dtype and on its device."""
        c, weight = self.config, self.norm.weight          # the model's dtype and device
        max_seq_len = max_seq_len or c.max_seq_len
        if max_seq_len > c.max_seq_len:
            raise ValueError(f"setup_cache: max_seq_len={max_seq_len} > config.max_seq_len="
                             f"{c.max_seq_len}; ask for fewer tokens")
        self.cache = KVCache(c.n_layers, max_batch_size, c.n_kv_heads, max_seq_len, c.head_dim,
                             weight.dtype, weight.device)

    def reset_cache(self):
        """Zero the cache's buffers in place (same storage, so captured CUDA graphs stay valid)."""
        if self.cache is not None:
            self.cache.reset()

    # -- forward ----------------------------------------------------------------------------
    def forward(self, tokens, start_pos=None, attention_mask=None, last_only=False, kv=None):
        """tokens (B, T) -> (logits (B, T, V), or (B, 1, V) if last_only; hidden (B, T, dim)).

        start_pos: the number n of keys before the tokens (None: 0). kv None with start_pos given
        (an int, or a 0-d long tensor in a compiled decode step): the KV cache, the tokens written
        at slots n .. n+T-1 after slots 0 .. n-1. kv given: no cache; kv[i] puts layer i's n keys
        and values in front (a keys/values source, e.g. adapters.PrefixKV).
        attention_mask (B, T): 1 real, 0 pad (left padding for generation, any for scoring).
        """
        cache_real = cache_flags(self.cache, self.config, tokens, start_pos, kv)
        n = 0 if start_pos is None else start_pos
        positions, mask, slots, num_keys = attention_inputs(tokens, attention_mask, n, cache_real)
        if cache_real is not None:
            self.cache.write_real(slots, real_tokens(tokens, attention_mask))
            kv = [self.cache.layer(i, slots, num_keys) for i in range(len(self.layers))]
        h = self.blocks(tokens, positions, mask, kv)                       # (B, T, dim)
        # h[:, -1] is 2-D: one mm (a (B, 1, dim) view that requires grad would become a bmm)
        logits = self.output(h[:, -1])[:, None] if last_only else self.output(h)  # (B, T|1, V)
        return logits, h

    def blocks(self, tokens, positions, mask=None, kv=None):
        """Embeddings, blocks, final norm -> hidden (B, T, dim); positions (1|B, T), mask, kv as
        attention_inputs and forward make them (scoring.tree_logprobs makes its own)."""
        cos_sin = rope.rope_cos_sin(positions, self.rope_freqs)           # 2 x (1|B, T, D/2)
        h = self.dropout(self.tok_embeddings(tokens))                      # (B, T, dim)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            layer_kv = None if kv is None else kv[i]
            if recompute:   # keep only h; rerun the block in backward (module docstring)
                h = torch.utils.checkpoint.checkpoint(layer, h, cos_sin, mask, layer_kv,
                                                      use_reentrant=False)
            else:
                h = layer(h, cos_sin, mask, layer_kv)                      # (B, T, dim)
        return self.norm(h)                                                # (B, T, dim)

    def generate(self, prompt_tokens, max_new_tokens, sampling=sample.GREEDY, stop_tokens=(),
                 generator=None, on_token=None, decode_fn=None):
        """Continue one prompt (list of ids or (1, T)) with the KV cache: prefill, then one token
        per step, chosen by sampling (a sample.SamplingConfig; greedy by default) with randomness
        from generator. Returns the new ids, without the stop token that ended it (if any);
        on_token(id) is called for each as soon as it is chosen (streaming). decode_fn: see
        sample.generate_batch."""
        if torch.is_tensor(prompt_tokens):
            prompt_tokens = prompt_tokens.reshape(-1).tolist()
        stream = None if on_token is None else (lambda row, token: on_token(token))
        return sample.generate_batch(self, [prompt_tokens], 0, max_new_tokens, sampling,
                                     stop_tokens, generator, stream, decode_fn)[0]
