"""Tests for adapters.py: IA3, prompt tuning, P-tuning and prefix tuning on a frozen Llama.

Run: .venv/bin/python -m pytest tests/test_adapters.py -q   (CPU, tiny models, a few seconds)

Oracles: peft's IA3, PromptTuning, PromptEncoder (P-tuning) and PrefixTuning (get_peft_model,
get_nb_trainable_parameters, save_pretrained, PeftModel.from_pretrained) on a tiny transformers
LlamaForCausalLM given the same tensors, and our Llama converted from it (test_lora.canonical_twin);
the base model itself (IA3 with ones, a zero-length soft prompt, frozen tensors bit-for-bit after a
step); sample.generate_no_cache and the uncached forward of each row alone for cached generation.
"""
import copy

import pytest
import torch

import adapters
import llama as llama_module
import lora
import peft_format
import sample
from test_lora import canonical_twin, hf_logits, tiny_hf_llama, tokens

peft = pytest.importorskip("peft")


def test_ia3_ones_equals_base_and_matches_peft():
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    names = adapters.inject_ia3(ours, adapters.IA3Config())
    assert len(names) == 2 * 3
    ids = tokens()
    torch.testing.assert_close(hf_logits(ours, ids), hf_logits(base, ids), rtol=0, atol=0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])).eval()
    assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters()
    gen = torch.Generator().manual_seed(3)
    modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name in names:
            layer = ours.get_submodule(name)
            layer.ia3_l.copy_(1 + 0.5 * torch.randn(layer.ia3_l.shape, generator=gen))
            target = modules[name].ia3_l["default"]             # (out, 1) or (1, in) in peft
            target.copy_(layer.ia3_l.reshape(target.shape))
    want = hf_logits(theirs, ids)
    assert (want - hf_logits(base, ids)).abs().max() > 1e-2
    # The same multiply before / after the same F.linear as peft's IA3 Linear: fp32 rounding only.
    torch.testing.assert_close(hf_logits(ours, ids), want, rtol=0, atol=1e-6)


def test_ia3_llama2c_spelling_and_errors():
    """wk, wv, w2 wrap the same Linears as k_proj, v_proj, down_proj; w2 scales its input."""
    model = tiny_hf_llama()
    names = adapters.inject_ia3(model, adapters.IA3Config(target_modules=["wk", "wv", "w2"],
                                                          feedforward_modules=["w2"]))
    assert [n.rpartition(".")[2] for n in names[:3]] == ["k_proj", "v_proj", "down_proj"]
    assert [model.get_submodule(n).feedforward for n in names[:3]] == [False, False, True]
    with pytest.raises(ValueError, match="feedforward_modules .*not in target_modules"):
        adapters.IA3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"])
    with pytest.raises(ValueError, match="IA3Config.target_modules .*available names: .*k_proj"):
        adapters.inject_ia3(tiny_hf_llama(), adapters.IA3Config(target_modules=["key"],
                                                                feedforward_modules=[]))


def test_prompt_tuning_zero_length_equals_base():
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    adapters.inject_prompt_tuning(ours, adapters.PromptTuningConfig(num_virtual_tokens=0))
    ids = tokens()
    padded, _ = adapters.prepend_soft_prompt(ids, None, 0)
    torch.testing.assert_close(hf_logits(ours, padded), hf_logits(base, ids), rtol=0, atol=0)
    assert lora.count_parameters(ours)[0] == 0
    with pytest.raises(ValueError, match="--num_virtual_tokens"):
        adapters.PromptTuningConfig(num_virtual_tokens=-1)


def test_prompt_tuning_matches_peft():
    """Same soft prompt P: logits over [P; x] equal peft's PromptTuning (which concatenates)."""
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    adapters.inject_prompt_tuning(ours, adapters.PromptTuningConfig(num_virtual_tokens=3))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters()
    with torch.no_grad():
        ours.model.embed_tokens.prompt.copy_(theirs.prompt_encoder["default"].embedding.weight)
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0                                              # right padding on one row
    ours_ids, ours_mask = adapters.prepend_soft_prompt(ids, mask, 3)
    with torch.no_grad():
        got = ours(input_ids=ours_ids, attention_mask=ours_mask).logits
        want = theirs(input_ids=ids, attention_mask=mask).logits
    # Same embeddings in the same order; peft concatenates, we select: fp32 rounding only.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------
# P-tuning and prefix tuning against peft; every method through adapters.adapt on our Llama


METHODS = {   # small configs of every non-LoRA method; "+" variants use the other encoder
    "ia3": lambda: adapters.IA3Config(),
    "prompt": lambda: adapters.PromptTuningConfig(num_virtual_tokens=3),
    "ptuning": lambda: adapters.PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=16),
    "ptuning+lstm": lambda: adapters.PTuningConfig(3, "LSTM", encoder_hidden_size=8),
    "prefix": lambda: adapters.PrefixTuningConfig(num_virtual_tokens=3),
    "prefix+mlp": lambda: adapters.PrefixTuningConfig(3, prefix_projection=True,
                                                      encoder_hidden_size=16),
}


def randomize_adapter(model, seed=4):
    """Every trainable tensor away from its init (IA3 around 1), so the adapter shows in logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(float(name.endswith("ia3_l")) + 0.5 * torch.randn(p.shape, generator=gen))


def our_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask)[0]


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_p_tuning_matches_peft(kind):
    """Same P' and encoder weights (peft's module names): logits over [P; x] equal peft's."""
    base = tiny_hf_llama()
    ours = copy.deepcopy(base)
    config = adapters.PTuningConfig(3, kind, encoder_hidden_size=8)
    adapters.inject_p_tuning(ours, config)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=8,
        encoder_reparameterization_type=kind)).eval()
    assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters()
    encoder, embedding = theirs.prompt_encoder["default"], ours.model.embed_tokens
    with torch.no_grad():
        embedding.prompt.copy_(encoder.embedding.weight)
    embedding.encoder.load_state_dict({k: v for k, v in encoder.state_dict().items()
                                       if not k.startswith("embedding.")}, strict=True)
    ids, mask = tokens(), torch.ones(2, 11, dtype=torch.long)
    mask[1, -3:] = 0                                              # right padding on one row
    ours_ids, ours_mask = adapters.prepend_soft_prompt(ids, mask, 3)
    with torch.no_grad():
        got = ours(input_ids=ours_ids, attention_mask=ours_mask).logits
        want = theirs(input_ids=ids, attention_mask=mask).logits
    assert (want[:, 3:] - hf_logits(base, ids)).abs().max() > 1e-2
    # Same modules, same order of operations on the same HF model: fp32 rounding only.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_prefix_mlp_matches_peft_prefix_encoder():
    """P = W2 tanh(W1 P' + b1) + b2 with peft's weights is peft's P; fold_ keeps P, drops the MLP."""
    hf = tiny_hf_llama()
    theirs = peft.get_peft_model(copy.deepcopy(hf), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True,
        encoder_hidden_size=16)).prompt_encoder["default"]
    ours = adapters.PrefixEncoder(METHODS["prefix+mlp"](), canonical_twin(hf).config)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    state = theirs.state_dict()
    with torch.no_grad():
        ours.embedding.copy_(state.pop("embedding.weight"))
    ours.transform.load_state_dict({k.removeprefix("transform."): v for k, v in state.items()})
    with torch.no_grad():
        want = theirs(torch.arange(3)[None])[0]                   # (n, L * 2 * kv)
        torch.testing.assert_close(ours(), want, rtol=0, atol=0)  # the same two Linears
        ours.fold_()
    assert ours.transform is None and torch.equal(ours.embedding, want)


@pytest.mark.parametrize("peft_config", [
    lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3,
                                    prefix_projection=True, encoder_hidden_size=16),
    lambda: peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3,
                                     encoder_hidden_size=16),
], ids=["prefix", "prefix+mlp", "ptuning"])
def test_peft_adapter_loads_in_our_llama(tmp_path, peft_config):
    """peft's save_pretrained (random P; GQA prefix of kv heads, HF's half-split key channels) ->
    peft_format.load_adapter on our converted Llama -> peft's logits on every real position, with
    right padding too. Prefix keys carry no RoPE and real tokens sit at positions n, n+1, ...
    in both. atol 1e-5: the two attention codes differ in summation order (as test_lora)."""
    hf = tiny_hf_llama()
    theirs = peft.get_peft_model(copy.deepcopy(hf), peft_config()).eval()
    theirs.save_pretrained(str(tmp_path))
    ours, _ = peft_format.load_adapter(tmp_path, canonical_twin(hf))
    ids, mask = tokens(), torch.ones(2, 11, dtype=torch.long)
    mask[1, -3:] = 0
    for m in (None, mask):
        with torch.no_grad():
            want = theirs(input_ids=ids, attention_mask=m).logits[:, -11:]  # P-tuning: n + T
        assert (want - hf_logits(hf, ids)).abs().max() > 1e-2
        real = torch.ones_like(ids, dtype=torch.bool) if m is None else m.bool()
        torch.testing.assert_close(our_logits(ours, ids, m)[real], want[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_saved_adapter_loads_in_peft_and_back(tmp_path, method):
    """peft_format.save_adapter of a random adapter on our Llama -> peft.PeftModel.from_pretrained
    gives our logits (atol 1e-5, two attention codes) -> peft_format.load_adapter into a fresh Llama
    gives them again (atol 1e-6: the same tensors, folded or not, in the same operations)."""
    hf = tiny_hf_llama()
    config = METHODS[method]()
    model = adapters.adapt(canonical_twin(hf), config).eval()
    randomize_adapter(model)
    ids = tokens()
    want = our_logits(model, ids)
    assert (want - hf_logits(hf, ids)).abs().max() > 1e-2
    peft_format.save_adapter(tmp_path, model, config)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path)).eval()
    torch.testing.assert_close(hf_logits(theirs, ids)[:, -11:], want, rtol=0, atol=1e-5)
    loaded, loaded_config = peft_format.load_adapter(tmp_path, canonical_twin(hf))
    assert type(loaded_config) is type(config)
    torch.testing.assert_close(our_logits(loaded.eval(), ids), want, rtol=0, atol=1e-6)


def tiny_llama(seed=0):
    """Our tiny Llama 3 shape (GQA, tied) with weights large enough for varied greedy tokens."""
    from test_llama import tiny_model
    return tiny_model(seed)


@pytest.mark.parametrize("method", list(METHODS))
def test_only_the_adapter_trains_and_counts_match_the_formula(method):
    """Oracle: the base parameters themselves. One AdamW step: every base tensor has no gradient
    and is bit-for-bit unchanged, every adapter tensor has a gradient and moves; the trainable
    count equals adapters.formula_count."""
    llama = tiny_llama()
    config = METHODS[method]()
    model = adapters.adapt(llama, config).train()
    assert lora.count_parameters(model)[0] == adapters.formula_count(config, llama.config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    logits, _ = model(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    torch.optim.AdamW(trainable, lr=1e-2).step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().max() > 0, name
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None and torch.equal(p, before[name]), name


@pytest.mark.parametrize("method", ["prefix+mlp", "prompt", "ptuning"])
def test_cached_generation_equals_uncached(method):
    """Oracles: sample.generate_no_cache (the whole prefix recomputed, no KV cache) per prompt and
    the uncached forward of each row alone. Left-padded batches with the virtual tokens in cache
    slots 0..n-1 give the same greedy tokens, and prefill / decode logits equal within fp32
    (atol 1e-4 as tests/test_llama.py). A second, longer batch reuses the cache (fits counts n)."""
    model = adapters.adapt(tiny_llama(), METHODS[method]()).eval()
    randomize_adapter(model)
    prompts = [[5, 9, 7], [3, 1, 4, 1, 5, 9, 2]]
    # a cache of 7 + 6 + n slots; a 9-token batch fits it only if fits() forgets the n slots
    for batch in (prompts, [p + [2, 6] for p in prompts]):
        got = sample.generate_batch(model, batch, 0, 6)
        assert got == [sample.generate_no_cache(model, p, 6) for p in batch]
    tokens_, mask = sample.left_pad(prompts, 0)
    model.setup_cache(2, 8)
    with torch.no_grad():
        prefill, _ = model(tokens_, start_pos=0, attention_mask=mask, last_only=True)
        step, _ = model(torch.tensor([[11], [12]]), start_pos=7, last_only=True)
        for row, p in enumerate(prompts):
            alone = our_logits(model, torch.tensor([p + [11 + row]]))
            torch.testing.assert_close(prefill[row, -1], alone[0, -2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(step[row, -1], alone[0, -1], atol=1e-4, rtol=1e-4)


def test_adapter_file_errors(tmp_path):
    """One-line errors: no adapter files, a peft_type we lack, a config that is not a JSON object,
    a prefix saved for another shape."""
    llama = tiny_llama()
    with pytest.raises(FileNotFoundError, match="adapter_config.json: adapter file not found"):
        peft_format.load_adapter(tmp_path, llama)
    config = METHODS["prefix"]()
    peft_format.save_adapter(tmp_path, adapters.adapt(tiny_llama(), config), config)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LOHA"}')
    with pytest.raises(ValueError, match="peft_type 'LOHA' is not supported"):
        peft_format.load_adapter(tmp_path, llama)
    (tmp_path / "adapter_config.json").write_text('["LORA"]')      # file_checks.read_json
    with pytest.raises(ValueError, match="adapter_config.json: expected a JSON object"):
        peft_format.load_adapter(tmp_path, llama)
    other = tiny_llama()
    peft_format.save_adapter(tmp_path, adapters.adapt(other, config), config)
    wider = llama_module.Llama(llama_module.LlamaConfig.tiny(n_layers=3))
    with pytest.raises(ValueError, match="prompt_embeddings: adapter shape"):
        peft_format.load_adapter(tmp_path, wider)
