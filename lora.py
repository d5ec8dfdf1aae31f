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

Target modules match in either spelling, HF or llama2.c / Meta (weight_names.py's alias table:
q_proj <-> wq, ..., gate_proj <-> w1, down_proj <-> w2, up_proj <-> w3).
Presets (course seed 000, part 2): light = q, v; medium = q, k, v, up, down; heavy = all seven.
`resolve_targets` turns a preset name or a comma list ("heavy", "q_proj,v_proj", "wq,wv") into
target names; every command line flag (--lora_targets) goes through it.
Trainable parameters: A (r, in) + B (out, r) = r (in + out) per adapted Linear, the one formula
`lora_parameter_count` (memory.py and adapters.formula_count count with it).

Injecting replaces each target nn.Linear in place (set_submodule, wrap_linears); IA3 (adapters.py)
wraps its Linears with the same two functions, which live here because lora.py is the lowest PEFT
file (it imports torch and weight_names.py only; adapters.py and peft_format.py import it).
count_parameters counts what trains. Saving and loading, in peft's layout: peft_format.py.

Shape legend: `in` / `out` features of the wrapped Linear, `r` rank, `...` any leading dims (B, T).

Fast path (LoRALayer.fast, set by fused.fuse): the branch in the input's dtype and added with one
addmm, lora_add_fast(out, A x, B, scale) = out + scale * B (A x), beside the reference lora_delta.

Tests: tests/test_lora.py checks our layer against peft on a tiny LlamaForCausalLM (same A, B ->
same logits), adapters we save load in peft with the same logits (and peft's in ours, also on our
canonical Llama with permuted Q/K rows; peft_format.py), B = 0 equals the base, merged ==
unmerged logits, parameter counts (counted and lora_parameter_count) equal peft's for the three
presets, dropout is off in eval, resolve_targets and the scale rule, lora_add_fast == out +
lora_delta and the fast branch == the reference (fp32, bf16); tests/test_classifier.py runs
`--lora_targets heavy` / `q_proj,v_proj` end to end.
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

def lora_scale(alpha, r):
    """alpha / r, the factor on B A (Hu et al. 2021, Sec. 4.1): the one place this rule lives."""
    return alpha / r


@dataclass
class LoraConfig:
    r: int = 8                                  # rank of the update B A (--lora_rank)
    alpha: float = 8.0                          # scale numerator: the update is (alpha / r) B A
    dropout: float = 0.0                        # dropout probability on the LoRA branch input
    target_modules: list = field(default_factory=lambda: list(LIGHT))  # preset or Linear names

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"--lora_rank {self.r}: the LoRA rank must be a positive integer "
                             "(e.g. 4, 8 or 16)")
        options.check_size("--lora_rank", self.r)                 # bounded before any allocation
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--lora_dropout {self.dropout}: must be in [0, 1)")
        self.target_modules = resolve_targets(self.target_modules)

    @property
    def scale(self):
        """alpha / r, the factor on B A."""
        return lora_scale(self.alpha, self.r)

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


def lora_parameter_count(shapes, targets, r, n_layers=1):
    """Trainable parameters of LoRA: A (r, in) + B (out, r) = r (in + out) per adapted Linear,
    summed over `targets` (either spelling) in each of n_layers blocks; shapes: name -> (in, out)
    of one block's Linears (llama.linear_shapes). The one formula (memory.py, adapters.py)."""
    names = sorted({weight_names.HF_TO_LLAMA2C.get(t, t) for t in targets})
    return n_layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


# ----------------------------------------------------------------------------
# the layer

class LoRALayer(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (alpha / r) B A.

    The wrapped Linear's `weight` / `bias` Parameters are registered here under the same names, so
    state_dict keys of the base weights do not change (`...wq.weight`); the adapter adds
    `...wq.lora_A` (r, in) and `...wq.lora_B` (out, r). In fp16/bf16 models A and B are kept in
    fp32 (as peft's autocast_adapter_dtype does) so AdamW updates are not lost to rounding.

    fast = False (the reference): the branch runs in A's dtype on its own copy of the input, as
    peft does. fast = True (set by fused.fuse): the branch runs in the input's dtype, A and B cast
    inside forward (their gradients still reach the fp32 Parameters), the add in one addmm
    (lora_add_fast): a bf16 model keeps no fp32 copy of each adapter's input.
    """

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        assert isinstance(base, nn.Linear), f"LoRALayer wraps nn.Linear, got {type(base).__name__}"
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight.requires_grad_(False)                  # (out, in), frozen W0
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        self.r, self.alpha = r, alpha                                    # scale is derived
        if r > max(self.in_features, self.out_features):   # B A has rank <= min(in, out)
            raise ValueError(f"LoRA rank r={r} is larger than both sides of a ({self.out_features}"
                             f" x {self.in_features}) Linear (the bound: max(in, out)); B A has "
                             f"rank <= {min(self.in_features, self.out_features)}, use a smaller r")
        dtype = base.weight.dtype
        dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.fast = False                                                # see the class docstring
        self.reset_lora_parameters()

    @property
    def scale(self):
        """alpha / r, derived on each use: loading an adapter sets alpha, scale follows."""
        return lora_scale(self.alpha, self.r)

    def reset_lora_parameters(self):
        """A ~ Kaiming-uniform(a=sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0 (Hu et al. 4.1)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x):
        """x (..., in) -> W0 x + b + (alpha / r) B A dropout(x), (..., out)."""
        out = F.linear(x, self.weight, self.bias)                         # (..., out)
        if self.merged:
            return out
        if self.fast:
            return self.add_delta_fast(self.dropout(x), out)
        x = self.dropout(x).to(self.lora_A.dtype)
        return out + lora_delta(x, self.lora_A, self.lora_B, self.scale).to(out.dtype)

    def add_delta_fast(self, x, out, ax=None):
        """out + (alpha / r) B A x in x's dtype; ax = A x when the caller computed it already
        (fused.FusedProjection stacks the A of adapters that share an input)."""
        if ax is None:
            ax = F.linear(x, self.lora_A.to(x.dtype))                     # (..., r)
        return lora_add_fast(out, ax, self.lora_B.to(x.dtype), self.scale)  # (..., out)

    @torch.no_grad()
    def merge_(self):
        """Fold the update into the weight (forward then costs one matmul)."""
        if not self.merged:
            w = merge(self.weight.to(self.lora_A.dtype), self.lora_A, self.lora_B, self.scale)
            self.weight.copy_(w)
            self.merged = True

    @torch.no_grad()
    def unmerge_(self):
        """Take the update back out of the weight."""
        if self.merged:
            w = unmerge(self.weight.to(self.lora_A.dtype), self.lora_A, self.lora_B, self.scale)
            self.weight.copy_(w)
            self.merged = False

    def to_linear(self):
        """A plain nn.Linear sharing this layer's weight (merge first to keep the update)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, merged={self.merged}")


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


def inject_lora(model, config):
    """Wrap every target nn.Linear in a LoRALayer; freeze everything else.

    Works on our Llama (wq ... w3) and on transformers' LlamaForCausalLM (q_proj ... up_proj),
    whichever spelling config.target_modules uses. Every existing parameter is frozen (as peft's
    bias="none"); only lora_A / lora_B train. Returns the names of the wrapped modules.
    """
    return wrap_linears(model, config.target_modules,
                        lambda name, linear: LoRALayer(linear, config.r, config.alpha,
                                                       config.dropout), option="--lora_targets")


def count_parameters(model):
    """(trainable, total) parameter counts; shared (tied) parameters are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


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
