"""GGUF files (llama.cpp's format) and ggml block dequantization, read by hand into torch tensors.

GGUF (ggml docs/gguf.md, versions 2 and 3, little-endian): b"GGUF", u32 version, u64 n_tensors,
u64 n_kv; n_kv metadata entries (string key, u32 value type, value; strings are u64 length + UTF-8,
arrays are u32 item type + u64 count + items); n_tensors infos (string name, u32 n_dims, u64 dims
innermost first, u32 ggml type, u64 offset). Tensor data starts at the first multiple of
general.alignment (default 32) after the infos; offsets are relative to that start.

Nothing in a header is believed before it is checked against the file (read_gguf, one pass):
counts (n_kv, n_tensors, string lengths, array counts) must fit in the bytes left, so 2^60 fails
at once instead of looping; arrays nest at most MAX_ARRAY_DEPTH deep; no key or tensor name twice;
the standard keys have their types (GGUF_KEY_TYPES: an int is not a bool) and the special token
ids index the vocabulary; general.alignment is a power of two and every offset a multiple of it;
dims are at most MAX_DIM and whole blocks; every tensor's bytes lie inside the file and no two
overlap. What else fails (struct.error, UnicodeDecodeError, ...) is one "corrupt or unsupported"
line (file_checks.format_errors, shared with every reader).

Block quantization (llama.cpp ggml-quants.c dequantize_row_*; block_q4_1 etc. in ggml-common.h).
Blocks of 32 weights, or 256 in a "K" super-block; d, m, dmin are f16 scales stored in the block,
q the integer codes:
    Q8_0: w = d * q               (q int8)
    Q4_0: w = d * (q - 8)         Q4_1: w = d * q + m          (q 4-bit)
    Q5_0: w = d * (q - 16)        Q5_1: w = d * q + m          (q 5-bit: nibble + 1 bit of a u32)
    Q4_K: w = (d * sc_s) * q - dmin * m_s, 8 sub-blocks s of 32 with 6-bit sc_s, m_s packed in 12
          bytes; Q5_K: the same with 5-bit q
    Q6_K: w = (d * sc_s) * (q - 32), 16 sub-blocks of 16, int8 sc_s, 6-bit q = nibble + 2 bits
4-bit codes: element j of a 32-weight group is the low nibble of byte j, element j + 16 the high
nibble (K-quants: per 64-weight chunk, 32 low nibbles then 32 high nibbles). Products are taken in
the order ggml uses ((d * sc) * q), so results match gguf.quants bit for bit.

Shapes: a tensor's dims are reversed from GGUF's innermost-first order, which gives nn.Linear's
(out, in) directly; blocks are (n_blocks, bytes per block) uint8 -> (n_blocks, weights per block).
Tested in tests/test_gguf_reader.py: every dequantizer equals gguf.quants.dequantize (blocks made by
gguf.quants.quantize, or random bytes with finite f16 scales); the reader equals gguf.GGUFReader
on the default model's metadata and tensors; bad files raise one-line ValueErrors; hostile
headers in tests/test_fuzz_readers.py.
"""
import dataclasses
import math
import struct
from pathlib import Path

import numpy as np
import torch

import file_checks

# ----------------------------------------------------------------------------
# tables
GGUF_MAGIC = b"GGUF"    # a GGUF file's first four bytes

# ggml type id -> (name, weights per block, bytes per block)   (ggml.h enum ggml_type)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
              6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
              10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
              13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
              24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
              28: ("F64", 1, 8), 30: ("BF16", 1, 2)}
_GGML_PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}

# GGUF metadata value type -> struct format (8 string and 9 array are handled apart)
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}

# Bounds that make a corrupt header fail before it is believed. Counts: the fewest bytes one
# metadata entry (u64 key length, u32 type, a 1-byte value), one tensor info (u64 name length,
# u32 n_dims, u32 type, u64 offset) and one string or array item (its u64 length; u32 type + u64
# count) can take. Arrays may hold arrays, MAX_ARRAY_DEPTH levels in all. No real tensor has a
# dimension over MAX_DIM (safetensors_io.py uses it too).
_MIN_KV_BYTES, _MIN_INFO_BYTES, _MIN_ITEM_BYTES = 13, 24, {8: 8, 9: 12}
MAX_ARRAY_DEPTH = 2
MAX_DIM = 1 << 40

# Types of the standard keys read here and by tokenizer.py (ggml docs/gguf.md, "Standard key-value
# pairs"): int is an int that is not a bool, [str] an array of strings, [merge] of "left right"
# strings. The llama.* keys are checked by weights_config.py against LlamaConfig's ranges.
_TOKEN_ID_KEYS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.padding_token_id")
GGUF_KEY_TYPES = {"general.architecture": "str", "general.alignment": "int",
                  "tokenizer.ggml.model": "str", "tokenizer.ggml.pre": "str",
                  "tokenizer.ggml.tokens": "[str]", "tokenizer.ggml.token_type": "[int]",
                  "tokenizer.ggml.merges": "[merge]", "tokenizer.ggml.add_bos_token": "bool",
                  "tokenizer.chat_template": "str", **{key: "int" for key in _TOKEN_ID_KEYS}}
_HAS_TYPE = {"str": lambda v: type(v) is str, "int": lambda v: type(v) is int,
             "bool": lambda v: type(v) is bool,
             "[str]": lambda v: type(v) is list and set(map(type, v)) <= {str},
             "[int]": lambda v: type(v) is list and set(map(type, v)) <= {int},
             "[merge]": lambda v: type(v) is list and all(type(m) is str and " " in m for m in v)}

# ----------------------------------------------------------------------------
# dequantization: blocks (n_blocks, bytes per block) uint8 -> weights (n_blocks, block) fp32.
# numpy, single-threaded: on a shared 2-core machine torch's intra-op threads spin and made these
# byte shuffles 8x slower; one numpy thread is as fast as gguf.quants.

def _f16(columns):
    """Two byte columns (n, 2) -> their little-endian f16 as fp32 (n, 1)."""
    return np.ascontiguousarray(columns).view(np.float16).astype(np.float32)


def _nibbles(qs):
    """(..., 16 or 32) bytes -> (..., 2, 16 or 32) codes: low nibbles first, then high nibbles."""
    return np.stack([qs & 0x0F, qs >> 4], axis=-2)


def _bits(qh):
    """(n, 4) bytes of a little-endian u32 -> (n, 32) bits, bit j for weight j."""
    return ((qh[..., None] >> np.arange(8, dtype=np.uint8)) & 1).reshape(qh.shape[0], 32)


def dequantize_q8_0(blocks):
    """34 bytes: f16 d, int8 q[32]; w = d * q."""
    return blocks[:, 2:].view(np.int8).astype(np.float32) * _f16(blocks[:, :2])


def dequantize_q4_0(blocks):
    """18 bytes: f16 d, 16 bytes of nibbles; w = d * (q - 8)."""
    q = _nibbles(blocks[:, 2:]).reshape(-1, 32).astype(np.float32) - 8             # (n, 32)
    return _f16(blocks[:, :2]) * q


def dequantize_q4_1(blocks):
    """20 bytes: f16 d, f16 m, 16 bytes of nibbles; w = d * q + m."""
    q = _nibbles(blocks[:, 4:]).reshape(-1, 32).astype(np.float32)                 # (n, 32)
    return _f16(blocks[:, :2]) * q + _f16(blocks[:, 2:4])


def dequantize_q5_0(blocks):
    """22 bytes: f16 d, u32 of fifth bits, 16 bytes of nibbles; w = d * (q - 16)."""
    low = _nibbles(blocks[:, 6:]).reshape(-1, 32)                                   # (n, 32)
    q = (low | (_bits(blocks[:, 2:6]) << 4)).astype(np.float32) - 16
    return _f16(blocks[:, :2]) * q


def dequantize_q5_1(blocks):
    """24 bytes: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; w = d * q + m."""
    low = _nibbles(blocks[:, 8:]).reshape(-1, 32)                                   # (n, 32)
    q = (low | (_bits(blocks[:, 4:8]) << 4)).astype(np.float32)
    return _f16(blocks[:, :2]) * q + _f16(blocks[:, 2:4])


def _k_scales_mins(scales):
    """12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml get_scale_min_k4), each (n, 8)."""
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]                     # (n, 4) each
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mins.astype(np.float32)


def dequantize_q4_k(blocks):
    """144 bytes: f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles (256 weights)."""
    sc, mins = _k_scales_mins(blocks[:, 4:16])                                      # (n, 8)
    q = _nibbles(blocks[:, 16:].reshape(-1, 4, 32)).reshape(-1, 8, 32)              # (n, 8, 32)
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])                             # (n, 1)
    return ((d * sc)[..., None] * q.astype(np.float32) - (dmin * mins)[..., None]).reshape(-1, 256)


def dequantize_q5_k(blocks):
    """176 bytes: f16 d, f16 dmin, 12 bytes scales/mins, 32 bytes of fifth bits (bit s of byte l
    for weight l of sub-block s), 128 bytes of nibbles."""
    sc, mins = _k_scales_mins(blocks[:, 4:16])                                      # (n, 8)
    low = _nibbles(blocks[:, 48:].reshape(-1, 4, 32)).reshape(-1, 8, 32)            # (n, 8, 32)
    high = (blocks[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[:, None]) & 1   # (n, 8, 32)
    q = (low | (high << 4)).astype(np.float32)
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    return ((d * sc)[..., None] * q - (dmin * mins)[..., None]).reshape(-1, 256)


def dequantize_q6_k(blocks):
    """210 bytes: ql[128] low nibbles, qh[64] 2-bit pairs, int8 scales[16], f16 d (256 weights).
    Per 128-weight half h and l < 32: y[32k + l] uses nibble k // 2 of ql[64h + 32(k % 2) + l]
    and bits 2k..2k+1 of qh[32h + l]; scale 16-weight group (8h + 2k + l // 16)."""
    low = _nibbles(blocks[:, :128].reshape(-1, 2, 64)).reshape(-1, 2, 4, 32)        # (n, h, k, l)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = (blocks[:, 128:192].reshape(-1, 2, 1, 32) >> shifts) & 3                 # (n, h, k, l)
    q = (low | (high << 4)).astype(np.float32) - 32
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)                        # (n, 16)
    scale = (_f16(blocks[:, 208:210]) * sc).reshape(-1, 2, 4, 2, 1)                # (n, h, k, 2, 1)
    return (scale * q.reshape(-1, 2, 4, 2, 16)).reshape(-1, 256)


DEQUANTIZERS = {"Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1,
                "Q5_0": dequantize_q5_0, "Q5_1": dequantize_q5_1, "Q4_K": dequantize_q4_k,
                "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k}


def dequantize(raw, type_id, shape, name="tensor"):
    """raw bytes (nbytes,) uint8 numpy of one ggml tensor -> fp32 torch tensor of `shape`
    (outermost first). F32 comes back as a view of `raw`, everything else as a new array."""
    type_name, _, block_bytes = GGML_TYPES[type_id]
    if type_name in _GGML_PLAIN:
        values = np.ascontiguousarray(raw).view(_GGML_PLAIN[type_name])
        if type_name == "BF16":                    # bf16 = the top 16 bits of an f32
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return torch.from_numpy(values.astype(np.float32, copy=False).reshape(shape))
    if type_name not in DEQUANTIZERS:
        raise ValueError(f"GGUF tensor {name}: type {type_name} ({type_id}) is not supported; use "
                         f"a file with {', '.join(list(_GGML_PLAIN) + list(DEQUANTIZERS))}")
    return torch.from_numpy(DEQUANTIZERS[type_name](raw.reshape(-1, block_bytes)).reshape(shape))


# ----------------------------------------------------------------------------
# GGUF reader

@dataclasses.dataclass
class GGUFTensor:
    type_id: int        # ggml type (GGML_TYPES)
    shape: tuple        # outermost first: nn.Linear (out, in)
    start: int          # absolute byte offset of the data in the file
    nbytes: int         # bytes of data


@dataclasses.dataclass
class GGUFFile:
    path: Path          # the file
    version: int        # GGUF version (2 or 3)
    metadata: dict      # key -> int | float | bool | str | list
    tensors: dict       # name -> GGUFTensor, in file order
    buffer: np.ndarray  # the whole file, memory-mapped, uint8 (n_bytes,)

    def tensor(self, name):
        """Dequantized fp32 tensor `name` (shape outermost first)."""
        info = self.tensors[name]
        raw = self.buffer[info.start: info.start + info.nbytes]
        try:
            return dequantize(raw, info.type_id, info.shape, name)
        except ValueError as err:                     # an unsupported type: name the file too
            raise ValueError(f"{self.path}: {err}") from None


class _Cursor:
    """Reads little-endian GGUF values from a byte buffer; ValueError past its end."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def left(self):
        return len(self.buf) - self.pos

    def take(self, n):
        if self.pos + n > len(self.buf):                   # inline: ~200k calls per model
            raise ValueError(f"{self.path}: truncated GGUF file (needs byte {self.pos + n}, has "
                             f"{len(self.buf)}); download or convert it again")
        self.pos += n
        return self.pos - n

    def scalar(self, fmt):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        n = self.scalar("<Q")
        start = self.take(n)
        try:
            return bytes(self.buf[start: start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: GGUF string at byte {start} is not UTF-8; the file is "
                             f"corrupt") from None

    def value(self, vtype, depth=0):
        """One metadata value; arrays nest at most MAX_ARRAY_DEPTH deep (a loop, not unbounded
        recursion), and an array's count must fit in the bytes left before anything is read."""
        if vtype == 8:
            return self.string()
        if vtype == 6:                      # f32: its shortest decimal (1e-05, not 9.99999974e-06)
            return float(str(np.float32(self.scalar("<f"))))
        if vtype in _GGUF_SCALARS:
            return self.scalar(_GGUF_SCALARS[vtype])
        if vtype != 9 or depth == MAX_ARRAY_DEPTH:
            what = "arrays nested too deep" if vtype == 9 else f"unknown value type {vtype}"
            raise ValueError(f"{self.path}: GGUF metadata has {what} at byte {self.pos}; the file "
                             f"is corrupt or from a newer GGUF version")
        item_type, count = self.scalar("<I"), self.scalar("<Q")
        if item_type in _GGUF_SCALARS:                         # numbers: one numpy read
            dtype = np.dtype(_GGUF_SCALARS[item_type])
            start = self.take(count * dtype.itemsize)
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        if count * _MIN_ITEM_BYTES.get(item_type, 1) > self.left():
            raise ValueError(f"{self.path}: truncated GGUF file: an array of {count} items at byte "
                             f"{self.pos} cannot fit in the {self.left()} bytes left")
        return [self.value(item_type, depth + 1) for _ in range(count)]


def check_metadata(metadata, source, need_tokens=False):
    """ValueError unless every key of GGUF_KEY_TYPES present has its type, the special token ids
    index tokenizer.ggml.tokens and token_type has one entry per token (need_tokens: the tokens
    must be there, for a tokenizer). weights.py runs it on the GGUF vocabulary a saved
    checkpoint keeps as JSON too."""
    for key, kind in GGUF_KEY_TYPES.items():
        if key in metadata and not _HAS_TYPE[kind](metadata[key]):
            raise ValueError(f"{source}: GGUF metadata {key} = {repr(metadata[key])[:40]} is not "
                             f"of type {kind}; the file is corrupt")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None and need_tokens:
        raise ValueError(f"{source}: GGUF metadata has no tokenizer.ggml.tokens (the vocabulary); "
                         f"convert the model again with its tokenizer")
    if tokens is None:
        return
    if len(metadata.get("tokenizer.ggml.token_type", tokens)) != len(tokens):
        raise ValueError(f"{source}: GGUF tokenizer.ggml.token_type does not have one entry per "
                         f"token ({len(tokens)}); the file is corrupt")
    for key in _TOKEN_ID_KEYS:
        if key in metadata and not 0 <= metadata[key] < len(tokens):
            raise ValueError(f"{source}: GGUF {key} = {metadata[key]} is outside the vocabulary "
                             f"[0, {len(tokens)}); fix the id or convert the model again")


def read_gguf(path):
    """Parse a GGUF file's header, metadata and tensor infos, checking each against the file
    (counts, lengths, types, alignment, overlaps); tensors stay memory-mapped."""
    path = Path(path)
    buffer = file_checks.map_file(path)
    with file_checks.format_errors(path, "GGUF"):
        cur = _Cursor(memoryview(buffer), path)
        magic = cur.take(4)
        if bytes(cur.buf[magic: magic + 4]) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (no b'GGUF' magic)")
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3, "
                             f"little-endian); convert it again with a current llama.cpp")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_INFO_BYTES > cur.left():
            raise ValueError(f"{path}: truncated GGUF file: its header counts {n_tensors} tensors "
                             f"and {n_kv} metadata entries, more than the {cur.left()} bytes left "
                             f"can hold; the file is truncated or corrupt")
        metadata = _read_metadata(cur, n_kv)
        check_metadata(metadata, path)
        infos = [_read_tensor_info(cur) for _ in range(n_tensors)]
        tensors = _gguf_tensors(path, len(buffer), cur.pos, metadata, infos)
        return GGUFFile(path, version, metadata, tensors, buffer)


def _read_metadata(cur, n_kv):
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:
            raise ValueError(f"{cur.path}: GGUF metadata key {key!r} appears twice; corrupt file")
        metadata[key] = cur.value(cur.scalar("<I"))
    return metadata


def _read_tensor_info(cur):
    """-> (name, dims innermost first, ggml type id, offset in the data section)."""
    name, n_dims = cur.string(), cur.scalar("<I")
    if n_dims > 4:
        raise ValueError(f"{cur.path}: GGUF tensor {name} has {n_dims} dims (at most 4); corrupt")
    dims = [cur.scalar("<Q") for _ in range(n_dims)]
    return name, dims, cur.scalar("<I"), cur.scalar("<Q")


def _gguf_tensors(path, file_size, header_end, metadata, infos):
    """name -> GGUFTensor, after checking names are unique, offsets aligned, data inside the file
    and not overlapping. Data starts at the first multiple of general.alignment after the infos."""
    alignment = metadata.get("general.alignment", 32)
    if alignment <= 0 or alignment & (alignment - 1):            # llama.cpp: a power of two
        raise ValueError(f"{path}: general.alignment = {alignment} is not a power of two; "
                         f"corrupt file")
    data_start = -(-header_end // alignment) * alignment
    tensors = {}
    for name, dims, type_id, offset in infos:
        if name in tensors:
            raise ValueError(f"{path}: GGUF tensor name {name!r} appears twice; corrupt file")
        if offset % alignment:
            raise ValueError(f"{path}: GGUF tensor {name} offset {offset} is not a multiple of "
                             f"general.alignment {alignment}; corrupt file")
        tensors[name] = _gguf_tensor_info(path, file_size, data_start, name, dims, type_id, offset)
    file_checks.check_byte_ranges(path, [(name, t.start, t.start + t.nbytes) for name, t in tensors.items()],
                      "GGUF tensor")
    return tensors


def _gguf_tensor_info(path, file_size, data_start, name, dims, type_id, offset):
    if type_id not in GGML_TYPES:
        raise ValueError(f"{path}: GGUF tensor {name} has unknown ggml type id {type_id}; this "
                         f"reader knows {sorted(GGML_TYPES)}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    if any(d > MAX_DIM for d in dims):
        raise ValueError(f"{path}: GGUF tensor {name} has dims {dims} (each at most {MAX_DIM}); "
                         f"corrupt file")
    count = math.prod(dims)
    if count % block or (dims and dims[0] % block):
        raise ValueError(f"{path}: GGUF tensor {name}: row of {dims[0] if dims else 1} is not a "
                         f"multiple of the {type_name} block ({block}); corrupt file")
    start, nbytes = data_start + offset, count // block * block_bytes
    if start + nbytes > file_size:
        raise ValueError(f"{path}: GGUF tensor {name} data [{start}, {start + nbytes}) lies "
                         f"outside the file ({file_size} bytes); the file is truncated or corrupt")
    return GGUFTensor(type_id, tuple(reversed(dims)), start, nbytes)
