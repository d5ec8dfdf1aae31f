"""Parameter names: one table per checkpoint format onto llama.py's canonical names, and the short
names of the seven block Linears that adapter targets use in either spelling.

Every format names the same modules. One list per format, aligned index by index ({i} = layer):
    canonical (llama.py, Meta, llama2.c)   layers.{i}.attention.wq          layers.{i}.ffn_norm
    Hugging Face (transformers' Llama)     model.layers.{i}.self_attn.q_proj
                                           model.layers.{i}.post_attention_layernorm
    GGUF (llama.cpp)                       blk.{i}.attn_q                   blk.{i}.ffn_norm
A rename maps a module path, plus whatever follows it (.weight, .bias, .lora_A.weight), from one
list to the same index of another: hf_to_canonical_name, canonical_to_hf_name,
gguf_to_canonical_name, canonical_to_gguf_name. A name in no table is a one-line ValueError.

The block's attention and feed-forward modules are its seven Linears; their last names, read off
the canonical and HF lists, are the alias table of adapter targets (LoRA, IA3; peft writes HF
names, our Llama has llama2.c's):
    q_proj <-> wq, k_proj <-> wk, v_proj <-> wv, o_proj <-> wo        (attention)
    gate_proj <-> w1, down_proj <-> w2, up_proj <-> w3                 (SwiGLU FFN)

Names only (stdlib `re`): the loaders (weights.py) and the PEFT files (lora.py, adapters.py,
peft_format.py) import it without importing each other.
Tested in tests/test_weights.py (the renames are inverse and land on llama.Llama's state_dict;
module paths; an unknown name fails in one line) and tests/test_lora.py (with_aliases).
"""
import re

# ----------------------------------------------------------------------------
# tables: module paths per format, {i} = layer index; .weight / .bias pass through

CANONICAL_MODULES = ["tok_embeddings", "layers.{i}.attention_norm", "layers.{i}.attention.wq",
                     "layers.{i}.attention.wk", "layers.{i}.attention.wv",
                     "layers.{i}.attention.wo",
                     "layers.{i}.ffn_norm", "layers.{i}.feed_forward.w1",
                     "layers.{i}.feed_forward.w2", "layers.{i}.feed_forward.w3", "norm", "output"]
HF_MODULES = ["model.embed_tokens", "model.layers.{i}.input_layernorm",
              "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
              "model.layers.{i}.self_attn.v_proj", "model.layers.{i}.self_attn.o_proj",
              "model.layers.{i}.post_attention_layernorm", "model.layers.{i}.mlp.gate_proj",
              "model.layers.{i}.mlp.down_proj", "model.layers.{i}.mlp.up_proj", "model.norm",
              "lm_head"]
GGUF_MODULES = ["token_embd", "blk.{i}.attn_norm", "blk.{i}.attn_q", "blk.{i}.attn_k",
                "blk.{i}.attn_v", "blk.{i}.attn_output", "blk.{i}.ffn_norm", "blk.{i}.ffn_gate",
                "blk.{i}.ffn_down", "blk.{i}.ffn_up", "output_norm", "output"]

# The seven block Linears (wq wk wv wo w1 w2 w3) and their HF names, read off the tables above.
BLOCK_LINEARS = tuple(m.rpartition(".")[2] for m in CANONICAL_MODULES
                      if ".attention." in m or ".feed_forward." in m)
HF_TO_LLAMA2C = {hf.rpartition(".")[2]: ours.rpartition(".")[2]
                 for ours, hf in zip(CANONICAL_MODULES, HF_MODULES)
                 if ours.rpartition(".")[2] in BLOCK_LINEARS}
LLAMA2C_TO_HF = {v: k for k, v in HF_TO_LLAMA2C.items()}


def _rules(sources, targets, suffix=r"(\..+)?"):
    """Regexes matching a source module path plus `suffix` -> target pattern."""
    return [(re.compile("^" + re.escape(s).replace(r"\{i\}", r"(\d+)") + suffix + "$"), t)
            for s, t in zip(sources, targets)]


_HF_TO_CANONICAL = _rules(HF_MODULES, CANONICAL_MODULES)
_CANONICAL_TO_HF = _rules(CANONICAL_MODULES, HF_MODULES)
_GGUF_TO_CANONICAL = _rules(GGUF_MODULES, CANONICAL_MODULES)
_CANONICAL_TO_GGUF = _rules(CANONICAL_MODULES, GGUF_MODULES)
_CANONICAL_PARAMETERS = _rules(CANONICAL_MODULES, CANONICAL_MODULES, r"(\.weight|\.bias)")

# ----------------------------------------------------------------------------
# renames


def _rename(name, rules, what):
    """Translate one name with the first matching rule; ValueError when none matches."""
    for pattern, target in rules:
        match = pattern.match(name)
        if match:
            *layer, suffix = match.groups()
            return (target.replace("{i}", layer[0]) if layer else target) + (suffix or "")
    raise ValueError(f"parameter {name!r} is not in the {what} name table of weight_names.py; "
                     f"is this a Llama checkpoint?")


def hf_to_canonical_name(name):
    """'model.layers.3.self_attn.q_proj.weight' -> 'layers.3.attention.wq.weight'."""
    return _rename(name, _HF_TO_CANONICAL, "Hugging Face")


def canonical_to_hf_name(name):
    """'layers.3.attention.wq.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    return _rename(name, _CANONICAL_TO_HF, "canonical")


def gguf_to_canonical_name(name):
    """'blk.3.attn_q.weight' -> 'layers.3.attention.wq.weight'."""
    return _rename(name, _GGUF_TO_CANONICAL, "GGUF")


def canonical_to_gguf_name(name):
    """'layers.3.attention.wq.weight' -> 'blk.3.attn_q.weight' (gguf_writer.py)."""
    return _rename(name, _CANONICAL_TO_GGUF, "canonical")


def check_canonical_names(names, source):
    """ValueError unless every name is a canonical parameter (e.g. no LoRA or peft names)."""
    for name in names:
        if not any(pattern.match(name) for pattern, _ in _CANONICAL_PARAMETERS):
            raise ValueError(f"{source}: {name!r} is not a canonical parameter name (llama.py's "
                             f"tok_embeddings / layers.N.* / norm / output); merge LoRA first")


def with_aliases(names):
    """Each name plus its other spelling: ["q_proj", "w2"] -> {"q_proj", "wq", "w2", "down_proj"}"""
    out = set()
    for name in names:
        out.add(name)
        out.add(HF_TO_LLAMA2C.get(name, LLAMA2C_TO_HF.get(name, name)))
    return out
