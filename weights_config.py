"""The LlamaConfig of a model file (the config side of weights.py): read from each format's own
config, every value checked, then checked against the tensors present, before anything of the
config's size is allocated.

Formats and their configs (weights.py reads the files; the key tables are here):
    Hugging Face   config.json keys HF_CONFIG_KEYS (hidden_size -> dim, ...), RoPE scaling as
                   transformers 4.x rope_scaling or 5.x rope_parameters (hf_rope_scaling)
    GGUF           llama.* metadata keys GGUF_CONFIG_KEYS; vocabulary = token_embd rows; tied when
                   there is no output.weight; Llama 3 scaling stored as rope_freqs.weight divisors
    llama2.c/Meta  model_args / params.json with our names; hidden_dim by llama.llama2c_hidden_dim
    ours           save_model_folder's LlamaConfig fields (config.json llama_config, llmlab_config)

The checks, in the order they run:
  1. values (check_field): CONFIG_RANGES gives each value's type and sane range. An int is an
     int, not a bool, "32" or 32.0; a float may be an int but not NaN or inf. A GGUF with
     head_count 0 fails here, not with a ZeroDivisionError in dim // n_heads.
  2. the config against the tensors (check_tensors; tensors are memory-mapped views or GGUF
     infos, nothing is read): the embedding is (vocab_size, dim), the layer indices are exactly
     0 .. n_layers-1, every name and shape is parameter_shapes(config), weights are floating
     point. Equal names and shapes make the config's parameter count the tensors' element count,
     whose bytes the readers found inside the file (no overlaps): a 75 KB file whose config says
     10^7 layers, or a vocabulary of 2^40, fails in one line instead of allocating terabytes.
  3. the tokenizer against the vocabulary (check_tokenizer_fits): its ids index the embedding.
Every failure is one ValueError line naming the file, the file's own key and the fix.

Shapes: tok_embeddings / output (V, dim); wq (n_heads * head_dim, dim); wk, wv (n_kv_heads *
head_dim, dim); w1, w3 (hidden_dim, dim); w2 (dim, hidden_dim); norms (dim,).
Tested in tests/test_weights.py (parameter_shapes equals llama.Llama's state_dict; configs of every
format, hostile configs) and tests/test_fuzz_readers.py (mutated files: no config whose parameters
exceed the file reaches weights.build_model).
"""
import dataclasses
import re

import torch

import llama
import rope

# ----------------------------------------------------------------------------
# tables: each format's config keys, and the sane range of every value

# The key a format uses for each LlamaConfig field (errors name the file's own key).
HF_CONFIG_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
                  "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
                  "head_dim": "head_dim", "hidden_dim": "intermediate_size",
                  "vocab_size": "vocab_size", "max_seq_len": "max_position_embeddings",
                  "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings"}
GGUF_CONFIG_KEYS = {"dim": "llama.embedding_length", "n_layers": "llama.block_count",
                    "n_heads": "llama.attention.head_count",
                    "n_kv_heads": "llama.attention.head_count_kv",
                    "head_dim": "llama.attention.key_length",
                    "hidden_dim": "llama.feed_forward_length",
                    "max_seq_len": "llama.context_length",
                    "norm_eps": "llama.attention.layer_norm_rms_epsilon",
                    "rope_theta": "llama.rope.freq_base"}
# Type and sane range of every config value a checkpoint gives (Llama 3.1 405B: dim 16384, 126
# layers, 128 heads, hidden 53248, vocab 128256, 131072 positions). ffn_dim_multiplier,
# rope_scaling_factor and use_scaled_rope are params.json / llama2.c's; None is accepted for the
# fields LlamaConfig derives when they are None.
CONFIG_RANGES = {"dim": (int, 1, 1 << 16), "n_layers": (int, 1, 1 << 10),
                 "n_heads": (int, 1, 1 << 10), "n_kv_heads": (int, 1, 1 << 10),
                 "head_dim": (int, 2, 1 << 12), "hidden_dim": (int, 1, 1 << 18),
                 "multiple_of": (int, 1, 1 << 16), "vocab_size": (int, 1, 1 << 22),
                 "max_seq_len": (int, 1, 1 << 24), "norm_eps": (float, 0.0, 1.0),
                 "rope_theta": (float, 1.0, 1e12), "ffn_dim_multiplier": (float, 1e-3, 1e3),
                 "rope_scaling_factor": (float, 1e-3, 1e4),
                 "use_scaled_rope": (bool, None, None), "tie_embeddings": (bool, None, None),
                 "rope_scaling": (dict, None, None)}
_MAY_BE_NONE = {"n_kv_heads", "head_dim", "hidden_dim", "rope_scaling"}
_KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false",
               dict: "an object {...}"}
_LAYER = re.compile(r"layers\.(\d+)\.")

# ----------------------------------------------------------------------------
# values: each one checked, then LlamaConfig


def check_field(path, name, value, key=None):
    """value, when it has CONFIG_RANGES[name]'s type (an int is not a bool; a float may be an
    int) and range (NaN and inf are outside); else a one-line ValueError naming the file's key."""
    kind, low, high = CONFIG_RANGES[name]
    key = key or name
    if value is None and name in _MAY_BE_NONE:
        return value
    if isinstance(value, bool) != (kind is bool) or not isinstance(
            value, (int, float) if kind is float else kind):
        raise ValueError(f"{path}: {key} = {repr(value)[:40]} is not {_KIND_WORDS[kind]}; fix "
                         f"{key} in the config")
    if low is not None and not low <= value <= high:
        raise ValueError(f"{path}: {key} = {value} is outside [{low}, {high}]; fix {key} in the "
                         f"config")
    return value


def llama_config(path, keys=None, **fields):
    """llama.LlamaConfig(**fields) after check_field on each field (keys: our field name -> the
    file's key, for messages); its errors as one-line ValueErrors that name the file."""
    for name, value in fields.items():
        if name in CONFIG_RANGES:
            check_field(path, name, value, (keys or {}).get(name))
    try:
        config = llama.LlamaConfig(**fields)
    except TypeError as err:
        raise ValueError(f"{path}: config does not fit LlamaConfig ({err})") from None
    except ValueError as err:                         # LlamaConfig checks RoPE scaling itself
        raise ValueError(f"{path}: {err}") from None
    return config


# ----------------------------------------------------------------------------
# each format's config

def hf_config(cfg, path):
    """LlamaConfig from a transformers LlamaConfig's config.json. RoPE scaling, transformers 4.x
    `rope_scaling` or 5.x `rope_parameters`, is translated by hf_rope_scaling."""
    if cfg.get("model_type", "llama") != "llama" or cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: model_type {cfg.get('model_type')!r} / hidden_act "
                         f"{cfg.get('hidden_act')!r}; weights.py loads Llama (silu) models only")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{path}: attention_bias / mlp_bias are not supported by llama.Llama")
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if scaling is not None and not isinstance(scaling, dict):
        raise ValueError(f"{path}: rope_scaling / rope_parameters = {repr(scaling)[:40]} is not "
                         f"an object {{...}}; fix config.json")
    fields = {name: cfg[key] for name, key in HF_CONFIG_KEYS.items() if cfg.get(key) is not None}
    for name in ("dim", "n_layers", "n_heads", "hidden_dim", "vocab_size"):
        if name not in fields:
            raise ValueError(f"{path}: config.json has no {HF_CONFIG_KEYS[name]!r}; is it a Llama "
                             f"config?")
    rope_theta = cfg.get("rope_theta") or (scaling or {}).get("rope_theta") or 10000.0
    return llama_config(path, HF_CONFIG_KEYS, **{"max_seq_len": 2048, "norm_eps": 1e-6,
                                                 "tie_embeddings": False, **fields},
                        rope_theta=rope_theta,
                        rope_scaling=hf_rope_scaling(scaling, rope_theta, path))


def hf_rope_scaling(scaling, rope_theta, path):
    """Hugging Face's RoPE scaling dict -> ours (llama.ROPE_SCALING_KEYS, checked by LlamaConfig)
    or None. transformers 4.x `rope_scaling` and 5.x `rope_parameters`: rope_type, or the older
    type ('default' = no scaling, 'llama3'; absent = llama3), original_max_position_embeddings
    (our original_max_seq_len), and in 5.x a rope_theta that must equal rope_theta."""
    scaling = dict(scaling or {})
    theta = scaling.pop("rope_theta", rope_theta)
    if theta != rope_theta:
        raise ValueError(f"{path}: rope_parameters' rope_theta differs from rope_theta="
                         f"{rope_theta} ({theta}); give rope_theta once")
    if not scaling:
        return None
    legacy_type = scaling.pop("type", None)                  # transformers' older spelling
    rope_type = scaling.pop("rope_type", legacy_type) or "llama3"
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise ValueError(f"{path}: rope_scaling rope type {rope_type!r} is not supported; use "
                         f"None, 'default' or 'llama3' (with {llama.ROPE_SCALING_KEYS})")
    if "original_max_position_embeddings" in scaling:
        scaling["original_max_seq_len"] = scaling.pop("original_max_position_embeddings")
    return scaling


def gguf_config(gguf, infos):
    """LlamaConfig from a GGUFFile's llama.* metadata keys and its tensor infos (canonical name
    -> GGUFTensor): vocabulary = the embedding's rows, tied when output.weight is absent, Llama 3
    scaling from rope_freqs.weight (its shape checked before its D/2 values are read)."""
    md, path = gguf.metadata, gguf.path
    if md.get("general.architecture") != "llama":
        raise ValueError(f"{path}: GGUF architecture {md.get('general.architecture')!r} is not "
                         f"supported; weights.py loads 'llama' GGUF files")
    if md.get("llama.rope.scaling.type", "none") != "none":
        raise ValueError(f"{path}: RoPE scaling {md['llama.rope.scaling.type']!r} is not "
                         f"supported (only Llama 3's, stored as rope_freqs.weight)")
    fields = {name: md[key] for name, key in GGUF_CONFIG_KEYS.items() if key in md}
    for name in ("dim", "n_layers", "n_heads", "hidden_dim", "max_seq_len", "norm_eps"):
        if name not in fields:
            raise ValueError(f"{path}: GGUF metadata has no {GGUF_CONFIG_KEYS[name]}; the file is "
                             f"incomplete")
    config = llama_config(path, GGUF_CONFIG_KEYS, **fields,
                          vocab_size=embedding(infos, path).shape[0],
                          tie_embeddings="output.weight" not in infos)
    factors = gguf.tensors.get("rope_freqs.weight")
    if factors is not None:
        if factors.shape != (config.head_dim // 2,):
            raise ValueError(f"{path}: rope_freqs.weight has shape {factors.shape}, not "
                             f"(head_dim / 2,) = ({config.head_dim // 2},); the file is corrupt")
        factors = gguf.tensor("rope_freqs.weight")
    scaling = llama3_scaling_from_factors(factors, config.head_dim, config.rope_theta, path)
    return dataclasses.replace(config, rope_scaling=scaling) if scaling else config


def llama3_scaling_from_factors(factors, head_dim, theta, path):
    """llama.cpp stores Llama 3 scaling as divisors f_i (theta_i / f_i), rope_freqs.weight (D/2,).
    Meta's Llama 3.1/3.2 use low_freq_factor 1, high_freq_factor 4, original length 8192 and
    factor = max f_i: rebuild those constants and check they reproduce every f_i."""
    if factors is None or bool((factors == 1).all()):
        return None
    guess = rope.meta_llama3_scaling(float(factors.max()))
    scaled = rope.rope_frequencies(head_dim, theta, guess)                      # (D/2,)
    expected = rope.rope_frequencies(head_dim, theta) / scaled
    if expected.shape != factors.shape or not torch.allclose(factors, expected, rtol=1e-3):
        raise ValueError(f"{path}: rope_freqs.weight is not Llama 3 scaling with low/high freq "
                         f"factors 1/4 and original length 8192; this file is not supported")
    return guess


def llama2c_config(args, state_dict, path):
    """LlamaConfig from llama2.c model_args or Meta params.json (hidden_dim, when absent, by
    llama.llama2c_hidden_dim, with params.json's ffn_dim_multiplier), each value checked before
    it is used; vocabulary (params.json's -1), tying and norm come from the tensors."""
    if not isinstance(args, dict):
        raise ValueError(f"{path}: model_args is a {type(args).__name__}, not a dict with dim, "
                         f"n_layers, n_heads; save it with llama2.c's model_args")
    for name in ("dim", "n_layers", "n_heads"):
        if args.get(name) is None:
            raise ValueError(f"{path}: model_args lack {name!r}; give dim, n_layers, n_heads")
    dim = check_field(path, "dim", args["dim"])
    multiple_of = check_field(path, "multiple_of", args.get("multiple_of", 256))
    hidden_dim = check_field(path, "hidden_dim", args.get("hidden_dim"))
    if hidden_dim is None:
        multiplier = args.get("ffn_dim_multiplier")
        if multiplier is not None:
            check_field(path, "ffn_dim_multiplier", multiplier)
        hidden_dim = llama.llama2c_hidden_dim(dim, multiple_of, multiplier)
    vocab_size = args.get("vocab_size", -1)
    if type(vocab_size) is int and vocab_size <= 0:    # Meta's params.json writes -1
        vocab_size = embedding(state_dict, path).shape[0]
    scaling = None
    if check_field(path, "use_scaled_rope", args.get("use_scaled_rope", False)):
        factor = check_field(path, "rope_scaling_factor", args.get("rope_scaling_factor", 8.0))
        scaling = rope.meta_llama3_scaling(factor)     # Llama 3.1 reference apply_scaling
    output, embedded = state_dict.get("output.weight"), embedding(state_dict, path)
    tied = output is None or output.data_ptr() == embedded.data_ptr() or (
        output.shape == embedded.shape and torch.equal(output, embedded))
    return llama_config(
        path, dim=dim, n_layers=args["n_layers"], n_heads=args["n_heads"],
        n_kv_heads=args.get("n_kv_heads"), hidden_dim=hidden_dim, multiple_of=multiple_of,
        vocab_size=vocab_size, max_seq_len=args.get("max_seq_len", 2048),
        norm_eps=args.get("norm_eps", 1e-5), rope_theta=args.get("rope_theta", 10000.0),
        rope_scaling=scaling, tie_embeddings=tied,
        norm="layernorm" if any(k.endswith("norm.bias") for k in state_dict) else "rmsnorm")


def llmlab_config(fields, path):
    """Our own config (save_model_folder's llama_config / llmlab_config): LlamaConfig's fields."""
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: llama_config is {repr(fields)[:40]}, not an object of "
                         f"LlamaConfig fields; save the checkpoint again")
    return llama_config(path, **fields)


# ----------------------------------------------------------------------------
# the config against the tensors present

def parameter_shapes(config):
    """Canonical name -> shape of every tensor in llama.Llama(config).state_dict(), without
    building it (output.weight even when tied; LayerNorm biases). Tested equal to Llama's."""
    c = config
    out_in = {name: (o, i) for name, (i, o) in llama.linear_shapes(c).items()}  # weight (out, in)
    layer = {"attention_norm.weight": (c.dim,), "ffn_norm.weight": (c.dim,),
             **{f"attention.{n}.weight": out_in[n] for n in ("wq", "wk", "wv", "wo")},
             **{f"feed_forward.{n}.weight": out_in[n] for n in ("w1", "w2", "w3")}}
    shapes = {"tok_embeddings.weight": (c.vocab_size, c.dim), "norm.weight": (c.dim,),
              "output.weight": (c.vocab_size, c.dim)}
    if c.norm == "layernorm":
        layer.update({"attention_norm.bias": (c.dim,), "ffn_norm.bias": (c.dim,)})
        shapes["norm.bias"] = (c.dim,)
    shapes.update({f"layers.{i}.{name}": shape for i in range(c.n_layers)
                   for name, shape in layer.items()})
    return shapes


def embedding(tensors, source):
    """The (V, dim) token embedding every Llama checkpoint has; a one-line ValueError if absent."""
    found = tensors.get("tok_embeddings.weight")
    if found is None or len(found.shape) != 2:
        raise ValueError(f"{source}: no 2-D token embedding (tok_embeddings.weight; GGUF "
                         f"token_embd.weight; HF model.embed_tokens.weight); the file is "
                         f"incomplete or not a Llama checkpoint")
    return found


def _key(name, keys):
    """'num_hidden_layers (n_layers)' in a file with its own key for the field, else 'n_layers'."""
    return f"{keys[name]} ({name})" if keys and keys.get(name, name) != name else name


def check_tensors(config, tensors, source="checkpoint", keys=None):
    """ValueError (one line: the file, the config key, the fix) unless `tensors` (name -> Tensor
    or anything with .shape, e.g. a GGUF tensor info) are exactly llama.Llama(config)'s: a
    (vocab_size, dim) embedding, layers 0 .. n_layers-1, every name and shape, floating point.
    A tied output.weight and zero LayerNorm biases may be left out. Cheap (no tensor is read)."""
    rows, cols = embedding(tensors, source).shape
    if (rows, cols) != (config.vocab_size, config.dim):
        raise ValueError(f"{source}: {_key('vocab_size', keys)} = {config.vocab_size} and "
                         f"{_key('dim', keys)} = {config.dim}, but the token embedding is "
                         f"({rows}, {cols}); fix the config")
    layers = sorted({int(m.group(1)) for m in map(_LAYER.match, tensors) if m})
    if len(layers) != config.n_layers or layers[-1] != config.n_layers - 1:   # = 0 .. n-1
        held = f"layers {layers[0]} .. {layers[-1]} ({len(layers)})" if layers else "no layers"
        raise ValueError(f"{source}: {_key('n_layers', keys)} = {config.n_layers}, but the "
                         f"tensors hold {held}; fix n_layers or the file")
    expected = parameter_shapes(config)
    optional = {n for n in expected if n.endswith("norm.bias")} | (
        {"output.weight"} if config.tie_embeddings else set())
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match its LlamaConfig: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(tensor.shape)} but the "
                             f"config expects {expected[name]}; checkpoint and config differ")
        if torch.is_tensor(tensor) and not tensor.is_floating_point():
            raise ValueError(f"{source}: tensor {name} has dtype {tensor.dtype}; weights must be "
                             f"floating point (F32, F16, BF16)")


def check_tokenizer_fits(tok, config, source):
    """The tokenizer's ids must index the model's embedding: vocabulary <= vocab_size rows, and
    bos / eos / pad ids inside the vocabulary."""
    if not (type(tok.vocab_size) is int and 0 < tok.vocab_size <= config.vocab_size):
        raise ValueError(f"{source}: the tokenizer has {tok.vocab_size} tokens, the model's "
                         f"embedding {config.vocab_size} rows; use this model's own tokenizer")
    for what, token_id in (("bos", tok.bos_id), ("eos", tok.eos_id), ("pad", tok.pad_id)):
        if token_id is not None and not (type(token_id) is int
                                         and 0 <= token_id < tok.vocab_size):
            raise ValueError(f"{source}: tokenizer {what} id {token_id!r} is outside its "
                             f"vocabulary [0, {tok.vocab_size}); fix the tokenizer's {what} token")
