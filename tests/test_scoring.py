"""Tests for scoring.py: hidden states, pooling and continuation log-likelihoods.

Run: .venv/bin/pytest tests/test_scoring.py -q   (CPU, tiny random Llama, a few seconds)

Oracles: index arithmetic written out by hand (pooling); one unpadded forward per prompt and
continuation through the model's own full logits (label_scores_reference) for the batched
single-token path and the KV-cache path; each row alone for right-padded hidden states.
"""
import pytest
import torch

import data
import scoring
from test_classifier import tiny_llama


def test_pool_last_token_right_and_left_padding():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    expected = torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 3]])
    torch.testing.assert_close(scoring.pool_last_token(hidden, mask), expected, atol=0, rtol=0)


@pytest.mark.parametrize("label_ids", [[[5], [9], [14]], [[5, 6], [9], [14, 3, 21]]])
def test_label_scores_equal_one_forward_per_prompt_and_label(label_ids):
    """Padded batched scores (single-token: one forward; longer: prefill + cached continuations)
    == the reference; tolerance 1e-4: fp32 sums of log-probabilities in another order."""
    model = tiny_llama().eval()
    prompts = [[1, 7, 8, 9], [1, 4], [1, 30, 31, 32, 33, 34, 35]]
    with torch.no_grad():
        batched = scoring.label_scores(model, prompts, label_ids, pad_id=2)          # (3, K)
        cached = scoring.label_scores_cached(model, prompts, label_ids, pad_id=2)    # (3, K)
        oracle = torch.stack([scoring.label_scores_reference(model, p, label_ids)
                              for p in prompts])
    torch.testing.assert_close(batched, oracle, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached, oracle, atol=1e-4, rtol=1e-4)


def test_hidden_states_of_right_padded_rows_equal_each_row_alone():
    """The right-padding shortcut (no mask, plain causal) == every row run alone, at real
    positions (1e-5: fp32 matmuls over other batch shapes)."""
    model = tiny_llama().eval()
    seqs = [[1, 5, 6, 7, 8], [1, 9], [1, 10, 11]]
    tokens, mask = data.pad_batch(seqs, pad_id=2)
    assert scoring.is_right_padded(mask)
    with torch.no_grad():
        hidden = scoring.hidden_states(model, tokens, mask)                          # (3, T, dim)
        for row, seq in enumerate(seqs):
            alone = scoring.hidden_states(model, torch.tensor([seq]), None)[0]       # (n, dim)
            torch.testing.assert_close(hidden[row, :len(seq)], alone, atol=1e-5, rtol=1e-5)


def test_continuation_logprobs_equal_one_forward_per_pair():
    """Oracle: continuation_logprobs_reference (one full forward of context + continuation per
    pair). Pairs share contexts (multiple choice: one context, K continuations of 1-4 tokens),
    differ in context with one continuation (WinoGrande's partial scoring), and need several
    batches (batch_size 2 over 4 contexts). Tolerance 1e-4: fp32 sums in another order."""
    model = tiny_llama().eval()
    shared = [1, 7, 8, 9]
    pairs = ([(shared, c) for c in ([5], [9, 10], [14, 3, 21, 4])]
             + [([1, 30 + k, 31, 32][:2 + k], [40, 41]) for k in range(3)]
             + [([2, 3], [6])])
    fast = scoring.continuation_logprobs(model, pairs, pad_id=2, batch_size=2)
    with torch.no_grad():
        oracle = [float(scoring.continuation_logprobs_reference(model, c, x)) for c, x in pairs]
    assert fast == pytest.approx(oracle, abs=1e-4)
    with pytest.raises(ValueError, match="empty context or continuation"):
        scoring.continuation_logprobs(model, [([1], [])], pad_id=2)


def test_continuation_logprobs_fit_each_group_in_max_seq_len():
    """A long context with a short continuation and a short context with a long one each fit
    max_seq_len (128) alone, not padded together (100 + 60 > 128): they go to separate prefills
    and still equal the reference (1e-4: fp32 sums in another order). A pair longer than the
    model is one line."""
    model = tiny_llama().eval()
    long_context, short_context = [1] + [7, 8] * 50, [1, 5]                   # 101 and 2 tokens
    pairs = [(long_context, [9, 10]), (short_context, [11 + k % 50 for k in range(60)])]
    fast = scoring.continuation_logprobs(model, pairs, pad_id=2, batch_size=16)
    with torch.no_grad():
        oracle = [float(scoring.continuation_logprobs_reference(model, c, x)) for c, x in pairs]
    assert fast == pytest.approx(oracle, abs=1e-4)
    with pytest.raises(ValueError, match="feeds 129 tokens > the model's 128"):
        scoring.continuation_logprobs(model, [([1] * 100, [5] * 30)], pad_id=2)


def test_tree_inputs_positions_and_mask_by_hand():
    """Context [a, b] with continuations [x1, x2, x3] and [y1, y2]: one row a b x1 x2 y1 + pad.
    x1, x2 take positions 2, 3 and see a, b and their own block; y1 takes position 2 again and
    sees a, b, itself; a pad (position 0) sees a and the pads, no real token sees a pad."""
    a, b, x1, x2, x3, y1, y2, pad = 10, 11, 20, 21, 22, 30, 31, 0
    rows = [((a, b), [(0, [x1, x2, x3]), (1, [y1, y2])]), ((a,), [(2, [y1])])]
    tokens, positions, mask, scored = scoring.tree_inputs(rows, pad)
    assert tokens.tolist() == [[a, b, x1, x2, y1], [a, pad, pad, pad, pad]]
    assert positions.tolist() == [[0, 1, 2, 3, 2], [0, 0, 0, 0, 0]]
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],     # a
                                         [1, 1, 0, 0, 0],     # b
                                         [1, 1, 1, 0, 0],     # x1
                                         [1, 1, 1, 1, 0],     # x2
                                         [1, 1, 0, 0, 1]]     # y1: not x1, x2
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0, 0]] + [[1, 1, 1, 1, 1]] * 4
    # (pair, row, column whose logits predict it, token): x1 and y1 from b's column
    assert scored == [(0, 0, 1, x1), (0, 0, 2, x2), (0, 0, 3, x3), (1, 0, 1, y1), (1, 0, 4, y2),
                      (2, 1, 0, y1)]


def test_tree_and_cached_paths_equal_one_forward_per_pair():
    """Shared contexts with 1 to 5 continuations of 1 to 7 tokens; batch_size 2 so groups pad;
    a context whose continuations overflow max_seq_len (128) is split over several rows. Both
    fast paths == continuation_logprobs_reference (1e-4: fp32 sums in another order)."""
    model = tiny_llama().eval()
    g = torch.Generator().manual_seed(0)
    contexts = [[1, 7, 8, 9], [1, 4], [1] + [7, 8] * 40, [1, 30, 31, 32, 33]]
    pairs = []
    for n, context in enumerate(contexts):
        for k in range(1 + (n * 3 + 1) % 5 if n != 2 else 8):
            length = 1 + int(torch.randint(0, 7, (), generator=g)) if n != 2 else 9
            pairs.append((context, torch.randint(3, 60, (length,), generator=g).tolist()))
    by_context = {}
    for i, (context, continuation) in enumerate(pairs):
        by_context.setdefault(tuple(context), []).append((i, continuation))
    rows = scoring.tree_rows(by_context, scoring.max_tokens(model))
    assert len(rows) > len(contexts) and all(scoring.row_length(r) <= 128 for r in rows)
    with torch.no_grad():
        oracle = [float(scoring.continuation_logprobs_reference(model, c, x)) for c, x in pairs]
        for path in (scoring.tree_scores, scoring.cached_scores):
            found = dict(path(model, by_context, pad_id=2, batch_size=2))
            assert [found[i] for i in range(len(pairs))] == pytest.approx(oracle, abs=1e-4), path
