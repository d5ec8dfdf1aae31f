"""Tests for run_export.py and hf_writer.py: `run.py --option export` end to end on tiny Llamas.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_run_export.py -q   (CPU, ~20 s)

Oracles: the source model itself (the export read back by weights.py gives its logits: exactly
for f32; a LoRA / IA3 adapter merged gives the logits of the unmerged adapted model, 1e-5: the
merge changes the summation order); transformers' LlamaForCausalLM and AutoTokenizer on the HF
folder (logits within 1e-4 in fp32, chat ids equal to ours, template included); the files'
JSON as transformers reads it. Bad input: one line on stderr, exit code 2, nothing written.
"""
import json

import pytest
import torch

import adapters
import gguf_reader
import hf_writer
import llama
import lora
import peft_format
import run
import tokenizer as T
import weights

CHAT = [{"role": "user", "content": "Hi there! 123 numbers"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What's 2+2?"}]
TINY_TOL = dict(rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def source(tmp_path_factory, default_model_path):
    """A tiny random Llama (SmolLM2's vocabulary, untied) saved as an llmlab folder with
    SmolLM2's GGUF tokenizer keys: -> (folder, model, tokenizer)."""
    folder = tmp_path_factory.mktemp("src") / "model"
    metadata = weights.tokenizer_metadata(gguf_reader.read_gguf(default_model_path).metadata)
    spec = {"kind": "gguf", "metadata": metadata}
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny(vocab_size=49152, tie_embeddings=False)).eval()
    weights.save_model_folder(folder, model.config, model.state_dict(), spec)
    return folder, model, T.load_tokenizer(spec)


def export(*flags):
    run.main(["--option", "export", *map(str, flags)])


def probe_logits(model, tok):
    tokens = torch.tensor([tok.encode_chat(CHAT)])
    with torch.no_grad():
        return model(tokens)[0]


@pytest.mark.parametrize("fmt,dtype", [("gguf", "f32"), ("gguf", "q8_0"), ("hf", "bf16")])
def test_export_reads_back(source, tmp_path, capsys, fmt, dtype):
    folder, model, tok = source
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m")
    export("--pretrained-model-path", folder, "--format", fmt, "--dtype", dtype, "--out", out)
    printed = capsys.readouterr().out
    assert f"wrote {out} ({fmt}, {dtype}," in printed and "greedy tokens all equal" in printed
    again, tok2 = weights.load_pretrained(out)
    assert again.config == model.config and tok2.encode_chat(CHAT) == tok.encode_chat(CHAT)
    tol = TINY_TOL if dtype == "f32" else dict(rtol=0, atol=5e-2)
    torch.testing.assert_close(probe_logits(again, tok), probe_logits(model, tok), **tol)
    if dtype == "f32":
        assert "max |logit diff| 0.00e+00" in printed


def adapted(model, config, seed=1):
    """A copy of model with the adapter of config, its tensors random (not the identity)."""
    copy = llama.Llama(model.config).eval()
    copy.load_state_dict(model.state_dict())
    copy = adapters.adapt(copy, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in copy.named_parameters():
            if "lora_" in name or "ia3_l" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
    return copy.eval()


@pytest.mark.parametrize("config", [
    lora.LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]),
    adapters.IA3Config(["k_proj", "v_proj", "down_proj"], ["down_proj"])], ids=["lora", "ia3"])
def test_adapter_merged_equals_unmerged(source, tmp_path, config):
    """Oracle: the unmerged adapted model (LoRA / IA3 layers in the forward)."""
    folder, model, tok = source
    tuned = adapted(model, config)
    peft_format.save_adapter(tmp_path / "adapter", tuned, config)
    expected = probe_logits(tuned, tok)
    assert (expected - probe_logits(model, tok)).abs().max() > 1e-2     # the adapter does something
    export("--pretrained-model-path", folder, "--adapter", tmp_path / "adapter", "--format",
           "gguf", "--out", tmp_path / "m.gguf")
    merged, _ = weights.load_pretrained(tmp_path / "m.gguf")
    torch.testing.assert_close(probe_logits(merged, tok), expected, **TINY_TOL)


def test_hf_folder_loads_in_transformers(source, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder, model, tok = source
    out = hf_writer.write_hf_folder(tmp_path / "hf", model.config, model.state_dict(), tok,
                                    max_shard_bytes=4 << 20)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1                    # sharded, with its index
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.eos_id, 0]                 # <|im_end|>, <|endoftext|>
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == tok.encode_chat(CHAT)
    with torch.no_grad():
        tokens = torch.tensor([ids])
        torch.testing.assert_close(hf(tokens).logits, model(tokens)[0], rtol=0, atol=1e-4)
    again, tok2 = weights.load_pretrained(out)                          # and ours reads it back
    torch.testing.assert_close(probe_logits(again, tok2), probe_logits(model, tok), rtol=0, atol=0)


def test_hf_config_rope_scaling_round_trips(tmp_path):
    scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32)
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny(rope_scaling=scaling)).eval()
    out = hf_writer.write_hf_folder(tmp_path / "hf", model.config, model.state_dict())
    config, state_dict, spec = weights.read_model_file(out)
    assert config == model.config and spec is None
    assert "output.weight" not in state_dict                            # tied: stored once
    for name, tensor in model.state_dict().items():
        if name != "output.weight":
            torch.testing.assert_close(state_dict[name], tensor, rtol=0, atol=0)


# ----------------------------------------------------------------------------
# bad input: one line, nothing written


def fails(capsys, *flags):
    with pytest.raises(SystemExit) as exit_info:
        export(*flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(source, tmp_path, capsys):
    folder, model, tok = source
    out = tmp_path / "m.gguf"
    base = ["--pretrained-model-path", folder]
    assert "invalid choice: 'q5_k'" in fails(capsys, *base, "--format", "gguf", "--dtype",
                                              "q5_k", "--out", out)
    assert "--format hf stores f32, f16, bf16" in fails(capsys, *base, "--format", "hf",
                                                         "--dtype", "q4_1", "--out", out)
    (tmp_path / "folder").mkdir()
    assert "is a folder; give a file path" in fails(capsys, *base, "--format", "gguf", "--out",
                                                     tmp_path / "folder")
    (tmp_path / "file").write_text("x")
    assert "is a file; give a folder path" in fails(capsys, *base, "--format", "hf", "--out",
                                                     tmp_path / "file")
    assert "is the --pretrained-model-path folder" in fails(capsys, *base, "--format", "hf",
                                                           "--out", folder)
    assert "inside the --pretrained-model-path folder" in fails(
        capsys, *base, "--format", "gguf", "--out", folder / "model.safetensors")
    # a prompt-tuning adapter: virtual tokens, not weights
    prompt = adapters.adapt(llama.Llama(model.config), adapters.PromptTuningConfig(4))
    peft_format.save_adapter(tmp_path / "prompt", prompt, adapters.PromptTuningConfig(4))
    assert "PROMPT_TUNING: its virtual tokens are not weights" in fails(
        capsys, *base, "--adapter", tmp_path / "prompt", "--format", "gguf", "--out", out)
    # a LoRA adapter saved for another model (dim 32, not 64)
    other = llama.Llama(llama.LlamaConfig.tiny(dim=32, n_heads=2, vocab_size=49152))
    config = lora.LoraConfig(r=2, alpha=2.0, target_modules=["q_proj"])
    peft_format.save_adapter(tmp_path / "other", adapters.adapt(other, config), config)
    err = fails(capsys, *base, "--adapter", tmp_path / "other", "--format", "gguf", "--out", out)
    assert err.startswith(f"error: --adapter {tmp_path / 'other'}:") and "another" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "file", "folder", "other", "prompt"]
