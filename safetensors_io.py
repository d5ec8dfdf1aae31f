"""safetensors files, read and written by hand (huggingface/safetensors README, "Format"):

    u64 N (little-endian), N bytes of JSON header, then the data buffer
    header = {name: {"dtype": "F32" | ..., "shape": [...], "data_offsets": [begin, end)},
              "__metadata__": {str: str}}
    offsets are relative to the data buffer at byte 8 + N; tensors lie back to back.

The reader memory-maps the file (copy-on-write, so writing a tensor never touches the file) and
returns views; every entry is checked to lie inside the file before it is viewed. The writer pads
the header with spaces to a multiple of 8 bytes so every tensor starts 8-byte aligned, and writes
through atomic.py.

Shapes: whatever the tensors have; no model knowledge here (weights.py maps names).
Tested in tests/test_weights.py against the safetensors library (both directions) and on
truncated / corrupt files (one-line errors).
"""
import json
import math
import struct

import torch

import atomic
import gguf_reader

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(path, buffer):
    """-> (tensor entries, __metadata__ dict, byte where the data buffer starts)."""
    size = len(buffer)
    if size < 8:
        raise ValueError(f"{path}: truncated safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", bytes(buffer[:8].numpy()))
    if 8 + n > size:
        raise ValueError(f"{path}: safetensors header length {n} runs past the end of the file "
                         f"({size} bytes); the file is truncated or not safetensors")
    try:
        header = json.loads(bytes(buffer[8: 8 + n].numpy()))
    except ValueError as err:                      # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object; corrupt file")
    return header, header.pop("__metadata__", None) or {}, 8 + n


def _safetensors_tensor(path, buffer, data_start, name, entry):
    """One tensor as a view of the memory-mapped buffer, after checking it lies inside it."""
    try:
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        shape, (begin, end) = [int(s) for s in entry["shape"]], map(int, entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: tensor {name}: bad header entry {entry} (dtype must be one of "
                         f"{list(SAFETENSORS_DTYPES)}, shape a list, data_offsets [begin, end])"
                         ) from None
    nbytes = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end or end - begin != nbytes or data_start + end > len(buffer):
        raise ValueError(f"{path}: tensor {name} data_offsets [{begin}, {end}) do not hold "
                         f"{shape} {entry['dtype']} inside the file ({len(buffer)} bytes); the "
                         f"file is truncated or corrupt")
    raw = buffer[data_start + begin: data_start + end]
    if raw.storage_offset() % dtype.itemsize:
        raw = raw.clone()                          # a view needs the element size's alignment
    return raw.view(dtype).reshape(shape)


def read_safetensors(path):
    """name -> Tensor, memory-mapped (copy-on-write: writing a tensor never touches the file)."""
    buffer = torch.from_numpy(gguf_reader.map_file(path))
    header, _, data_start = _safetensors_header(path, buffer)
    return {name: _safetensors_tensor(path, buffer, data_start, name, entry)
            for name, entry in header.items()}


def read_safetensors_metadata(path):
    """The header's __metadata__ dict (str -> str)."""
    return _safetensors_header(path, torch.from_numpy(gguf_reader.map_file(path)))[1]


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
