"""GGUF files written by hand (the inverse of gguf_reader.py): a Llama and its tokenizer as one file
llama.cpp, ollama and LM Studio run, and transformers loads with gguf_file=.

GGUF v3 (ggml docs/gguf.md, little-endian), written in this order:
    b"GGUF", u32 version 3, u64 n_tensors, u64 n_kv
    n_kv metadata entries: string key, u32 value type, value   (string = u64 length + UTF-8;
        array = u32 item type + u64 count + items)
    n_tensors infos: string name, u32 n_dims, u64 dims innermost first, u32 ggml type,
        u64 offset (from the start of the data, a multiple of ALIGNMENT)
    zero padding to a multiple of ALIGNMENT, then every tensor's bytes, each padded the same way.
Value types follow llama.cpp's converter (it refuses a key of another type): ints u32 (u64 when
larger, i32/i64 when negative), int arrays i32 (token types), floats and float arrays f32, bool,
str, arrays of str.

Block encoders, the inverses of gguf_reader's dequantizers (ggml-quants.c quantize_row_*_ref;
blocks of 32 weights x, f16 scales, round() half away from zero as C's roundf):
    Q8_0: d = max|x| / 127,              q = round(x / d)             in -127..127
    Q4_0: d = x_m / -8 (x_m: the x of largest |x|),  q = min(15, trunc(x / d + 8.5))
    Q4_1: d = (max x - min x) / 15, m = min x,       q = min(15, trunc((x - m) / d + 0.5))
with 1/d taken once (0 when d = 0) and multiplied, as ggml does, so the bytes equal
gguf.quants.quantize bit for bit; 4-bit codes packed as the reader unpacks them (element j in the
low nibble of byte j, element j + 16 in its high nibble). F16 and BF16 round to nearest even
(torch's casts, as ggml_compute_fp32_to_bf16). Decoding then encoding blocks made by an encoder
gives the same bytes (the scale of each block is re-derived exactly from its extreme code), but
for an all-zero Q4_0 block: d = 0 / -8 = -0.0 the first time, +0.0 the second (both decode to 0).

A Llama as GGUF (llama.cpp convert_hf_to_gguf.py, LlamaModel): general.architecture = llama and
the llama.* keys weights_config.GGUF_CONFIG_KEYS reads, plus vocab_size and rope.dimension_count
that llama.cpp and transformers read; tensors under GGUF names (weight_names.py). Q/K rows: GGUF
keeps Meta's interleaved pairs, which is our canonical layout, so they are written as they are
(the converter un-permutes HF's half-split rows; weights.py reads GGUF rows unchanged). A tied
output has no output.weight (llama.cpp then uses token_embd). Llama 3 RoPE scaling is the
rope_freqs.weight divisors theta_i / theta_i' (what gguf_config reads back). Norms and
rope_freqs stay F32; with q4_0 / q4_1 the embedding and output head are Q8_0 (tensor_type); a
2-D tensor whose rows are not whole blocks falls back to F16, as llama.cpp's quantizer does.
Tokenizer keys (tokenizer.ggml.*): carried from a GGUF as they are; a tokenizer.json (byte-level
BPE) becomes model gpt2, tokens by id, token types (3 control for special added tokens, 4
user-defined for the others, 1 normal), merges "a b", pre = llama.cpp's name of its regex; a
SentencePiece model becomes model llama with tokens, scores and types (2 unknown, 3 control, 5
unused, 6 byte, 1 normal). bos / eos / pad ids, add_bos_token and tokenizer.chat_template come
with them; the token list is padded to the embedding's rows with [PAD{i}] (type 5), as the
converter does.

Shapes: tensors outermost first ((out, in) for nn.Linear) in, GGUF dims reversed on disk;
blocks (n_blocks, 32) fp32 -> (n_blocks, bytes per block) uint8.
Tested in tests/test_gguf_writer.py: every encoder equals gguf.quants.quantize bit for bit and
round-trips encode(decode(blocks)) == blocks; our reader and gguf.GGUFReader read a written model
back with the same names, shapes and values; transformers loads it (logits, chat ids).
"""
import struct
from pathlib import Path

import numpy as np
import torch

import atomic
import chat_templates
import file_checks
import gguf_reader
import gguf_sentencepiece
import rope
import tokenizer
from weight_names import canonical_to_gguf_name

# ----------------------------------------------------------------------------
# tables

GGUF_VERSION = 3
ALIGNMENT = 32                 # general.alignment's default: no key needed
# --dtype -> ggml type name, and llama.cpp's general.file_type for it (llama.h LLAMA_FTYPE_MOSTLY_*)
EXPORT_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0",
                "q4_1": "Q4_1"}
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}
TYPE_IDS = {name: type_id for type_id, (name, _, _) in gguf_reader.GGML_TYPES.items()}
# tokenizer.ggml.token_type values (llama.cpp llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# GGUF metadata value types (gguf_reader._GGUF_SCALARS, by name)
U32, I32, F32, BOOL, STRING, ARRAY, U64, I64 = 4, 5, 6, 7, 8, 9, 10, 11
# llama.cpp's tokenizer.ggml.pre names of tokenizer.py's pre-tokenizer regexes
PRE_NAMES = {tokenizer.GPT2_PATTERN: "gpt-2", tokenizer.SMOLLM_PATTERN: "smollm",
             tokenizer.LLAMA3_PATTERN: "llama-bpe"}

# ----------------------------------------------------------------------------
# block encoders: weights (n_blocks, 32) fp32 -> blocks (n_blocks, bytes per block) uint8


def _roundf(x):
    """C roundf: half away from zero (np.round rounds half to even)."""
    a = np.abs(x)
    return np.sign(x) * (np.floor(a) + np.floor(2 * (a - np.floor(a))))


def _inverse(d):
    """1 / d, and 0 where d = 0 (a constant block: every code 0)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _f16_bytes(values):
    """(n, 1) fp32 -> (n, 2) bytes of their f16 (round to nearest even)."""
    return values.astype(np.float16).view(np.uint8)


def _pack_nibbles(q):
    """(n, 32) codes 0..15 -> (n, 16) bytes: element j low nibble, element j + 16 high nibble."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def quantize_q8_0(x):
    """34 bytes: f16 d = max|x| / 127, int8 q = round(x / d)."""
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)                    # (n, 1)
    q = _roundf(x * _inverse(d)).astype(np.int8).view(np.uint8)                   # (n, 32)
    return np.concatenate([_f16_bytes(d), q], axis=1)


def quantize_q4_0(x):
    """18 bytes: f16 d = x_m / -8, nibbles q = min(15, trunc(x / d + 8.5)); w = d (q - 8)."""
    extreme = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)    # (n, 1)
    d = extreme / np.float32(-8)
    q = np.trunc(x * _inverse(d) + np.float32(8.5)).clip(0, 15)                   # (n, 32)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def quantize_q4_1(x):
    """20 bytes: f16 d = (max - min) / 15, f16 m = min, nibbles q = min(15, trunc((x - m) / d
    + 0.5)); w = d q + m."""
    low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)        # (n, 1)
    d = (high - low) / np.float32(15)
    q = np.trunc((x - low) * _inverse(d) + np.float32(0.5)).clip(0, 15)           # (n, 32)
    return np.concatenate([_f16_bytes(d), _f16_bytes(low), _pack_nibbles(q)], axis=1)


QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1}
CHUNK = 1 << 14     # blocks encoded at once: temporaries stay in cache (~10x faster on 28M weights)


def encode(tensor, type_name):
    """A float tensor -> its bytes as ggml type `type_name` (uint8 numpy, 1-D), rows in blocks."""
    t = tensor.detach().to("cpu", torch.float32).contiguous()
    if type_name == "F32":
        return t.numpy().view(np.uint8).reshape(-1)
    if type_name in ("F16", "BF16"):
        half = t.to(torch.float16 if type_name == "F16" else torch.bfloat16)
        return half.view(torch.int16).numpy().view(np.uint8).reshape(-1)
    blocks = t.numpy().reshape(-1, 32)                                          # (n, 32)
    chunks = [QUANTIZERS[type_name](blocks[i: i + CHUNK]) for i in range(0, len(blocks), CHUNK)]
    return np.concatenate(chunks).reshape(-1)


def tensor_type(name, tensor, type_name):
    """The type a tensor is stored as: vectors (norms, rope_freqs) F32; with a 4-bit type the
    embedding and output head Q8_0 (4-bit logits cost the most quality: llama.cpp's Q4 presets
    keep the output at 6-8 bits, SmolLM2's Q4_1 file its tied token_embd at Q8_0); a matrix
    whose rows are not whole blocks of the type F16; the rest type_name."""
    if tensor.dim() < 2:
        return "F32"
    if type_name in ("Q4_0", "Q4_1") and name in ("token_embd.weight", "output.weight"):
        type_name = "Q8_0"
    block = gguf_reader.GGML_TYPES[TYPE_IDS[type_name]][1]
    return type_name if tensor.shape[-1] % block == 0 else "F16"


# ----------------------------------------------------------------------------
# the file: metadata values, tensor infos, aligned data

def _string(text):
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _scalar_type(value):
    """GGUF type of a Python scalar (llama.cpp's: ints u32 unless they need more)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        if value >= 0:
            return U32 if value < 1 << 32 else U64
        return I32 if value >= -(1 << 31) else I64
    if isinstance(value, float):
        return F32
    if isinstance(value, str):
        return STRING
    raise ValueError(f"GGUF metadata value {value!r}: type {type(value).__name__} cannot be "
                     "written; give a bool, int, float, str or a list of them")


def _payload(vtype, value):
    if vtype == STRING:
        return _string(value)
    return struct.pack(gguf_reader._GGUF_SCALARS[vtype], value)


def _value(value):
    """u32 value type + the value's bytes; a list becomes an array of one item type (int
    arrays i32, as token_type is)."""
    if not isinstance(value, (list, tuple)):
        vtype = _scalar_type(value)
        return struct.pack("<I", vtype) + _payload(vtype, value)
    kinds = {_scalar_type(v) for v in value}
    if kinds <= {U32, I32}:
        item = I32
    elif kinds <= {U32, I32, F32}:
        item = F32
    elif len(kinds) == 1:
        item = kinds.pop()
    else:
        raise ValueError(f"GGUF metadata array mixes types {sorted(kinds)}; give one type")
    head = struct.pack("<IIQ", ARRAY, item, len(value))
    if item == STRING:
        return head + b"".join(map(_string, value))
    fmt = gguf_reader._GGUF_SCALARS[item]
    return head + np.asarray(value, dtype=np.dtype(fmt)).tobytes()


def _padding(n):
    return b"\0" * (-n % ALIGNMENT)


def write_gguf(path, metadata, tensors):
    """Write a GGUF v3 file atomically. metadata: key -> value (see _value); tensors: name ->
    (type name, float tensor outermost first); each tensor is encoded while the file is written.
    -> path."""
    infos, offset = [], 0
    for name, (type_name, tensor) in tensors.items():
        block, block_bytes = gguf_reader.GGML_TYPES[TYPE_IDS[type_name]][1:]
        nbytes = tensor.numel() // block * block_bytes
        dims = list(reversed(tensor.shape))
        infos.append(_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims,
                                                 TYPE_IDS[type_name], offset))
        offset += nbytes + (-nbytes % ALIGNMENT)
    header = (gguf_reader.GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors),
                                                   len(metadata))
              + b"".join(_string(key) + _value(value) for key, value in metadata.items())
              + b"".join(infos))

    def write(f):
        f.write(header + _padding(len(header)))
        for type_name, tensor in tensors.values():
            data = encode(tensor, type_name)
            f.write(data.data)
            f.write(_padding(len(data)))
    return atomic.write_atomic(path, write)


# ----------------------------------------------------------------------------
# a Llama and its tokenizer as GGUF

def llama_metadata(config, name="llmlab export"):
    """general.* and llama.* keys of a LlamaConfig (GGUF_CONFIG_KEYS' names, as llama.cpp's
    converter writes them)."""
    if config.norm != "rmsnorm":
        raise ValueError(f"the model uses norm={config.norm!r}; llama.cpp's and transformers' "
                         "Llama have RMSNorm only; keep it as an llmlab folder")
    c = config
    return {"general.architecture": "llama", "general.name": name,
            "llama.vocab_size": c.vocab_size, "llama.context_length": c.max_seq_len,
            "llama.embedding_length": c.dim, "llama.block_count": c.n_layers,
            "llama.feed_forward_length": c.hidden_dim, "llama.rope.dimension_count": c.head_dim,
            "llama.attention.head_count": c.n_heads,
            "llama.attention.head_count_kv": c.n_kv_heads,
            "llama.attention.key_length": c.head_dim, "llama.attention.value_length": c.head_dim,
            "llama.attention.layer_norm_rms_epsilon": float(c.norm_eps),
            "llama.rope.freq_base": float(c.rope_theta)}


def llama_tensors(config, state_dict, type_name):
    """GGUF name -> (type, tensor): canonical names renamed, a tied output left out, Llama 3
    scaling as rope_freqs.weight (D/2,) divisors."""
    tensors = {}
    if config.rope_scaling:
        plain = rope.rope_frequencies(config.head_dim, config.rope_theta)             # (D/2,)
        scaled = rope.rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        tensors["rope_freqs.weight"] = ("F32", plain / scaled)
    for name, tensor in state_dict.items():
        if config.tie_embeddings and name == "output.weight":
            continue                                   # llama.cpp reuses token_embd
        gguf_name = canonical_to_gguf_name(name)
        tensors[gguf_name] = (tensor_type(gguf_name, tensor, type_name), tensor)
    return tensors


def write_llama_gguf(path, config, state_dict, tokenizer_keys, dtype="f32", name="llmlab export"):
    """A Llama (canonical state dict, our Q/K layout) + tokenizer keys -> one GGUF file."""
    type_name = EXPORT_TYPES[dtype]
    metadata = {**llama_metadata(config, name), "general.file_type": FILE_TYPES[type_name]}
    if type_name in QUANTIZERS:
        metadata["general.quantization_version"] = 2                 # ggml's QK format version
    return write_gguf(path, {**metadata, **tokenizer_keys},
                      llama_tensors(config, state_dict, type_name))


def _pad_vocabulary(keys, vocab_size):
    """Tokens (and scores, types) up to the embedding's rows: [PAD{i}], type UNUSED."""
    tokens = list(keys["tokenizer.ggml.tokens"])
    extra = range(len(tokens), vocab_size)
    keys["tokenizer.ggml.tokens"] = tokens + [f"[PAD{i}]" for i in extra]
    if "tokenizer.ggml.token_type" in keys:
        keys["tokenizer.ggml.token_type"] = list(keys["tokenizer.ggml.token_type"]) + [UNUSED] * len(extra)
    if "tokenizer.ggml.scores" in keys:
        keys["tokenizer.ggml.scores"] = list(keys["tokenizer.ggml.scores"]) + [-1000.0] * len(extra)
    return keys


def _sentencepiece_keys(tok):
    """SentencePiece pieces, scores and types (llama.cpp's 'llama' tokenizer)."""
    if gguf_sentencepiece.model_type(tok.model_proto) != gguf_sentencepiece.BPE:
        raise ValueError("--format gguf: the SentencePiece tokenizer is a unigram model; "
                         "llama.cpp's 'llama' tokenizer merges pieces as BPE and would split "
                         "text differently; export with --format hf")
    sp = tok.processor
    kinds = [(sp.is_unknown, UNKNOWN), (sp.is_control, CONTROL), (sp.is_unused, UNUSED),
             (sp.is_byte, BYTE)]
    types = [next((kind for test, kind in kinds if test(i)), NORMAL)
             for i in range(sp.get_piece_size())]
    keys = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
            "tokenizer.ggml.scores": [float(sp.get_score(i)) for i in range(sp.get_piece_size())],
            "tokenizer.ggml.token_type": types}
    if sp.unk_id() >= 0:
        keys["tokenizer.ggml.unknown_token_id"] = sp.unk_id()
    return keys


def _hf_json_keys(tok, path):
    """A byte-level BPE tokenizer.json as llama.cpp's 'gpt2' tokenizer."""
    data = file_checks.read_json(path)
    if tok.pattern not in PRE_NAMES:
        raise ValueError(f"{path}: its pre-tokenizer regex has no llama.cpp name (known: GPT-2, "
                         "SmolLM2, Llama 3); GGUF cannot carry it")
    vocab = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    vocab.update({text: t["id"] for text, t in added.items()})
    by_id = {i: text for text, i in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(max(by_id) + 1)]
    types = [(CONTROL if added[t].get("special") else USER_DEFINED) if t in added
             else NORMAL if i in by_id else UNUSED for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": PRE_NAMES[tok.pattern],
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges}


def own_chat_template(tok):
    """The chat template (Jinja text) a tokenizer came with: GGUF tokenizer.chat_template, or
    tokenizer_config.json's chat_template / chat_template.jinja beside a tokenizer.json; None."""
    spec = getattr(tok, "spec", None) or {}
    if spec.get("kind") == "gguf":
        metadata = spec.get("metadata") or gguf_reader.read_gguf(spec["path"]).metadata
        return metadata.get("tokenizer.chat_template")
    if tok.chat_format == "llama2":             # Llama 2 tokenizer.model: [INST] chat, in code
        return chat_templates.LLAMA2_CHAT_TEMPLATE
    if spec.get("kind") != "hf_json":
        return None
    folder = Path(spec["path"]).parent
    if (folder / "chat_template.jinja").is_file():
        return file_checks.read_text(folder / "chat_template.jinja")
    config = folder / "tokenizer_config.json"
    template = file_checks.read_json(config).get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else None


def tokenizer_keys(tok, vocab_size, chat_template=None):
    """The tokenizer.* GGUF keys of a loaded tokenizer.Tokenizer (GGUF keys carried over; a
    tokenizer.json or SentencePiece model converted), padded to vocab_size tokens, with
    chat_template (None: the tokenizer's own, if any)."""
    spec = getattr(tok, "spec", None) or {}
    if spec.get("kind") == "gguf":
        metadata = spec.get("metadata") or gguf_reader.read_gguf(spec["path"]).metadata
        keys = {k: v for k, v in metadata.items() if k.startswith("tokenizer.")}
    elif isinstance(tok, tokenizer.SentencePieceTokenizer):
        keys = _sentencepiece_keys(tok)
    elif spec.get("kind") == "hf_json":
        keys = _hf_json_keys(tok, spec["path"])
    else:
        raise ValueError(f"--format gguf: a {tok.kind} tokenizer cannot be written as GGUF "
                         "tokenizer keys yet; export with --format hf, or use its tokenizer.json")
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "padding_token_id": tok.pad_id}
    keys.update({f"tokenizer.ggml.{key}": i for key, i in ids.items() if i is not None})
    keys["tokenizer.ggml.add_bos_token"] = bool(tok.add_bos)
    keys.setdefault("tokenizer.ggml.add_eos_token", False)
    template = chat_template or own_chat_template(tok)
    if template:
        keys["tokenizer.chat_template"] = template
    gguf_reader.check_metadata(keys, "the exported tokenizer", need_tokens=True)
    if len(keys["tokenizer.ggml.tokens"]) > vocab_size:
        raise ValueError(f"the tokenizer has {len(keys['tokenizer.ggml.tokens'])} tokens, the "
                         f"model's embedding {vocab_size} rows; use the model's own tokenizer")
    return _pad_vocabulary(keys, vocab_size)
