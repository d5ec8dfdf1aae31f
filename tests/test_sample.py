"""Tests for sample.py: each truncation rule keeps the right set, nucleus sampling per seed 003,
the repetition penalty.

Run: .venv/bin/pytest tests/test_sample.py -q   (CPU, < 10 s)

Oracles: kept sets computed here in plain Python from the sorted softmax probabilities (the rules'
definitions); torch.argmax for greedy; for p = 1 the draws of torch.multinomial on the full softmax
with the same generator seed; empirical frequencies vs the renormalised kept probabilities (20,000
draws: a standard error of at most 0.0036 per token, so 0.02 is over 5 sigma); each filter applied
by hand for sample_next_token; the bounds of the issue for SamplingConfig's errors; for the
repetition penalty, transformers' RepetitionPenaltyLogitsProcessor (the same float operations, so
equal exactly) and, in whole generations of a tiny random Llama, generate_no_cache (the prefix
recomputed, no cache) and each prompt generated alone (left padding is not a seen token).
"""
import dataclasses

import pytest
import torch

import sample

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])     # softmax ~ .56 .21 .13 .08 .03 .004


def kept(filtered):
    return set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist())


def probs_list(logits):
    return torch.softmax(logits.double(), -1).tolist()


def nucleus_oracle(logits, p):
    """Seed 003: smallest k with p_(1) + ... + p_(k) >= p, as a set of token ids."""
    probs = probs_list(logits)
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    mass, keep = 0.0, set()
    for i in order:
        keep.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return keep


@pytest.mark.parametrize("p", [0.5, 0.57, 0.6, 0.8, 0.9, 0.95, 0.999])
def test_top_p_keeps_the_smallest_set_with_mass_p(p):
    keep = kept(sample.top_p_filter(LOGITS, p))
    assert keep == nucleus_oracle(LOGITS, p)
    probs = probs_list(LOGITS)
    mass = sum(probs[i] for i in keep)
    assert mass >= p - 1e-6                                      # enough mass ...
    assert mass - min(probs[i] for i in keep) < p                # ... and none of it superfluous


def test_top_p_batched_rows_are_independent():
    rows = torch.stack([LOGITS, LOGITS.flip(0), torch.zeros(6)])
    filtered = sample.top_p_filter(rows, 0.7)
    for row, out in zip(rows, filtered):
        assert kept(out) == nucleus_oracle(row, 0.7)


def test_nucleus_p_to_zero_is_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        torch.testing.assert_close(sample.nucleus_sampling(logits, 1e-9, g), logits.argmax(-1))
    assert sample.nucleus_sampling(logits[0], 0.0, g).item() == logits[0].argmax().item()


def test_nucleus_p_one_is_full_softmax_sampling():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(2))
    assert kept(sample.top_p_filter(logits, 1.0)[0]) == set(range(40))
    seeds = [torch.Generator().manual_seed(s) for s in range(5)]
    ours = [sample.nucleus_sampling(logits, 1.0, g) for g in seeds]
    seeds = [torch.Generator().manual_seed(s) for s in range(5)]
    full = [torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1) for g in seeds]
    for a, b in zip(ours, full):
        torch.testing.assert_close(a, b)


def test_nucleus_samples_the_renormalised_kept_distribution():
    p, n = 0.8, 20000
    g = torch.Generator().manual_seed(3)
    draws = sample.nucleus_sampling(LOGITS.expand(n, -1), p, g)           # (n,)
    keep = sorted(nucleus_oracle(LOGITS, p))
    probs = torch.tensor(probs_list(LOGITS), dtype=torch.float64)
    expected = torch.zeros(6, dtype=torch.float64)
    expected[keep] = probs[keep] / probs[keep].sum()
    freq = torch.bincount(draws, minlength=6).double() / n
    torch.testing.assert_close(freq, expected, atol=0.02, rtol=0)
    assert set(draws.tolist()) == set(keep)


def test_nucleus_shapes_and_bad_p():
    g = torch.Generator().manual_seed(0)
    assert sample.nucleus_sampling(LOGITS, 0.9, g).shape == ()
    assert sample.nucleus_sampling(LOGITS.expand(5, -1), 0.9, g).shape == (5,)
    with pytest.raises(ValueError, match="p=1.5"):
        sample.nucleus_sampling(LOGITS, 1.5)


@pytest.mark.parametrize("k", [1, 2, 4, 6, 10])
def test_top_k_keeps_the_k_largest(k):
    assert kept(sample.top_k_filter(LOGITS, k)) == set(range(min(k, 6)))  # LOGITS is sorted


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.1, 0.2, 0.9])
def test_epsilon_keeps_probabilities_at_least_epsilon(epsilon):
    probs = probs_list(LOGITS)
    expected = {i for i, q in enumerate(probs) if q >= epsilon} or {0}  # argmax always kept
    assert kept(sample.epsilon_filter(LOGITS, epsilon)) == expected


@pytest.mark.parametrize("min_p", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_min_p_keeps_probabilities_relative_to_the_max(min_p):
    probs = probs_list(LOGITS)
    expected = {i for i, q in enumerate(probs) if q >= min_p * max(probs) - 1e-12}
    assert kept(sample.min_p_filter(LOGITS, min_p)) == expected


def test_temperature_zero_is_argmax_and_scaling_divides():
    logits = torch.randn(8, 30, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sample.sample_next_token(logits), logits.argmax(-1))
    greedy = sample.SamplingConfig(temperature=0.0, top_k=1, top_p=0.5)      # filters unused
    torch.testing.assert_close(sample.sample_next_token(logits, greedy), logits.argmax(-1))
    torch.testing.assert_close(sample.apply_temperature(logits, 2.0), logits / 2.0)
    with pytest.raises(ValueError, match="temperature=0"):
        sample.apply_temperature(logits, 0)


def test_sample_next_token_is_reproducible_and_respects_filters():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(5))
    sampling = sample.SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, epsilon=1e-3,
                                     min_p=0.05)
    a = sample.sample_next_token(logits, sampling, torch.Generator().manual_seed(6))
    b = sample.sample_next_token(logits, sampling, torch.Generator().manual_seed(6))
    assert a.shape == (4,) and a.dtype == torch.long and torch.equal(a, b)
    by_hand = sample.min_p_filter(sample.epsilon_filter(sample.top_p_filter(sample.top_k_filter(
        logits / 0.8, 20), 0.9), 1e-3), 0.05)                  # the documented order, by hand
    expected = sample.sample_from_logits(by_hand, torch.Generator().manual_seed(6))
    assert torch.equal(a, expected)
    g = torch.Generator().manual_seed(7)
    top2 = logits.topk(2, dim=-1).indices
    for _ in range(30):                                                  # top_k=2: only the top two
        draw = sample.sample_next_token(logits, sample.SamplingConfig(1.0, top_k=2), g)
        assert ((top2 == draw[:, None]).any(-1)).all()


@pytest.mark.parametrize("field, value, words", [
    ("temperature", -1.0, "--temperature -1.0: must be a finite number >= 0"),
    ("temperature", float("nan"), "--temperature nan"), ("temperature", float("inf"), "inf"),
    ("temperature", None, "--temperature None"),
    ("top_k", -3, "--top_k -3: must be an integer >= 1"), ("top_k", 0, "--top_k 0"),
    ("top_k", 2.5, "--top_k 2.5"),
    ("top_p", 1.5, r"--top_p 1.5: must be in \(0, 1\]"), ("top_p", 0.0, "--top_p 0.0"),
    ("top_p", float("nan"), "--top_p nan"),
    ("epsilon", 2.0, r"--epsilon 2.0: must be in \[0, 1\)"), ("epsilon", 1.0, "--epsilon 1.0"),
    ("epsilon", -0.1, "--epsilon -0.1"),
    ("min_p", 5.0, r"--min_p 5.0: must be in \[0, 1\]"), ("min_p", -1e-3, "--min_p -0.001"),
    ("repetition_penalty", 0.0, "--repetition_penalty 0.0: must be a finite number > 0"),
    ("repetition_penalty", -1.2, "--repetition_penalty -1.2"),
    ("repetition_penalty", float("nan"), "--repetition_penalty nan"),
    ("repetition_penalty", float("inf"), "--repetition_penalty inf"),
    ("repetition_penalty", None, "--repetition_penalty None")])
def test_sampling_config_errors_name_the_flag(field, value, words):
    with pytest.raises(ValueError, match=words) as err:
        sample.SamplingConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_sampling_config_accepts_the_edges():
    edges = sample.SamplingConfig(temperature=0.0, top_k=1, top_p=1.0, epsilon=0.0, min_p=1.0)
    assert edges.greedy and not sample.SamplingConfig(temperature=1e-3).greedy
    assert sample.SamplingConfig() == sample.GREEDY and sample.GREEDY.top_p is None
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(8))
    keep_all = sample.SamplingConfig(temperature=1.0, top_p=1.0, epsilon=0.0, min_p=0.0)
    a = sample.sample_next_token(logits, keep_all, torch.Generator().manual_seed(9))
    plain = sample.SamplingConfig(temperature=1.0)
    b = sample.sample_next_token(logits, plain, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)                                   # edges that keep every token


# ----------------------------------------------------------------------------
# the repetition penalty (CTRL, Keskar et al. 2019, Sec. 4.1)

@pytest.mark.parametrize("penalty", [1.3, 2.0, 0.7])
def test_repetition_penalty_equals_transformers(penalty):
    """Oracle: transformers' RepetitionPenaltyLogitsProcessor on random logits with repeated and
    negative, positive and zero seen logits; exact, as both do one multiply or divide per logit."""
    processors = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 50, generator=g)
    logits[0, 7] = 0.0
    previous = torch.randint(0, 50, (3, 12), generator=g)
    previous[0, :3] = 7                                        # a token seen three times
    expected = processors.RepetitionPenaltyLogitsProcessor(penalty)(previous, logits.clone())
    ours = sample.apply_repetition_penalty(logits, previous, penalty)
    assert torch.equal(ours, expected)
    unseen = torch.ones(3, 50, dtype=torch.bool).scatter(1, previous, False)
    assert torch.equal(ours[unseen], logits[unseen])           # only seen tokens change
    rows = [previous[0, :4].tolist(), previous[1].tolist(), []]  # rows of different lengths
    by_row = sample.apply_repetition_penalty(logits, rows, penalty)
    for row, ids in enumerate(rows[:2]):
        alone = processors.RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([ids]),
                                                                     logits[row:row + 1].clone())
        assert torch.equal(by_row[row:row + 1], alone)
    assert torch.equal(by_row[2], logits[2])                   # nothing seen: unchanged


def test_repetition_penalty_in_sample_next_token():
    """Greedy with the penalty == argmax of the oracle-checked penalised logits; penalty 1 is the
    plain argmax (previous unused); a penalty without previous tokens is a clear error."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 30, generator=g)
    previous = logits.argmax(-1, keepdim=True)                 # (4, 1): each row's favourite
    strong = sample.SamplingConfig(repetition_penalty=100.0)
    picked = sample.sample_next_token(logits, strong, previous=previous)
    expected = sample.apply_repetition_penalty(logits, previous, 100.0).argmax(-1)
    assert torch.equal(picked, expected) and not torch.equal(picked, logits.argmax(-1))
    assert torch.equal(sample.sample_next_token(logits, sample.GREEDY, previous=previous),
                       logits.argmax(-1))
    warm = dataclasses.replace(strong, temperature=0.8, top_k=5)
    a = sample.sample_next_token(logits, warm, torch.Generator().manual_seed(3), previous)
    by_hand = sample.top_k_filter(sample.apply_repetition_penalty(logits, previous, 100.0) / 0.8, 5)
    assert torch.equal(a, sample.sample_from_logits(by_hand, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="previous"):
        sample.sample_next_token(logits, strong)


def test_generation_with_repetition_penalty_matches_the_reference():
    """Oracles: generate_no_cache (whole prefix each step, the token list as `previous`) for one
    prompt; each prompt alone for a left-padded batch (pad ids are not seen tokens)."""
    from test_llama import random_tokens, tiny_model
    model = tiny_model()
    penalised = sample.SamplingConfig(repetition_penalty=3.0)
    prompts = [random_tokens(1, n, seed=20 + n)[0].tolist() for n in (3, 8)]
    cached = model.generate(prompts[1], 16, penalised)
    assert cached == sample.generate_no_cache(model, prompts[1], 16, penalised)
    assert cached != model.generate(prompts[1], 16)            # greedy repeats 95 at step 14
    alone = [model.generate(p, 16, penalised) for p in prompts]
    pad_id = alone[0][0]                   # were padding seen, row 0's first token would change
    batch = sample.generate_batch(model, prompts, pad_id, max_new_tokens=16, sampling=penalised)
    assert batch == alone
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompts[0]]), last_only=True)     # (1, 1, V)
    counted = sample.apply_repetition_penalty(logits[:, -1], [[pad_id] * 5 + prompts[0]], 3.0)
    assert counted.argmax(-1).item() != pad_id                 # so the test can tell
