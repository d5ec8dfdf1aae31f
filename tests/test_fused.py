"""Tests for fused.py: every fast path against the readable model it was built from.

Run: .venv/bin/python -m pytest tests/test_fused.py -q   (CPU, tiny configs; ~1 min, most of
it the two inductor compilations, which skip without a C++ compiler)

Oracles: the same model unfused (llama.py's split wq / wk / wv, w1 / w3 and lora.py's reference
LoRA branch) for logits, gradients, merges, loads, dtype casts, prefix tuning, int4 and IA3
layers; F.cross_entropy on the full (N, V) logits for chunked_cross_entropy; the eager model for
compiled blocks and the compiled decode step.
Tolerances, fp32: the fused matmul makes the same dot products over the same inputs, but BLAS
may block a wide output differently from three narrow ones, and the chunked loss sums in another
order: differences seen are <= 1e-6 on O(1) values; atol = rtol = 1e-5 leaves headroom, while a
wrong slice, scale or mask changes values by O(0.1). fp64 checks are exact to 1e-12.
"""
import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

import adapters
import fused
import llama
import lora
import optimizer
import peft_format
import quantize
import weights

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled tests leave graphs and global counters behind (tests/test_llama.py counts the
    graphs of its own compile): reset both after every test."""
    yield
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return llama.Llama(llama.LlamaConfig.tiny(**overrides))


def with_lora(model, targets="heavy", dropout=0.0, seed=1):
    lora.inject_lora(model, lora.LoraConfig(r=4, alpha=8, dropout=dropout, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    for _, layer in lora.lora_layers(model):
        with torch.no_grad():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=g))
    return model


def tokens(batch=2, length=12, seed=3):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, ids):
    """Summed next-token loss on full logits (the readable loss) and the trainable gradients."""
    model.zero_grad(set_to_none=True)
    logits, _ = model(ids)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def assert_same_training(split, fast, ids):
    loss_s, grads_s = loss_and_grads(split, ids)
    loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(loss_f, loss_s, **TOL)
    assert len(grads_f) == len(grads_s) > 0
    for a, b in zip(grads_f, grads_s):
        torch.testing.assert_close(a, b, **TOL)


# ----------------------------------------------------------------------------
# chunked cross-entropy == F.cross_entropy on the full logits

@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_cross_entropy_value_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 13, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (2, 13), generator=g)
    targets[0, :4] = fused.IGNORE_INDEX                         # ignored rows add nothing
    full = F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), targets.flatten(),
                           reduction="sum")
    ref = torch.autograd.grad(2.5 * full, (hidden, weight))    # upstream gradient 2.5
    loss = fused.chunked_cross_entropy(hidden, weight, targets, chunk)
    got = torch.autograd.grad(2.5 * loss, (hidden, weight))
    torch.testing.assert_close(loss, full, **TOL)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **TOL)


def test_chunked_cross_entropy_fp64_frozen_weight_and_no_grad():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, dtype=torch.float64)            # frozen (LoRA)
    targets = torch.randint(0, 30, (9,), generator=g)
    full = F.cross_entropy(F.linear(hidden, weight), targets, reduction="sum")
    loss = fused.chunked_cross_entropy(hidden, weight, targets, chunk=4)
    torch.testing.assert_close(loss, full, atol=1e-12, rtol=1e-12)
    (a,), (b,) = torch.autograd.grad(loss, hidden), torch.autograd.grad(full, hidden)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(fused.chunked_cross_entropy(hidden, weight, targets, 4), loss)
    with pytest.raises(ValueError, match="chunk"):
        fused.chunked_cross_entropy(hidden, weight, targets, 0)


def test_chunked_cross_entropy_bf16_gradient_dtype():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 16, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(50, 16, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, 50, (6,), generator=g)
    full = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
    ref = torch.autograd.grad(full, (hidden, weight))
    got = torch.autograd.grad(fused.chunked_cross_entropy(hidden, weight, targets, 4),
                              (hidden, weight))
    for a, b in zip(got, ref):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)  # bf16 rounding


def test_lm_loss_chunked_equals_the_full_logits_loss():
    model = with_lora(tiny().train())
    ids = tokens()
    loss_ref, grads_ref = loss_and_grads(model, ids)
    model.zero_grad(set_to_none=True)
    loss, count = fused.lm_loss_chunked(model, ids, chunk=7)
    loss.backward()
    assert count == ids[:, 1:].numel()
    torch.testing.assert_close(loss, loss_ref, **TOL)
    for a, b in zip([p.grad for p in model.parameters() if p.requires_grad], grads_ref):
        torch.testing.assert_close(a, b, **TOL)


# ----------------------------------------------------------------------------
# fused projections == the split Linears

def test_fused_base_model_logits_and_state_dict():
    split = tiny().eval()
    fast = copy.deepcopy(split)
    assert fused.fuse(fast) == 2 * 2                        # qkv and gate/up in 2 layers
    ids = tokens()
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)
    assert list(fast.state_dict()) == list(split.state_dict())
    for (name, a), b in zip(fast.state_dict().items(), split.state_dict().values()):
        assert torch.equal(a, b), name
    attention = fast.layers[0].attention
    assert attention.wk.weight.untyped_storage().data_ptr() == \
        attention.wqkv.weight.untyped_storage().data_ptr()  # one storage: the rows are views


@pytest.mark.parametrize("targets", ["light", "heavy", "w1,w2"])
def test_fused_lora_training_equals_split(targets):
    split = with_lora(tiny().train(), targets)
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    assert_same_training(split, fast, tokens())


def test_fused_lora_with_dropout_in_eval_and_differing_rates():
    split = with_lora(tiny(), "heavy", dropout=0.1)
    split.layers[0].attention.wk.dropout = torch.nn.Dropout(0.3)   # rates differ in one group
    split.eval()
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    ids = tokens()
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)
    fast.train()                                                   # masks drawn, still finite
    assert torch.isfinite(fast(ids)[0]).all()


def test_lora_injected_after_fusing_and_unfuse():
    split = with_lora(tiny().train(), "heavy")
    fast = tiny().train()
    fused.fuse(fast)
    with_lora(fast, "heavy")
    assert_same_training(split, fast, tokens())
    fused.unfuse(fast)
    assert fast.layers[0].attention.wqkv is None
    assert_same_training(split, fast, tokens())


def test_full_fine_tuning_gradients_and_optimizer_steps():
    split = tiny().train()
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    ids = tokens()
    assert_same_training(split, fast, ids)
    for model in (split, fast):
        opt = optimizer.AdamW(model.parameters(), lr=1e-2, foreach=True)
        loss_and_grads(model, ids)
        opt.step()
    fast.requires_grad_(False)                 # now the cached stack: it followed the steps
    with torch.no_grad():
        torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)


def test_merge_load_and_cast_keep_the_stack_in_step():
    split = with_lora(tiny(), "heavy").eval()
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    ids = tokens()
    lora.merge_lora(split), lora.merge_lora(fast)                  # in-place copy_ into views
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)
    lora.unmerge_lora(split), lora.unmerge_lora(fast)
    other = tiny(seed=7).state_dict()
    for assign in (False, True):                                   # copy_ / new Parameters
        weights.load_llama_state_dict(split, other, strict=False, assign=assign)
        weights.load_llama_state_dict(fast, other, strict=False, assign=assign)
        torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)
    split.double(), fast.double()                                  # .to(): the stack rebuilt
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], atol=1e-12, rtol=1e-12)


def test_fused_bf16_lora_branch_in_bf16_with_fp32_adapters():
    split = with_lora(tiny().to(torch.bfloat16), "heavy").train()     # A, B stay fp32
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    assert {p.dtype for p in fast.parameters() if p.requires_grad} == {torch.float32}
    ids = tokens()
    loss_s, grads_s = loss_and_grads(split, ids)
    loss_f, grads_f = loss_and_grads(fast, ids)
    # bf16 has 8 bits of mantissa: the reference branch runs in fp32, the fast one in bf16
    torch.testing.assert_close(loss_f.float(), loss_s.float(), atol=0.5, rtol=1e-2)
    for a, b in zip(grads_f, grads_s):
        assert a.dtype == torch.float32
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_saved_adapter_is_unchanged(tmp_path):
    split = with_lora(tiny(), "heavy")
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    config = lora.LoraConfig(r=4, alpha=8, target_modules="heavy")
    peft_format.save_adapter(tmp_path / "split", split, config)
    peft_format.save_adapter(tmp_path / "fast", fast, config)
    for name in (peft_format.ADAPTER_WEIGHTS, peft_format.ADAPTER_CONFIG):
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes()
    shutil.rmtree(tmp_path)


def test_prefix_tuning_on_a_fused_model():
    config = adapters.PrefixTuningConfig(num_virtual_tokens=3)
    torch.manual_seed(5)
    split = adapters.adapt(tiny(), config).eval()
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    ids = tokens()
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)
    prompt = ids[0, :5].tolist()
    assert fast.llama.generate(prompt, 6) == split.llama.generate(prompt, 6)


@pytest.mark.parametrize("convert", ["int4", "ia3"])
def test_other_layer_kinds_fall_back_to_the_split_path(convert):
    split = tiny().eval()
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    for model in (split, fast):
        if convert == "int4":
            quantize.quantize_model_int4(model)
        else:
            adapters.inject_ia3(model, adapters.IA3Config())
            for name, p in model.named_parameters():
                if name.endswith("ia3_l"):
                    torch.nn.init.uniform_(p, 0.5, 1.5, generator=torch.Generator().manual_seed(1))
    ids = tokens()
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)


def test_int4_layers_quantized_first_are_stacked():
    """Q4_1 groups run along rows: the stacked int4 layer holds the same 4-bit numbers, so the
    logits equal the int4 split model's up to the rounding of d and m (the same bf16 scales)."""
    split = tiny().eval()
    quantize.quantize_model_int4(split)
    fast = copy.deepcopy(split)
    assert fused.fuse(fast) == 4 and fast.layers[0].attention.wqkv.int4 is not None
    assert list(fast.state_dict()) == list(split.state_dict())
    ids = tokens()
    torch.testing.assert_close(fast(ids)[0], split(ids)[0], **TOL)


# ----------------------------------------------------------------------------
# torch.compile paths == eager

def test_compiled_blocks_train_like_eager():
    """backend 'eager' traces with dynamo (graph capture, guards, one graph per block shape)
    without generating code, so this checks compile-friendliness in seconds."""
    split = with_lora(tiny().train(), "heavy")
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    torch._dynamo.reset()
    fused.compile_model(fast, backend="eager", fullgraph=True)
    assert_same_training(split, fast, tokens())
    torch._dynamo.reset()


def test_compiled_decode_step_equals_eager_decoding():
    model = tiny().eval()
    fused.fuse(model)
    prompt = tokens(1, 5)[0].tolist()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()               # counts of earlier tests' graphs
    step = fused.compile_decode(model, backend="eager")
    assert model.generate(prompt, 8, decode_fn=step) == model.generate(prompt, 8)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def _have_compiler():
    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _have_compiler(), reason="inductor's CPU backend needs a C++ compiler")
def test_inductor_decode_and_blocks_equal_eager():
    """The real thing on CPU: inductor C++ kernels for the decode step and for training blocks
    (CUDA graphs of mode='reduce-overhead' need a GPU). Same tolerance as above: inductor fuses
    the elementwise ops and may reorder the sums of norms and softmax."""
    model = tiny().eval()
    quantize.quantize_model_int4(model)               # the CPU decoding path, int4 kernel inside
    prompt = tokens(1, 5)[0].tolist()
    torch._dynamo.reset()
    assert model.generate(prompt, 8, decode_fn=fused.compile_decode(model)) == \
        model.generate(prompt, 8)
    split = with_lora(tiny().train(), "heavy")
    fast = copy.deepcopy(split)
    fused.fuse(fast)
    fused.compile_model(fast)
    assert_same_training(split, fast, tokens())
    torch._dynamo.reset()
