"""Tests for gguf_reader.py: ggml dequantization and the GGUF file reader.

Run: .venv/bin/pytest tests/test_gguf_reader.py -q   (CPU, ~10 s; the default-model tests skip
when setup.sh has not installed it)

Oracles: the `gguf` package (llama.cpp's own Python library): gguf.quants.dequantize for every
block type, on blocks made by gguf.quants.quantize where it can quantize, else on random bytes with
finite f16 scales; gguf.GGUFReader for metadata, tensor infos and data of the default model;
gguf.GGUFWriter to make small files, then truncated / patched copies for the error paths
(hostile headers: tests/test_fuzz_readers.py).
Tolerance: none. We take the same fp32 products in the same order as ggml, so results are equal
bit for bit (rtol = atol = 0); one wrong nibble or bit order gives O(scale) differences.
"""
import struct

import numpy as np
import pytest
import torch

import gguf_reader

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
EXACT = dict(rtol=0, atol=0)


def random_blocks(qtype, n_blocks, seed=0):
    """Random bytes for n_blocks of qtype, with every f16 scale replaced by a finite value."""
    rng = np.random.default_rng(seed)
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    scale_columns = {Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for col in scale_columns:
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        blocks[:, col: col + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def ours(raw_rows, qtype, shape):
    return gguf_reader.dequantize(np.ascontiguousarray(raw_rows).reshape(-1), int(qtype), shape)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.F16, Q.F32])
def test_dequantize_equals_gguf_on_quantized_weights(qtype):
    rows, cols = 6, 256
    weights = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    raw = gguf.quants.quantize(weights, qtype)               # (rows, bytes per row)
    expected = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    raw_bytes = raw.view(np.uint8)
    got = ours(raw_bytes, qtype, (rows, cols))
    torch.testing.assert_close(got, torch.from_numpy(expected.reshape(rows, cols)), **EXACT)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_dequantize_equals_gguf_on_random_k_blocks(qtype):
    rows, per_row = 3, 4                                      # 4 super-blocks = 1024 weights a row
    blocks = random_blocks(qtype, rows * per_row)
    raw = blocks.reshape(rows, -1)
    expected = gguf.quants.dequantize(raw, qtype)
    torch.testing.assert_close(ours(raw, qtype, (rows, per_row * 256)),
                               torch.from_numpy(expected), **EXACT)


def test_unsupported_type_names_tensor_and_type():
    raw = np.zeros(84, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"tensor blk\.0\.x: type Q2_K \(10\) is not supported"):
        gguf_reader.dequantize(raw, 10, (256,), name="blk.0.x")


# ----------------------------------------------------------------------------
# the reader on the default model

@pytest.fixture(scope="module")
def both_readers(default_model_path):
    return gguf_reader.read_gguf(default_model_path), gguf.GGUFReader(default_model_path)


def test_metadata_equals_gguf_reader(both_readers):
    mine, reference = both_readers
    expected = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.")}
    assert list(mine.metadata) == list(expected)
    for key, value in expected.items():
        if isinstance(value, float):                          # ours: f32 shortest decimal
            assert np.float32(mine.metadata[key]) == np.float32(value), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            np.testing.assert_array_equal(np.float32(mine.metadata[key]), np.float32(value))
        else:
            assert mine.metadata[key] == value, key
    assert mine.version == 3 and len(mine.tensors) == 272


def test_tensor_infos_and_data_equal_gguf_reader(both_readers):
    mine, reference = both_readers
    by_name = {t.name: t for t in reference.tensors}
    assert list(mine.tensors) == list(by_name)
    for name, info in mine.tensors.items():
        ref = by_name[name]
        assert info.type_id == int(ref.tensor_type) and info.shape == tuple(reversed(ref.shape))
        assert info.start == ref.data_offset and info.nbytes == ref.n_bytes
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight",
                 "blk.0.attn_norm.weight", "output_norm.weight"]:
        ref = by_name[name]
        expected = gguf.quants.dequantize(ref.data, ref.tensor_type)
        expected = expected.reshape(mine.tensors[name].shape)
        torch.testing.assert_close(mine.tensor(name), torch.tensor(expected), **EXACT)


# ----------------------------------------------------------------------------
# small files written by gguf.GGUFWriter, and broken copies of them

def write_small_gguf(path, raw_dtype=None, alignment=None):
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_uint32("test.count", 7)
    writer.add_float32("test.eps", 1e-5)
    writer.add_array("test.names", ["a", "bc", "ü"])
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_bool("test.flag", True)
    weights = np.arange(64 * 3, dtype=np.float32).reshape(3, 64) / 100
    writer.add_tensor("norm.weight", np.ones(64, dtype=np.float32))
    if raw_dtype is None:
        writer.add_tensor("blk.0.q8", gguf.quants.quantize(weights, Q.Q8_0), raw_dtype=Q.Q8_0)
    else:
        writer.add_tensor("blk.0.odd", np.zeros((3, 66), np.uint8), raw_shape=(3, 66),
                          raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def test_small_file_roundtrip(tmp_path):
    path = tmp_path / "small.gguf"
    weights = write_small_gguf(path)
    mine = gguf_reader.read_gguf(path)
    assert mine.metadata["test.count"] == 7 and mine.metadata["test.eps"] == 1e-5
    assert mine.metadata["test.names"] == ["a", "bc", "ü"]
    assert mine.metadata["test.ints"] == [1, -2, 3]
    assert mine.metadata["test.flag"] is True
    assert mine.tensors["blk.0.q8"].shape == (3, 64)
    expected = gguf.quants.dequantize(gguf.quants.quantize(weights, Q.Q8_0), Q.Q8_0)
    torch.testing.assert_close(mine.tensor("blk.0.q8"), torch.from_numpy(expected), **EXACT)
    torch.testing.assert_close(mine.tensor("norm.weight"), torch.ones(64), **EXACT)


def test_custom_alignment_equals_gguf_reader(tmp_path):
    """general.alignment 64 (a power of two, as llama.cpp requires): offsets and data as gguf's."""
    path = tmp_path / "aligned.gguf"
    write_small_gguf(path, alignment=64)
    mine, reference = gguf_reader.read_gguf(path), gguf.GGUFReader(path)
    assert mine.metadata["general.alignment"] == 64
    for tensor in reference.tensors:
        assert mine.tensors[tensor.name].start == tensor.data_offset
        assert mine.tensors[tensor.name].start % 64 == 0


def test_bad_files_raise_one_line_value_errors(tmp_path):
    path = tmp_path / "small.gguf"
    write_small_gguf(path)
    data = path.read_bytes()
    cases = {
        "header.gguf": (data[:40], r"truncated GGUF file"),
        "data.gguf": (data[:-40], r"tensor blk\.0\.q8 data .* lies outside the file"),
        "v1.gguf": (data[:4] + struct.pack("<I", 1) + data[8:], r"GGUF version 1 is not supported"),
        "magic.gguf": (b"GGUX" + data[4:], r"not a GGUF file"),
        "empty.gguf": (b"", r"the file is empty"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as err:
            gguf_reader.read_gguf(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)


def test_unknown_type_id_names_tensor(tmp_path):
    path = tmp_path / "iq.gguf"
    write_small_gguf(path, raw_dtype=Q.IQ2_XXS)               # type id 16: not in our table
    with pytest.raises(ValueError, match=r"tensor blk\.0\.odd has unknown ggml type id 16"):
        gguf_reader.read_gguf(path)
