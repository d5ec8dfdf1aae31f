"""safetensors files, read and written by hand (huggingface/safetensors README, "Format"):

    u64 N (little-endian), N bytes of JSON header, then the data buffer
    header = {name: {"dtype": "F32" | ..., "shape": [...], "data_offsets": [begin, end)},
              "__metadata__": {str: str}}
    offsets are relative to the data buffer at byte 8 + N; tensors lie back to back.

The reader memory-maps the file (copy-on-write, so writing a tensor never touches the file) and
returns views. One pass checks the whole header before any tensor is viewed: JSON with no key
twice (object_pairs_hook); __metadata__ str -> str; every entry has a known dtype string, a shape
of at most MAX_NDIM ints in [0, gguf_reader.MAX_DIM] (ints, not bools, strings or floats) and
data_offsets [begin, end] with end - begin = prod(shape) * element size, inside the file; no two
tensors share bytes. Other failures are "corrupt or unsupported" one-line ValueErrors
(file_checks.format_errors). The writer pads the header with spaces to a multiple of 8 bytes so
every tensor starts 8-byte aligned, and writes through atomic.py.

Shapes: whatever the tensors have; no model knowledge here (weights.py maps names).
Tested in tests/test_weights.py against the safetensors library (both directions) and on
truncated / corrupt files (one-line errors); tests/test_fuzz_readers.py mutates and truncates
files (hypothesis): each loads or fails with a one-line ValueError.
"""
import json
import math
import struct

import torch

import atomic
import file_checks
import gguf_reader

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


MAX_NDIM = 8      # torch kernels take at most 25 dims; model tensors have at most 4 (GGUF's limit)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    """json object_pairs_hook: a dict, or _DuplicateKey (json.loads would keep the last value)."""
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _DuplicateKey(next(n for n in names if names.count(n) > 1))
    return dict(pairs)


def _safetensors_header(path, buffer):
    """-> ({name: (dtype name, shape, begin, end)} checked, __metadata__ dict, byte where the
    data buffer starts). One pass over the whole header before any tensor is viewed."""
    size = len(buffer)
    if size < 8:
        raise ValueError(f"{path}: truncated safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", bytes(buffer[:8].numpy()))
    if 8 + n > size:
        raise ValueError(f"{path}: safetensors header length {n} runs past the end of the file "
                         f"({size} bytes); the file is truncated or not safetensors")
    try:
        header = json.loads(bytes(buffer[8: 8 + n].numpy()), object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise ValueError(f"{path}: safetensors header has the key {err} twice; the file is "
                         f"corrupt") from None
    except (ValueError, RecursionError) as err:    # JSONDecodeError, UnicodeDecodeError, nesting
        raise ValueError(f"{path}: safetensors header is not valid JSON "
                         f"({file_checks.first_line(err)})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object; corrupt file")
    if file_checks.json_depth(header) > file_checks.MAX_JSON_DEPTH:
        raise ValueError(f"{path}: safetensors header nested deeper than "
                         f"{file_checks.MAX_JSON_DEPTH} levels (file_checks.MAX_JSON_DEPTH); "
                         "corrupt file")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: safetensors __metadata__ must map strings to strings, got "
                         f"{repr(metadata)[:60]}; corrupt file")
    entries = {name: _entry(path, name, entry, 8 + n, size) for name, entry in header.items()}
    file_checks.check_byte_ranges(path, [(name, e[2], e[3]) for name, e in entries.items()])
    return entries, metadata, 8 + n


def _entry(path, name, entry, data_start, size):
    """(dtype name, shape, begin, end) of one header entry: every field of its JSON type (ints
    are ints, not bools, strings or floats), and the shape's bytes exactly data_offsets' range,
    inside the data buffer."""
    entry = entry if isinstance(entry, dict) else {}
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"{path}: tensor {name}: dtype {repr(dtype)[:40]} is not one of "
                         f"{list(SAFETENSORS_DTYPES)}; convert the tensor or the file")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM
            and all(type(d) is int and 0 <= d <= gguf_reader.MAX_DIM for d in shape)):
        raise ValueError(f"{path}: tensor {name}: shape {repr(shape)[:60]} is not a list of at "
                         f"most {MAX_NDIM} integers in [0, {gguf_reader.MAX_DIM}]; corrupt file")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets)):
        raise ValueError(f"{path}: tensor {name}: data_offsets {repr(offsets)[:60]} is not "
                         f"[begin, end] (two integers); corrupt file")
    begin, end = offsets
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
    if not 0 <= begin <= end or end - begin != nbytes or data_start + end > size:
        raise ValueError(f"{path}: tensor {name} data_offsets [{begin}, {end}) do not hold "
                         f"{shape} {dtype} inside the file ({size} bytes); the file is truncated "
                         f"or corrupt")
    return dtype, shape, begin, end


def _view(buffer, data_start, dtype, shape, begin, end):
    """One checked tensor as a view of the memory-mapped buffer."""
    raw = buffer[data_start + begin: data_start + end]
    if raw.storage_offset() % SAFETENSORS_DTYPES[dtype].itemsize:
        raw = raw.clone()                          # a view needs the element size's alignment
    return raw.view(SAFETENSORS_DTYPES[dtype]).reshape(shape)


def read_safetensors(path):
    """name -> Tensor, memory-mapped (copy-on-write: writing a tensor never touches the file)."""
    buffer = torch.from_numpy(file_checks.map_file(path))
    with file_checks.format_errors(path, "safetensors"):
        entries, _, data_start = _safetensors_header(path, buffer)
        return {name: _view(buffer, data_start, *entry) for name, entry in entries.items()}


def read_safetensors_metadata(path):
    """The header's __metadata__ dict (str -> str); the whole header is checked."""
    with file_checks.format_errors(path, "safetensors"):
        return _safetensors_header(path, torch.from_numpy(file_checks.map_file(path)))[1]


def write_safetensors(path, tensors, metadata=None):
    """Write name -> Tensor as safetensors: u64 header length, JSON header padded with spaces to
    a multiple of 8 bytes (so the data is 8-byte aligned), then the tensors back to back."""
    dtype_names = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
    header, parts, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError(f"{path}: safetensors metadata must map str to str, got {metadata}")
        header["__metadata__"] = dict(metadata)
    for name, tensor in tensors.items():
        if tensor.dtype not in dtype_names:
            raise ValueError(f"{path}: tensor {name} has dtype {tensor.dtype}, which safetensors "
                             f"cannot store here; convert it to one of {list(dtype_names)}")
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": dtype_names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        parts.append(tensor)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(blob)) + blob)
        for tensor in parts:
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
    atomic.write_atomic(path, write)
