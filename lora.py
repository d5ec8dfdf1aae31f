"""LoRA: low-rank adapters on frozen linear layers: config, maths, layer, inject, merge/unmerge.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv:2106.09685,
Section 4.1, eq. 3). For a frozen pretrained weight W0 (out, in) the update has rank at most r:

    h = W0 x + (alpha / r) * B A x          A (r, in), B (out, r), r << min(in, out)

A starts random (Kaiming-uniform with a = sqrt(5), as peft and nn.Linear do), B starts at zero, so
the adapted model equals the base at step 0; only A and B are trained. The factor alpha / r is one
rule, `lora_scale`, used by LoraConfig.scale and LoRALayer.scale alike. Dropout (probability
`dropout`) is applied to the input of the LoRA branch only, as peft does. Because the update is
linear it can be folded into the weight for inference and taken out again exactly:

    merge:   W = W0 + (alpha / r) * B A        unmerge:   W0 = W - (alpha / r) * B A

Variants (the second PEFT family; each a field of LoraConfig, combinable, saved in peft's layout):
  rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
    arXiv:2312.03732, Theorem 3.2): the factor is alpha / sqrt(r), so the update's size does not
    shrink as r grows (use_rslora; peft's use_rslora). One rule, lora_scale(alpha, r, rslora).
  DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353, eq. 5):
    the adapted weight split into a trained magnitude m (out,) and a direction,
        W' = m * (W0 + s B A) / ||W0 + s B A||_c          s = the scale above
    ||.||_c the norm of each output row (the paper's W is (in, out): its columns are our rows), m
    starting at ||W0||_c so step 0 is the base model. The norm is treated as a constant in
    backward (Sec. 4.3, "detaching it from the gradient graph"; peft does the same), so
        y = W0 x + b + (f - 1) W0 x_d + f s B A x_d,     f = m / ||W0 + s B A||_c, x_d = dropout(x)
    (peft's form: without dropout, x_d = x, it is W' x + b). Merge: W = f * (W0 + s B A), exact;
    unmerge divides by f, kept from the merge. Trainable: r (in + out) + out per Linear.
  LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models",
    arXiv:2402.12354, Sec. 4): B learns ratio times faster than A, lr_B = ratio * lr_A (the paper
    suggests ratio 2^4): loraplus_param_groups, AdamW parameter groups (as peft's
    create_loraplus_optimizer, every 1-D trainable tensor, DoRA's m, goes with B).
  PiSSA (Meng et al. 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation",
    arXiv:2404.02948, Sec. 3): A and B start from the top r singular triplets of W0 = U S V^T,
        B = U_r sqrt(S_r / s),  A = sqrt(S_r / s) V_r^T,   so s B A = U_r S_r V_r^T,
    and the frozen weight becomes the residual W_res = W0 - s B A (the output is unchanged at
    step 0). A saved PiSSA adapter is converted to a plain LoRA delta against the ORIGINAL W0, as
    peft's save_pretrained(path_initial_model_for_weight_conversion=...) does: with A0, B0 the
    initial factors, W_res + s B A = W0 + s (B A - B0 A0) = W0 + s' B' A' for
        A' = [A; A0] (2r, in),  B' = [B, -B0] (out, 2r),  r' = 2 r,  alpha' = 2 alpha
    (alpha' = sqrt(2) alpha under rsLoRA), so s' = s (pissa_as_lora, pissa_as_lora_alpha).
    Trainable: r (in + out).

Target modules match in either spelling, HF or llama2.c / Meta (weight_names.py's alias table:
q_proj <-> wq, ..., gate_proj <-> w1, down_proj <-> w2, up_proj <-> w3).
Presets (course seed 000, part 2): light = q, v; medium = q, k, v, up, down; heavy = all seven.
`resolve_targets` turns a preset name or a comma list ("heavy", "q_proj,v_proj", "wq,wv") into
target names; every command line flag (--lora_targets) goes through it.
Trainable parameters: A (r, in) + B (out, r) = r (in + out) per adapted Linear (+ out for DoRA's
m), the one formula `lora_parameter_count` (memory.py and adapters.formula_count count with it).

Injecting replaces each target nn.Linear in place (set_submodule, wrap_linears); IA3 (adapters.py)
wraps its Linears with the same two functions, which live here because lora.py is the lowest PEFT
file (it imports torch and weight_names.py only; adapters.py and peft_format.py import it).
count_parameters counts what trains. Saving and loading, in peft's layout: peft_format.py.

Size: over 400 lines: plain LoRA and its four variants share one layer, one merge and one save
rule (the variants are fields of LoraConfig, not subclasses).

Shape legend: `in` / `out` features of the wrapped Linear, `r` rank, `...` any leading dims (B, T).

Fast path (LoRALayer.fast, set by fused.fuse): the branch in the input's dtype and added with one
addmm, lora_add_fast(out, A x, B, scale) = out + scale * B (A x), beside the reference lora_delta.
DoRA layers always run their own branch (dora_forward; fused.py falls back to it).

Tests: tests/test_lora.py checks our layer against peft on a tiny LlamaForCausalLM (same A, B ->
same logits), adapters we save load in peft with the same logits (and peft's in ours, also on our
canonical Llama with permuted Q/K rows; peft_format.py), B = 0 equals the base, merged ==
unmerged logits, parameter counts (counted and lora_parameter_count) equal peft's for the three
presets, dropout is off in eval, resolve_targets and the scale rule, lora_add_fast == out +
lora_delta and the fast branch == the reference (fp32, bf16); tests/test_classifier.py runs
`--lora_targets heavy` / `q_proj,v_proj` end to end. The variants: tests/test_lora_variants.py
(rsLoRA, DoRA, PiSSA, their combinations: logits and gradients == peft's on a tiny
LlamaForCausalLM; saved adapters load in peft, peft's in ours, PiSSA converted to a LoRA delta on
the original base; DoRA merge exact; counts == peft's == the formula; LoRA+ parameter groups;
the fused path (DoRA falls back to its own branch) == the reference).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import options
import weight_names

# ----------------------------------------------------------------------------
# names: the seed-000 presets (either spelling matches, weight_names.with_aliases)

LIGHT = ["q_proj", "v_proj"]                                             # attention only
MEDIUM = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]          # attention + FFN
HEAVY = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
PRESETS = {"light": LIGHT, "medium": MEDIUM, "heavy": HEAVY}             # seed 000 part 2


def resolve_targets(spec):
    """Target names from a preset name, a comma list, or a list of names.

    "heavy" -> HEAVY (also "light", "medium"; any case); "wq, wv" -> ["wq", "wv"];
    ["q_proj"] -> ["q_proj"]. Names keep the spelling given (either matches, with_aliases).
    ValueError when nothing is named.
    """
    if isinstance(spec, str):
        preset = PRESETS.get(spec.strip().lower())
        names = list(preset) if preset else [t.strip() for t in spec.split(",") if t.strip()]
    else:
        names = list(spec)
    if not names:
        raise ValueError(f"--lora_targets {spec!r}: target_modules is empty; give a preset (light, "
                         "medium, heavy) or Linear names, e.g. q_proj,v_proj (or wq,wv)")
    return names


# ----------------------------------------------------------------------------
# config

INITS = ("default", "pissa")        # --lora_init: A Kaiming / B 0, or PiSSA's SVD
SCALINGS = ("standard", "rs")       # --lora_scaling: alpha / r, or rsLoRA's alpha / sqrt(r)


def lora_scale(alpha, r, rslora=False):
    """The factor on B A: alpha / r (Hu et al. 2021, Sec. 4.1), or alpha / sqrt(r) with rslora
    (Kalajdzievski 2023, Theorem 3.2). The one place this rule lives."""
    return alpha / math.sqrt(r) if rslora else alpha / r


@dataclass
class LoraConfig:
    r: int = 8                                  # rank of the update B A (--lora_rank)
    alpha: float = 8.0                          # scale numerator: the update is (alpha / r) B A
    dropout: float = 0.0                        # dropout probability on the LoRA branch input
    target_modules: list = field(default_factory=lambda: list(LIGHT))  # preset or Linear names
    use_rslora: bool = False                    # scale alpha / sqrt(r) (rsLoRA, --lora_scaling rs)
    use_dora: bool = False                      # DoRA's trained magnitude per row (--method dora)
    init: str = "default"                       # "default" (A Kaiming, B 0), "pissa" (--lora_init)

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"--lora_rank {self.r}: the LoRA rank must be a positive integer "
                             "(e.g. 4, 8 or 16)")
        options.check_size("--lora_rank", self.r)                 # bounded before any allocation
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--lora_dropout {self.dropout}: must be in [0, 1)")
        self.target_modules = resolve_targets(self.target_modules)
        if self.init not in INITS:
            raise ValueError(f"--lora_init {self.init!r}: use one of {', '.join(INITS)}")
        if self.init == "pissa" and self.alpha == 0:
            raise ValueError("--lora_init pissa with --lora_alpha 0: PiSSA divides the singular "
                             "values by the scale alpha / r; give alpha > 0")

    @property
    def scale(self):
        """alpha / r (alpha / sqrt(r) with use_rslora), the factor on B A."""
        return lora_scale(self.alpha, self.r, self.use_rslora)

    # Presets: the three target settings of course seed 000 part 2 (Llama 3.2 1B comparison).
    @classmethod
    def light(cls, r=8, alpha=8.0, dropout=0.0):
        """ATTN-light: q_proj, v_proj (the LoRA paper's choice, Section 7.1)."""
        return cls(r=r, alpha=alpha, dropout=dropout, target_modules=list(LIGHT))

    @classmethod
    def medium(cls, r=8, alpha=8.0, dropout=0.0):
        """ATTN+FFN-medium: q, k, v, up, down."""
        return cls(r=r, alpha=alpha, dropout=dropout, target_modules=list(MEDIUM))

    @classmethod
    def heavy(cls, r=8, alpha=8.0, dropout=0.0):
        """Full coverage-heavy: all seven projections."""
        return cls(r=r, alpha=alpha, dropout=dropout, target_modules=list(HEAVY))


# ----------------------------------------------------------------------------
# the maths as pure functions

def lora_delta(x, A, B, scale):
    """(alpha / r) * B A x for x (..., in), A (r, in), B (out, r) -> (..., out).

    Two thin matmuls (cost r * (in + out) per token) instead of forming B A (out * in).
    """
    return F.linear(F.linear(x, A), B) * scale                            # (..., out)


def lora_add_fast(out, ax, B, scale):
    """Fast path of out + lora_delta: out + scale * B ax for ax = A x (..., r), out (..., out).

    One addmm: the add and the scale happen inside the BLAS call (no (..., out) temporaries for
    the delta and the product with scale, forward or backward). Tested equal to lora_delta.
    """
    flat = torch.addmm(out.reshape(-1, out.shape[-1]), ax.reshape(-1, ax.shape[-1]), B.t(),
                       alpha=scale)                                       # (N, out)
    return flat.view(out.shape)                                           # (..., out)


def merge(weight, A, B, scale):
    """W0 + scale * B A: the adapted weight (out, in)."""
    return weight + (B @ A) * scale                                       # (out, in)


def unmerge(weight, A, B, scale):
    """W - scale * B A: undoes merge (exact up to float rounding)."""
    return weight - (B @ A) * scale                                       # (out, in)


def dora_norm(weight, A, B, scale):
    """||W0 + s B A||_c: the norm of each output row of the adapted weight, (out,) (DoRA eq. 5)."""
    return torch.linalg.vector_norm(merge(weight, A, B, scale), dim=1)         # (out,)


def dora_merge(weight, A, B, scale, magnitude, norm):
    """DoRA's adapted weight m * (W0 + s B A) / norm, norm = dora_norm(...): (out, in)."""
    return (magnitude / norm)[:, None] * merge(weight, A, B, scale)           # (out, in)


def dora_unmerge(weight, A, B, scale, magnitude, norm):
    """W0 = W / (m / norm) - s B A: undoes dora_merge given the norm it used."""
    return unmerge(weight / (magnitude / norm)[:, None], A, B, scale)         # (out, in)


def pissa_factors(weight, r, scale):
    """PiSSA's start (Meng et al. 2024, Sec. 3): W0 = U S V^T (fp32 SVD), A = sqrt(S_r / s) V_r^T
    (r, in), B = U_r sqrt(S_r / s) (out, r), and the residual W0 - s B A (out, in), so that
    s B A = U_r S_r V_r^T holds the top r singular triplets. -> (A, B, residual), fp32."""
    U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)      # (out, k), (k,), (k, in)
    root = (S[:r] / scale).sqrt()                                          # (r,)
    A, B = root[:, None] * Vh[:r], U[:, :r] * root                         # (r, in), (out, r)
    return A, B, weight.float() - scale * (B @ A)


def pissa_as_lora(A, B, A0, B0):
    """A PiSSA adapter as a plain LoRA delta against the original W0 (peft's conversion on save):
    A' = [A; A0] (2r, in), B' = [B, -B0] (out, 2r), so B' A' = B A - B0 A0. -> (A', B')."""
    return torch.cat([A, A0]), torch.cat([B, -B0], dim=1)


def pissa_as_lora_alpha(alpha, rslora=False):
    """alpha' keeping the scale of pissa_as_lora's rank 2r: 2 alpha (2 alpha / 2r = alpha / r), or
    sqrt(2) alpha under rsLoRA (sqrt(2) alpha / sqrt(2r) = alpha / sqrt(r))."""
    return alpha * (math.sqrt(2) if rslora else 2)


def lora_parameter_count(shapes, targets, r, n_layers=1, dora=False):
    """Trainable parameters of LoRA: A (r, in) + B (out, r) = r (in + out) per adapted Linear
    (+ out for DoRA's magnitude m), summed over `targets` (either spelling) in each of n_layers
    blocks; shapes: name -> (in, out) of one block's Linears (llama.linear_shapes). The one
    formula (memory.py, adapters.py); rsLoRA, LoRA+ and PiSSA train the same A and B."""
    names = sorted({weight_names.HF_TO_LLAMA2C.get(t, t) for t in targets})
    return n_layers * sum(r * (shapes[n][0] + shapes[n][1]) + (shapes[n][1] if dora else 0)
                          for n in names)


# ----------------------------------------------------------------------------
# the layer

class LoRALayer(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update s B A (s = lora_scale), or DoRA's.

    The wrapped Linear's `weight` / `bias` Parameters are registered here under the same names, so
    state_dict keys of the base weights do not change (`...wq.weight`); the adapter adds
    `...wq.lora_A` (r, in) and `...wq.lora_B` (out, r), and with use_dora `...wq.lora_magnitude`
    m (out,). In fp16/bf16 models A, B and m are kept in fp32 (as peft's autocast_adapter_dtype
    does) so AdamW updates are not lost to rounding. init "pissa" replaces `weight` in place by
    PiSSA's residual and keeps A0, B0 (non-persistent buffers) for the conversion on save.

    fast = False (the reference): the branch runs in A's dtype on its own copy of the input, as
    peft does. fast = True (set by fused.fuse): the branch runs in the input's dtype, A and B cast
    inside forward (their gradients still reach the fp32 Parameters), the add in one addmm
    (lora_add_fast): a bf16 model keeps no fp32 copy of each adapter's input. DoRA layers run
    dora_forward either way.
    """

    def __init__(self, base, r, alpha, dropout=0.0, use_rslora=False, use_dora=False,
                 init="default"):
        super().__init__()
        assert isinstance(base, nn.Linear), f"LoRALayer wraps nn.Linear, got {type(base).__name__}"
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight.requires_grad_(False)                  # (out, in), frozen W0
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora       # scale is derived
        sides = (self.in_features, self.out_features)  # B A has rank <= min(in, out)
        if r > (min(sides) if init == "pissa" else max(sides)):   # PiSSA: r singular triplets
            raise ValueError(f"LoRA rank r={r} is too large for a ({self.out_features} x "
                             f"{self.in_features}) Linear (bound: max(in, out), PiSSA min(in, "
                             f"out)); B A has rank <= {min(sides)}, use a smaller r")
        dtype = base.weight.dtype
        dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged, self.merged_norm = False, None       # DoRA's norm at merge, for unmerge
        self.fast = False                                                # see the class docstring
        self.init = init
        self.register_buffer("pissa_A0", None, persistent=False)        # PiSSA's A0, B0
        self.register_buffer("pissa_B0", None, persistent=False)
        self.reset_lora_parameters()
        self.lora_magnitude = None
        if use_dora:                                     # m = ||W0 + s B A||_c: step 0 = base
            with torch.no_grad():
                m = dora_norm(self.weight.to(dtype), self.lora_A, self.lora_B, self.scale)
            self.lora_magnitude = nn.Parameter(m)                        # (out,)

    @property
    def scale(self):
        """alpha / r (alpha / sqrt(r) for rsLoRA), derived on each use: loading an adapter sets
        alpha, scale follows."""
        return lora_scale(self.alpha, self.r, self.use_rslora)

    @torch.no_grad()
    def reset_lora_parameters(self):
        """default: A ~ Kaiming-uniform(a=sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0 (Hu et al.
        4.1). pissa: A, B from W0's top r singular triplets, W0 <- the residual (pissa_factors)."""
        if self.init != "pissa":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
            return
        A, B, residual = pissa_factors(self.weight, self.r, self.scale)
        self.lora_A.copy_(A)
        self.lora_B.copy_(B)
        self.weight.copy_(residual)          # in place: a fused stack's row view stays one
        self.pissa_A0, self.pissa_B0 = A.to(self.lora_A.dtype), B.to(self.lora_B.dtype)

    def forward(self, x):
        """x (..., in) -> W0 x + b + s B A dropout(x) (DoRA: dora_forward), (..., out)."""
        out = F.linear(x, self.weight, self.bias)                         # (..., out)
        if self.merged:
            return out
        if self.lora_magnitude is not None:
            return self.dora_forward(x, out)
        if self.fast:
            return self.add_delta_fast(self.dropout(x), out)
        x = self.dropout(x).to(self.lora_A.dtype)
        return out + lora_delta(x, self.lora_A, self.lora_B, self.scale).to(out.dtype)

    def dora_forward(self, x, out):
        """DoRA, out = W0 x + b given: out + (f - 1) W0 x_d + f s B A x_d, f = m / ||W0 + s B A||_c
        computed without gradient (Sec. 4.3), x_d = dropout(x); W0 x_d is out - b when no
        dropout is active (eval), as peft."""
        dtype = self.lora_A.dtype
        with torch.no_grad():                                             # the norm a constant
            norm = dora_norm(self.weight.to(dtype), self.lora_A, self.lora_B, self.scale)
        f = self.lora_magnitude / norm                                    # (out,)
        x_d = self.dropout(x)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base = out if self.bias is None else out - self.bias          # W0 x, (..., out)
        else:
            base = F.linear(x_d, self.weight)                             # W0 x_d, (..., out)
        delta = lora_delta(x_d.to(dtype), self.lora_A, self.lora_B, self.scale)  # (..., out)
        return out + ((f - 1) * base.to(dtype) + f * delta).to(out.dtype)

    def add_delta_fast(self, x, out, ax=None):
        """out + (alpha / r) B A x in x's dtype; ax = A x when the caller computed it already
        (fused.FusedProjection stacks the A of adapters that share an input)."""
        if ax is None:
            ax = F.linear(x, self.lora_A.to(x.dtype))                     # (..., r)
        return lora_add_fast(out, ax, self.lora_B.to(x.dtype), self.scale)  # (..., out)

    @torch.no_grad()
    def merge_(self):
        """Fold the update into the weight (forward then costs one matmul)."""
        if self.merged:
            return
        w, A, B, s = self.weight.to(self.lora_A.dtype), self.lora_A, self.lora_B, self.scale
        if self.lora_magnitude is None:
            self.weight.copy_(merge(w, A, B, s))
        else:
            self.merged_norm = dora_norm(w, A, B, s)
            self.weight.copy_(dora_merge(w, A, B, s, self.lora_magnitude, self.merged_norm))
        self.merged = True

    @torch.no_grad()
    def unmerge_(self):
        """Take the update back out of the weight."""
        if not self.merged:
            return
        w, A, B, s = self.weight.to(self.lora_A.dtype), self.lora_A, self.lora_B, self.scale
        if self.lora_magnitude is None:
            self.weight.copy_(unmerge(w, A, B, s))
        else:
            self.weight.copy_(dora_unmerge(w, A, B, s, self.lora_magnitude, self.merged_norm))
        self.merged, self.merged_norm = False, None

    def to_linear(self):
        """A plain nn.Linear sharing this layer's weight (merge first to keep the update)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, rslora={self.use_rslora}, "
                f"dora={self.lora_magnitude is not None}, init={self.init}, merged={self.merged}")


# ----------------------------------------------------------------------------
# whole-model operations

def set_submodule(model, name, module):
    """model.<name> = module for a dotted name (layers.0.attention.wq)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_layers(model):
    """[(name, LoRALayer)] in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALayer)]


def wrap_linears(model, target_modules, wrap, option="target_modules"):
    """Replace each target nn.Linear (by last name part) with wrap(name, linear); freeze the rest.

    Targets match in either spelling (q_proj or wq). When none matches: ValueError naming `option`
    (the flag or config field the targets came from) and listing the model's Linear names.
    Returns the wrapped names. Shared by inject_lora and adapters.inject_ia3. A wrapper starts in
    the mode of the Linear it replaces, so injecting into an eval-mode model keeps dropout off.
    """
    targets = weight_names.with_aliases(target_modules)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears if n.rpartition(".")[2] in targets]
    if not chosen:
        available = sorted({n.rpartition(".")[2] for n in linears})
        raise ValueError(f"{option} {list(target_modules)} match no nn.Linear in the model; "
                         f"available names: {', '.join(available)} (pass some of these)")
    model.requires_grad_(False)
    for name in chosen:
        linear = model.get_submodule(name)
        set_submodule(model, name, wrap(name, linear).train(linear.training))
    return chosen


def inject_lora(model, config, option="--lora_targets"):
    """Wrap every target nn.Linear in a LoRALayer; freeze everything else.

    Works on our Llama (wq ... w3) and on transformers' LlamaForCausalLM (q_proj ... up_proj),
    whichever spelling config.target_modules uses. Every existing parameter is frozen (as peft's
    bias="none"); only lora_A / lora_B (and DoRA's lora_magnitude) train. With config.init
    "pissa" each target's weight becomes PiSSA's residual. Returns the names of the wrapped modules.
    option: what errors name as the targets' source (a flag, or a file's field)."""
    return wrap_linears(model, config.target_modules,
                        lambda name, linear: LoRALayer(
                            linear, config.r, config.alpha, config.dropout, config.use_rslora,
                            config.use_dora, config.init), option=option)


def count_parameters(model):
    """(trainable, total) parameter counts; shared (tied) parameters are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def loraplus_param_groups(model, lr, ratio):
    """LoRA+ (Hayou et al. 2024, Sec. 4): AdamW parameter groups, lr_B = ratio * lr_A.

    [{"params": A and every other trainable matrix, "lr": lr}, {"params": every lora_B and, as
    peft's create_loraplus_optimizer, every 1-D trainable tensor (DoRA's m), "lr": ratio * lr}];
    empty groups are left out. A schedule scales both (train.set_lr keeps each group's ratio)."""
    fast, slow = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (fast if name.endswith("lora_B") or p.ndim == 1 else slow).append(p)
    return [g for g in ({"params": slow, "lr": lr}, {"params": fast, "lr": lr * ratio})
            if g["params"]]


def merge_lora(model):
    """Merge every LoRALayer's update into its weight; returns the number of layers."""
    layers = lora_layers(model)
    for _, layer in layers:
        layer.merge_()
    return len(layers)


def unmerge_lora(model):
    """Undo merge_lora; returns the number of layers."""
    layers = lora_layers(model)
    for _, layer in layers:
        layer.unmerge_()
    return len(layers)


def unload_lora(model, merge_first=True):
    """Replace every LoRALayer by a plain nn.Linear (merged by default): a base-format model."""
    for name, layer in lora_layers(model):
        if merge_first:
            layer.merge_()
        set_submodule(model, name, layer.to_linear())
    return model
