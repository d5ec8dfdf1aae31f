"""The one adapter format: peft's adapter_config.json + adapter_model.safetensors, written and read
for every PEFT method here (LoRA in lora.py; IA3, prompt tuning, P-tuning, prefix tuning in
adapters.py), so transformers + peft load what we train and we load what peft saves.

peft (Mangrulkar et al. 2022, github.com/huggingface/peft, `save_pretrained` /
`PeftModel.from_pretrained`) stores an adapter without its base model:
    adapter_config.json        {"peft_type": "LORA" | "IA3" | "PROMPT_TUNING" | "P_TUNING" |
                               "PREFIX_TUNING", the fields of peft's config class}
    adapter_model.safetensors  the trained tensors, keyed as peft names them:
        LoRA     base_model.model.<HF module>.lora_A.weight (r, in), .lora_B.weight (out, r),
                 DoRA also .lora_magnitude_vector m (out,); the config says use_dora, use_rslora
                 and init_lora_weights (true, or "pissa": A, B of a PiSSA residual base)
        IA3      base_model.model.<HF module>.ia3_l (out, 1), or (1, in) for feedforward modules
        prompt tuning, P-tuning   prompt_embeddings P (n, dim) (P-tuning: the encoder's output)
        prefix tuning             prompt_embeddings P (n, L * 2 * kv), kv = n_kv_heads * D
Module names: our canonical layers.0.attention.wq is HF's model.layers.0.self_attn.q_proj
(weight_names.canonical_to_hf_name); a transformers model's modules keep their names.

RoPE layout. Our Llama keeps Q/K rows in Meta's interleaved-pairs layout, HF's is half-split:
W_hf = P W_ours for a row permutation P within each head (rope.permute_interleaved_to_half). So
    LoRA     B_hf A = P (B_ours A): the rows of lora_B of wq / wk are permuted, A is unchanged
             (DoRA's m: its entries, one per row, are permuted as the rows)
    IA3      l (k_proj, q_proj) is permuted as the rows it scales
    prefix   every prefix key's D channels are permuted, the values are unchanged
on save, and the inverse permutation (rope.permute_half_to_interleaved) on load.

PiSSA is saved as peft's save_pretrained(path_initial_model_for_weight_conversion=...) saves it:
a plain LoRA delta of rank 2r against the ORIGINAL base (lora.pissa_as_lora: A' = [A; A0],
B' = [B, -B0], alpha' = 2 alpha or sqrt(2) alpha under rsLoRA, init_lora_weights true), so the
adapter needs no residual base. A peft PiSSA adapter saved without that conversion
(init_lora_weights "pissa") loads as peft loads it: the base is made PiSSA's residual first.

Loading is strict: every tensor of the file lands in one Parameter, every Parameter is filled, and
shapes are equal; each failure is one line naming the file and the fix. Tensors are saved in the
dtype they trained in (LoRA's A, B are fp32 on a half-precision model, as peft's
autocast_adapter_dtype; the others are made in fp32). The config JSON is read by
file_checks.read_json.

Shapes: r rank, n virtual tokens, dim model width, L layers, D head_dim, `in` / `out` features.
Tests: tests/test_lora.py (LoRA: ours -> peft and peft -> ours, HF-named and canonical Llama, with
permuted Q/K rows), tests/test_adapters.py (every other method, both ways; file errors) and
tests/test_peft_format.py (config dicts both ways, the classifier's saved config, config errors),
tests/test_lora_variants.py (rsLoRA, DoRA, PiSSA adapters both ways).
"""
import math
from dataclasses import replace
from pathlib import Path

import torch

import adapters
import atomic
import distributed
import file_checks
import lora
import options
import rope
import safetensors_io
import weight_names

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
PEFT_TYPES = {lora.LoraConfig: "LORA", adapters.IA3Config: "IA3",
              adapters.PromptTuningConfig: "PROMPT_TUNING", adapters.PTuningConfig: "P_TUNING",
              adapters.PrefixTuningConfig: "PREFIX_TUNING"}

# ----------------------------------------------------------------------------
# module names: ours -> peft's


def peft_module_name(name, model):
    """Our module name -> (its name in the HF model, heads for a Q/K row permutation or None).

    Canonical names (layers.0.attention.wq) go through weight_names.canonical_to_hf_name; HF
    names (model.layers.0.self_attn.q_proj) and other modules are kept as they are.
    """
    last = name.rpartition(".")[2]
    if last not in weight_names.LLAMA2C_TO_HF:
        return name, None
    hf_name = weight_names.canonical_to_hf_name(name + ".weight").removesuffix(".weight")
    if last not in ("wq", "wk"):
        return hf_name, None
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "n_heads"):
        raise ValueError(f"{name}: saving a canonical-named adapter needs model.config.n_heads / "
                         "n_kv_heads to permute Q/K rows; pass the Llama itself (e.g. "
                         "classifier.llama), not a wrapper")
    return hf_name, config.n_heads if last == "wq" else config.n_kv_heads


def hf_targets(names):
    """Target names in HF spelling, sorted, as peft's configs list them."""
    return sorted({weight_names.LLAMA2C_TO_HF.get(m, m) for m in names})


# ----------------------------------------------------------------------------
# adapter_config.json, both ways

def saved_lora_config(config):
    """The LoraConfig an adapter is saved with: PiSSA as its plain LoRA delta (rank 2r, alpha' of
    lora.pissa_as_lora, init "default"); any other config as it is."""
    if config.init != "pissa":
        return config
    return replace(config, r=2 * config.r, init="default",
                   alpha=lora.pissa_as_lora_alpha(config.alpha, config.use_rslora))


def peft_config_dict(config, c=None):
    """adapter_config.json contents peft reads, for the LlamaConfig c (unused by LoRA and IA3).
    A prefix is saved as P, so prefix_projection is false: peft loads it as a plain prefix.
    PiSSA is saved as its LoRA delta (saved_lora_config)."""
    out = {"peft_type": PEFT_TYPES[type(config)], "task_type": "CAUSAL_LM",
           "base_model_name_or_path": None}
    if isinstance(config, lora.LoraConfig):
        config = saved_lora_config(config)
        return {**out, "r": config.r, "lora_alpha": config.alpha,
                "lora_dropout": config.dropout, "target_modules": hf_targets(config.target_modules),
                "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
                "init_lora_weights": True, "modules_to_save": None,
                "use_rslora": config.use_rslora, "use_dora": config.use_dora}
    out.update(inference_mode=True, modules_to_save=None)
    if isinstance(config, adapters.IA3Config):
        return {**out, "target_modules": hf_targets(config.target_modules), "fan_in_fan_out": False,
                "feedforward_modules": hf_targets(config.feedforward_modules),
                "init_ia3_weights": True}
    out.update(num_virtual_tokens=config.num_virtual_tokens, num_transformer_submodules=1,
               token_dim=c.dim, num_attention_heads=c.n_heads, num_layers=c.n_layers)
    if isinstance(config, adapters.PromptTuningConfig):
        out.update(prompt_tuning_init="SAMPLE_VOCAB")
    elif isinstance(config, adapters.PTuningConfig):
        out.update(encoder_reparameterization_type=config.encoder_reparameterization_type,
                   encoder_hidden_size=config.encoder_hidden_size or c.dim,
                   encoder_num_layers=config.encoder_num_layers,
                   encoder_dropout=config.encoder_dropout)
    else:                                    # peft's GQA rule: prefix heads are the kv heads
        kv = c.n_kv_heads * c.head_dim
        out.update(token_dim=kv, num_attention_heads=c.n_kv_heads, prefix_projection=False,
                   encoder_hidden_size=config.encoder_hidden_size or kv)
    return out


NAMES = (list, lambda v: len(v) > 0 and all(isinstance(n, str) for n in v),
         "a non-empty list of module-name strings")
VIRTUAL = {"num_virtual_tokens": options.size_field(),
           "num_transformer_submodules?": (int, None, "1"),
           "encoder_hidden_size?": ((int, type(None)),) + options.size_field()[1:]}
# adapter_config.json's fields, checked before any is used (types, ranges, missing keys)
FIELDS = {"LORA": {"r": options.size_field(), "lora_alpha": (float, math.isfinite, "finite"),
                   "lora_dropout?": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
                   "target_modules": NAMES, "use_rslora?": (bool, None, "true or false"),
                   "use_dora?": (bool, None, "true or false"),
                   "init_lora_weights?": ((bool, str), None, "true, false, gaussian or pissa")},
          "IA3": {"target_modules": NAMES,
                  "feedforward_modules?": ((list, type(None)),
                                           lambda v: all(isinstance(n, str) for n in v or []),
                                           "a list of module-name strings")},
          "PROMPT_TUNING": VIRTUAL,
          "P_TUNING": {**VIRTUAL, "encoder_reparameterization_type?": (str, None, "MLP or LSTM"),
                       "encoder_num_layers?": options.size_field(64),
                       "encoder_dropout?": (float, lambda v: 0 <= v < 1, "in [0, 1)")},
          "PREFIX_TUNING": {**VIRTUAL, "prefix_projection?": (bool, None, "true or false")}}


def _lora_config(data, path):
    """lora.LoraConfig from a LORA dict (rsLoRA, DoRA, PiSSA included); ValueError for LoRA
    variants lora.py lacks. init_lora_weights only matters when it changes the base: "pissa" (the
    residual is rebuilt, as peft does); the others (true, false, gaussian) start A, B that the
    file then overwrites."""
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform", "lora_bias"):
        if data.get(key):
            raise ValueError(f"{path}: {key}={data[key]!r} is not supported by lora.py; "
                             "save the adapter without it")
    init = data.get("init_lora_weights", True)
    if isinstance(init, str) and init not in ("gaussian", "pissa"):
        raise ValueError(f"{path}: init_lora_weights={init!r} changes the base model in a way "
                         "lora.py does not rebuild; save it with peft's save_pretrained("
                         "path_initial_model_for_weight_conversion=...) (a plain LoRA delta)")
    targets = data.get("target_modules")
    if not isinstance(targets, list):
        raise ValueError(f"{path}: target_modules must be a list of names, got {targets!r}")
    return lora.LoraConfig(r=data["r"], alpha=float(data["lora_alpha"]),
                           dropout=float(data.get("lora_dropout", 0.0)), target_modules=targets,
                           use_rslora=data.get("use_rslora", False),
                           use_dora=data.get("use_dora", False),
                           init="pissa" if init == "pissa" else "default")


def config_from_peft_dict(data, path):
    """Our config (lora.LoraConfig, adapters.IA3Config, ...) from an adapter_config.json dict."""
    kind = file_checks.check_fields(data, path, {"peft_type": (str, None, "")})["peft_type"]
    if kind not in PEFT_TYPES.values():
        raise ValueError(f"{path}: peft_type {kind!r} is not supported; use one of "
                         f"{', '.join(PEFT_TYPES.values())}")
    file_checks.check_fields(data, path, FIELDS[kind])
    if data.get("fan_in_fan_out") or data.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{path}: fan_in_fan_out / num_transformer_submodules != 1 are not "
                         "supported; save the adapter for a decoder-only Llama")
    if kind == "LORA":
        return _lora_config(data, path)
    if kind == "IA3":
        if not isinstance(data.get("target_modules"), list):
            raise ValueError(f"{path}: target_modules must be a list of names (no regex)")
        return adapters.IA3Config(list(data["target_modules"]),
                                  list(data.get("feedforward_modules") or []))
    fields = {"PROMPT_TUNING": (adapters.PromptTuningConfig, ()),
              "P_TUNING": (adapters.PTuningConfig, ("encoder_reparameterization_type",
                                                    "encoder_hidden_size", "encoder_num_layers",
                                                    "encoder_dropout")),
              "PREFIX_TUNING": (adapters.PrefixTuningConfig, ("prefix_projection",
                                                              "encoder_hidden_size"))}
    cls, names = fields[kind]
    return cls(data["num_virtual_tokens"], **{k: data[k] for k in names if k in data})


# ----------------------------------------------------------------------------
# the tensors: peft key -> (tensor now, the Parameter a load fills, peft's shape, layout)
# layout(t, permute) applies rope.permute_* where HF's half-split Q/K channels differ from ours.

def _plain(t, permute):
    """Layout of a tensor peft stores as we do (no Q/K channels, or LoRA's A)."""
    return t


def _rows(heads):
    """Layout of a tensor whose rows are Q or K channels of `heads` heads (None: not Q/K)."""
    return _plain if heads is None else (lambda t, permute: permute(t, heads))


def _prefix_layout(P, c, permute):
    """P (n, L * 2 * kv) with its keys' head_dim permuted (rope.permute_*; values unchanged)."""
    parts = P.reshape(P.shape[0], c.n_layers, 2, c.n_kv_heads, c.head_dim)
    keys = permute(parts[:, :, 0].reshape(-1, c.head_dim).T, 1).T.reshape(parts[:, :, 0].shape)
    return torch.stack([keys, parts[:, :, 1]], dim=2).reshape(P.shape)


def _vector_rows(heads):
    """Layout of a vector (out,) with one entry per Q or K row (DoRA's m)."""
    rows = _rows(heads)
    return lambda t, permute: rows(t.reshape(-1, 1), permute).reshape(t.shape)


def _lora_slots(key, layer, heads, saving):
    """lora_A (r, in) as it is, lora_B (out, r) with Q/K rows, DoRA's m (out,) likewise; saving
    a PiSSA layer: its LoRA delta on the original base (lora.pissa_as_lora), rank 2r."""
    A, B = layer.lora_A, layer.lora_B
    if saving and layer.pissa_A0 is not None:
        A, B = lora.pissa_as_lora(A, B, layer.pissa_A0, layer.pissa_B0)
    slots = {f"{key}.lora_A.weight": (A, layer.lora_A, tuple(A.shape), _plain),
             f"{key}.lora_B.weight": (B, layer.lora_B, tuple(B.shape), _rows(heads))}
    if layer.lora_magnitude is not None:
        m = layer.lora_magnitude
        slots[f"{key}.lora_magnitude_vector"] = (m, m, tuple(m.shape), _vector_rows(heads))
    return slots


def _layer_slots(model, config, saving=False):
    """LoRA: _lora_slots; IA3: l as (out, 1) with Q/K rows, or (1, in) for a feedforward module
    (its input channels)."""
    slots = {}
    for name, layer in model.named_modules():
        if isinstance(config, lora.LoraConfig) and isinstance(layer, lora.LoRALayer):
            hf_name, heads = peft_module_name(name, model)
            slots.update(_lora_slots(f"{PEFT_PREFIX}{hf_name}", layer, heads, saving))
        elif isinstance(config, adapters.IA3Config) and isinstance(layer, adapters.IA3Layer):
            hf_name, heads = peft_module_name(name, model)
            shape = (1, layer.in_features) if layer.feedforward else (layer.out_features, 1)
            slots[f"{PEFT_PREFIX}{hf_name}.ia3_l"] = (layer.ia3_l, layer.ia3_l, shape,
                                                      _rows(heads))
    return slots


def _slots(model, config, saving=False):
    """Every tensor of the adapter: peft key -> (tensor, Parameter, shape, layout); saving: the
    tensors as saved (PiSSA converted), else the Parameters a load fills."""
    if isinstance(config, (lora.LoraConfig, adapters.IA3Config)):
        return _layer_slots(model, config, saving)
    if isinstance(config, (adapters.PromptTuningConfig, adapters.PTuningConfig)):
        embedding = model.llama.tok_embeddings
        P = embedding.virtual_embeddings()                                  # (n, dim)
        return {"prompt_embeddings": (P, embedding.prompt, tuple(P.shape), _plain)}
    encoder, c = model.prefix_encoder, model.config
    P = encoder()                                                           # (n, L*2*kv)
    return {"prompt_embeddings": (P, encoder.embedding, tuple(P.shape),
                                  lambda t, permute: _prefix_layout(t, c, permute))}


# ----------------------------------------------------------------------------
# files

def save_adapter(directory, model, config, extra=None):
    """<directory>/adapter_model.safetensors + adapter_config.json in peft's layout, for any
    method; model: what adapters.adapt returned (or a model lora.inject_lora adapted).
    extra(folder), if given, writes more files into the new folder (a head, sft_config.json).
    The folder is swapped in whole (atomic.replace_folder_atomic): a kill between files leaves
    the old adapter, never the new weights beside an old config."""
    directory = Path(directory)
    for name, layer in lora.lora_layers(model) if isinstance(config, lora.LoraConfig) else ():
        has = (layer.r, layer.alpha, layer.use_rslora, layer.lora_magnitude is not None,
               layer.init)
        says = (config.r, config.alpha, config.use_rslora, config.use_dora, config.init)
        if has != says:
            raise ValueError(f"{name}: layer has (r, alpha, rslora, dora, init) = {has} but the "
                             f"config says {says}; save with the config used")
    with torch.no_grad():                    # FSDP: each tensor gathered whole
        tensors = {key: layout(distributed.full(value.detach()).to("cpu", copy=True)
                               .reshape(shape), rope.permute_interleaved_to_half).contiguous()
                   for key, (value, _, shape, layout) in _slots(model, config, True).items()}
    if not tensors:
        raise ValueError(f"save_adapter: the model holds no {PEFT_TYPES[type(config)]} adapter; "
                         "call adapters.adapt(model, config) first")
    fields = peft_config_dict(config, getattr(model, "config", None))

    def fill(folder):
        safetensors_io.write_safetensors(folder / ADAPTER_WEIGHTS, tensors,
                                         metadata={"format": "pt"})
        atomic.save_json_atomic(folder / ADAPTER_CONFIG, fields)
        if extra is not None:
            extra(folder)
    return atomic.replace_folder_atomic(directory, fill)


def read_config(directory):
    """The config of the adapter saved in `directory` (both files must be there)."""
    directory = Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name}: adapter file not found; write one with "
                                    "peft_format.save_adapter or peft's save_pretrained")
    path = directory / ADAPTER_CONFIG
    return config_from_peft_dict(file_checks.read_json(path), path)


def _adapted(llama, config, source):
    """The model a loaded adapter fills: adapt(llama, config, inference_mode=True), or for LoRA
    the model's own LoRA layers when it has some (their alpha is then set from the file)."""
    layers = lora.lora_layers(llama) if isinstance(config, lora.LoraConfig) else []
    if not layers:
        return adapters.adapt(llama, config, inference_mode=True, source=source)
    if any(layer.merged for _, layer in layers):
        raise ValueError("load_adapter: the model's LoRA layers are merged; call "
                         "lora.unmerge_lora first")
    return llama


@torch.no_grad()
def load_adapter(directory, llama):
    """A peft-layout adapter of any method on `llama` -> (model, config), filled strictly (every
    tensor lands in one Parameter, every Parameter is filled). model is llama itself for LoRA and
    IA3, a VirtualTokenLlama around it for the prompt and prefix methods (adapters.adapt)."""
    directory = Path(directory)
    config = read_config(directory)
    model = _adapted(llama, config, directory / ADAPTER_CONFIG)
    tensors = safetensors_io.read_safetensors(directory / ADAPTER_WEIGHTS)
    slots = _slots(model, config)
    missing, unexpected = sorted(slots.keys() - tensors.keys()), sorted(tensors.keys() - slots)
    if missing or unexpected:
        raise ValueError(f"{directory / ADAPTER_WEIGHTS}: keys do not match the model's adapter "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved for "
                         "another model or other target_modules?")
    for key, (_, param, shape, layout) in slots.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{key}: adapter shape {tuple(tensors[key].shape)} != model shape "
                             f"{shape}; was it saved with another rank or for another base model?")
        param.copy_(layout(tensors[key], rope.permute_half_to_interleaved).reshape(param.shape))
    if isinstance(config, lora.LoraConfig):
        for _, layer in lora.lora_layers(model):
            layer.alpha, layer.use_rslora = config.alpha, config.use_rslora  # scale follows
    return model, config
