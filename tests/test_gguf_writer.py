"""Tests for gguf_writer.py: block encoders, GGUF files, a Llama and its tokenizer as GGUF.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_gguf_writer.py -q   (CPU, ~20 s)

Oracles: the `gguf` package (llama.cpp's Python library): gguf.quants.quantize for every encoder
(bit for bit) and gguf.GGUFReader for what we write (metadata types and values, tensor names,
shapes and data); our own dequantizers (gguf_reader.py) for the round trip encode(decode(b)) == b;
the default model's own Q4_1 file (made by llama.cpp): exported again as q4_1 every tensor has
the same bytes; transformers (gguf_file=) for the model (logits) and the tokenizer (chat ids,
byte-level BPE from SmolLM2's keys; SentencePiece from Llama 2's tokenizer.model).
Tolerances: f32 exact (the same fp32 numbers); a read-back tensor equals the rounding of the
source exactly (f16 / bf16 casts, gguf.quants.dequantize(quantize(w))). Logits of the tiny model
after rounding: within 1e-2 (f16), 5e-2 (bf16, 8 mantissa bits), 5e-2 (q8_0), 0.5 (q4_x: 4-bit
codes, |logit| ~ 1; measured 0.08); transformers vs ours in fp32: 1e-4 (summation order).
"""
import numpy as np
import pytest
import torch

import gguf_reader
import gguf_writer
import llama
import tokenizer as T
import weights
from conftest import need_data

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
EXACT = dict(rtol=0, atol=0)
LOGIT_TOL = {"f32": 0.0, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2, "q4_0": 0.5, "q4_1": 0.5}
CHAT = [{"role": "user", "content": "Hi there! 123 numbers"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What's 2+2?"}]


def weights_for_blocks(n_blocks=2000, seed=0):
    """Gaussian blocks at scales 1e-3 .. 3, plus a constant, a zero and a one-sign block."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_blocks, 32)) * rng.uniform(1e-3, 3, (n_blocks, 1))
    x[0], x[1], x[2, :16] = 1.5, 0.0, -2.0
    return x.astype(np.float32)


def tiny(**overrides):
    torch.manual_seed(0)
    return llama.Llama(llama.LlamaConfig.tiny(**overrides)).eval()


def logits(model, vocab):
    tokens = torch.arange(48).reshape(2, 24) * 7 % vocab
    with torch.no_grad():
        return model(tokens)[0]


# ----------------------------------------------------------------------------
# encoders


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1"])
def test_encoders_equal_gguf_quants_bit_for_bit(name):
    x = weights_for_blocks()
    ours = gguf_writer.QUANTIZERS[name](x)
    np.testing.assert_array_equal(ours, gguf.quants.quantize(x, getattr(Q, name)))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1"])
def test_encode_of_decode_is_the_same_blocks(name):
    """encode(decode(blocks)) == blocks for blocks an encoder made. The one exception: an
    all-zero Q4_0 block stores d = 0 / -8 = -0.0, and re-encoding its zeros gives +0.0 (both
    decode to zeros), so the zero block is checked by its values."""
    blocks = gguf_writer.QUANTIZERS[name](weights_for_blocks(seed=1))
    decoded = gguf_reader.DEQUANTIZERS[name](blocks)
    again = gguf_writer.QUANTIZERS[name](decoded)
    keep = np.ones(len(blocks), bool)
    keep[1] = name != "Q4_0"
    np.testing.assert_array_equal(again[keep], blocks[keep])
    assert not gguf_reader.DEQUANTIZERS[name](again[1:2]).any()


@pytest.mark.parametrize("name,qtype", [("F16", Q.F16), ("BF16", Q.BF16)])
def test_half_types_equal_gguf(name, qtype):
    x = weights_for_blocks(50).reshape(10, 160)
    x[0, :3] = [1 + 2 ** -9, 65504.0, -1e-8]                   # ties and subnormals round the same
    ours = gguf_writer.encode(torch.from_numpy(x), name)
    expected = gguf.quants.quantize(x, qtype) if name == "BF16" else x.astype(np.float16)
    np.testing.assert_array_equal(ours, np.ascontiguousarray(expected).view(np.uint8).reshape(-1))


# ----------------------------------------------------------------------------
# files


def test_metadata_of_every_type_reads_back_in_both_readers(tmp_path):
    metadata = {"a.u32": 7, "a.u64": 1 << 40, "a.i32": -3, "a.f32": 0.25, "a.bool": True,
                "a.str": "héllo", "a.strs": ["x", "y z"], "a.ints": [1, -2, 3],
                "a.floats": [0.5, -1.0], "a.empty": []}
    tensors = {"v": ("F32", torch.arange(4.0)), "m": ("Q8_0", torch.full((3, 64), 127.0))}
    path = gguf_writer.write_gguf(tmp_path / "t.gguf", metadata, tensors)
    ours = gguf_reader.read_gguf(path)
    assert ours.version == 3 and ours.metadata == metadata
    theirs = gguf.GGUFReader(str(path))
    T_ = gguf.GGUFValueType
    types = {k: theirs.fields[k].types for k in metadata}
    assert types["a.u32"] == [T_.UINT32] and types["a.u64"] == [T_.UINT64]
    assert types["a.i32"] == [T_.INT32] and types["a.f32"] == [T_.FLOAT32]
    assert types["a.ints"] == [T_.ARRAY, T_.INT32] and types["a.floats"] == [T_.ARRAY, T_.FLOAT32]
    assert {k: theirs.fields[k].contents() for k in metadata} == metadata
    assert all(t.data_offset % gguf_writer.ALIGNMENT == 0 for t in theirs.tensors)
    torch.testing.assert_close(ours.tensor("m"), torch.full((3, 64), 127.0), **EXACT)  # d = 1


# ----------------------------------------------------------------------------
# a Llama as GGUF


def expected_tensor(tensor, type_name):
    """What a reader must return for `tensor` stored as type_name (gguf's own rounding)."""
    array = tensor.numpy()
    if type_name == "F32":
        return tensor
    if type_name in ("F16", "BF16"):
        return tensor.to(getattr(torch, "float16" if type_name == "F16" else "bfloat16")).float()
    qtype = getattr(Q, type_name)
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype))


@pytest.mark.parametrize("dtype", list(gguf_writer.EXPORT_TYPES))
def test_tiny_llama_read_back_by_ours_and_by_gguf(tmp_path, dtype):
    scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
    model = tiny(tie_embeddings=dtype in ("f32", "q4_1"), n_kv_heads=2,
                 rope_scaling=scaling if dtype == "f16" else None)
    c, state_dict = model.config, model.state_dict()
    path = gguf_writer.write_llama_gguf(tmp_path / "m.gguf", c, state_dict, {}, dtype)
    config, read, _ = weights.read_model_file(path)
    assert config == c
    theirs = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert ("output.weight" in theirs) == (not c.tie_embeddings)
    assert ("rope_freqs.weight" in theirs) == (c.rope_scaling is not None)
    for name, tensor in state_dict.items():
        if c.tie_embeddings and name == "output.weight":
            continue
        gguf_name = gguf_writer.canonical_to_gguf_name(name)
        type_name = gguf_writer.tensor_type(gguf_name, tensor, gguf_writer.EXPORT_TYPES[dtype])
        expected = expected_tensor(tensor, type_name)
        torch.testing.assert_close(read[name], expected, **EXACT)
        info = theirs[gguf_name]
        assert info.tensor_type.name == type_name
        assert tuple(reversed(info.shape.tolist())) == tuple(tensor.shape)
        values = gguf.quants.dequantize(info.data, info.tensor_type).reshape(tensor.shape)
        torch.testing.assert_close(torch.from_numpy(np.array(values, np.float32)), expected,
                                   **EXACT)
    again = weights.build_model(config, read)
    torch.testing.assert_close(logits(again, c.vocab_size), logits(model, c.vocab_size),
                               rtol=0, atol=LOGIT_TOL[dtype])


def test_default_model_as_q4_1_has_the_source_files_bytes(default_model_path, tmp_path):
    """Oracle: llama.cpp made the default Q4_1 file; our q4_1 export of its (dequantized) weights
    gives the same bytes: token_embd Q8_0, one block's Q4_1 matrices, the norms (a subset of the
    30 blocks, to stay fast), and the tokenizer keys."""
    source = gguf_reader.read_gguf(default_model_path)
    names = [n for n in source.tensors if not n.startswith("blk.") or n.startswith("blk.7.")]
    state_dict = {weights.gguf_to_canonical_name(n): source.tensor(n) for n in names}
    spec = {"kind": "gguf", "metadata": weights.tokenizer_metadata(source.metadata)}
    config = weights.read_config(default_model_path)
    keys = gguf_writer.tokenizer_keys(T.load_tokenizer(spec), config.vocab_size)
    path = gguf_writer.write_llama_gguf(tmp_path / "smol.gguf", config, state_dict, keys, "q4_1")
    ours = gguf_reader.read_gguf(path)
    assert sorted(ours.tensors) == sorted(names)
    for name in names:
        info, mine = source.tensors[name], ours.tensors[name]
        assert (mine.type_id, mine.shape) == (info.type_id, info.shape), name
        assert np.array_equal(ours.buffer[mine.start: mine.start + mine.nbytes],
                              source.buffer[info.start: info.start + info.nbytes]), name
    tokenizer_keys = weights.tokenizer_metadata(source.metadata)
    assert {k: ours.metadata[k] for k in tokenizer_keys} == tokenizer_keys


# ----------------------------------------------------------------------------
# transformers reads the file: model and tokenizer


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_loads_tiny_gguf(tmp_path, tie):
    """Oracle: transformers' GGUF loader (it un-permutes Q/K rows to HF's layout itself; a
    missing output.weight means tied)."""
    transformers = pytest.importorskip("transformers")
    model = tiny(tie_embeddings=tie)
    gguf_writer.write_llama_gguf(tmp_path / "m.gguf", model.config, model.state_dict(), {})
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings == tie
    with torch.no_grad():
        tokens = torch.arange(48).reshape(2, 24) * 7 % model.config.vocab_size
        torch.testing.assert_close(hf(tokens).logits, model(tokens)[0], rtol=0, atol=1e-4)


def test_transformers_tokenizer_from_gguf_encodes_our_chat_ids(tmp_path, default_model_path):
    """SmolLM2's byte-level BPE keys carried into an export: transformers' tokenizer built from
    the file renders the carried ChatML template and encodes it to our ids."""
    transformers = pytest.importorskip("transformers")
    tok = T.Tokenizer.from_file(default_model_path)
    model = tiny(vocab_size=tok.vocab_size, dim=32, n_heads=2, n_layers=1)
    keys = gguf_writer.tokenizer_keys(tok, tok.vocab_size)
    gguf_writer.write_llama_gguf(tmp_path / "m.gguf", model.config, model.state_dict(), keys)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    ids = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == tok.encode_chat(CHAT)


LLAMA2_TEMPLATE = (   # Llama 2 chat as chat_templates.render_llama2 renders it
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}{% set content = m['content'] %}"
    "{% if loop.first and system is defined %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}{% endif %}"
    "{% if m['role'] == 'user' %}{{ '<s>[INST] ' + content.strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + content.strip() + ' </s>' }}{% endif %}{% endfor %}")


def test_transformers_reads_sentencepiece_keys(tmp_path):
    """Llama 2's tokenizer.model as GGUF keys: transformers' tokenizer from the file encodes
    text (bos, digits, Persian, emoji by byte fallback) to our ids, and the chat template
    travels. Chat ids differ by design: after "<s>" inside a chat string transformers' SP
    tokenizer (legacy=False) adds no dummy-prefix "▁", where Meta's chat_completion (and ours)
    encode each "[INST] ..." with it (29961 "[" vs 518 "▁["); so the rendered string is compared."""
    transformers = pytest.importorskip("transformers")
    tok = T.Tokenizer.from_file(need_data("tokenizers", "llama2-tokenizer.model"))
    model = tiny(vocab_size=tok.vocab_size)
    keys = gguf_writer.tokenizer_keys(tok, tok.vocab_size, chat_template=LLAMA2_TEMPLATE)
    assert keys["tokenizer.ggml.model"] == "llama" and keys["tokenizer.ggml.token_type"][3] == 6
    gguf_writer.write_llama_gguf(tmp_path / "sp.gguf", model.config, model.state_dict(), keys)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    for text in ["Hello world! 1234  spaces\nnew line", "سلام دنیا 🙂"]:
        assert hf_tok(text)["input_ids"] == tok.encode(text, bos=True)
    rendered = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert rendered == tok.apply_chat_template(CHAT)


def test_tokenizer_errors_are_one_line():
    tok = T.ByteTokenizer()
    with pytest.raises(ValueError, match="byte tokenizer cannot be written as GGUF"):
        gguf_writer.tokenizer_keys(tok, 256)
    smol_like = T.train_sentencepiece(["a b c d e f g"] * 20, 300)
    with pytest.raises(ValueError, match="the model's embedding 100 rows"):
        gguf_writer.tokenizer_keys(smol_like, 100)
    with pytest.raises(ValueError, match="RMSNorm only"):
        gguf_writer.llama_metadata(llama.LlamaConfig.tiny(norm="layernorm"))
