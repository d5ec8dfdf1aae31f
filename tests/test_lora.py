"""Tests for lora.py: LoRALayer, inject/merge/unmerge, parameter counts (counted and by
lora_parameter_count), target presets and aliases, the alpha / r rule, and LoRA adapters in peft's
layout (peft_format.py). IA3 and prompt tuning are in tests/test_adapters.py, which reuses this
file's tiny_hf_llama / tokens / hf_logits.

Run: .venv/bin/python -m pytest tests/test_lora.py -q

Oracles: peft (get_peft_model / PeftModel.from_pretrained / print_trainable_parameters numbers) on a
tiny transformers LlamaForCausalLM; the base model itself (B = 0); merged vs unmerged logits; our
canonical Llama against the HF model it was converted from; the seed-000 preset lists written out.
"""
import copy

import pytest
import torch
from torch import nn

import lora
import peft_format
import weight_names

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SETTINGS = {"light": lora.LIGHT, "medium": lora.MEDIUM, "heavy": lora.HEAVY}


def tiny_hf_llama(seed=0):
    """2 layers, dim 32, 4 query heads / 2 kv heads (GQA), head_dim 8, vocab 64; eval mode."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "eager"
    return model


def tokens(seed=1, batch=2, seq=11):
    return torch.randint(0, 64, (batch, seq), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def randomize_lora(model, seed=2):
    """Non-zero A and B in every LoRALayer so the update is visible in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.3)


def peft_twin(base, targets, r, alpha, dropout=0.0):
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=list(targets))
    return peft.get_peft_model(copy.deepcopy(base), config).eval()


def copy_into_peft(ours, theirs):
    """Copy our A, B into peft's lora_A/lora_B["default"] Linear weights, layer by layer."""
    theirs_modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours):
            target = theirs_modules[name]
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)


# ----------------------------------------------------------------------------
# the layer and the pure functions

def test_lora_layer_forward_is_the_formula():
    """W0 x + b + (alpha/r) B A x written out with matmuls."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = lora.LoRALayer(base, r=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 6)
    want = x @ base.weight.T + base.bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), want)
    assert not layer.weight.requires_grad and layer.lora_A.requires_grad


def test_init_matches_peft_distribution():
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) as kaiming_uniform(a=sqrt(5)); B = 0; scale alpha/r."""
    layer = lora.LoRALayer(nn.Linear(100, 7), r=4, alpha=16)
    assert layer.lora_A.abs().max() <= 1 / 100 ** 0.5 and layer.lora_A.std() > 0.03
    assert torch.count_nonzero(layer.lora_B) == 0 and layer.scale == 4.0


def test_merge_unmerge_functions_invert():
    gen = torch.Generator().manual_seed(0)
    w, a, b = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((5, 6), (2, 6), (5, 2)))
    torch.testing.assert_close(lora.unmerge(lora.merge(w, a, b, 0.5), a, b, 0.5), w)
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(x @ lora.merge(w, a, b, 0.5).T, x @ w.T + lora.lora_delta(x, a, b, 0.5))

    ax = x @ a.T
    out = x @ w.T
    torch.testing.assert_close(lora.lora_add_fast(out, ax, b, 0.5), out + lora.lora_delta(x, a, b, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_branch_equals_the_reference_branch(dtype):
    """LoRALayer.fast (branch in x's dtype, one addmm) vs the reference (branch in fp32 as
    peft): outputs and A, B gradients. fp32: same products, other summation order (1e-5);
    bf16: the fast branch rounds to bf16 (8-bit mantissa), the reference to fp32: 2% of the
    largest entry (a gradient entry that is a sum of cancelling terms has no relative bound)."""
    torch.manual_seed(0)
    layer = lora.LoRALayer(nn.Linear(6, 5, bias=False).to(dtype), r=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    assert layer.lora_A.dtype == torch.float32
    x = torch.randn(2, 4, 6, dtype=dtype)
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    results = []
    for fast in (False, True):
        layer.fast = fast
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        out.float().square().sum().backward()
        assert out.dtype == dtype and layer.lora_A.grad.dtype == torch.float32
        results.append((out.float(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=rel * float(b.abs().max()), rtol=rel)


def test_scale_is_derived_from_alpha_and_r():
    """One rule, alpha / r: the config, a fresh layer, and a layer whose alpha was set later."""
    assert lora.LoraConfig(r=4, alpha=2.0).scale == 0.5 == lora.lora_scale(2.0, 4)
    layer = lora.LoRALayer(nn.Linear(6, 5), r=4, alpha=2.0)
    assert layer.scale == 0.5
    layer.alpha = 8.0                                   # what peft_format.load_adapter does
    assert layer.scale == 2.0


def test_resolve_targets_presets_and_lists():
    """Seed 000 part 2's three settings by name; comma lists in either spelling; list as given."""
    assert lora.resolve_targets("light") == ["q_proj", "v_proj"]
    assert lora.resolve_targets("medium") == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert lora.resolve_targets(" Heavy ") == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                               "down_proj", "gate_proj"]
    assert lora.resolve_targets("wq, wv,") == ["wq", "wv"]
    assert lora.resolve_targets(("q_proj", "w2")) == ["q_proj", "w2"]
    assert lora.LoraConfig(target_modules="heavy").target_modules == lora.HEAVY
    for empty in ("", " , ", []):
        with pytest.raises(ValueError, match="--lora_targets .*preset \\(light, medium, heavy\\)"):
            lora.resolve_targets(empty)


def test_config_errors_and_aliases():
    with pytest.raises(ValueError, match="--lora_rank"):
        lora.LoraConfig(r=0)
    with pytest.raises(ValueError, match="--lora_rank"):
        lora.LoraConfig(r=-2)
    assert weight_names.with_aliases(["q_proj", "w2"]) == {"q_proj", "wq", "w2", "down_proj"}
    assert lora.LoraConfig(target_modules="wq, wv").target_modules == ["wq", "wv"]
    assert lora.LoraConfig.heavy(r=4).target_modules == lora.HEAVY
    with pytest.raises(ValueError, match="available names: .*q_proj"):
        lora.inject_lora(tiny_hf_llama(), lora.LoraConfig(target_modules=["query"]))


# ----------------------------------------------------------------------------
# against peft on transformers' LlamaForCausalLM

@pytest.mark.parametrize("spelling", ["hf", "llama2c"])
def test_same_logits_as_peft_given_same_a_b(spelling):
    base = tiny_hf_llama()
    aliases = weight_names.HF_TO_LLAMA2C
    targets = lora.HEAVY if spelling == "hf" else [aliases[t] for t in lora.HEAVY]
    ours = copy.deepcopy(base)
    names = lora.inject_lora(ours, lora.LoraConfig(r=4, alpha=8.0, target_modules=targets))
    assert len(names) == 2 * 7
    randomize_lora(ours)
    theirs = peft_twin(base, lora.HEAVY, r=4, alpha=8.0)
    copy_into_peft(ours, theirs)
    ids = tokens()
    want = hf_logits(theirs, ids)
    assert (want - hf_logits(base, ids)).abs().max() > 1e-2        # the adapter does something
    # Same ops in the same order as peft's Linear.forward: only reduction-order rounding differs.
    torch.testing.assert_close(hf_logits(ours, ids), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_parameter_counts_equal_peft(setting):
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, lora.LoraConfig(r=8, alpha=16.0, target_modules=SETTINGS[setting]))
    theirs = peft_twin(base, SETTINGS[setting], r=8, alpha=16.0)
    assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters()
    # r * (in + out) per adapted layer, from the shapes: q 32->32, k/v 32->16, o 32->32, FFN 32<->48
    per_layer = {"q_proj": 64, "k_proj": 48, "v_proj": 48, "o_proj": 64,
                 "gate_proj": 80, "up_proj": 80, "down_proj": 80}
    assert lora.count_parameters(ours)[0] == 2 * 8 * sum(per_layer[t] for t in SETTINGS[setting])


def test_b_zero_equals_base():
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, lora.LoraConfig.heavy(r=4))
    ids = tokens()
    torch.testing.assert_close(hf_logits(ours, ids), hf_logits(base, ids), rtol=0, atol=0)


def test_merge_unmerge_exact():
    """fp32: merged logits equal unmerged to 1e-5; unmerge restores W0 to rounding (1e-6)."""
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, lora.LoraConfig.heavy(r=4, alpha=8.0))
    randomize_lora(ours)
    ids = tokens()
    unmerged = hf_logits(ours, ids)
    assert lora.merge_lora(ours) == 14
    torch.testing.assert_close(hf_logits(ours, ids), unmerged, rtol=0, atol=1e-5)
    lora.unmerge_lora(ours)
    torch.testing.assert_close(hf_logits(ours, ids), unmerged, rtol=0, atol=1e-5)
    restored = dict(ours.named_parameters())
    for name, p0 in base.named_parameters():          # same names: LoRALayer keeps `weight`
        torch.testing.assert_close(restored[name], p0, rtol=0, atol=1e-6)
    lora.unload_lora(ours)
    assert not lora.lora_layers(ours)
    torch.testing.assert_close(hf_logits(ours, ids), unmerged, rtol=0, atol=1e-5)


def test_dropout_only_in_training():
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, lora.LoraConfig.light(r=4, dropout=0.5))
    randomize_lora(ours)
    no_drop = copy.deepcopy(ours)
    for _, layer in lora.lora_layers(no_drop):
        layer.dropout = nn.Identity()
    ids = tokens()
    torch.testing.assert_close(hf_logits(ours.eval(), ids), hf_logits(no_drop, ids), rtol=0, atol=0)
    torch.manual_seed(0)
    assert not torch.allclose(hf_logits(ours.train(), ids), hf_logits(no_drop, ids))


def test_injected_layers_keep_the_model_mode():
    """Injecting into an eval-mode model must not switch LoRA dropout on (peft's behaviour).
    B != 0, so dropout left on would change the branch, and the logits, between two calls."""
    model = tiny_hf_llama()
    lora.inject_lora(model, lora.LoraConfig(r=2, alpha=4, dropout=0.5, target_modules=["q_proj"]))
    assert all(not layer.training for _, layer in lora.lora_layers(model))
    randomize_lora(model)
    ids = tokens()
    torch.manual_seed(0)
    first = hf_logits(model, ids)
    torch.testing.assert_close(hf_logits(model, ids), first, atol=0, rtol=0)
    model.train()                                     # the check can fail: training mode differs
    assert not torch.allclose(hf_logits(model, ids), first)


def test_only_lora_trains():
    model = tiny_hf_llama()
    lora.inject_lora(model, lora.LoraConfig.medium(r=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)


# ----------------------------------------------------------------------------
# adapters on disk (peft layout)

def test_saved_adapter_loads_in_peft(tmp_path):
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    config = lora.LoraConfig(r=4, alpha=8.0, target_modules=["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    lora.inject_lora(ours, config)
    randomize_lora(ours)
    peft_format.save_adapter(tmp_path, ours, config)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    ids = tokens()
    torch.testing.assert_close(hf_logits(theirs, ids), hf_logits(ours, ids), rtol=0, atol=1e-6)


def saved_random_peft_adapter(base, targets, r, alpha, seed, path):
    """A peft LoRA twin of base with random A and B (B != 0), saved by peft into path."""
    theirs = peft_twin(base, targets, r=r, alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    theirs.save_pretrained(str(path))
    return theirs


def test_peft_saved_adapter_loads_in_ours(tmp_path):
    base = tiny_hf_llama()
    theirs = saved_random_peft_adapter(base, lora.MEDIUM, 4, 16.0, seed=5, path=tmp_path)
    ours = copy.deepcopy(base)
    _, config = peft_format.load_adapter(tmp_path, ours)
    assert (config.r, config.alpha, sorted(config.target_modules)) == (4, 16.0, sorted(lora.MEDIUM))
    ids = tokens()
    torch.testing.assert_close(hf_logits(ours, ids), hf_logits(theirs, ids), rtol=0, atol=1e-6)
    # Injected first with another alpha: loading sets alpha, and the scale follows it.
    other = copy.deepcopy(base)
    lora.inject_lora(other, lora.LoraConfig(r=4, alpha=1.0, target_modules=lora.MEDIUM))
    peft_format.load_adapter(tmp_path, other)
    assert {layer.scale for _, layer in lora.lora_layers(other)} == {4.0}
    torch.testing.assert_close(hf_logits(other, ids), hf_logits(theirs, ids), rtol=0, atol=1e-6)


def test_load_adapter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        peft_format.load_adapter(tmp_path, tiny_hf_llama())
    model = tiny_hf_llama()
    config = lora.LoraConfig.light(r=2)
    lora.inject_lora(model, config)
    peft_format.save_adapter(tmp_path, model, config)
    other = tiny_hf_llama()
    lora.inject_lora(other, lora.LoraConfig.heavy(r=2))
    with pytest.raises(ValueError, match="missing"):
        peft_format.load_adapter(tmp_path, other)


# ----------------------------------------------------------------------------
# our canonical-named Llama (interleaved RoPE rows) against the HF model it was converted from

def canonical_twin(hf):
    """Our Llama with hf's weights: names via weight_names.hf_to_canonical_name, q/k rows
    permuted."""
    llama = pytest.importorskip("llama")
    import rope
    cfg = llama.LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                            vocab_size=64, max_seq_len=64, norm_eps=1e-5, tie_embeddings=False,
                            attn_backend="math")
    state = {}
    for name, value in hf.state_dict().items():
        canonical = weight_names.hf_to_canonical_name(name)
        if canonical.endswith(("wq.weight", "wk.weight")):
            heads = cfg.n_heads if ".wq." in canonical else cfg.n_kv_heads
            value = rope.permute_half_to_interleaved(value, heads)
        state[canonical] = value.clone()
    model = llama.Llama(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


def our_logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


def test_canonical_twin_is_the_hf_model():
    """Precondition of the next tests: base logits agree (fp32, different attention code: 1e-5)."""
    hf = tiny_hf_llama()
    ids = tokens()
    torch.testing.assert_close(our_logits(canonical_twin(hf), ids), hf_logits(hf, ids),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_canonical_parameter_counts_equal_peft(setting):
    hf = tiny_hf_llama()
    ours = canonical_twin(hf)
    targets = [weight_names.HF_TO_LLAMA2C[t] for t in SETTINGS[setting]]
    lora.inject_lora(ours, lora.LoraConfig(r=8, alpha=16.0, target_modules=targets))
    theirs = peft_twin(hf, SETTINGS[setting], r=8, alpha=16.0)
    assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters()
    import llama                                      # the formula, from the config's shapes
    c = ours.config
    assert lora.lora_parameter_count(llama.linear_shapes(c), SETTINGS[setting], 8,
                                     c.n_layers) == theirs.get_nb_trainable_parameters()[0]


def test_canonical_adapter_loads_in_peft(tmp_path):
    """lora_B rows of wq/wk are permuted to half-split on save: peft's model gives our logits."""
    hf = tiny_hf_llama()
    ours = canonical_twin(hf)
    config = lora.LoraConfig.heavy(r=4, alpha=8.0)
    lora.inject_lora(ours, config)
    randomize_lora(ours)
    peft_format.save_adapter(tmp_path, ours, config)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path)).eval()
    ids = tokens()
    want = hf_logits(theirs, ids)
    assert (want - hf_logits(hf, ids)).abs().max() > 1e-2
    torch.testing.assert_close(our_logits(ours, ids), want, rtol=0, atol=1e-5)


def test_peft_adapter_loads_in_canonical(tmp_path):
    hf = tiny_hf_llama()
    theirs = saved_random_peft_adapter(hf, lora.HEAVY, 4, 8.0, seed=6, path=tmp_path)
    ours = canonical_twin(hf)
    peft_format.load_adapter(tmp_path, ours)
    ids = tokens()
    torch.testing.assert_close(our_logits(ours, ids), hf_logits(theirs, ids), rtol=0, atol=1e-5)
