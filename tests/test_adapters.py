"""Tests for adapters.py: IA3 and prompt tuning on a frozen Llama.

Run: .venv/bin/python -m pytest tests/test_adapters.py -q   (CPU, tiny models, a few seconds)

Oracles: peft's IA3 and PromptTuning (get_peft_model, get_nb_trainable_parameters) on a tiny
transformers LlamaForCausalLM given the same vectors; the base model itself (IA3 with ones, a
zero-length soft prompt).
"""
import copy

import pytest
import torch

import adapters
import lora
from test_lora import hf_logits, tiny_hf_llama, tokens

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
