"""Packing: the examples of one training batch laid end to end in a few rows of at most --max_len
tokens, instead of one right-padded row each, with document masking, so that the packed batch
computes exactly what the unpacked batch computes, minus the padding.

An unpacked batch of B examples of lengths n_1 .. n_B costs B * max_b n_b token slots. Packed,
the same examples fill R rows of L <= max_len slots, R * L close to sum_b n_b. Example b, placed
at columns s_b .. s_b + n_b - 1 of its row, gets
    positions  0 .. n_b - 1     RoPE restarts: the example sees the positions it has alone
    block      b + 1            scoring.block_mask: a token attends only to earlier tokens of its
                                own example (block-diagonal causal); pads are block -1
    labels     its own labels, and IGNORE at s_b (its first token has nothing of its own before
               it; unpacked, position 0 is never predicted either)
so every example's hidden states, logits and loss equal those of the example alone, and the
batch's summed loss and every gradient equal the unpacked batch's (tests/test_packing.py).
The batch is kept: the same examples make each optimizer step, so a packed run takes the same
steps as an unpacked one (to fp32 rounding). Only padding is removed.

Shared prefix: when every example of the batch starts with the same p tokens (a chat template's
system prompt and user header; common_prefix), each row holds them once as block 0, which every
example in the row attends to (scoring.block_mask), and each example only its tokens after them,
at positions p, p+1, ...: causal attention means the prefix's hidden states do not depend on what
follows, so they are the same for every example, and backward sums each example's gradient
through them, as the unpacked batch does. No loss is read from a shared position.

Rows (`rows`): for each row count R from ceil(sum n / max_len) up, the examples longest first,
each into the row it fills best (best-fit decreasing; an example is never split) under a row
size from ceil(sum n / R) up to max_len; the layout with the fewest padded slots R * L wins.

The packed forward calls model.blocks (llama.Llama) with these positions and this mask, past
Llama.forward: LoRA and IA3 (Linears wrapped inside the Llama) and full fine-tuning pack; prompt
and prefix tuning (virtual tokens in front of every example) and DDP / FSDP (their hooks live in
forward) do not (run_sft.py refuses them in one line).
"""
import os

import torch

import scoring


def best_fit(lengths, order, capacity):
    """Examples in `order` -> rows of example indices: each goes to the row with the least room
    left that still holds it, or starts a new row of `capacity`."""
    rows, room = [], []
    for i in order:
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        if fits:
            r = min(fits, key=room.__getitem__)
            rows[r].append(i)
            room[r] -= lengths[i]
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def rows(lengths, max_len, step=8):
    """[[example index, ...] per row], each row's lengths summing to <= max_len, with the fewest
    padded slots (rows * the longest row) found over row counts R (see the module docstring)."""
    longest, total = max(lengths), sum(lengths)
    if longest > max_len:
        raise ValueError(f"packing: an example of {longest} tokens > --max_len {max_len}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best, cost = None, None
    for R in range(-(-total // max_len), len(lengths) + 1):
        capacity = max(longest, -(-total // R))
        layout = best_fit(lengths, order, capacity)
        while len(layout) > R and capacity < max_len:
            capacity = min(capacity + step, max_len)
            layout = best_fit(lengths, order, capacity)
        slots = len(layout) * max(sum(lengths[i] for i in row) for row in layout)
        if cost is None or slots < cost:
            best, cost = layout, slots
        if cost == total:                                  # no padding at all: done
            break
    return best


def common_prefix(examples, ignore):
    """p: how many leading tokens every example shares and may share in a packed row: the
    longest common prefix of the ids, cut so that labels 0..p of every example are `ignore`
    (no loss is read from a shared position, nor from the token just after it)."""
    first = examples[0][0]
    p = min(len(ids) for ids, _ in examples)
    for ids, _ in examples[1:]:
        p = next((j for j in range(p) if ids[j] != first[j]), p)
    for _, labels in examples:
        loss_at = next((j for j, label in enumerate(labels) if label != ignore), len(labels))
        p = min(p, loss_at - 1)
    return max(p, 0)


def pack(examples, pad_id, max_len, ignore, shared=0):
    """examples [(ids, labels)] (labels: the ids or `ignore` per position) -> one packed batch
    {tokens, positions, blocks, labels, attention_mask} (R, L), "rows": the layout, and "last"
    (B, 2): the (row, column) of each example's last token, in example order.
    shared: the first `shared` tokens are the same in every example (common_prefix: a chat
    template's system prompt): each row holds them once, as block 0, which every example of
    the row attends to, and each example adds only its tokens after them (positions shared..)."""
    lengths = [len(ids) - shared for ids, _ in examples]
    layout = rows(lengths, max_len - shared)
    L = shared + max(sum(lengths[i] for i in row) for row in layout)
    tokens = torch.full((len(layout), L), pad_id, dtype=torch.long)          # (R, L)
    positions = torch.zeros((len(layout), L), dtype=torch.long)              # (R, L)
    blocks = torch.full((len(layout), L), -1, dtype=torch.long)              # (R, L)
    labels = torch.full((len(layout), L), ignore, dtype=torch.long)          # (R, L)
    last = torch.zeros((len(examples), 2), dtype=torch.long)                 # (B, 2)
    prefix = torch.tensor(examples[0][0][:shared], dtype=torch.long)
    for r, row in enumerate(layout):
        tokens[r, :shared] = prefix                          # block 0: the shared tokens
        positions[r, :shared] = torch.arange(shared)
        blocks[r, :shared] = 0
        start = shared
        for i in row:
            (ids, example_labels), n = examples[i], lengths[i]
            span = slice(start, start + n)
            tokens[r, span] = torch.tensor(ids[shared:])
            positions[r, span] = torch.arange(shared, shared + n)
            blocks[r, span] = i + 1
            labels[r, span] = torch.tensor([ignore] + list(example_labels[shared + 1:]))
            last[i] = torch.tensor([r, start + n - 1])
            start += n
    return {"tokens": tokens, "positions": positions, "blocks": blocks, "labels": labels,
            "attention_mask": (blocks >= 0).long(), "rows": layout, "shared": shared, "last": last,
            "real_tokens": sum(len(ids) for ids, _ in examples)}


def hidden_states(model, batch):
    """Final-norm hidden states (R, L, dim) of a packed batch: model.blocks with each example's
    own positions and the block-diagonal causal mask."""
    device = scoring.lm_head_weight(model).device
    positions = batch["positions"].to(device)
    mask = scoring.block_mask(batch["blocks"].to(device), positions)               # (R, 1, L, L)
    return model.blocks(batch["tokens"].to(device), positions, mask)


def why_not(fsdp=False):
    """None where a driver may pack, else why not: under torchrun (WORLD_SIZE > 1) or --fsdp,
    DDP / FSDP synchronise in forward, which packed rows (model.blocks) bypass."""
    processes = os.environ.get("WORLD_SIZE", "1")
    if processes not in ("", "1") or fsdp:
        return (f"under torchrun (WORLD_SIZE {processes}) DDP / FSDP synchronise in forward, "
                "which packed rows bypass")
    return None


def resolve(requested, why, fix="drop --packing"):
    """A driver's --packing (True / False / None = default) given why it cannot pack (None when it
    can): the default is on exactly where it can; an explicit --packing where it cannot is one
    line naming the fix. -> packing on or off."""
    if requested and why:
        raise ValueError(f"--packing: {why}; {fix}")
    return why is None if requested is None else requested


def can_pack(model):
    """Whether the model's body can be called with packed positions and mask (a Llama, LoRA or
    IA3 inside); a virtual-token wrapper or a DDP / FSDP wrapper cannot."""
    return hasattr(model, "blocks")
