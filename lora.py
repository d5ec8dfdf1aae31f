"""LoRA: low-rank adapters on frozen linear layers, with merge/unmerge and peft-format adapters.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv:2106.09685,
Section 4.1, eq. 3). For a frozen pretrained weight W0 (out, in) the update is constrained to rank r:

    h = W0 x + (alpha / r) * B A x          A (r, in), B (out, r), r << min(in, out)

A starts random (Kaiming-uniform with a = sqrt(5), as peft and nn.Linear do), B starts at zero, so
the adapted model equals the base at step 0; only A and B are trained. The factor alpha / r is one
rule, `lora_scale`, used by LoraConfig.scale and LoRALayer.scale alike. Dropout (probability
`dropout`) is applied to the input of the LoRA branch only, as peft does. Because the update is
linear it can be folded into the weight for inference and taken out again exactly:

    merge:   W = W0 + (alpha / r) * B A        unmerge:   W0 = W - (alpha / r) * B A

Target modules use one alias table between HF and llama2.c / Meta spellings:
    q_proj <-> wq, k_proj <-> wk, v_proj <-> wv, o_proj <-> wo        (attention)
    gate_proj <-> w1, down_proj <-> w2, up_proj <-> w3                 (SwiGLU FFN)
Presets (course seed 000, part 2): light = q, v; medium = q, k, v, up, down; heavy = all seven.
`resolve_targets` turns a preset name or a comma list ("heavy", "q_proj,v_proj", "wq,wv") into
target names; every command line flag (--lora_targets) goes through it.
Trainable parameters per adapted layer: r * (in + out).

Adapters are saved as peft does (adapter_model.safetensors + adapter_config.json, keys like
base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight), so peft's PeftModel.from_pretrained
loads them into transformers' LlamaForCausalLM. Our Llama keeps Q/K rows in Meta's interleaved RoPE
layout while HF uses the half-split layout: W_hf = P W_ours for a row permutation P, hence
B_hf A = P (B_ours A) means permuting the rows of B for wq / wk (A is unchanged).

The wrapping machinery here (with_aliases, wrap_linears, set_submodule, count_parameters) is
shared by the other PEFT methods in adapters.py (IA3, prompt tuning, P-tuning, prefix tuning).

Shape legend: `in` / `out` features of the wrapped Linear, `r` rank, `...` any leading dims (B, T).

Fast path (LoRALayer.fast, set by fused.fuse): the branch in the input's dtype and added with one
addmm, lora_add_fast(out, A x, B, scale) = out + scale * B (A x), beside the reference lora_delta.

Tests: tests/test_lora.py checks our layer against peft on a tiny LlamaForCausalLM (same A, B ->
same logits), adapters we save load in peft with the same logits (and peft's in ours, also on our
canonical Llama with permuted Q/K rows), B = 0 equals the base, merged == unmerged logits,
parameter counts equal peft's for the three presets, dropout is off in eval, resolve_targets and
the scale rule, lora_add_fast == out + lora_delta and the fast branch == the reference (fp32,
bf16); tests/test_classifier.py runs `--lora_targets heavy` / `q_proj,v_proj` end to end.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import atomic
import distributed
import rope
import safetensors_io
import weights

# ----------------------------------------------------------------------------
# names: one alias table between HF and llama2.c spellings, and the seed-000 presets

HF_TO_LLAMA2C = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo",
                 "gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
LLAMA2C_TO_HF = {v: k for k, v in HF_TO_LLAMA2C.items()}

LIGHT = ["q_proj", "v_proj"]                                             # attention only
MEDIUM = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]          # attention + FFN
HEAVY = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
PRESETS = {"light": LIGHT, "medium": MEDIUM, "heavy": HEAVY}             # seed 000 part 2

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def with_aliases(names):
    """Each name plus its other spelling: ["q_proj", "w2"] -> {"q_proj", "wq", "w2", "down_proj"}."""
    out = set()
    for name in names:
        out.add(name)
        out.add(HF_TO_LLAMA2C.get(name, LLAMA2C_TO_HF.get(name, name)))
    return out


def resolve_targets(spec):
    """Target names from a preset name, a comma list, or a list of names.

    "heavy" -> HEAVY (also "light", "medium"; any case); "wq, wv" -> ["wq", "wv"];
    ["q_proj"] -> ["q_proj"]. Names keep the spelling given (either matches, see with_aliases).
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
        """alpha / r, derived on each use: setting alpha (load_adapter) cannot leave it stale."""
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
    targets = with_aliases(target_modules)
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


# ----------------------------------------------------------------------------
# adapters on disk, in peft's layout

def peft_module_name(name, model):
    """Our module name -> (its name in the HF model, heads for a Q/K row permutation or None).

    Canonical names (layers.0.attention.wq) go through weights.canonical_to_hf_name; HF names
    (model.layers.0.self_attn.q_proj) and other modules are kept as they are.
    """
    last = name.rpartition(".")[2]
    if last not in LLAMA2C_TO_HF:
        return name, None
    hf_name = weights.canonical_to_hf_name(name + ".weight").removesuffix(".weight")
    if last not in ("wq", "wk"):
        return hf_name, None
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "n_heads"):
        raise ValueError(f"{name}: saving a canonical-named adapter needs model.config.n_heads / "
                         "n_kv_heads to permute Q/K rows; pass the Llama itself (e.g. "
                         "classifier.llama), not a wrapper")
    return hf_name, config.n_heads if last == "wq" else config.n_kv_heads


def _adapter_slots(model):
    """peft key -> (our Parameter, heads to permute its rows or None), for every LoRALayer."""
    slots = {}
    for name, layer in lora_layers(model):
        hf_name, heads = peft_module_name(name, model)
        slots[f"{PEFT_PREFIX}{hf_name}.lora_A.weight"] = (layer.lora_A, None)   # (r, in)
        slots[f"{PEFT_PREFIX}{hf_name}.lora_B.weight"] = (layer.lora_B, heads)  # (out, r)
    return slots


def peft_config_dict(config):
    """adapter_config.json contents peft's LoraConfig reads (target names in HF spelling)."""
    targets = sorted({LLAMA2C_TO_HF.get(t, t) for t in config.target_modules})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
            "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
            "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
            "use_rslora": False, "use_dora": False}


def config_from_peft_dict(data, path):
    """LoraConfig from an adapter_config.json dict; ValueError for LoRA variants we lack."""
    if data.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {data.get('peft_type')!r}, not 'LORA'")
    for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform"):
        if data.get(key):
            raise ValueError(f"{path}: {key}={data[key]!r} is not supported by lora.py; "
                             "save the adapter without it")
    targets = data.get("target_modules")
    if not isinstance(targets, list):
        raise ValueError(f"{path}: target_modules must be a list of names, got {targets!r}")
    return LoraConfig(r=data["r"], alpha=float(data["lora_alpha"]),
                      dropout=float(data.get("lora_dropout", 0.0)), target_modules=targets)


def save_adapter(directory, model, config):
    """Write <directory>/adapter_model.safetensors and adapter_config.json in peft's layout.

    Q/K lora_B rows of a canonical (interleaved-RoPE) Llama are permuted to HF's half-split
    layout, so the file means the same update for transformers' LlamaForCausalLM.
    """
    directory = Path(directory)
    for name, layer in lora_layers(model):
        if (layer.r, layer.alpha) != (config.r, config.alpha):
            raise ValueError(f"{name}: layer has r={layer.r}, alpha={layer.alpha} but the config "
                             f"says r={config.r}, alpha={config.alpha}; save with the config used")
    tensors = {}
    for key, (param, heads) in _adapter_slots(model).items():
        value = distributed.full(param.detach()).to("cpu", copy=True)     # FSDP: gathered
        if heads is not None:
            value = rope.permute_interleaved_to_half(value, heads)
        tensors[key] = value.contiguous()
    if not tensors:
        raise ValueError("save_adapter: the model has no LoRA layers; call inject_lora first")
    directory.mkdir(parents=True, exist_ok=True)
    safetensors_io.write_safetensors(directory / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
    atomic.save_json_atomic(directory / ADAPTER_CONFIG, peft_config_dict(config))
    return directory


@torch.no_grad()
def load_adapter(directory, model):
    """Load a peft-layout LoRA adapter into `model` (injecting first if needed); returns the config.

    Every adapter tensor must land in one LoRA layer and every LoRA layer must be filled (strict).
    """
    directory = Path(directory)
    for fname in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / fname).exists():
            raise FileNotFoundError(f"{directory / fname}: adapter file not found; write one with "
                                    "lora.save_adapter or peft's save_pretrained")
    config = config_from_peft_dict(json.loads((directory / ADAPTER_CONFIG).read_text()),
                                   directory / ADAPTER_CONFIG)
    if not lora_layers(model):
        inject_lora(model, config)
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("load_adapter: the model's LoRA layers are merged; call unmerge_lora first")
    tensors = safetensors_io.read_safetensors(directory / ADAPTER_WEIGHTS)
    slots = _adapter_slots(model)
    missing, unexpected = sorted(slots.keys() - tensors.keys()), sorted(tensors.keys() - slots.keys())
    if missing or unexpected:
        raise ValueError(f"{directory / ADAPTER_WEIGHTS}: keys do not match the model's LoRA layers "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved for "
                         "another model or other target_modules?")
    for key, (param, heads) in slots.items():
        value = tensors[key]
        if heads is not None:
            value = rope.permute_half_to_interleaved(value, heads)
        if value.shape != param.shape:
            raise ValueError(f"{key}: adapter shape {tuple(value.shape)} != model shape "
                             f"{tuple(param.shape)}; the adapter's rank or base model differs")
        param.copy_(value)
    for _, layer in lora_layers(model):
        layer.alpha = config.alpha                                       # scale follows
    return config
