"""quantize.py: our Q4_1 groups against gguf's, the int4 kernel against F.linear, a tiny Llama."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llama
import quantize

gguf = pytest.importorskip("gguf", reason="gguf (an oracle, installed by setup.sh --dev) is missing")


def gguf_q4_1_round_trip(weight):
    """What GGUF's own Q4_1 quantizer and dequantizer make of `weight` (N, K)."""
    kind = gguf.GGMLQuantizationType.Q4_1
    raw = gguf.quants.quantize(weight.numpy().astype(np.float32), kind)
    return torch.from_numpy(gguf.quants.dequantize(raw, kind).astype(np.float32)).reshape(weight.shape)


def test_q4_1_matches_gguf_quantizer():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    ours = quantize.dequantize_q4_1(*quantize.quantize_q4_1(w))
    theirs = gguf_q4_1_round_trip(w)
    # gguf stores d and m as fp16; the difference is that rounding, times q <= 15
    torch.testing.assert_close(ours, theirs, rtol=0, atol=3e-3)
    q, d, m = quantize.quantize_q4_1(w)
    assert q.min() == 0 and q.max() == 15
    assert (ours - w).abs().max() <= d.max() / 2 + 1e-6          # rounding error at most half a step


def test_weights_read_from_q4_1_survive_requantization_exactly():
    """A GGUF Q4_1 model's weights are already on the grid: quantizing them again loses nothing."""
    torch.manual_seed(1)
    from_file = gguf_q4_1_round_trip(torch.randn(8, 96))
    again = quantize.dequantize_q4_1(*quantize.quantize_q4_1(from_file))
    torch.testing.assert_close(again, from_file, rtol=0, atol=1e-5)


def test_constant_group_does_not_divide_by_zero():
    w = torch.ones(2, 32) * 0.25
    assert torch.equal(quantize.dequantize_q4_1(*quantize.quantize_q4_1(w)), w)


@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 64)])
def test_int4_kernel_equals_linear_with_dequantized_weight(shape):
    torch.manual_seed(0)
    layer = quantize.Int4Linear(torch.nn.Linear(64, 48, bias=False))
    x = torch.randn(*shape)
    out = layer(x)
    assert out.shape == (*shape[:-1], 48) and out.dtype == torch.float32
    # the kernel runs in bf16 (activations and d, zero), the reference in fp32
    ref = F.linear(x.bfloat16().float(), layer.dequantize())
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(layer.forward_reference(x), F.linear(x, layer.dequantize()))


def test_quantized_tiny_llama_tracks_the_float_model():
    torch.manual_seed(0)
    config = llama.LlamaConfig.tiny(dim=64, hidden_dim=128, n_heads=4, n_kv_heads=2, vocab_size=96)
    model = llama.Llama(config).eval()
    tokens = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        float_logits, _ = model(tokens)
        replaced = quantize.quantize_model_int4(model)
        int4_logits, _ = model(tokens)
    assert replaced == 7 * config.n_layers                # q k v o, w1 w2 w3 per block
    assert isinstance(model.output, torch.nn.Linear)      # the head stays in float by default
    # 4-bit weights change logits a little; the ranking of the top token mostly survives
    assert (int4_logits - float_logits).abs().max() < 0.25 * float_logits.abs().max()
    agree = (int4_logits.argmax(-1) == float_logits.argmax(-1)).float().mean()
    assert agree > 0.8
    # the KV-cache decode path runs on the quantized layers
    out = model.generate(tokens[:1, :4], 5)
    assert len(out) == 5
    everything = llama.Llama(config).eval()
    assert quantize.quantize_model_int4(everything, skip=()) == 7 * config.n_layers + 1
    assert isinstance(everything.output, quantize.Int4Linear)


def test_default_model_int4_keeps_its_q4_1_weights_and_answers(default_model_path):
    """SmolLM2's block weights are Q4_1 in the file: int4 re-quantization reproduces them, and the
    quantized model still decodes the greedy answer to the sanity-check question."""
    import weights
    model, tokenizer = weights.load_pretrained(default_model_path)
    originals = {name: m.weight.detach().clone() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "output"}
    quantize.quantize_model_int4(model)
    for name, weight in originals.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, quantize.Int4Linear)
        torch.testing.assert_close(layer.dequantize(), weight, rtol=0, atol=1e-5)
    prompt = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    with torch.inference_mode():
        answer = tokenizer.decode(model.generate(prompt, 12, stop_tokens=tokenizer.stop_ids))
    assert "Paris" in answer
