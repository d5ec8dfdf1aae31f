"""Scoring text with a language model: final hidden states, the LM head, and the log-likelihood
of a continuation after a prompt. The primitives every classifier, instruction fine-tuning run and
evaluation builds on; nothing here knows about labels files, options or training.

A continuation c = (c_1 .. c_m) after a prompt of n tokens scores
    score(c) = sum_{j=1..m} log softmax(W_out h_{n-1+j})[c_j]
where h_t is the final-norm hidden state at position t of prompt + continuation (Radford et al.
2019, "Language Models are Unsupervised Multitask Learners", Sec. 3). Single-token continuations
need one forward pass of the prompt alone (h_{n-1} is the prompt's last token); longer ones read
the prompt's keys and values once from the KV cache (llama.py) and feed each continuation after it.

Shapes: B batch, T tokens, dim model width, V vocabulary, K continuations, m continuation tokens.
continuation_logprobs does the same for any (context, continuation) pairs (the evaluation
harness, lm-eval's loglikelihood requests), each distinct context computed once: a tree row holds
the context and every continuation after it, c_1..c_{m-1} of continuation k taking positions
n, n+1, ... and attending to the context and its own earlier tokens only (the mask), so one
forward of n + sum_k (m_k - 1) tokens scores all K where K full forwards take K n + sum_k m_k
(the "tree attention" of speculative decoding's verifiers, Miao et al. 2023, SpecInfer,
arXiv 2305.09781); a model without blocks (a prompt/prefix wrapper) continues from the KV cache.
Tested in tests/test_scoring.py: batched padded scores == one unpadded forward per prompt and
continuation (label_scores_reference, continuation_logprobs_reference), tree == cached ==
reference, tree_inputs' positions and mask written by hand, cached == uncached,
right-padded hidden states == a row alone.
"""
import torch
import torch.nn.functional as F

import data
import sample
import weights


def last_token_index(attention_mask):
    """(B, T) mask of 1 real / 0 pad -> (B,) position of each row's last real token."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)   # (T,)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)                    # (B,)


def pool_last_token(hidden, attention_mask):
    """hidden (B, T, dim) -> (B, dim) at each row's last real token (any padding side)."""
    index = last_token_index(attention_mask)                                          # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]         # (B, dim)


def uses_bos(tokenizer):
    """Prepend BOS only if the model was trained with it (Llama 2/3 yes; SmolLM2 no)."""
    return getattr(tokenizer, "add_bos", True)


def lm_head_weight(model):
    """The (V, dim) output projection (tied to tok_embeddings when config.tie_embeddings)."""
    return model.output.weight


def is_right_padded(attention_mask):
    """True when every row is 1..1 0..0 (real tokens first, pads after)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def hidden_states(model, tokens, attention_mask):
    """Final-norm hidden states (B, T, dim); last_only skips the full (B, T, V) logits.

    With right padding the plain causal mask is exact for every real position (a real token only
    sees earlier, real tokens; positions are 0..n_b-1 either way), so the mask is dropped: the
    model then takes its is_causal SDPA path, faster than an explicit (B, 1, T, T) mask.
    """
    if attention_mask is not None and is_right_padded(attention_mask):
        attention_mask = None
    _, hidden = model(tokens, attention_mask=attention_mask, last_only=True)
    return hidden


def label_scores_reference(model, prompt, label_ids):
    """Readable oracle: one unpadded forward per label, full logits -> (K,) log-likelihoods."""
    device = lm_head_weight(model).device
    scores = []
    for label in label_ids:
        tokens = torch.tensor([prompt + label], device=device)                       # (1, n + m)
        logits, _ = model(tokens)                                                    # (1, n + m, V)
        logp = F.log_softmax(logits[0, len(prompt) - 1:-1].float(), dim=-1)          # (m, V)
        scores.append(logp[torch.arange(len(label)), torch.tensor(label)].sum())
    return torch.stack(scores)                                                       # (K,)


def label_scores(model, prompts, label_ids, pad_id):
    """Batched label log-likelihoods (B, K) for B prompts and K labels.

    Fast paths: with single-token labels all K scores come from the prompt's last position (one
    right-padded forward of B rows instead of B*K). Otherwise each prompt is prefilled once into
    the KV cache (left-padded, as generation does) and each label's continuation is read from
    there: one forward of B prompts plus K forwards of at most m - 1 tokens, instead of B*K rows of
    prompt + label.
    """
    device = lm_head_weight(model).device
    if all(len(label) == 1 for label in label_ids):
        tokens, mask = data.pad_batch(prompts, pad_id)                               # (B, T)
        hidden = hidden_states(model, tokens.to(device), mask.to(device))            # (B, T, dim)
        last = pool_last_token(hidden, mask.to(device))                              # (B, dim)
        logp = F.log_softmax(F.linear(last, lm_head_weight(model)).float(), dim=-1)  # (B, V)
        return logp[:, [label[0] for label in label_ids]]                            # (B, K)
    return label_scores_cached(model, prompts, label_ids, pad_id)


def prefill(model, prompts, pad_id, room):
    """Write B prompts, left-padded, into the KV cache (made or grown to hold `room` more tokens)
    -> (log-probabilities of the next token after each prompt (B, V) fp32, the padded length T)."""
    tokens, mask = sample.left_pad(prompts, pad_id, lm_head_weight(model).device)  # (B, T)
    B, T = tokens.shape
    if model.cache is None or not model.cache.fits(B, T + room):
        model.setup_cache(B, T + room)
    logits, _ = model(tokens, start_pos=0, attention_mask=None if bool(mask.all()) else mask,
                      last_only=True)                                               # (B, 1, V)
    return F.log_softmax(logits[:, -1].float(), dim=-1), T                          # (B, V)


@torch.no_grad()
def label_scores_cached(model, prompts, label_ids, pad_id):
    """score_k = log p(a_k1 | prompt) + sum_{j>1} log p(a_kj | prompt, a_k<j), the prompt's keys and
    values computed once: label k's tokens 1..m-1 are fed at cache slots T.. (later labels
    overwrite the same slots; attention never reads past the tokens fed)."""
    device = lm_head_weight(model).device
    first, T = prefill(model, prompts, pad_id, max(len(label) for label in label_ids))
    B = first.shape[0]
    scores = []
    for label in label_ids:
        score = first[:, label[0]]                                                  # (B,)
        if len(label) > 1:
            feed = torch.tensor([label[:-1]] * B, device=device)                   # (B, m_k - 1)
            out, _ = model(feed, start_pos=T)                                       # (B, m_k - 1, V)
            logp = F.log_softmax(out.float(), dim=-1)
            score = score + logp[:, torch.arange(len(label) - 1), label[1:]].sum(-1)
        scores.append(score)
    return torch.stack(scores, dim=1)                                               # (B, K)



# ----------------------------------------------------------------------------
# continuations of any contexts (the evaluation harness: evaluation.py)

@torch.no_grad()
def continuation_logprobs_reference(model, context_ids, continuation_ids):
    """Readable oracle: one full forward of context + continuation -> the 0-d summed log-prob of
    the continuation's tokens, log p(c_j | context, c_<j) summed over j."""
    device = lm_head_weight(model).device
    n = len(context_ids)
    tokens = torch.tensor([context_ids + continuation_ids], device=device)       # (1, n + m)
    logits, _ = model(tokens)                                                    # (1, n + m, V)
    logp = F.log_softmax(logits[0, n - 1:-1].float(), dim=-1)                    # (m, V)
    return logp[torch.arange(len(continuation_ids)), torch.tensor(continuation_ids)].sum()


def max_tokens(model):
    """Tokens one sequence may hold: config.max_seq_len, less the virtual tokens a prompt or
    prefix adapter puts in front (adapters.VirtualTokenLlama)."""
    return model.config.max_seq_len - getattr(model, "num_virtual_tokens", 0)


def _check_pairs(pairs, limit):
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"continuation_logprobs: request {i} has an empty context or "
                             "continuation; give at least one token of each")
        if len(context) + len(continuation) - 1 > limit:
            raise ValueError(f"continuation_logprobs: request {i} feeds "
                             f"{len(context) + len(continuation) - 1} tokens > the model's "
                             f"{limit}; cut the context's start (evaluation.truncate)")


def _order(by_context):
    """The contexts in prefill order. A group pads its contexts to the longest and its j-th
    continuations to the longest j-th, so neighbours should match in both: context length in
    steps of 8 tokens, then the continuations' lengths, longest first. On ARC-Easy's training
    split this feeds 1.2x the tokens scored instead of 1.7x when sorting by context alone."""
    return sorted(by_context, key=lambda c: (
        len(c) // 8, sorted((len(x) for _, x in by_context[c]), reverse=True)))


def _groups(contexts, longest, batch_size, limit):
    """Contexts in order -> runs of at most batch_size whose padded length T plus the longest
    continuation's fed tokens fit the limit."""
    groups = []
    for context in contexts:
        group = groups[-1] if groups else []
        T = max(len(c) for c in group + [context])
        m = max(longest[c] for c in group + [context])
        if group and len(group) < batch_size and T + m - 1 <= limit:
            group.append(context)
        else:
            groups.append([context])
    return groups


def tree_rows(by_context, limit):
    """{context: [(pair index, continuation)]} -> rows [(context, [(pair index, continuation)])]:
    each context with as many of its continuations as fit `limit` tokens in one row (context +
    c_1..c_{m-1} of each), more rows for the rest; longest rows first."""
    rows = []
    for context, conts in by_context.items():
        row, length = [], len(context)
        for i, c in conts:
            if row and length + len(c) - 1 > limit:
                rows.append((context, row))
                row, length = [], len(context)
            row.append((i, c))
            length += len(c) - 1
        rows.append((context, row))
    return sorted(rows, key=row_length, reverse=True)


def tree_inputs(rows, pad_id):
    """One row per context: tokens = context, then c_1..c_{m-1} of each continuation k as block
    k+1, right-padded (block -1) -> tokens, positions (B, L), mask (B, 1, L, L) and the scored
    tokens: (pair, b, column that predicts it, token) per continuation token. Block k's tokens
    take positions n, n+1, ... (as if alone after the context) and attend to the context and to
    their own block's earlier tokens: the context, fed once, serves every continuation."""
    L = max(map(row_length, rows))
    tokens, positions, blocks, scored = [], [], [], []
    for b, (context, conts) in enumerate(rows):
        n = len(context)
        tok, pos, blk = list(context), list(range(n)), [0] * n
        for k, (i, c) in enumerate(conts, start=1):
            scored.append((i, b, n - 1, c[0]))                  # c_1 from the context's last
            scored += [(i, b, len(tok) + j, c[j + 1]) for j in range(len(c) - 1)]
            tok, pos, blk = tok + c[:-1], pos + list(range(n, n + len(c) - 1)), blk + [k] * (len(c) - 1)
        tokens.append(tok + [pad_id] * (L - len(tok)))
        positions.append(pos + [0] * (L - len(pos)))           # a pad sees token 0: no empty row
        blocks.append(blk + [-1] * (L - len(blk)))
    positions = torch.tensor(positions)                                       # (B, L)
    return torch.tensor(tokens), positions, block_mask(torch.tensor(blocks), positions), scored


def block_mask(blocks, positions):
    """Attention within blocks -> bool (B, 1, L, L), True = may attend: a query sees the keys of
    its own block and of block 0 (shared by all) at positions up to its own. blocks (B, L): 0 a
    shared block (a tree row's context), k >= 1 block k (a continuation; a packed example),
    -1 padding (position 0: pads see pads and block 0's first token, no real token sees a pad).
    Every token sees itself, so no row is all False (no NaN in softmax)."""
    q_blk, k_blk = blocks[:, :, None], blocks[:, None, :]                     # (B, L, 1), (B, 1, L)
    causal = positions[:, None, :] <= positions[:, :, None]                   # (B, L, L)
    return (((k_blk == q_blk) | (k_blk == 0)) & causal)[:, None]              # (B, 1, L, L)


@torch.no_grad()
def tree_logprobs(model, rows, pad_id, chunk=512):
    """[(pair index, summed log-prob)] of rows (tree_rows) in one forward of model.blocks: the
    LM head only at the columns that predict a continuation token, `chunk` rows of it at a time
    (the (N, V) log-probs of a large vocabulary stay small)."""
    device = lm_head_weight(model).device
    tokens, positions, mask, scored = tree_inputs(rows, pad_id)
    hidden = model.blocks(tokens.to(device), positions.to(device), mask.to(device))  # (B, L, dim)
    at = sorted({(b, col) for _, b, col, _ in scored})                  # columns that predict
    where = {key: u for u, key in enumerate(at)}
    h = hidden[torch.tensor([b for b, _ in at]), torch.tensor([col for _, col in at])]   # (U, dim)
    which = torch.tensor([where[b, col] for _, b, col, _ in scored])
    target = torch.tensor([t for *_, t in scored])
    values = torch.empty(len(scored))
    for start in range(0, len(at), chunk):
        logp = F.log_softmax(F.linear(h[start:start + chunk], lm_head_weight(model)).float(), -1)
        sel = (which >= start) & (which < start + chunk)
        values[sel] = logp[which[sel] - start, target[sel].to(device)].cpu()
    sums = {}
    for (i, *_), v in zip(scored, values.tolist()):
        sums[i] = sums.get(i, 0.0) + v
    return list(sums.items())


def row_length(row):
    """Tokens of a tree row (context, [(pair index, continuation)]): n + sum of (m - 1)."""
    return len(row[0]) + sum(len(c) - 1 for _, c in row[1])


def _tree_groups(rows, batch_size, budget):
    """Rows, longest first (so a group's first row sets its padded length) -> runs of at most
    batch_size rows and `budget` padded tokens (a longer row alone)."""
    groups = []
    for row in rows:
        group = groups[-1] if groups else []
        if group and len(group) < batch_size and (len(group) + 1) * row_length(group[0]) <= budget:
            group.append(row)
        else:
            groups.append([row])
    return groups


@torch.no_grad()
def continuation_logprobs(model, pairs, pad_id, batch_size=16):
    """Fast path, equal to continuation_logprobs_reference per pair: pairs = [(context ids,
    continuation ids)] -> [summed log-prob]. Each distinct context is computed once for all its
    continuations: in one forward of tree rows (tree_scores) when the model exposes blocks (a
    Llama, with LoRA or IA3 inside), else from the KV cache (cached_scores: prompt and prefix
    tuning's wrappers). Either way far fewer tokens than one full forward per pair."""
    _check_pairs(pairs, max_tokens(model))
    by_context = {}
    for i, (context, continuation) in enumerate(pairs):
        by_context.setdefault(tuple(context), []).append((i, continuation))
    scores = [0.0] * len(pairs)
    found = tree_scores if hasattr(model, "blocks") else cached_scores
    for i, score in found(model, by_context, pad_id, batch_size):
        scores[i] = score
    return scores


def tree_scores(model, by_context, pad_id, batch_size):
    """[(pair index, summed log-prob)]: contexts with their continuations as tree rows
    (tree_rows, at most max_tokens each), longest first, batch_size rows and batch_size * 256
    padded tokens to a forward (tree_logprobs)."""
    rows = tree_rows(by_context, max_tokens(model))
    return [pair for group in _tree_groups(rows, batch_size, batch_size * 256)
            for pair in tree_logprobs(model, group, pad_id)]


def cached_scores(model, by_context, pad_id, batch_size):
    """[(pair index, summed log-prob)]: up to batch_size contexts prefilled at a time into the KV
    cache (left-padded, in _order, as many as fit max_tokens with their longest continuation);
    then the j-th continuation of every context fed after it in one call (c_1 .. c_{m-1}; later
    calls overwrite the same slots, and attention never reads past the tokens fed)."""
    longest = {c: max(len(x) for _, x in conts) for c, conts in by_context.items()}
    return [pair for group in _groups(_order(by_context), longest, batch_size, max_tokens(model))
            for pair in _score_group(model, group, [by_context[c] for c in group], pad_id)]


def _score_group(model, contexts, continuations, pad_id):
    """[(pair index, summed log-prob)] for the continuations of B contexts (see above)."""
    device = lm_head_weight(model).device
    m = max(len(c) for conts in continuations for _, c in conts)
    first, T = prefill(model, [list(c) for c in contexts], pad_id, m - 1)   # c_1..c_{m-1}
    # longest first in every row: the j-th call's rows have similar lengths, less right padding
    continuations = [sorted(conts, key=lambda pair: -len(pair[1])) for conts in continuations]
    out = []
    for j in range(max(len(conts) for conts in continuations)):
        rows = [conts[j] if j < len(conts) else (None, [pad_id]) for conts in continuations]
        width = max(len(c) for _, c in rows) - 1
        if width > 0:                                          # c_1 .. c_{m-1}, right-padded
            feed = torch.tensor([c[:-1] + [pad_id] * (width - len(c) + 1) for _, c in rows],
                                device=device)                                   # (B, width)
            logp = F.log_softmax(model(feed, start_pos=T)[0].float(), dim=-1)    # (B, width, V)
        for b, (i, c) in enumerate(rows):
            if i is not None:
                rest = logp[b, torch.arange(len(c) - 1), c[1:]].sum() if len(c) > 1 else 0.0
                out.append((i, float(first[b, c[0]] + rest)))
    return out


def load_model(path, device):
    """(Llama in fp32, Tokenizer) for the scoring and training options: prompt, finetune, lora,
    sft and its studies (tests replace it with a tiny model)."""
    return weights.load_pretrained(path, device=device, dtype=torch.float32, require_tokenizer=True)
