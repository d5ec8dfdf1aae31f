"""`run.py --option memory`: how many bytes fine-tuning a Llama needs, full or LoRA (seed 004
Q2.5), estimated from its LlamaConfig alone and, with --measure_steps, measured on a real run.

Memory of one training step = weights + gradients + optimizer states + activations, with P the
parameters (tied embeddings once), s the bytes of --dtype (4 float32, 2 bfloat16; the whole model
is cast, weights and activations alike: no autocast, no fp32 master copy), r the LoRA rank:
    weights       P * s                          LoRA: P * s + L * 4
    gradients     P * s (every parameter)        LoRA: L * 4
    AdamW m, v    2 * P * s                      LoRA: 2 * L * 4
with L = n_layers * sum over adapted Linears of r * (in + out) (Hu et al. 2021, arXiv:2106.09685,
Sec. 4.1; lora.lora_parameter_count on llama.linear_shapes). AdamW (optimizer.py) makes m and v
with zeros_like(param): the parameter's dtype, so a bf16 model has bf16 states; LoRALayer keeps A,
B in fp32 for a bf16 model, so adapters, their gradients and states are 4 bytes each.

Activations: the tensors autograd saves for backward, summed per token from what llama.py's forward
does, times B * T tokens. The rule for y = x W^T: W's gradient needs x, x's gradient needs only W,
so a frozen Linear saves nothing of its own (W is already in the weights row). Per block, bytes
per token, h = hidden_dim, q = n_heads * head_dim, kv = n_kv_heads * head_dim:
    RMSNorm (x2)      x.float() 4 dim + rsqrt 4 when the gradient flows to x; x / rms  s dim when
                      g trains (full). LayerNorm saves the same sizes (centred x instead of x).
    attention         q, k after RoPE, v, the SDPA output (= wo's input), logsumexp:
                      s (2 q + 2 kv) + 4 n_heads (fused SDPA never stores the T x T probabilities;
                      RoPE keeps only the shared cos, sin tables, 4 T head_dim bytes per forward)
    SwiGLU            w1 x (silu's input), w3 x, silu(w1 x): 3 s h when the gradient flows
    Linear inputs     full: s dim (shared by wq, wk, wv), s dim (shared by w1, w3), s h (w2)
    LoRA, per adapted Linear: A x (r values, fp32, for B's gradient) and A's input for A's
                      gradient: in fp32 without dropout that is x itself (4 in, shared); else each
                      adapter keeps its own fp32 tensor (dropout output and/or the .to(fp32) copy,
                      4 in) and, when the gradient flows to x, the dropout mask (in elements of 1
                      byte on CUDA, s on the CPU, where dropout multiplies by a mask in x's dtype)
In LoRA nothing upstream of the first adapter trains: layer 0's attention norm saves nothing.
Whole forward: the token ids (8 bytes each, full: the embedding's gradient), the final norm, and the
loss. sft.answer_loss projects only the n = B * answer_tokens labelled rows onto the vocabulary:
its log-softmax is n x V fp32, plus the rows (n x dim, s; full: the head's weight gradient), the
keep mask B (T-1) bool and the targets 8 n. A plain LM loss labels all T-1 positions: B (T-1) V
fp32 log-probabilities. Gradient checkpointing: each block's input (s dim per token per layer)
plus one block's saved tensors while it is recomputed (in fp32 less its x.float(), which is the
kept input itself).

Worked example, Llama-3.2-1B (LlamaConfig.llama32_1b: P = 1,235,814,400), B = 8, T = 512, bf16,
LoRA heavy r = 16 (L = 11,272,192, 0.904 % of P + L), dropout 0.05 with CUDA's 1-byte masks, the
answer loss on 4 tokens per sequence, in GiB:
                      full      LoRA
    weights          2.302     2.344      P * 2;  P * 2 + L * 4
    gradients        2.302     0.042      P * 2;  L * 4
    AdamW m, v       4.604     0.084      2 P * 2;  2 L * 4
    activations      6.696    10.903      blocks 6.633 | 10.856, final norm and loss 0.06 | 0.05
    total           15.903    13.372
Blocks, bytes per token per layer (x 4096 tokens x 16 layers), full: norms 2 (4*2048 + 4 +
2*2048) + Linear inputs 2*2048 + 2*2048 + 2*8192 + attention 2 (2*2048 + 2*512) + 4*32 + SwiGLU
3*2*8192 = 108,680. LoRA keeps no x / rms and no frozen Linear input, but each of its 7 adapters
keeps A's fp32 input (4 in), its dropout mask (in) and A x (4 r): sum in = 20,480, so
81,920 + 20,480 + 448 more, 178,760 in all (158,280 = 9.68 GiB without dropout; 199,240 = 12.13
GiB with the CPU's 2-byte masks). LoRA's saving is
the 6.8 GiB of gradients and AdamW states, not the activations. A plain LM loss adds
B (T-1) V 4 bytes = 1.95 GiB to either; gradient checkpointing cuts activations to 0.73 | 0.98.

Measured (--measure_steps N): N AdamW steps through train.fit of sft.answer_loss on random (B, T)
tokens; weights, gradients and AdamW states are the summed tensor sizes afterwards, activations the
distinct storages saved during one forward (torch.autograd.graph.saved_tensors_hooks) and still
held when it returns; the peak is torch.cuda.max_memory_allocated on CUDA (which also sees
temporary buffers: logits before log-softmax, gradients in flight, allocator rounding), the
process max RSS on the CPU (for information). With gradient checkpointing the blocks save through
torch.utils.checkpoint's own hooks: measured are the block inputs it keeps (forward pre-hooks) plus
the largest block rerun as its backward reruns it (its per-block RNG state, ~5 KB, is not
counted). Caveat: a CUDA build whose fused kernels reject a case (e.g. fp32 GQA on an older torch)
falls back to math attention, which also saves the B n_heads T^2 probabilities.

Size: just over 400 lines, because the estimate and the measurement that checks it sit together.

Shapes: B batch, T tokens, dim, V vocab, n labelled positions. Tested in tests/test_memory.py:
weights, gradients and AdamW bytes equal to the byte of a measured CPU run of a tiny GQA Llama
(full and LoRA, fp32 and bf16, with and without dropout, with and without gradient
checkpointing); activations within 1 % (they agree to the byte on torch 2.13's CPU kernels);
Llama-3.2-1B's numbers above; the CLI (its one-line errors, no weights read to estimate).
"""
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

import llama
import lora
import sft
import train
import weights
from weight_names import BLOCK_LINEARS, with_aliases

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
METHODS = ("full", "lora")
ADAPTER_BYTES = 4          # LoRALayer keeps A and B in fp32 (also for bf16 models)
GIB = 2 ** 30


# ----------------------------------------------------------------------------
# configuration

@dataclass
class TrainingSetup:
    batch_size: int = 8                  # B, sequences per optimizer step
    max_len: int = 512                   # T, tokens per sequence
    dtype: str = "float32"               # weights, gradients, AdamW states, activations
    lora_targets: object = "heavy"       # preset or Linear names (lora.resolve_targets)
    lora_rank: int = 16                  # r
    lora_dropout: float = 0.05           # dropout on each LoRA branch's input (--option sft's)
    answer_tokens: Optional[int] = 4     # labelled positions per sequence; None = all T-1 (LM)
    gradient_checkpointing: bool = False  # keep block inputs only, recompute blocks in backward
    device_type: str = "cpu"             # "cuda" stores dropout masks as bool, the CPU in dtype

    def __post_init__(self):
        for name in ("batch_size", "max_len", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 1")
        if self.max_len < 2:
            raise ValueError(f"--max_len {self.max_len}: a next-token loss needs >= 2 tokens")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout {self.lora_dropout}: must be in [0, 1), e.g. 0.05")
        if self.answer_tokens is not None and not 1 <= self.answer_tokens < self.max_len:
            raise ValueError(f"--answer_tokens {self.answer_tokens}: must be in 1 .. max_len-1 = "
                             f"{self.max_len - 1} (or use --loss lm)")
        self.adapted = adapted_linears(self.lora_targets)

    @property
    def dtype_bytes(self):
        return DTYPES[self.dtype].itemsize

    @property
    def mask_bytes(self):
        return 1 if self.device_type == "cuda" else self.dtype_bytes

    @property
    def labelled(self):
        """Labelled positions per sequence: the answer tokens, or every next token (LM loss)."""
        return self.max_len - 1 if self.answer_tokens is None else self.answer_tokens


def adapted_linears(targets):
    """llama2.c names of the block Linears lora.inject_lora wraps for `targets` (the same
    resolve_targets + with_aliases rule); ValueError for names outside the seven projections."""
    names = lora.resolve_targets(targets)
    unknown = [n for n in names if not with_aliases([n]) & set(BLOCK_LINEARS)]
    if unknown:
        raise ValueError(f"--lora_targets {','.join(unknown)}: memory.py sizes LoRA on the block "
                         f"projections only; use q_proj k_proj v_proj o_proj gate_proj up_proj "
                         f"down_proj (or wq .. w3) or a preset")
    wanted = with_aliases(names)
    return {n for n in BLOCK_LINEARS if n in wanted}


# ----------------------------------------------------------------------------
# parameters and their states

def parameter_count(config):
    """Parameters of llama.Llama(config): embeddings (once when tied), blocks, final norm."""
    norm = config.dim * (1 if config.norm == "rmsnorm" else 2)      # LayerNorm adds a bias
    block = sum(i * o for i, o in llama.linear_shapes(config).values()) + 2 * norm
    embeddings = config.vocab_size * config.dim * (1 if config.tie_embeddings else 2)
    return embeddings + config.n_layers * block + norm


def state_bytes(config, setup, method):
    """-> ({weights, gradients, optimizer: bytes}, trainable parameters, all parameters)."""
    s, P = setup.dtype_bytes, parameter_count(config)
    if method == "full":
        return {"weights": P * s, "gradients": P * s, "optimizer": 2 * P * s}, P, P
    L = lora.lora_parameter_count(llama.linear_shapes(config), setup.adapted, setup.lora_rank,
                                  config.n_layers)
    A = ADAPTER_BYTES
    return {"weights": P * s + L * A, "gradients": L * A, "optimizer": 2 * L * A}, L, P + L


# ----------------------------------------------------------------------------
# activations: what our forward saves for backward, bytes per token

def norm_saved(saved, name, dim, s, grad_in, weight_trains):
    """RMSNorm: x.float() and rsqrt(mean x^2 + eps) when the gradient flows to x; x / rms when g
    trains. -> whether its output needs a gradient."""
    if grad_in:
        saved[name + ".x_fp32"] = 4 * dim
        saved[name + ".rsqrt"] = 4
    if weight_trains:
        saved[name + ".normed"] = s * dim
    return grad_in or weight_trains


def linear_saved(saved, setup, name, x_name, in_features, grad_x, full):
    """y = x W^T, plus LoRA's (alpha / r) B A dropout(x) when `name` is adapted. Full: x (W's
    gradient). Frozen W: nothing. LoRA: A x, and A's input (x itself when fp32 and no dropout,
    else the adapter's own fp32 tensor, plus the dropout mask when grad flows to x).
    -> whether y needs a gradient."""
    if full:
        saved[x_name] = setup.dtype_bytes * in_features
        return True
    if name not in setup.adapted:
        return grad_x
    if setup.lora_dropout == 0 and setup.dtype_bytes == ADAPTER_BYTES:
        saved[x_name] = ADAPTER_BYTES * in_features       # nn.Identity, .to(fp32) a no-op
    else:
        saved[name + ".lora_input"] = ADAPTER_BYTES * in_features
        if setup.lora_dropout > 0 and grad_x:
            saved[name + ".dropout_mask"] = setup.mask_bytes * in_features
    saved[name + ".lora_Ax"] = ADAPTER_BYTES * setup.lora_rank
    return True


def block_saved(config, setup, full, grad_in):
    """One TransformerBlock -> ({saved tensor: bytes per token}, output needs grad, RoPE saved)."""
    s, shapes, saved = setup.dtype_bytes, llama.linear_shapes(config), {}
    q, kv, h = shapes["wq"][1], shapes["wk"][1], config.hidden_dim
    grad = norm_saved(saved, "attention_norm", config.dim, s, grad_in, full)
    g_q, g_k, g_v = (linear_saved(saved, setup, name, "attention_norm.out", config.dim, grad, full)
                     for name in ("wq", "wk", "wv"))
    if g_q or g_k or g_v:      # fused SDPA keeps q, k, v, its output and the logsumexp
        saved.update({"q": s * q, "k": s * kv, "v": s * kv, "attention_out": s * q,
                      "logsumexp": 4 * config.n_heads})
    g_o = linear_saved(saved, setup, "wo", "attention_out", q, g_q or g_k or g_v, full)
    grad_h = grad_in or g_o
    grad = norm_saved(saved, "ffn_norm", config.dim, s, grad_h, full)
    g_1 = linear_saved(saved, setup, "w1", "ffn_norm.out", config.dim, grad, full)
    g_3 = linear_saved(saved, setup, "w3", "ffn_norm.out", config.dim, grad, full)
    if g_1:                    # silu needs its input; silu(a) * u needs u for silu(a)'s gradient
        saved.update({"w1_out": s * h, "w3_out": s * h})
    if g_3:                    # ... and silu(a) for u's gradient
        saved["silu_out"] = s * h
    g_2 = linear_saved(saved, setup, "w2", "swiglu_out", h, g_1 or g_3, full)
    return saved, grad_h or g_2, g_q or g_k


def loss_saved(config, setup, full):
    """sft.answer_loss: keep mask (B, T-1) bool, the n answer rows (full: the head's gradient),
    their log-softmax (n, V) fp32, the int64 targets and a 4-byte total weight."""
    B, T = setup.batch_size, setup.max_len
    n = B * setup.labelled
    rows = setup.dtype_bytes * config.dim * n if full else 0
    return B * (T - 1) + rows + 4 * config.vocab_size * n + 8 * n + 4


def activation_bytes(config, setup, method):
    """Bytes kept for backward by one forward of B x T tokens -> {part: bytes}."""
    full, tokens, s = method == "full", setup.batch_size * setup.max_len, setup.dtype_bytes
    grad, blocks, rope_saved = full, [], False           # full: the embedding output trains
    for _ in range(config.n_layers):
        saved, grad, rope_used = block_saved(config, setup, full, grad)
        blocks.append(saved)
        rope_saved = rope_saved or rope_used
    per_token = [sum(saved.values()) for saved in blocks]
    if setup.gradient_checkpointing:   # every block's input, plus one block rerun in backward
        rerun = [total - (saved.get("attention_norm.x_fp32", 0) if s == 4 else 0)
                 for total, saved in zip(per_token, blocks)]    # fp32: x.float() is the input
        per_token = [config.n_layers * s * config.dim, max(rerun)]
    final = {}
    norm_saved(final, "norm", config.dim, s, grad, full)
    return {"token_ids": 8 * tokens if full else 0, "blocks": sum(per_token) * tokens,
            "rope": 4 * setup.max_len * config.head_dim if rope_saved else 0,
            "final_norm": sum(final.values()) * tokens, "loss": loss_saved(config, setup, full)}


def estimate(config, setup, method):
    """-> {"bytes": {weights, gradients, optimizer, activations, total}, "activation_parts",
    "trainable", "parameters"} for method "full" or "lora"."""
    rows, trainable, total = state_bytes(config, setup, method)
    parts = activation_bytes(config, setup, method)
    rows["activations"] = sum(parts.values())
    rows["total"] = sum(rows.values())
    return {"bytes": rows, "activation_parts": parts, "trainable": trainable, "parameters": total}


# ----------------------------------------------------------------------------
# measured: a few real steps

class SavedTensorMeter:
    """Bytes of the distinct storages autograd saves for backward inside `with meter:`, parameters
    left out (they are the weights row). Each saved tensor is held by a weak reference, so what the
    graph frees before backward (the forward's unused last_only head) is not counted."""

    def __init__(self, model):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.refs, self.active = [], False

    def keep(self, tensor):
        """Count `tensor` too (a block input torch.utils.checkpoint holds): a forward pre-hook."""
        if self.active:
            self.refs.append(weakref.ref(tensor))

    def pack(self, tensor):
        """Save a detached alias (same storage): a saved *output* returned as itself would point
        at its own grad_fn, a cycle that a graph dropped without backward never frees."""
        alias = tensor.detach()
        self.keep(alias)
        return alias

    def __enter__(self):
        self.refs, self.active = [], True
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc_info):
        self.active = False
        self.hooks.__exit__(*exc_info)

    def held_bytes(self, exclude=()):
        """Bytes of the distinct saved storages still alive, less parameters and `exclude`."""
        skip, storages = self.parameters | set(exclude), {}
        for ref in self.refs:
            tensor = ref()
            if tensor is not None and tensor.untyped_storage().data_ptr() not in skip:
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return sum(storages.values())


def tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def watch_checkpointed_blocks(model, meter):
    """Gradient checkpointing saves inside each block through its own hooks, unseen by the
    meter: count each block's input (what the checkpoint keeps) and remember the first block's
    arguments for rerun_bytes. -> (hook handles, {"args": (h, cos_sin, mask, kv)})."""
    first = {}

    def remember(module, args):
        if meter.active:
            first["args"] = args

    handles = [layer.register_forward_pre_hook(lambda module, args: meter.keep(args[0]))
               for layer in model.layers]
    return handles + [model.layers[0].register_forward_pre_hook(remember)], first


def rerun_bytes(model, args, meter):
    """The largest saved bytes of one block rerun as checkpoint's backward reruns it: input
    detached (requires_grad kept), its storage left out (the checkpoint already holds it)."""
    h, cos_sin, mask, kv = args                         # kv is None: training has no cache
    most = 0
    model.train()
    for layer in model.layers:
        x = h.detach().requires_grad_(h.requires_grad)
        with meter:
            h = layer(x, cos_sin, mask, kv)                              # (B, T, dim)
        most = max(most, meter.held_bytes(exclude={x.untyped_storage().data_ptr()}))
    return most


def build_model(config, path, setup, method, device):
    """Llama in setup.dtype on device (path's weights, else random), `method` applied."""
    if path is None:
        with torch.device(device):
            model = llama.Llama(config)
        model = model.to(DTYPES[setup.dtype])
    else:
        model, _ = weights.load_pretrained(path, device, DTYPES[setup.dtype])
    if method == "lora":
        lora.inject_lora(model, lora.LoraConfig(r=setup.lora_rank, dropout=setup.lora_dropout,
                                                target_modules=setup.lora_targets))
    else:
        model.requires_grad_(True)
    if setup.gradient_checkpointing:
        model.gradient_checkpointing = True
    return model


def random_batches(config, setup, steps, device, seed=0):
    """`steps` batches of random tokens (B, T), labels on the last `labelled` positions."""
    generator = torch.Generator().manual_seed(seed)
    shape, start = (setup.batch_size, setup.max_len), setup.max_len - setup.labelled
    batches = []
    for _ in range(steps):
        tokens = torch.randint(0, config.vocab_size, shape, generator=generator)   # (B, T)
        labels = torch.full_like(tokens, sft.IGNORE)
        labels[:, start:] = tokens[:, start:]
        batches.append({"tokens": tokens.to(device), "labels": labels.to(device),
                        "attention_mask": torch.ones_like(tokens).to(device)})
    return batches


def measure(config, path, setup, method, steps, device):
    """`steps` AdamW steps (train.fit) of sft.answer_loss; -> measured bytes per row and the peak.
    path None: random weights for `config`; else the checkpoint's own weights."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(config, path, setup, method, device)
    meter, held = SavedTensorMeter(model), []
    handles, first = watch_checkpointed_blocks(model, meter) if setup.gradient_checkpointing \
        else ([], None)

    def loss_fn(model, batch):
        with meter:
            loss, count = sft.answer_loss(model, batch)
        held.append(meter.held_bytes())
        return loss, count

    fit_config = train.TrainConfig(max_steps_per_epoch=steps, lr=1e-5, bf16=False, progress=False,
                                   name=f"memory-{method}", count_unit="answer tok")
    optimizer = train.make_optimizer(model, fit_config)
    train.fit(model, random_batches(model.config, setup, steps, device), loss_fn, fit_config,
              optimizer=optimizer)
    peak = train.peak_memory_mb(device.type) * 2 ** 20       # before rerun_bytes adds its own
    for handle in handles:
        handle.remove()
    params = list(model.parameters())
    rows = {"weights": tensor_bytes(params),
            "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": tensor_bytes(t for state in optimizer.state.values()
                                      for t in state.values() if torch.is_tensor(t)),
            "activations": max(held) + (rerun_bytes(model, first["args"], meter) if first else 0)}
    rows["total"] = sum(rows.values())
    trainable, total = lora.count_parameters(model)
    return {"bytes": rows, "trainable": trainable, "parameters": total, "peak_bytes": peak,
            "peak_kind": "CUDA max allocated" if device.type == "cuda"
            else "process max RSS so far"}
