"""Fast paths for training and decoding, built from the canonical Llama and tested equal to it.

The readable model (llama.py, lora.py) stays what it is; the caller applies these:

1. Fused projections (FusedProjection, fuse). Linears that read the same input are one matmul
   over their stacked weights (as gpt-fast's wqkv and Meta's fused w1/w3 kernels do):
       [q; k; v] = [W_q; W_k; W_v] x            [gate; up] = [W_1; W_3] x        (SwiGLU)
   The stacked weight is built once and is the storage of the canonical Parameters: wq.weight,
   wk.weight, wv.weight become row views of it, so their names, the state_dict keys, LoRA / IA3
   targeting, saving and in-place updates (AdamW steps, lora.merge_lora, load_state_dict) are
   unchanged and can never leave the stacked copy stale. With LoRA on some of them the base part
   is still one matmul and the adapters read their shared input once:
       U = dropout(x) [A_q; A_k; A_v]^T            one matmul, one dropout mask per input
       q = W_q x + s_q B_q U_q                     one addmm each (lora.lora_add_fast)
   Why faster: one wide matmul instead of three (k, v are only n_kv_heads * head_dim wide), 4 BLAS
   calls instead of 9 for q, k, v with LoRA, and backward sums 2 gradients of x instead of 6.
   fuse also switches every LoRALayer to its fast branch (lora.LoRALayer.fast: the branch in the
   input's dtype, one addmm). DoRA falls back: a group with an unmerged DoRA layer runs each
   layer's own forward (the readable dora_forward; tested equal). Dropout in training: peft
   draws one mask per adapter, the fused group one per input: the same distribution, other
   draws; in eval (no dropout) the two are equal.

2. chunked_cross_entropy: the vocabulary projection and the cross-entropy, rows in chunks. For
   rows h_i (dim,), z_i = W h_i (V,), targets y_i:
       loss       = sum_i logsumexp(z_i) - z_i[y_i]
       dloss/dz_i = softmax(z_i) - onehot(y_i) =: g_i
       dloss/dh_i = g_i W,        dloss/dW = sum_i g_i h_i^T
   Each chunk's logits and g are made, used and freed in forward, so the (B*T, V) fp32 logits of
   LM training (B 4, T 128, V 128k: 256 MiB, and as much again for their gradient) never exist;
   the gradients are kept, scaled by the upstream gradient in backward. Memory O(chunk * V).
   (Hsu et al. 2024, Liger Kernel, arXiv:2410.10989, "fused linear cross entropy"; Wijmans et al.
   2024, "Cut Your Losses in Large-Vocabulary Language Models", arXiv:2411.09009.)

3. compile_model: torch.compile of each TransformerBlock in place (one graph reused by every
   layer: compiles in seconds where the whole model takes minutes); fuses RMSNorm, RoPE, SiLU and
   the residual adds into a few kernels.
4. compile_decode: the decode_fn of sample.generate_batch, torch.compile(mode="reduce-overhead",
   fullgraph=True): CUDA graphs over the static KV cache (llama.KVCache) on a GPU, where decoding
   one token is launch-bound (20 -> 600 tokens/s measured on an H100 for SmolLM2's shape);
   inductor kernels on a CPU.

Shapes: x (..., in), N rows (B*T), dim, V vocabulary, r LoRA rank.
Tests: tests/test_fused.py: fused logits and gradients (base, LoRA light / heavy, full
fine-tuning, dropout in eval, bf16) == the split model's (DoRA's fallback: in
tests/test_lora_variants.py); state_dict keys and saved adapters unchanged; merge /
load_state_dict / .to() keep the stacked weight in step; prefix tuning on a fused model; int4
layers fall back to the split path; chunked_cross_entropy == F.cross_entropy on full logits
(value, gradients of hidden and weight, ignore_index); compiled blocks and the compiled decode
step == eager.
"""
import torch
import torch.nn.functional as F
from torch import nn

import llama
import lora
import quantize

IGNORE_INDEX = -100     # F.cross_entropy's default ignore_index (sft.IGNORE)

# ----------------------------------------------------------------------------
# the vocabulary projection + cross-entropy in chunks of rows


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of F.linear(hidden, weight); gradients made chunk by chunk in forward
    (the formulas in the module docstring). options: (chunk, ignore_index, want_grad)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, options):
        chunk, ignore_index, want_grad = options
        need_h = want_grad and ctx.needs_input_grad[0]
        need_w = want_grad and ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype                   # a bf16 weight gets a bf16 gradient
        wide = torch.promote_types(hidden.dtype, torch.float32)   # softmax in fp32 (or fp64)
        loss = torch.zeros((), dtype=wide, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None                  # (N, dim)
        grad_w = torch.zeros_like(weight, dtype=wide) if need_w else None      # (V, dim)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], targets[start:start + chunk]    # (n, dim), (n,)
            keep = y != ignore_index                                            # (n,)
            y = torch.where(keep, y, 0)
            logp = torch.log_softmax(F.linear(h, weight).to(wide), dim=-1)     # (n, V), fp32
            loss -= (logp.gather(1, y[:, None]).squeeze(1) * keep).sum()        # -log p(y_i)
            if need_h or need_w:
                g = logp.exp_()                                                 # softmax, in place
                g[torch.arange(len(y), device=y.device), y] -= 1.0              # - onehot(y)
                g = g.mul_(keep[:, None]).to(hidden.dtype)                      # (n, V)
                if need_h:
                    grad_h[start:start + chunk] = g @ weight                    # (n, dim)
                if need_w:
                    grad_w.addmm_(g.t().to(wide), h.to(wide))                   # (V, dim)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype)
        grad_w = None if grad_w is None else (grad_w * grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def chunked_cross_entropy(hidden, weight, targets, chunk=256, ignore_index=IGNORE_INDEX):
    """sum_i CE(W h_i, y_i) over rows with y_i != ignore_index, chunk rows at a time.

    hidden (..., dim), weight (V, dim), targets (...) -> 0-d summed loss, fp32 (fp64 for fp64
    hidden), to be divided by the
    number of kept rows for the mean). Equal to F.cross_entropy(F.linear(hidden, weight).float(),
    targets, reduction="sum") in value and gradients, without the full (N, V) logits. chunk 256:
    two (256, V) fp32 buffers at a time (V 128k: 128 MiB each); on the 2-core CPU 256 and 1024
    rows ran equally fast, ~10% faster than the full-logits loss (B 4, T 128, V 49152).
    """
    if chunk < 1:
        raise ValueError(f"chunked_cross_entropy: chunk={chunk}; use a positive row count, e.g. 256")
    hidden = hidden.reshape(-1, hidden.shape[-1])                                # (N, dim)
    targets = targets.reshape(-1)                                                # (N,)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, (chunk, ignore_index, want_grad))


def lm_loss_chunked(model, tokens, chunk=256):
    """Next-token cross-entropy over every position of tokens (B, T), as transformers'
    labels=input_ids: summed over the B*(T-1) predictions -> (loss, count). The final hidden
    states come from the model; the vocabulary projection is chunked (never (B, T, V))."""
    _, hidden = model(tokens, last_only=True)                                    # (B, T, dim)
    targets = tokens[:, 1:]                                                      # (B, T-1)
    loss = chunked_cross_entropy(hidden[:, :-1], model.output.weight, targets, chunk)
    return loss, targets.numel()


# ----------------------------------------------------------------------------
# fused projections


def _fusable(layer):
    """A bias-free nn.Linear or LoRALayer: its base weight can join the stacked matmul. An
    unmerged DoRA layer cannot: it rescales its whole output by m / ||W0 + s B A||_c (its own
    forward, lora.LoRALayer.dora_forward, runs instead; merged, it is a plain weight)."""
    dora = getattr(layer, "lora_magnitude", None) is not None and not layer.merged
    return isinstance(layer, (nn.Linear, lora.LoRALayer)) and layer.bias is None and not dora


def _rebuild_after_load(module, incompatible_keys):
    """load_state_dict visits a FusedProjection after its parent's layers: restack them."""
    module.rebuild()


class FusedProjection(nn.Module):
    """Linears of one parent module that read the same input (wq, wk, wv or w1, w3), as one
    matmul over their stacked weights; called like the list [layer(x) for layer in layers].

    The layers stay where they are (looked up on the parent at every call, so LoRA injected later
    is seen); this module holds only the stacked weight, a non-persistent buffer whose rows are
    the layers' weights (no new state_dict keys). Int4 layers (quantize.py, decoding) are stacked
    into one Int4Linear instead: Q4_1 groups run along rows, so the stacked rows quantize to the
    same numbers. Other layers (IA3, or int4 after fusing) fall back to their own forward.
    """

    def __init__(self, parent, names):
        super().__init__()
        self.names = tuple(names)
        object.__setattr__(self, "parent", parent)          # not a submodule: no duplicate names
        self.register_buffer("weight", None, persistent=False)
        object.__setattr__(self, "int4", None)              # not a submodule: no new state keys
        self.sizes = []
        self.rebuild()
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    def layers(self):
        return [getattr(self.parent, name) for name in self.names]

    @torch.no_grad()
    def rebuild(self):
        """Stack the layers' current weights into one tensor and make each weight a row view of
        it (after .to(), or a load_state_dict(assign=True) that replaced the Parameters)."""
        if all(isinstance(layer, quantize.Int4Linear) for layer in self.layers()):
            return self._stack_int4()
        weights = [layer.weight for layer in self.layers()]
        self.weight = torch.cat([w.detach() for w in weights])            # (sum out, in)
        self.sizes, start = [w.shape[0] for w in weights], 0
        for w, size in zip(weights, self.sizes):
            w.data = self.weight[start:start + size]                      # shares the storage
            start += size

    def _stack_int4(self):
        layers = self.layers()
        stacked = nn.Linear(layers[0].in_features, sum(l.out_features for l in layers), bias=False,
                            device="meta")
        stacked.weight = nn.Parameter(torch.cat([l.dequantize() for l in layers]),
                                      requires_grad=False)              # (sum out, in), fp32
        object.__setattr__(self, "int4", quantize.Int4Linear(stacked, layers[0].group_size))
        self.sizes = [l.out_features for l in layers]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.rebuild()               # the parent's layers come first in its children: converted
        return self

    def forward(self, x):
        """x (..., in) -> [y_1, ..., y_n], y_j (..., out_j) = layer_j(x)."""
        layers = self.layers()
        if self.int4 is not None:                                   # decoding: one int4 kernel
            return list(self.int4(x).split(self.sizes, dim=-1))
        if not all(_fusable(layer) for layer in layers):
            return [layer(x) for layer in layers]
        weight = self.weight                                       # frozen or no grad: the stack
        if torch.is_grad_enabled() and any(layer.weight.requires_grad for layer in layers):
            weight = torch.cat([layer.weight for layer in layers])  # full fine-tuning: their grads
        outs = list(F.linear(x, weight).split(self.sizes, dim=-1))  # one matmul, (..., out_j) views
        adapted = [j for j, layer in enumerate(layers)
                   if isinstance(layer, lora.LoRALayer) and not layer.merged]
        if adapted:
            add_lora_group(x, outs, [layers[j] for j in adapted], adapted)
        return outs

    def extra_repr(self):
        return f"{'+'.join(self.names)}, sizes={self.sizes}"


def add_lora_group(x, outs, adapters, index):
    """outs[index[i]] += scale_i B_i A_i dropout(x) for LoRA layers that share the input x: their
    A stacked into one matmul, one dropout mask for the group (when their dropout rates agree)."""
    rates = {getattr(a.dropout, "p", 0.0) for a in adapters}
    if len(rates) > 1:                                         # different rates: one mask each
        for j, a in zip(index, adapters):
            outs[j] = a.add_delta_fast(a.dropout(x), outs[j])
        return
    x = adapters[0].dropout(x)
    A = torch.cat([a.lora_A for a in adapters]).to(x.dtype)              # (sum r, in)
    ax = F.linear(x, A).split([a.r for a in adapters], dim=-1)           # one matmul, (..., r_i)
    for j, a, ax_i in zip(index, adapters, ax):
        outs[j] = a.add_delta_fast(x, outs[j], ax_i)                     # (..., out_j)


def fuse(model):
    """Switch a Llama (or a wrapper around one) to the fast training path, in place: wq/wk/wv and
    w1/w3 as FusedProjections, every LoRALayer to its fast branch. Call after inject_lora (a LoRA
    injected later still joins the fused group; only its wo / w2 adapters keep the reference
    branch) and after quantize.quantize_model_int4 (int4 layers are stacked then; quantized
    later, they run one by one). Returns the number of fused groups. unfuse undoes it."""
    groups = 0
    for module in model.modules():
        if isinstance(module, lora.LoRALayer):
            module.fast = True
    for module in list(model.modules()):
        names = (("wq", "wk", "wv") if isinstance(module, llama.Attention) else
                 ("w1", "w3") if isinstance(module, llama.FeedForward) else None)
        layers = [getattr(module, n) for n in names or ()]
        if layers and (all(hasattr(layer, "weight") for layer in layers) or
                       all(isinstance(layer, quantize.Int4Linear) for layer in layers)):
            setattr(module, "wqkv" if len(names) == 3 else "w13", FusedProjection(module, names))
            groups += 1
    return groups


def unfuse(model):
    """Back to the readable path (the weights stay row views of the stacked tensors: harmless)."""
    for module in model.modules():
        if isinstance(module, lora.LoRALayer):
            module.fast = False
        if isinstance(module, llama.Attention):
            module.wqkv = None
        if isinstance(module, llama.FeedForward):
            module.w13 = None
    return model


# ----------------------------------------------------------------------------
# torch.compile, applied by the caller


def compile_model(model, **options):
    """torch.compile every TransformerBlock in place (Module.compile), options as torch.compile's
    (backend, mode, dynamic, ...). Blocks share one graph (same code, parameters as inputs), so
    compiling costs one block; the Python loop over layers, the norm and the head stay eager.
    Returns model."""
    for module in model.modules():
        if isinstance(module, llama.TransformerBlock):
            module.compile(**options)
    return model


def compile_decode(model, backend="inductor", mode="reduce-overhead"):
    """decode_fn for sample.generate_batch / Llama.generate: the whole one-token step compiled
    as one graph (fullgraph: no .item(), no graph break; dynamic=False: one fixed shape, since
    start_pos arrives as a 0-d tensor and attention runs over the whole static cache). mode
    "reduce-overhead" records CUDA graphs on a GPU; it applies to the inductor backend only."""
    options = dict(backend=backend, fullgraph=True, dynamic=False)
    if backend == "inductor":
        options["mode"] = mode
    return torch.compile(model, **options)
