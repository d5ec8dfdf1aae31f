"""Tests for llama.py: the whole model against transformers, each part against torch, cache paths.

Run: .venv/bin/pytest tests/test_llama.py -q   (CPU, tiny configs, ~15 s)

Oracles: transformers' LlamaForCausalLM with random weights on a tiny Llama 3 shape (GQA, tied
embeddings, 'llama3' RoPE scaling), converted to our names here (q/k rows permuted with rope.py);
F.rms_norm and nn.LayerNorm; F.scaled_dot_product_attention for the written-out attention; a
brute-force loop (one query, one head at a time, the causal rule written as an if) for T queries
over S > T keys; positions and masks written by hand for attention_inputs; the model's own
uncached full forward for the KV cache; generate_no_cache for generate; one prompt at a time for
left-padded batches; parameter counts of the published models (on the meta device).
Tolerances are for fp32: logits are O(1-10) and the paths differ only in summation order (BLAS
blocking, fused vs unfused softmax, RoPE angle products); the largest difference seen against
transformers is 2e-5 on logits up to 9.4. atol = rtol = 1e-4 leaves headroom for other BLAS
builds, while a layout, mask or position bug changes logits by O(1).
"""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adapters
import llama
import rope
import sample
import weights
import weights_config

TOL = dict(atol=1e-4, rtol=1e-4)


def randomize_(model, seed=0, std=0.3):
    """Weights large enough that greedy decoding does not just repeat the last token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else std * noise)
    return model


def tiny_model(seed=0, **overrides):
    return randomize_(llama.Llama(llama.LlamaConfig.tiny(**overrides)), seed).eval()


def random_tokens(batch, length, vocab=256, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------
# the whole model against transformers

HF_SCALING = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=64)


def hf_tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2,
                                   max_position_embeddings=256, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True, rope_parameters=dict(HF_SCALING))
    model = transformers.LlamaForCausalLM(cfg).eval()
    randomize_(model)
    return model


def hf_to_ours(hf_model, **overrides):
    """Convert HF names to llama2.c/Meta names; q/k rows from half-split to interleaved."""
    c = hf_model.config
    config = llama.LlamaConfig(dim=c.hidden_size, n_layers=c.num_hidden_layers,
                               n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads,
                               hidden_dim=c.intermediate_size, vocab_size=c.vocab_size,
                               max_seq_len=c.max_position_embeddings, norm_eps=c.rms_norm_eps,
                               rope_theta=HF_SCALING["rope_theta"],
                               rope_scaling=weights_config.hf_rope_scaling(
                                   HF_SCALING, HF_SCALING["rope_theta"], "config.json"),
                               tie_embeddings=c.tie_word_embeddings, **overrides)
    table = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
    state = {}
    for name, value in hf_model.state_dict().items():
        if name == "lm_head.weight":
            continue                                     # tied: our loader must fill it in
        name = name.removeprefix("model.").replace("embed_tokens", "tok_embeddings")
        for hf, ours in table.items():
            name = name.replace(hf, ours)
        if name.endswith("attention.wq.weight"):
            value = rope.permute_half_to_interleaved(value, config.n_heads, config.head_dim)
        if name.endswith("attention.wk.weight"):
            value = rope.permute_half_to_interleaved(value, config.n_kv_heads, config.head_dim)
        state[name] = value
    model = llama.Llama(config).eval()
    weights.load_llama_state_dict(model, state, strict=True)
    return model


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_logits_match_transformers(backend):
    hf = hf_tiny_llama()
    ours = hf_to_ours(hf, attn_backend=backend)
    assert ours.output.weight is ours.tok_embeddings.weight
    tokens = random_tokens(2, 150, vocab=96)            # past original_max_seq_len: scaling matters
    with torch.no_grad():
        expected = hf(tokens).logits
        logits, hidden = ours(tokens)
    torch.testing.assert_close(logits, expected, **TOL)
    assert hidden.shape == (2, 150, 64)


def test_left_padded_logits_match_transformers():
    """Left padding with mask: HF given position_ids = cumsum(mask) - 1, as its generate does."""
    hf = hf_tiny_llama()
    ours = hf_to_ours(hf)
    tokens = random_tokens(2, 12, vocab=96, seed=2)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(tokens, attention_mask=mask, position_ids=positions).logits
        logits, _ = ours(tokens, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], **TOL)


# ----------------------------------------------------------------------------
# parts against torch built-ins

def test_rmsnorm_matches_f_rms_norm():
    norm = llama.RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 64) * 4
    expected = F.rms_norm(x, (64,), norm.weight, eps=1e-5)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16    # cast back after fp32 stats


def test_layernorm_matches_nn_layernorm():
    ours, ref = llama.LayerNorm(64, eps=1e-5), nn.LayerNorm(64, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    x = torch.randn(3, 5, 64) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_layernorm_variant_has_biases_and_loads_rmsnorm_checkpoints():
    model = tiny_model(norm="layernorm")
    assert "layers.0.attention_norm.bias" in model.state_dict()
    logits, _ = model(random_tokens(1, 8))
    assert torch.isfinite(logits).all()
    rms_state = tiny_model(seed=1).state_dict()          # no norm biases (seed 001: stories42M.pt)
    weights.load_llama_state_dict(model, rms_state, strict=True)
    assert not model.norm.bias.any() and torch.equal(model.norm.weight, rms_state["norm.weight"])


def qkv(B=2, n_heads=4, n_kv=2, T=6, S=6, D=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, n_heads, T, D, generator=g), torch.randn(B, n_kv, S, D, generator=g),
            torch.randn(B, n_kv, S, D, generator=g))


def test_math_attention_matches_sdpa_causal_gqa():
    q, k, v = qkv()
    k2, v2 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = F.scaled_dot_product_attention(q, k2, v2, is_causal=True)
    torch.testing.assert_close(llama.compute_query_key_value_scores(q, k, v), expected,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(llama.attention_sdpa(q, k, v), expected, atol=1e-5, rtol=1e-5)


def test_math_attention_matches_sdpa_with_padding_and_cache_offset():
    """T = 3 queries at slots 5..7 over S = 8 keys, row 0 left-padded by 2."""
    q, k, v = qkv(T=3, S=8)
    real = torch.ones(2, 8, dtype=torch.bool)
    real[0, :2] = False
    mask = llama.causal_padding_mask(real, torch.arange(5, 8), torch.arange(8))   # (2, 1, 3, 8)
    k2, v2 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
    torch.testing.assert_close(llama.compute_query_key_value_scores(q, k, v, mask), expected,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(llama.attention_sdpa(q, k, v, mask), expected, atol=1e-5, rtol=1e-5)


def test_attention_inputs_is_pure_and_counts_real_keys():
    """Oracle: positions and allowed pairs written by hand for a cache whose row 0 has 2 pads in
    slots 0..4, then 2 new tokens (row 1's first one a pad); the cache flags are not written."""
    cache_real = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]).bool()
    before = cache_real.clone()
    tokens, mask = torch.zeros(2, 2, dtype=torch.long), torch.tensor([[1, 1], [0, 1]])
    positions, allowed, slots, S = llama.attention_inputs(tokens, mask, 5, cache_real)
    assert torch.equal(cache_real, before) and S == 7 and slots.tolist() == [5, 6]
    assert positions.tolist() == [[3, 4], [4, 5]]              # real keys before, then cumsum
    assert allowed[0, 0].tolist() == [[False] * 2 + [True] * 4 + [False], [False] * 2 + [True] * 5]
    assert allowed[1, 0].tolist() == [[True] * 6 + [False], [True] * 5 + [False, True]]
    positions, allowed, _, S = llama.attention_inputs(tokens, None, 3)   # 3 keys before, no cache
    assert positions.tolist() == [[3, 4]] and allowed is None and S == 5


def brute_force_attention(q, k, v):
    """Causal attention written as loops: query t of T (the last T of S positions) attends to keys
    s with s <= t + S - T; GQA by head index; softmax by hand in float64."""
    B, H, T, D = q.shape
    S, group = k.shape[2], H // k.shape[1]
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                seen = [s for s in range(S) if s <= t + S - T]
                scores = torch.stack([q[b, h, t].double() @ k[b, h // group, s].double()
                                      for s in seen]) / D ** 0.5
                weights = scores.exp() / scores.exp().sum()
                out[b, h, t] = sum(w * v[b, h // group, s].double() for w, s in zip(weights, seen))
    return out.float()


@pytest.mark.parametrize("T", [1, 3, 5])
def test_both_backends_align_queries_to_the_last_keys(T):
    """T = 1 and T = 3 queries over S = 5 keys, GQA (4 query heads, 2 kv heads), no mask: both
    backends equal each other and the brute-force loop (the last query sees every key)."""
    q, k, v = qkv(T=T, S=5)
    expected = brute_force_attention(q, k, v)
    math_out = llama.compute_query_key_value_scores(q, k, v)
    sdpa_out = llama.attention_sdpa(q, k, v)
    torch.testing.assert_close(math_out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa_out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa_out, math_out, atol=1e-5, rtol=1e-5)
    if T < 5:                   # the test can see the bug: SDPA's is_causal is top-left aligned
        top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        assert (top_left - expected).abs().max() > 0.1


def test_gqa_kv_head_j_serves_query_heads_jg_to_jg_plus_g():
    q, k, v = qkv(n_heads=6, n_kv=2)                                      # g = 3
    out = llama.compute_query_key_value_scores(q, k, v)
    for h in range(6):
        alone = llama.compute_query_key_value_scores(q[:, h:h + 1], k[:, h // 3:h // 3 + 1],
                                                     v[:, h // 3:h // 3 + 1])
        torch.testing.assert_close(out[:, h:h + 1], alone, atol=0, rtol=0)


def test_math_and_sdpa_backends_give_the_same_model():
    a = tiny_model(attn_backend="math")
    b = llama.Llama(llama.LlamaConfig.tiny(attn_backend="sdpa")).eval()
    weights.load_llama_state_dict(b, a.state_dict())
    tokens, mask = random_tokens(2, 10), torch.tensor([[0] * 3 + [1] * 7, [1] * 10])
    with torch.no_grad():
        torch.testing.assert_close(a(tokens)[0], b(tokens)[0], **TOL)
        torch.testing.assert_close(a(tokens, attention_mask=mask)[0],
                                   b(tokens, attention_mask=mask)[0], **TOL)


def test_sdpa_training_gradients_equal_the_math_path():
    """The training path (mask None, T == S: SDPA's is_causal with enable_gqa, K/V never
    repeated) against the written-out reference, gradients of every weight, with and without
    padding. fp32; fused softmax vs explicit: the TOL above."""
    grads = {}
    tokens, mask = random_tokens(2, 10), torch.tensor([[0] * 3 + [1] * 7, [1] * 10])
    for backend in ("math", "sdpa"):
        model = tiny_model(attn_backend=backend).train()
        for attention_mask in (None, mask):
            model.zero_grad(set_to_none=True)
            logits, _ = model(tokens, attention_mask=attention_mask)
            F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
            grads[backend, attention_mask is None] = [p.grad.clone() for p in model.parameters()]
    for plain in (True, False):
        for a, b in zip(grads["sdpa", plain], grads["math", plain]):
            torch.testing.assert_close(a, b, **TOL)


# ----------------------------------------------------------------------------
# KV cache and generation

@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_cached_decode_equals_full_forward(backend):
    model = tiny_model(attn_backend=backend)
    tokens = random_tokens(2, 12)
    with torch.no_grad():
        full, _ = model(tokens)                                              # (2, 12, V)
        model.setup_cache(2, 16)
        steps = [model(tokens[:, :5], start_pos=0)[0]]                       # prefill 5
        for t in range(5, 12):                                               # then one at a time
            start = t if t % 2 else torch.tensor(t)                          # int or 0-d tensor
            steps.append(model(tokens[:, t:t + 1], start_pos=start)[0])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_cached_left_padded_prefill_and_decode_equal_unpadded_rows():
    model = tiny_model()
    rows = [random_tokens(1, 4, seed=5)[0].tolist(), random_tokens(1, 9, seed=6)[0].tolist()]
    tokens, mask = sample.left_pad(rows, pad_id=0)
    nxt = random_tokens(2, 1, seed=7)
    with torch.no_grad():
        model.setup_cache(2, 12)
        prefill, _ = model(tokens, start_pos=0, attention_mask=mask, last_only=True)   # (2, 1, V)
        step, _ = model(nxt, start_pos=9)                                             # (2, 1, V)
        for r, row in enumerate(rows):
            alone, _ = model(torch.tensor([row + nxt[r].tolist()]))
            torch.testing.assert_close(prefill[r, 0], alone[0, -2], **TOL)
            torch.testing.assert_close(step[r, 0], alone[0, -1], **TOL)


def test_padded_forward_without_cache_equals_unpadded_rows():
    """Left and right padding (the classifier right-pads): real positions match each row alone."""
    model = tiny_model()
    row = random_tokens(1, 6, seed=8)
    with torch.no_grad():
        alone, hidden_alone = model(row)
        for mask in ([0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]):
            mask = torch.tensor([mask])
            padded = torch.zeros(1, 8, dtype=torch.long)
            padded[mask.bool()] = row[0]
            logits, hidden = model(padded, attention_mask=mask)
            torch.testing.assert_close(logits[mask.bool()], alone[0], **TOL)
            torch.testing.assert_close(hidden[mask.bool()], hidden_alone[0], **TOL)


def test_last_only_returns_the_last_position():
    model = tiny_model()
    tokens = random_tokens(2, 7)
    with torch.no_grad():
        full, hidden = model(tokens)
        last, hidden_last = model(tokens, last_only=True)
    assert last.shape == (2, 1, 256) and hidden_last.shape == hidden.shape
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    model.train()                          # with gradients on (the chunked loss's call)
    last_grad, _ = model(tokens, last_only=True)
    torch.testing.assert_close(last_grad[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)


def test_generate_with_cache_equals_no_cache_greedy_and_sampled():
    model = tiny_model()
    prompt = random_tokens(1, 5, seed=9)[0].tolist()
    greedy = model.generate(prompt, 12)
    assert greedy == sample.generate_no_cache(model, prompt, 12)
    assert len(set(greedy)) > 3                                      # not a degenerate repetition
    sampling = sample.SamplingConfig(temperature=0.9, top_k=50, top_p=0.95, min_p=0.01)
    sampled = model.generate(prompt, 12, sampling, generator=torch.Generator().manual_seed(3))
    assert sampled == sample.generate_no_cache(model, prompt, 12, sampling,
                                              generator=torch.Generator().manual_seed(3))
    assert sampled != greedy


def test_decode_step_compiles_as_one_graph():
    """torch.compile(fullgraph=True) fails on .item() or graph breaks; one graph serves every step
    (backend 'eager' traces with dynamo but skips code generation, so this runs in ~1 s)."""
    model = tiny_model()
    prompt = random_tokens(1, 5, seed=9)[0].tolist()
    torch._dynamo.reset()
    step = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    assert model.generate(prompt, 8, decode_fn=step) == model.generate(prompt, 8)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_generate_stops_and_streams():
    model = tiny_model()
    prompt = random_tokens(1, 5, seed=9)[0].tolist()
    full = model.generate(prompt, 10)
    stop = full[6]
    streamed = []
    out = model.generate(torch.tensor([prompt]), 10, stop_tokens={stop}, on_token=streamed.append)
    assert out == full[:full.index(stop)] == streamed               # stop token not included


def test_batch_generation_with_left_padding_equals_one_at_a_time():
    model = tiny_model()
    prompts = [random_tokens(1, n, seed=10 + n)[0].tolist() for n in (3, 8, 5)]
    batch = sample.generate_batch(model, prompts, pad_id=0, max_new_tokens=8)
    assert batch == [model.generate(p, 8) for p in prompts]
    stop = batch[1][4]
    stopped = sample.generate_batch(model, prompts, pad_id=0, max_new_tokens=8, stop_tokens=(stop,))
    assert stopped == [row[:row.index(stop)] if stop in row else row for row in batch]


def test_kv_cache_buffers_capacity_and_state_dict():
    model = tiny_model()
    assert model.cache is None
    model.setup_cache(3, 10)
    cache = model.cache
    assert isinstance(cache, llama.KVCache) and (cache.max_batch, cache.max_len) == (3, 10)
    assert cache.keys.shape == cache.values.shape == (2, 3, 2, 10, 16)   # (L, B, n_kv, S, D)
    assert cache.real.shape == (3, 10) and cache.real.dtype == torch.bool
    assert cache.fits(3, 10) and not cache.fits(4, 10) and not cache.fits(3, 11)
    assert set(dict(model.named_buffers())) >= {"cache.keys", "cache.values", "cache.real"}
    assert not any(name.startswith("cache.") for name in model.state_dict())   # never saved
    assert model.to(torch.bfloat16).cache.keys.dtype == torch.bfloat16


def test_reset_cache_and_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="setup_cache"):
        model(random_tokens(1, 3), start_pos=0)
    model.setup_cache(1, 8)
    with pytest.raises(ValueError, match="do not fit the cache"):
        model(random_tokens(1, 3), start_pos=6)
    before = model.cache.keys
    model(random_tokens(1, 3), start_pos=0)
    assert before.any() and model.cache.real[0, :3].all()
    model.reset_cache()
    assert model.cache.keys is before and not before.any() and not model.cache.real.any()
    with pytest.raises(ValueError, match="max_seq_len=128"):
        model.generate([1, 2, 3], 200)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([], 5)


# ----------------------------------------------------------------------------
# config, names, loading, dtypes

@pytest.mark.parametrize("kwargs, field", [(dict(dim=65, n_heads=4), "dim=65"),
                                           (dict(n_heads=4, n_kv_heads=3), "n_kv_heads=3"),
                                           (dict(norm="batchnorm"), "norm="),
                                           (dict(attn_backend="flash"), "attn_backend="),
                                           (dict(dropout=1.5), "dropout="),
                                           (dict(rope_scaling=dict(factor=8.0)), "rope_scaling"),
                                           (dict(rope_scaling=dict(rope_type="llama3")),
                                            "rope_scaling keys")])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        llama.LlamaConfig.tiny(**kwargs)


# stories42M: 32000*512 + 8*(4*512^2 + 3*512*1376 + 2*512) + 512, the shapes of llama2.c's
# stories42M.pt; SmolLM2-135M and Llama-3.2-1B: the counts of their published safetensors.
@pytest.mark.parametrize("preset, params", [("stories42m", 41_689_600),
                                            ("smollm2_135m", 134_515_008),
                                            ("llama32_1b", 1_235_814_400)])
def test_presets_have_the_published_parameter_counts(preset, params):
    with torch.device("meta"):
        model = llama.Llama(getattr(llama.LlamaConfig, preset)())
    assert sum(p.numel() for p in model.parameters()) == params           # tied: counted once
    assert llama.llama2c_hidden_dim(512, 32) == 1376


def test_llama2c_hidden_dim_with_ffn_dim_multiplier():
    """Meta's params.json: Llama 3 8B (dim 4096, multiple_of 1024, ffn_dim_multiplier 1.3) and
    Llama 2 70B (8192, 4096, 1.3) have the published intermediate sizes 14336 and 28672."""
    assert llama.llama2c_hidden_dim(4096, 1024, 1.3) == 14336
    assert llama.llama2c_hidden_dim(8192, 4096, 1.3) == 28672
    assert llama.llama2c_hidden_dim(4096, 256) == 11008                   # Llama 2 7B


def test_canonical_names_and_tied_loading():
    model = tiny_model()
    names = set(model.state_dict())
    for name in ["tok_embeddings.weight", "layers.1.attention_norm.weight",
                 "layers.1.attention.wq.weight",
                 "layers.1.attention.wk.weight", "layers.1.attention.wv.weight",
                 "layers.1.attention.wo.weight", "layers.1.ffn_norm.weight",
                 "layers.1.feed_forward.w1.weight", "layers.1.feed_forward.w2.weight",
                 "layers.1.feed_forward.w3.weight", "norm.weight", "output.weight"]:
        assert name in names
    assert model.layers[0].attention.wk.weight.shape == (2 * 16, 64)       # (n_kv_heads*D, dim)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "output.weight"}
    for assign in (False, True):
        fresh = llama.Llama(llama.LlamaConfig.tiny())
        weights.load_llama_state_dict(fresh, state, strict=True, assign=assign)
        assert fresh.output.weight is fresh.tok_embeddings.weight
        torch.testing.assert_close(fresh.output.weight, model.tok_embeddings.weight)


def test_bf16_model_keeps_fp32_rope_frequencies():
    model = tiny_model().to(torch.bfloat16)
    assert model.rope_freqs.dtype == torch.float32
    torch.testing.assert_close(model.rope_freqs, llama.rope.rope_frequencies(16, 10000.0))
    logits, _ = model(random_tokens(1, 5))
    assert logits.dtype == torch.bfloat16


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.5)
    tokens = random_tokens(1, 6)
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], model(tokens)[0])
        model.train()
        assert not torch.equal(model(tokens)[0], model(tokens)[0])


def test_gradient_checkpointing_gives_the_same_gradients():
    """Frozen base + LoRA (no input requires grad) with dropout on: checkpointed blocks replay the
    same RNG, so loss and LoRA gradients equal the plain backward (oracle: the same model without
    checkpointing; atol 1e-6, fp32 recomputation of identical ops)."""
    import lora
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny(dropout=0.1)).train()
    lora.inject_lora(model, lora.LoraConfig(r=2, alpha=4, dropout=0.1, target_modules="heavy"))
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        logits, _ = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------
# keys before the tokens: per-layer sources (prefix tuning's, adapters.PrefixKV) vs the cache

def random_prefix(config, n=3, seed=11, std=1.0, requires_grad=False):
    """-> (layer i's adapters.PrefixKV for i < L, the tensor (L, 2, 1, n_kv_heads, n, D) behind
    them, the layout of adapters.PrefixEncoder)."""
    g = torch.Generator().manual_seed(seed)
    shape = (config.n_layers, 2, 1, config.n_kv_heads, n, config.head_dim)
    tensor = (std * torch.randn(shape, generator=g)).requires_grad_(requires_grad)
    return [adapters.PrefixKV(k, v) for k, v in tensor], tensor


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_prefix_equals_the_same_keys_in_the_cache(backend):
    """Oracle: the KV cache path (tested above against the full forward) with the prefix written
    by hand into slots 0..n-1 (KVCache.layer(...).extend, flagged real) and the tokens from slot
    n. The uncached prefix (kv, start_pos n) gives the same logits on real positions, padded or
    not (left padding: a row alone without a mask); a zero-length prefix is the plain model."""
    model = tiny_model(attn_backend=backend)
    (prefix, tensor), n = random_prefix(model.config), 3
    rows = [random_tokens(1, 4, seed=5)[0].tolist(), random_tokens(1, 7, seed=6)[0].tolist()]
    tokens, mask = sample.left_pad(rows, pad_id=0)
    slots = torch.arange(n)
    with torch.no_grad():
        logits, _ = model(tokens, n, attention_mask=mask, kv=prefix)
        model.setup_cache(2, n + 7)
        for i, (k, v) in enumerate(tensor):
            model.cache.layer(i, slots, n).extend(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1))
        model.cache.write_real(slots, torch.ones(2, n, dtype=torch.bool))
        cached, _ = model(tokens, start_pos=n, attention_mask=mask)
        real = mask.bool()
        torch.testing.assert_close(logits[real], cached[real], **TOL)
        for r, row in enumerate(rows):
            alone, _ = model(torch.tensor([row]), n, kv=prefix)
            torch.testing.assert_close(logits[r, -len(row):], alone[0], **TOL)
        assert (alone - model(torch.tensor([row]))[0]).abs().max() > 1e-2
        empty = [adapters.PrefixKV(k[..., :0, :], v[..., :0, :]) for k, v in tensor]
        torch.testing.assert_close(model(tokens, 0, kv=empty)[0], model(tokens)[0], **TOL)
    with pytest.raises(ValueError, match="kv without start_pos"):
        model(tokens, kv=prefix)


def test_prefix_gradients_with_checkpointing():
    """A trained prefix on a frozen base: checkpointed blocks give the prefix the same gradient
    (oracle: the plain backward; atol 1e-6, identical ops recomputed)."""
    model = tiny_model().requires_grad_(False)
    prefix, tensor = random_prefix(model.config, std=0.3, requires_grad=True)
    tokens = random_tokens(2, 8)
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.train()
        tensor.grad = None
        logits, _ = model(tokens, 3, kv=prefix)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        grads.append(tensor.grad.clone())
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fields, words", [
    ({"dim": 0}, "dim=0 is not a positive int"), ({"n_layers": "2"}, "n_layers='2'"),
    ({"vocab_size": True}, "vocab_size=True"), ({"norm_eps": 2.0}, "norm_eps=2.0"),
    ({"rope_theta": float("inf")}, "rope_theta=inf"),
    ({"rope_scaling": dict(factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0,
                           original_max_seq_len=8192)}, "high_freq_factor > low_freq_factor"),
])
def test_config_types_and_ranges_are_one_line_errors(fields, words):
    with pytest.raises(ValueError, match=re.escape(words)) as err:
        llama.LlamaConfig.tiny(**fields)
    assert "\n" not in str(err.value)
