"""GGUF files (llama.cpp's format) and ggml block dequantization, read by hand into torch tensors.

GGUF (ggml docs/gguf.md, versions 2 and 3, little-endian): b"GGUF", u32 version, u64 n_tensors,
u64 n_kv; n_kv metadata entries (string key, u32 value type, value; strings are u64 length + UTF-8,
arrays are u32 item type + u64 count + items); n_tensors infos (string name, u32 n_dims, u64 dims
innermost first, u32 ggml type, u64 offset). Tensor data starts at the first multiple of
general.alignment (default 32) after the infos; offsets are relative to that start.

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
on the default model's metadata and tensors; bad files raise one-line ValueErrors.
"""
import dataclasses
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch

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
        return dequantize(raw, info.type_id, info.shape, name)


class _Cursor:
    """Reads little-endian GGUF values from a byte buffer; ValueError past its end."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n):
        if self.pos + n > len(self.buf):
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

    def value(self, vtype):
        if vtype == 8:
            return self.string()
        if vtype == 6:                      # f32: its shortest decimal (1e-05, not 9.99999974e-06)
            return float(str(np.float32(self.scalar("<f"))))
        if vtype in _GGUF_SCALARS:
            return self.scalar(_GGUF_SCALARS[vtype])
        if vtype != 9:
            raise ValueError(f"{self.path}: unknown GGUF metadata value type {vtype} at byte "
                             f"{self.pos}; the file is corrupt or from a newer GGUF version")
        item_type, count = self.scalar("<I"), self.scalar("<Q")
        if item_type in _GGUF_SCALARS:                         # numbers: one numpy read
            dtype = np.dtype(_GGUF_SCALARS[item_type])
            start = self.take(count * dtype.itemsize)
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        return [self.value(item_type) for _ in range(count)]


def map_file(path):
    """The whole file as a uint8 array backed by a copy-on-write memory map (nothing is read;
    writing to it never touches the file)."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty; download or save it again")
    return np.memmap(path, dtype=np.uint8, mode="c")


def read_gguf(path):
    """Parse a GGUF file's header, metadata and tensor infos; tensors stay memory-mapped."""
    path = Path(path)
    buffer = map_file(path)
    cur = _Cursor(memoryview(buffer), path)
    magic = cur.take(4)
    if bytes(cur.buf[magic: magic + 4]) != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (no b'GGUF' magic)")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian);"
                         f" convert it again with a current llama.cpp")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = cur.string(), cur.scalar("<I")
        if n_dims > 4:
            raise ValueError(f"{path}: GGUF tensor {name} has {n_dims} dims (at most 4); corrupt")
        dims = [cur.scalar("<Q") for _ in range(n_dims)]
        infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise ValueError(f"{path}: general.alignment = {alignment!r} is not a positive integer")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = {info[0]: _gguf_tensor_info(path, len(buffer), data_start, *info) for info in infos}
    return GGUFFile(path, version, metadata, tensors, buffer)


def _gguf_tensor_info(path, file_size, data_start, name, dims, type_id, offset):
    if type_id not in GGML_TYPES:
        raise ValueError(f"{path}: GGUF tensor {name} has unknown ggml type id {type_id}; this "
                         f"reader knows {sorted(GGML_TYPES)}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    count = math.prod(dims)
    if dims and dims[0] % block:
        raise ValueError(f"{path}: GGUF tensor {name}: row of {dims[0]} is not a multiple of the "
                         f"{type_name} block ({block}); corrupt file")
    start, nbytes = data_start + offset, count // block * block_bytes
    if start + nbytes > file_size:
        raise ValueError(f"{path}: GGUF tensor {name} data [{start}, {start + nbytes}) lies "
                         f"outside the file ({file_size} bytes); the file is truncated or corrupt")
    return GGUFTensor(type_id, tuple(reversed(dims)), start, nbytes)
