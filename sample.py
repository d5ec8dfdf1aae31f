"""Choosing the next token from logits: greedy, temperature, truncation rules and the repetition
penalty, one function per rule, and the generation loops that use them.

With logits z over V tokens and p = softmax(z / tau) (temperature tau; tau = 0 means argmax):
    top-k      keep the k most likely tokens                     (Fan et al. 2018, arXiv 1805.04833)
    top-p      keep the smallest set of most likely tokens whose mass is >= p, i.e. sorted
               p_(1) >= p_(2) >= ..., the smallest k with p_(1) + ... + p_(k) >= p
               ("nucleus sampling", Holtzman et al. 2020, arXiv 1904.09751; seed 003)
    epsilon    keep tokens with p_i >= epsilon                        (Hewitt et al. 2022,
               "Truncation Sampling as Language Model Desmoothing", arXiv 2210.15191)
    min-p      keep tokens with p_i >= min_p * max_j p_j         (Nguyen et al. 2024, arXiv 2407.01082)
Each filter sets the removed logits to -inf and always keeps the most likely token; the survivors
are renormalised by the softmax and one token is drawn with torch.multinomial. Randomness comes only
from the torch.Generator passed in, so a fixed seed reproduces a sample.

Repetition penalty theta (CTRL: Keskar et al. 2019, arXiv:1909.05858, Section 4.1) acts on the
logits before everything else, greedy included: for every token i already in the prompt or
generated so far,
    z_i <- z_i * theta   if z_i < 0,        z_i <- z_i / theta   otherwise,
so theta > 1 makes every seen token less likely whatever its sign (CTRL divides only; the sign
rule is Hugging Face's RepetitionPenaltyLogitsProcessor, which our test uses as the oracle).
theta = 1 is off. A token counts once however often it was seen.
Rules compose in the order repetition penalty, temperature, top-k, top-p, epsilon, min-p (Hugging
Face's order: logits processors, then the temperature and truncation warpers).

The settings travel together as one SamplingConfig (validated once, when it is built: run.py's
flags fail before a model is loaded); the torch.Generator stays a separate argument.

The generation loops use these rules: generate_batch prefills B left-padded prompts into the
model's KV cache (llama.KVCache) and then feeds one token per step; generate_no_cache recomputes
the whole prefix every step, the readable reference it is tested against.

Shapes: logits (B, V) or (V,) where stated; B batch, V vocabulary, T prompt tokens.
Tested in tests/test_sample.py: kept sets against sets computed by hand from sorted probabilities,
p -> 0 is greedy, p = 1 keeps the full distribution, temperature 0 is argmax, the seed's minimality,
SamplingConfig's one-line errors, the repetition penalty == transformers'
RepetitionPenaltyLogitsProcessor (exact), generate_batch == generate_no_cache with it;
tests/test_run.py: bad sampling flags fail before loading; tests/test_llama.py: generate_batch ==
generate_no_cache, left-padded rows == one prompt alone.
"""
import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------
# configuration

@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen; the defaults are greedy decoding. Field names are the flags
    of run.py (--temperature, --top_k, ...), so an error names the flag to fix. A new rule is one
    more field, its check here and its step in sample_next_token (as repetition_penalty is)."""
    temperature: float = 0.0         # tau; 0 = greedy (argmax, the filters are unused)
    top_k: Optional[int] = None      # keep the k most likely tokens, k >= 1; None = off
    top_p: Optional[float] = None    # nucleus mass p, 0 < p <= 1 (1 keeps all); None = off
    epsilon: Optional[float] = None  # drop tokens with probability < epsilon, [0, 1); None = off
    min_p: Optional[float] = None    # drop tokens below min_p * max probability, [0, 1]; None = off
    repetition_penalty: float = 1.0  # theta: seen tokens' logits / theta (> 0) or * theta; 1 = off

    def __post_init__(self):
        """One-line ValueError naming the flag, its value and the allowed range (NaN fails every
        comparison, so it is rejected too)."""
        rules = [("--temperature", self.temperature, "a finite number >= 0 (0 = greedy)",
                  lambda t: math.isfinite(t) and t >= 0),
                 ("--top_k", self.top_k, "an integer >= 1 (e.g. 50)",
                  lambda k: isinstance(k, numbers.Integral) and k >= 1),
                 ("--top_p", self.top_p, "in (0, 1] (e.g. 0.9)", lambda p: 0 < p <= 1),
                 ("--epsilon", self.epsilon, "in [0, 1) (e.g. 3e-4)", lambda e: 0 <= e < 1),
                 ("--min_p", self.min_p, "in [0, 1] (e.g. 0.05)", lambda m: 0 <= m <= 1),
                 ("--repetition_penalty", self.repetition_penalty,
                  "a finite number > 0 (1 = off, e.g. 1.2)", lambda r: math.isfinite(r) and r > 0)]
        for flag, value, rule, allowed in rules:
            optional = flag not in ("--temperature", "--repetition_penalty")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not allowed(value):
                off = "; leave it out to switch it off" if optional else ""
                raise ValueError(f"{flag} {value}: must be {rule}{off}")

    @property
    def greedy(self):
        return self.temperature == 0


GREEDY = SamplingConfig()   # the default everywhere: argmax, no filters


# ----------------------------------------------------------------------------
# one function per rule: logits (..., V) -> logits (..., V) with removed tokens at -inf

def apply_repetition_penalty(logits, previous, penalty):
    """CTRL's penalty: logits (B, V), previous (B, T) ids or B lists of ids (rows may differ in
    length: left padding is not a token the row has seen) -> logits (B, V) where each seen token's
    logit z is z * penalty if z < 0, else z / penalty."""
    logits = logits.clone()
    for row, ids in enumerate(previous):
        seen = torch.as_tensor(ids, dtype=torch.long, device=logits.device).unique()  # (n,)
        z = logits[row, seen]                                                # (n,)
        logits[row, seen] = torch.where(z < 0, z * penalty, z / penalty)
    return logits


def apply_temperature(logits, temperature):
    """z / tau for tau > 0 (tau < 1 sharpens, tau > 1 flattens); greedy (tau = 0) is argmax."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: use > 0 here; temperature 0 means argmax "
                         "(sample_next_token handles it)")
    return logits / temperature


def top_k_filter(logits, k):
    """Keep the k largest logits (ties with the k-th are kept too)."""
    k = min(int(k), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                    # (..., 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits, p):
    """Keep the smallest most-likely set with mass >= p: sorted token j stays iff the mass strictly
    before it is < p (so the token that crosses p stays). p >= 1 keeps everything."""
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)                            # (..., V)
    sorted_probs, order = probs.sort(dim=-1, descending=True)                # (..., V)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs                 # (..., V)
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False                                            # p -> 0: greedy
    remove = remove_sorted.scatter(-1, order, remove_sorted)                 # back to vocab order
    return logits.masked_fill(remove, NEG_INF)


def epsilon_filter(logits, epsilon):
    """Keep tokens with probability >= epsilon (and always the most likely one)."""
    probs = torch.softmax(logits.float(), dim=-1)                            # (..., V)
    keep = (probs >= epsilon) | (probs == probs.max(dim=-1, keepdim=True).values)
    return logits.masked_fill(~keep, NEG_INF)


def min_p_filter(logits, min_p):
    """Keep tokens with probability >= min_p * (largest probability)."""
    probs = torch.softmax(logits.float(), dim=-1)                            # (..., V)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values               # (..., 1)
    return logits.masked_fill(probs < threshold, NEG_INF)


# ----------------------------------------------------------------------------
# drawing a token

def sample_from_logits(logits, generator=None):
    """One token per row drawn from softmax(logits) with torch.multinomial: (B, V) -> (B,)."""
    probs = torch.softmax(logits.float(), dim=-1)                            # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)      # (B,)


def sample_next_token(logits, sampling=GREEDY, generator=None, previous=None):
    """logits (B, V) -> next token ids (B,) long, by a SamplingConfig. previous: the tokens each
    row has seen (prompt + generated; (B, T) ids or B lists), needed only by the repetition
    penalty, which comes first. Greedy (temperature 0) is then argmax; otherwise temperature, each
    filter that is set, and a multinomial draw."""
    if sampling.repetition_penalty != 1.0:
        if previous is None:
            raise ValueError("sample_next_token: a repetition penalty needs previous= the tokens "
                             "each row has seen (prompt + generated)")
        logits = apply_repetition_penalty(logits, previous, sampling.repetition_penalty)
    if sampling.greedy:
        return logits.argmax(dim=-1)                                         # (B,)
    logits = apply_temperature(logits.float(), sampling.temperature)         # (B, V)
    if sampling.top_k is not None:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None:
        logits = top_p_filter(logits, sampling.top_p)
    if sampling.epsilon is not None:
        logits = epsilon_filter(logits, sampling.epsilon)
    if sampling.min_p is not None:
        logits = min_p_filter(logits, sampling.min_p)
    return sample_from_logits(logits, generator)                             # (B,)


def nucleus_sampling(logits, p, generator=None):
    """Seed 003's top-p sampling: sort the softmax probabilities, take the smallest k with
    p_(1) + ... + p_(k-1) < p <= p_(1) + ... + p_(k), and sample from p_(1..k) renormalised.
    p -> 0 is greedy, p = 1 samples the full softmax. logits (V,) -> 0-d id, (B, V) -> (B,)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"nucleus_sampling: p={p} outside [0, 1]; use e.g. 0.9")
    rows = logits.reshape(-1, logits.shape[-1])                              # (B, V)
    tokens = sample_from_logits(top_p_filter(rows.float(), p), generator)    # (B,)
    return tokens.reshape(logits.shape[:-1])


# ----------------------------------------------------------------------------
# generation loops: prefill + one token per step (the model's KV cache), and the reference

def left_pad(prompts, pad_id, device="cpu"):
    """Lists of ids -> tokens (B, T) left-padded with pad_id, attention_mask (B, T) 1 = real."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token (e.g. BOS)")
    T = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (T - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=device)
    return tokens, mask                                                    # (B, T), (B, T)


@torch.no_grad()
def generate_batch(model, prompts, pad_id, max_new_tokens, sampling=GREEDY, stop_tokens=(),
                   generator=None, on_token=None, decode_fn=None):
    """Continue B prompts at once, left-padded (pad_id), with the KV cache; each next token is
    chosen by sampling (sample.SamplingConfig) from generator's randomness. Returns B lists of
    new ids; a row stops at its first stop token (not included). on_token(row, id) streams.
    Each row's prompt plus its new ids so far (`seen`) feed the repetition penalty.

    decode_fn: optional stand-in for model in the one-token steps, e.g. torch.compile(model,
    mode="reduce-overhead", fullgraph=True); it gets start_pos as a 0-d long tensor, so one
    captured graph (fixed shapes, attention over the whole cache) serves every step.
    """
    device = model.norm.weight.device
    tokens, mask = left_pad(prompts, pad_id, device)                       # (B, T), (B, T)
    B, T = tokens.shape
    if T + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"generate: prompt {T} + max_new_tokens {max_new_tokens} > max_seq_len="
                         f"{model.config.max_seq_len}; shorten the prompt or max_new_tokens")
    if model.cache is None or not model.cache.fits(B, T + max_new_tokens):
        model.setup_cache(B, T + max_new_tokens)
    mask = None if bool(mask.all()) else mask
    logits, _ = model(tokens, start_pos=0, attention_mask=mask, last_only=True)  # (B, 1, V)
    outputs, done = [[] for _ in range(B)], [False] * B
    seen = [list(p) for p in prompts]                                      # B lists, no padding
    for step in range(max_new_tokens):
        next_tokens = sample_next_token(logits[:, -1], sampling, generator, seen)  # (B,)
        for row, token in enumerate(next_tokens.tolist()):
            if done[row] or token in stop_tokens:
                done[row] = True
                continue
            outputs[row].append(token)
            seen[row].append(token)
            if on_token is not None:
                on_token(row, token)
        if all(done) or step == max_new_tokens - 1:
            break
        if decode_fn is None:
            logits, _ = model(next_tokens[:, None], start_pos=T + step, last_only=True)  # (B, 1, V)
        else:
            start = torch.tensor(T + step, device=device)
            logits, _ = decode_fn(next_tokens[:, None], start_pos=start, last_only=True)
    return outputs


@torch.no_grad()
def generate_no_cache(model, prompt_tokens, max_new_tokens, sampling=GREEDY,
                      stop_tokens=(), generator=None):
    """Reference for generate: recompute the whole prefix every step (O(T^2) per token)."""
    device = model.norm.weight.device
    tokens = list(prompt_tokens.reshape(-1).tolist() if torch.is_tensor(prompt_tokens)
                  else prompt_tokens)
    new = []
    for _ in range(max_new_tokens):
        logits, _ = model(torch.tensor([tokens], device=device), last_only=True)  # (1, 1, V)
        token = sample_next_token(logits[:, -1], sampling, generator, [tokens]).item()
        if token in stop_tokens:
            break
        tokens.append(token)
        new.append(token)
    return new
