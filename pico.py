"""pico-LLM (seed 003): LSTM, k-gram MLP and Transformer language models, their offline tokenizers,
nucleus-sampling generation and the diversity metrics of the p-sweep. Training runs, the seed's
studies, figures and flags (`run.py --option pico | pico_compare`) are in run_pico.py; the saved
run folder (weights, optimizer, tokenizer, pico.json) in checkpoint.py (save_pico, load_pico);
the streaming text reader in data.py.

Every model maps tokens (B, T) to next-token logits (B, T, V); position t sees tokens 0..t only.
  LSTM        (h_t, c_t) = LSTM(E[x_t], h_{t-1}, c_{t-1}), logits_t = W h_t
              (Hochreiter & Schmidhuber 1997)
  k-gram MLP  logits_t = MLP([E[x_{t-k+1}]; ...; E[x_t]]) (Bengio et al. 2003, JMLR 3:1137);
              positions before the start read a learned padding row E[V]; the sliding window is
              one `unfold`. (The course starter's loop reads x_{t-k}..x_{t-1}, skipping x_t.)
  Transformer x_0 = E[x] (+ P[t] when positional="learned"); L blocks; logits = W_out RMSNorm(x_L).
    pre-norm  h = x + Attn(RMSNorm(x)), out = h + MLP(RMSNorm(h))  (Xiong et al. 2020, 2002.04745)
    post-norm h = RMSNorm(x + Attn(x)), out = RMSNorm(h + MLP(h))  (Vaswani et al. 2017, 1706.03762)
    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g   (Zhang & Sennrich 2019, arXiv 1910.07467, Eq. 4)
    Attn(x) = sum_j f_j(x), f_j(x) = softmax(q_j k_j^T / sqrt(D) + causal mask) v_j W_o[j]: the
      seed's x -> x + sum_j f_j(x); concatenating heads and applying one W_o is the same sum.
    positions: a learned table P (GPT-2); RoPE (Su et al. 2021, arXiv 2104.09864) rotates q, k by
      t * theta_i (rope.py); NoPE (Kazemnejad et al. 2023, arXiv 2305.19466): no positional signal
      but the causal mask.
  Linear attention (Katharopoulos et al. 2020, arXiv 2006.16236, Eq. 4-6, 12), phi(x) = elu(x) + 1:
    S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t), o_t = S_t^T phi(q_t) / z_t.phi(q_t)
    recurrent form: the loop over t; cumsum form: every S_t at once as cumsum_t(phi(k) v^T);
    chunked form (the model's): masked phi(q) phi(k)^T inside chunks of C tokens, plus the states
    of earlier chunks as an exclusive cumsum over chunks.
  Gated linear attention (Yang et al. 2023, arXiv 2312.06635, Eq. 3 and Sec. 4.2-4.3):
    alpha_t = sigmoid(x_t W_a1 W_a2 + b)^(1/tau) in (0,1)^D (rank-16 W_a1 W_a2, tau = 16),
    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, out = (RMSNorm(o) * swish(x W_r)) W_o
    chunked form, chunk length C, b_t = product of alpha_s over the chunk up to t (log cumsum):
      o_t = S_prev^T (q_t * b_t) + sum_{s <= t in chunk} <q_t * b_t, k_s / b_s> v_s
      S_next = diag(b_C) S_prev + sum_s (k_s * b_C / b_s) v_s^T
    (1 / b_s grows as gates close: log alpha is clamped at -80 / C, so it stays below e^80.)
Data: data.py streams a file in pieces into blocks of block_size + 1 tokens (input block[:-1],
  target block[1:]) and mixes sources per block; run_pico.py wires the flags to it.
Tokenizer: "bpe" (default) = SentencePiece BPE trained offline on the first 4 MB of the training
  text (train_bpe_tokenizer -> tokenizer.train_sentencepiece: byte fallback, newline kept, exact
  round trip), saved with each checkpoint; "bytes" = tokenizer.ByteTokenizer(), UTF-8 bytes,
  V = 256. Not the starter's tiktoken gpt2 (its ranks are downloaded) nor the default
  model's 49,152-token BPE: its embedding and unembedding alone would be 12.6 M parameters beside
  a ~1 M-parameter CPU model, and its softmax would dominate each step.
Generation: greedy (no --top_p) or nucleus sampling from sample.py (Holtzman et al. 2020, arXiv
  1904.09751). distinct-n = unique n-grams / n-grams over all samples (Li et al. 2016, arXiv
  1510.03055); rep-4 = 1 - distinct-4 within one sample, averaged (seq-rep-n, Welleck et al. 2019).
Shapes: B batch, T tokens, V vocab, dim width, H = n_heads, D = head_dim, C chunk, k window,
  n chunks.
Size: ~450 lines: seed 003's three model families and both linear attentions read as one.
Tests: tests/test_pico.py (unfold == loop; linear chunked == cumsum == recurrent; GLA chunked ==
  recurrent; SDPA == math attention; RMSNorm == F.rms_norm; causality of every model; nucleus
  sampling taken from sample.py; and, for checkpoint.py's pico folder, data.py and run_pico.py:
  resume == uninterrupted run, a save that fails midway keeps the old folder, streaming memory,
  bad-input errors and the CLI).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import options
import rope
from llama import RMSNorm  # the hand-written RMSNorm seed 003 asks for (fp32 statistics)
import sample
from tokenizer import train_sentencepiece


# ----------------------------------------------------------------------------
# Config

@dataclass
class PicoConfig:
    model: str = "transformer"      # "lstm" | "kgram" | "transformer"
    vocab_size: int = 2048          # V, tokenizer vocabulary size
    block_size: int = 128           # T, tokens per training window and longest context
    dim: int = 128                  # embedding width (course --embed_size); LSTM hidden width too
    n_layers: int = 2               # LSTM layers or transformer blocks
    n_heads: int = 4                # H, attention heads (transformer)
    hidden_dim: int = 512           # MLP hidden width (transformer feed-forward and k-gram MLP)
    kgram_k: int = 3                # k, tokens the k-gram MLP reads (course --kgram_k)
    mlp_layers: int = 1             # k-gram MLP hidden layers (course --num_inner_mlp_layers)
    positional: str = "rope"        # "learned" | "rope" | "nope"
    norm_placement: str = "pre"     # "pre" | "post": RMSNorm before or after each residual add
    attention: str = "softmax"      # "softmax" | "linear" (Katharopoulos) | "gla" (Yang et al.)
    attention_chunk: int = 16       # C, chunk length of the chunked linear and GLA forms
    gla_gate_rank: int = 16         # rank of the GLA forget-gate projection W_a1 W_a2 (paper: 16)
    gla_tau: float = 16.0           # tau in alpha = sigmoid(.)^(1/tau) (paper: 16)
    norm_eps: float = 1e-5          # RMSNorm epsilon
    rope_theta: float = 10000.0     # RoPE base theta
    dropout: float = 0.0            # dropout on attention/MLP outputs (0 = off)

    def __post_init__(self):
        for name, allowed in [("model", ("lstm", "kgram", "transformer")),
                              ("positional", ("learned", "rope", "nope")),
                              ("norm_placement", ("pre", "post")),
                              ("attention", ("softmax", "linear", "gla"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"PicoConfig.{name}={getattr(self, name)!r}: "
                                 f"choose one of {allowed}")
        if self.dim % self.n_heads:
            raise ValueError(f"PicoConfig.dim={self.dim} is not divisible by "
                             f"n_heads={self.n_heads}; change one of them")
        options.check_size("PicoConfig: the parameter count (an upper bound)",
                           self.parameter_bound(), options.MAX_ELEMENTS)  # before allocating

    def parameter_bound(self):
        """An upper bound on the parameters of any model kind with this config (embeddings and
        head, positions, per block attention and MLP, the k-gram MLP)."""
        d, h = self.dim, self.hidden_dim
        block = 4 * d * d + 3 * d * h + d * self.gla_gate_rank
        return (2 * self.vocab_size * d + self.block_size * d + self.n_layers * block
                + self.kgram_k * d * h + self.mlp_layers * h * h)

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @classmethod
    def tiny(cls, **overrides):
        """Test preset: a few thousand parameters, runs in milliseconds."""
        return cls(**{**dict(vocab_size=37, block_size=24, dim=16, n_heads=2, hidden_dim=32,
                             attention_chunk=4, gla_gate_rank=4), **overrides})


# ----------------------------------------------------------------------------
# Attention maths (pure functions, (B, H, T, D) in, (B, H, T, D) out)

def softmax_attention_reference(q, k, v):
    """softmax(q k^T / sqrt(D) + causal mask) v, also returning the weights (B, H, T, T)."""
    T = q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).type_as(q)         # fp32 softmax, cast back
    return weights @ v, weights


def elu_feature_map(x):
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, Sec. 3.2.1)."""
    return F.elu(x) + 1.0


def linear_attention_recurrent(q, k, v, eps=1e-6):
    """Reference: the RNN form, one step per token. q, k already feature-mapped."""
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])                               # (B, H, D, D)
    z = q.new_zeros(B, H, D)                                            # (B, H, D)
    outs = []
    for t in range(T):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        z = z + k[:, :, t]
        num = torch.einsum("bhd,bhde->bhe", q[:, :, t], S)              # (B, H, D)
        den = (q[:, :, t] * z).sum(-1, keepdim=True)                    # (B, H, 1)
        outs.append(num / (den + eps))
    return torch.stack(outs, dim=2)                                     # (B, H, T, D)


def linear_attention_cumsum(q, k, v, eps=1e-6):
    """Vectorized form: every prefix state S_t from one cumsum over tokens (no Python loop, but a
    (T, D, D) state per head is materialised)."""
    S = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)          # (B, H, T, D, D)
    z = torch.cumsum(k, dim=2)                                          # (B, H, T, D)
    num = torch.einsum("bhtd,bhtde->bhte", q, S)                        # (B, H, T, D)
    den = (q * z).sum(-1, keepdim=True)                                 # (B, H, T, 1)
    return num / (den + eps)


def linear_attention_chunked(q, k, v, chunk, eps=1e-6):
    """Fast path (the model's): masked q k^T inside chunks of length C plus the state of all earlier
    chunks from an exclusive cumsum over chunks; only T / C states of (D, D) are built, so it runs
    ~10x faster than the per-token cumsum at T = 128 on a CPU."""
    B, H, T, D = q.shape
    pad = (-T) % chunk                                                  # zero tokens after the end
    q, k, v = (F.pad(x, (0, 0, 0, pad)).reshape(B, H, -1, chunk, x.shape[-1]) for x in (q, k, v))
    scores = (q @ k.transpose(-1, -2)).tril()                           # (B, H, n, C, C)
    kv = k.transpose(-1, -2) @ v                                        # (B, H, n, D, D)
    S = kv.cumsum(dim=2) - kv                                           # sum over earlier chunks
    z = k.sum(dim=3, keepdim=True)                                      # (B, H, n, 1, D)
    Z = z.cumsum(dim=2) - z
    num = scores @ v + q @ S                                            # (B, H, n, C, D)
    den = scores.sum(-1, keepdim=True) + (q * Z).sum(-1, keepdim=True)  # (B, H, n, C, 1)
    return (num / (den + eps)).reshape(B, H, -1, v.shape[-1])[:, :, :T]  # (B, H, T, D)


def gla_recurrent(q, k, v, log_alpha):
    """Reference: S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, one step per token."""
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])                               # (B, H, D, D)
    outs = []
    for t in range(T):
        S = log_alpha[:, :, t].exp().unsqueeze(-1) * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], S))      # (B, H, D)
    return torch.stack(outs, dim=2)                                     # (B, H, T, D)


def gla_chunked(q, k, v, log_alpha, chunk):
    """Fast path: parallel inside chunks of length C (Yang et al. Sec. 4.2: P = (Q * B)(K / B)^T),
    recurrent across the T / C chunks only. Needs C * min(log_alpha) > -88 so exp(-log b) stays
    finite in fp32; Attention clamps log_alpha to guarantee it."""
    B, H, T, D = q.shape
    pad = (-T) % chunk                                                  # zero tokens after the end
    q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, log_alpha))
    n = (T + pad) // chunk
    q, k, v, g = (x.reshape(B, H, n, chunk, -1) for x in (q, k, v, g))  # (B, H, n, C, D)
    b = g.cumsum(dim=3)                                                 # log b_t inside each chunk
    scores = ((q * b.exp()) @ (k * (-b).exp()).transpose(-1, -2)).tril()  # (B, H, n, C, C)
    intra = scores @ v                                                  # (B, H, n, C, D)
    S = q.new_zeros(B, H, D, v.shape[-1])                               # (B, H, D, D)
    outs = []
    for i in range(n):
        b_i, b_last = b[:, :, i], b[:, :, i, -1:]                       # (B, H, C, D), (B, H, 1, D)
        outs.append((q[:, :, i] * b_i.exp()) @ S + intra[:, :, i])      # (B, H, C, D)
        k_to_end = k[:, :, i] * (b_last - b_i).exp()                   # k_s * b_C / b_s
        S = b_last.transpose(-1, -2).exp() * S + k_to_end.transpose(-1, -2) @ v[:, :, i]
    return torch.stack(outs, dim=2).reshape(B, H, n * chunk, -1)[:, :, :T]  # (B, H, T, D)


# ----------------------------------------------------------------------------
# Modules

class Attention(nn.Module):
    """Causal multi-head attention: softmax, linear (Katharopoulos) or gated linear (GLA)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(cfg.dim, cfg.dim, bias=False)
                                              for _ in range(4))
        if cfg.attention == "gla":
            self.gate_down = nn.Linear(cfg.dim, cfg.gla_gate_rank, bias=False)   # W_a1
            self.gate_up = nn.Linear(cfg.gla_gate_rank, cfg.dim)                 # W_a2, b
            self.wr = nn.Linear(cfg.dim, cfg.dim, bias=False)                    # output gate W_r
            self.head_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, freqs_cis=None, need_weights=False):
        """x (B, T, dim) -> (out (B, T, dim), weights (B, H, T, T) or None)."""
        cfg, (B, T, _) = self.cfg, x.shape
        q, k, v = (w(x).view(B, T, cfg.n_heads, cfg.head_dim) for w in (self.wq, self.wk, self.wv))
        if freqs_cis is not None:
            q, k = rope.apply_rotary_emb(q, k, freqs_cis[:T])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                # (B, H, T, D)
        weights = None
        if cfg.attention == "softmax" and need_weights:
            out, weights = softmax_attention_reference(q, k, v)
        elif cfg.attention == "softmax":                    # fused kernel, no T x T weights kept
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif cfg.attention == "linear":
            q, k = elu_feature_map(q), elu_feature_map(k)
            out = linear_attention_chunked(q, k, v, cfg.attention_chunk)
        else:
            log_alpha = F.logsigmoid(self.gate_up(self.gate_down(x))) / cfg.gla_tau  # (B, T, dim)
            # keeps C * log_alpha > -88 (fp32 exp range); a no-op for gate logits > -80 tau / C
            log_alpha = log_alpha.clamp(min=-80.0 / cfg.attention_chunk)
            log_alpha = log_alpha.view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
            out = gla_chunked(q / math.sqrt(cfg.head_dim), k, v, log_alpha, cfg.attention_chunk)
            out = self.head_norm(out)                                   # per-head RMSNorm
        out = out.transpose(1, 2).reshape(B, T, cfg.dim)                # (B, T, dim)
        if cfg.attention == "gla":
            out = out * F.silu(self.wr(x))
        return self.dropout(self.wo(out)), weights


class FeedForward(nn.Module):
    """MLP g(z) = W_2 GELU(W_1 z) (GPT-2's block MLP)."""

    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.gelu(self.w1(x))))


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, freqs_cis=None, need_weights=False):
        if self.pre_norm:
            attn, weights = self.attention(self.attention_norm(x), freqs_cis, need_weights)
            h = x + attn
            return h + self.feed_forward(self.ffn_norm(h)), weights
        attn, weights = self.attention(x, freqs_cis, need_weights)
        h = self.attention_norm(x + attn)
        return self.ffn_norm(h + self.feed_forward(h)), weights


class TransformerModel(nn.Module):
    """Causal decoder-only transformer: embedding, blocks, final RMSNorm, unembedding."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.positional == "learned":
            self.pos_embeddings = nn.Embedding(cfg.block_size, cfg.dim)
        if cfg.positional == "rope":
            freqs = rope.precompute_freqs_cis(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.register_buffer("freqs_cis", freqs, persistent=False)  # derived, not saved
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(_init_normal)

    def forward(self, tokens, return_attention=False):
        """tokens (B, T) -> logits (B, T, V), plus per-layer weights (B, H, T, T) if asked."""
        x = self.tok_embeddings(tokens)                                 # (B, T, dim)
        if self.cfg.positional == "learned":
            x = x + self.pos_embeddings(torch.arange(tokens.shape[1], device=tokens.device))
        freqs_cis = self.freqs_cis if self.cfg.positional == "rope" else None
        maps = []
        for layer in self.layers:
            x, weights = layer(x, freqs_cis, return_attention)
            maps.append(weights)
        logits = self.output(self.norm(x))                              # (B, T, V)
        return (logits, maps) if return_attention else logits


def _init_normal(module):
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class LSTMSeqModel(nn.Module):
    """Embedding -> n_layers LSTM -> linear unembedding (the course's baseline)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.lstm = nn.LSTM(cfg.dim, cfg.dim, num_layers=cfg.n_layers, batch_first=True)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, tokens):
        hidden, _ = self.lstm(self.embedding(tokens))                   # (B, T, dim)
        return self.output(hidden)                                      # (B, T, V)


class KGramMLPSeqModel(nn.Module):
    """k-gram MLP made sequence-to-sequence by a sliding window over the k latest tokens."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size + 1, cfg.dim)     # row V = "before the start"
        layers, width = [], cfg.kgram_k * cfg.dim
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.SiLU()]
            width = cfg.hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(width, cfg.vocab_size))

    def _padded(self, tokens):
        return F.pad(tokens, (self.cfg.kgram_k - 1, 0), value=self.cfg.vocab_size)  # (B, T+k-1)

    def forward(self, tokens):
        """Fast path: one unfold builds every window; the MLP runs once on (B, T, k*dim)."""
        B, T = tokens.shape
        emb = self.embedding(self._padded(tokens))                     # (B, T+k-1, dim)
        windows = emb.unfold(1, self.cfg.kgram_k, 1)                    # (B, T, dim, k)
        context = windows.transpose(2, 3).reshape(B, T, -1)            # (B, T, k*dim), oldest first
        return self.net(context)                                        # (B, T, V)

    def forward_reference(self, tokens):
        """Reference: the course's loop over positions, one window at a time."""
        padded, k = self._padded(tokens), self.cfg.kgram_k
        outs = [self.net(self.embedding(padded[:, t:t + k]).flatten(1))  # (B, V) per position
                for t in range(tokens.shape[1])]
        return torch.stack(outs, dim=1)                                 # (B, T, V)


MODELS = {"lstm": LSTMSeqModel, "kgram": KGramMLPSeqModel, "transformer": TransformerModel}


def build_model(cfg):
    return MODELS[cfg.model](cfg)


# ----------------------------------------------------------------------------
# Tokenizers (offline): BPE trained here; bytes are tokenizer.ByteTokenizer() (V = 256)

def train_bpe_tokenizer(paths, vocab_size, max_bytes=4 << 20):
    """SentencePiece BPE trained on the non-blank lines of the first max_bytes of each file
    (tokenizer.train_sentencepiece: identity normalisation, byte fallback, exact whitespace with
    "\\n" a piece of its own, so decode(encode(s)) == s chunk by chunk). kind "bpe"."""

    def lines():
        for path in paths:
            seen = 0
            for text in data.iter_text_chunks(path):
                yield from (line for line in text.split("\n") if line.strip())
                seen += len(text)
                if seen >= max_bytes:
                    break
    return train_sentencepiece(lines(), vocab_size, model_type="bpe", normalization="identity",
                               exact_whitespace=True)


# ----------------------------------------------------------------------------
# Generation and diversity metrics

@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, top_p=None, generator=None):
    """Continue prompt_ids: greedy when top_p is None, else nucleus sampling (sample.py); the
    context is cropped to the last block_size tokens, the longest the model was trained on."""
    model.eval()
    device = next(model.parameters()).device
    tokens = list(prompt_ids)
    for _ in range(max_new_tokens):
        context = torch.tensor([tokens[-model.cfg.block_size:]], device=device)  # (1, T)
        logits = model(context)[0, -1].float()                          # (V,)
        if top_p is None:
            next_id = logits.argmax()
        else:
            next_id = sample.nucleus_sampling(logits, top_p, generator)
        tokens.append(int(next_id))
    return tokens[len(prompt_ids):]


def ngrams(words, n):
    return list(zip(*(words[i:] for i in range(n))))


def distinct_n(samples, n):
    """Unique n-grams / all n-grams, pooled over the samples (word lists)."""
    grams = [g for words in samples for g in ngrams(words, n)]
    return len(set(grams)) / max(len(grams), 1)


def repetition_rate(words, n=4):
    """Fraction of a sample's n-grams that repeat an earlier one (seq-rep-n)."""
    grams = ngrams(words, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def encode_prompt(tokenizer, prompt):
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("--prompt is empty; give some text for the model to continue")
    return ids


def p_sweep(model, tokenizer, prompt, ps, n_samples, max_new_tokens, seed):
    """For each p: n_samples continuations -> distinct-1/2, mean rep-4 and one sample text."""
    device = next(model.parameters()).device
    rows, ids = [], encode_prompt(tokenizer, prompt)
    for p in ps:
        generator = torch.Generator(device=device).manual_seed(seed)
        texts = [tokenizer.decode(generate(model, ids, max_new_tokens, p, generator))
                 for _ in range(n_samples)]
        words = [t.split() for t in texts]
        rows.append({"p": p, "distinct_1": distinct_n(words, 1), "distinct_2": distinct_n(words, 2),
                     "rep_4": float(np.mean([repetition_rate(w) for w in words])),
                     "sample": texts[0]})
    return rows
