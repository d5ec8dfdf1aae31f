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

Rows (`rows`): for each row count R from ceil(sum n / max_len) up, the examples longest first,
each into the row it fills best (best-fit decreasing; an example is never split) under a row
size from ceil(sum n / R) up to max_len; the layout with the fewest padded slots R * L wins.

The packed forward calls model.blocks (llama.Llama) with these positions and this mask, past
Llama.forward: LoRA and IA3 (Linears wrapped inside the Llama) and full fine-tuning pack; prompt
and prefix tuning (virtual tokens in front of every example) and DDP / FSDP (their hooks live in
forward) do not (run_sft.py refuses them in one line).
"""
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


def pack(examples, pad_id, max_len, ignore):
    """examples [(ids, labels)] (labels: the ids or `ignore` per position) -> one packed batch
    {tokens, positions, blocks, labels, attention_mask} (R, L) and "rows": the layout."""
    lengths = [len(ids) for ids, _ in examples]
    layout = rows(lengths, max_len)
    L = max(sum(lengths[i] for i in row) for row in layout)
    tokens = torch.full((len(layout), L), pad_id, dtype=torch.long)          # (R, L)
    positions = torch.zeros((len(layout), L), dtype=torch.long)              # (R, L)
    blocks = torch.full((len(layout), L), -1, dtype=torch.long)              # (R, L)
    labels = torch.full((len(layout), L), ignore, dtype=torch.long)          # (R, L)
    for r, row in enumerate(layout):
        start = 0
        for i in row:
            (ids, example_labels), n = examples[i], lengths[i]
            span = slice(start, start + n)
            tokens[r, span] = torch.tensor(ids)
            positions[r, span] = torch.arange(n)
            blocks[r, span] = i + 1
            labels[r, span] = torch.tensor([ignore] + list(example_labels[1:]))
            start += n
    return {"tokens": tokens, "positions": positions, "blocks": blocks, "labels": labels,
            "attention_mask": (blocks >= 0).long(), "rows": layout}


def hidden_states(model, batch):
    """Final-norm hidden states (R, L, dim) of a packed batch: model.blocks with each example's
    own positions and the block-diagonal causal mask."""
    device = scoring.lm_head_weight(model).device
    positions = batch["positions"].to(device)
    mask = scoring.block_mask(batch["blocks"].to(device), positions)               # (R, 1, L, L)
    return model.blocks(batch["tokens"].to(device), positions, mask)


def can_pack(model):
    """Whether the model's body can be called with packed positions and mask (a Llama, LoRA or
    IA3 inside); a virtual-token wrapper or a DDP / FSDP wrapper cannot."""
    return hasattr(model, "blocks")
