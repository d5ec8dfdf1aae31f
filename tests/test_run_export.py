"""Tests for run_export.py and hf_writer.py: `run.py --option export` end to end on tiny Llamas.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_run_export.py -q   (CPU, ~35 s)

Oracles: the source model itself (the export read back by weights.py gives its logits: exactly
for f32; a LoRA / IA3 adapter merged gives the logits of the unmerged adapted model, 1e-5: the
merge changes the summation order); transformers' LlamaForCausalLM and AutoTokenizer on the HF
folder (logits within 1e-4 in fp32, chat ids equal to ours, template included); the files'
JSON as transformers reads it. Bad input: one line on stderr, exit code 2, nothing written.
The real flow: `--option sft` writes OUT_DIR/adapter, its export gives the logits of the base model
with that adapter loaded unmerged. A llama2.c ckpt.pt with Llama 2's tokenizer.model (shared
data): gguf and hf read back with the same logits (exact) and SentencePiece ids (text and
chat), LoRA / IA3 merged (1e-5), and transformers reads the GGUF (logits 1e-4, text ids equal).
"""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import adapters
import gguf_reader
import gguf_writer
import hf_writer
import llama
import lora
import peft_format
import run
import tokenizer as T
import weights
from conftest import need_data

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


def test_sft_adapter_exports_to_gguf_with_the_adapted_logits(source, tmp_path, capsys):
    """The real flow: `--option sft` (LoRA, one short epoch) writes OUT_DIR/adapter; `--option
    export --adapter OUT_DIR/adapter` gives a GGUF whose logits are those of the base model with
    that adapter loaded unmerged (oracle: peft_format.load_adapter on a fresh copy)."""
    folder, model, tok = source
    train = tmp_path / "train.txt"
    train.write_text("".join(f"the colour is {c};{t}\n" for c, t in [
        ("red", "warm"), ("blue", "cold"), ("orange", "warm"), ("green", "cold")] * 4))
    run.main(list(map(str, [
        "--option", "sft", "--train", train, "--val_ratio", "0.25", "--pretrained-model-path",
        folder, "--lora_rank", "4", "--lora_alpha", "8", "--lr", "1e-2", "--epochs", "1",
        "--batch_size", "4", "--no-zero_shot", "--out_dir", tmp_path / "run"])))
    adapter = tmp_path / "run" / "adapter"
    base, _ = weights.load_pretrained(folder)
    tuned, config = peft_format.load_adapter(adapter, base)
    expected = probe_logits(tuned.eval(), tok)
    assert isinstance(config, lora.LoraConfig)
    assert (expected - probe_logits(model, tok)).abs().max() > 1e-2      # training moved B off 0
    capsys.readouterr()
    export("--pretrained-model-path", folder, "--adapter", adapter, "--format", "gguf",
           "--out", tmp_path / "tuned.gguf")
    printed = capsys.readouterr().out
    assert "LoRA r=4 alpha=8.0 merged into" in printed and "greedy tokens all equal" in printed
    merged, tok2 = weights.load_pretrained(tmp_path / "tuned.gguf")
    assert tok2.encode_chat(CHAT) == tok.encode_chat(CHAT)
    torch.testing.assert_close(probe_logits(merged, tok), expected, **TINY_TOL)


# ----------------------------------------------------------------------------
# a llama2.c checkpoint with Llama 2's SentencePiece tokenizer.model beside it

LLAMA2C_ARGS = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000,
                    multiple_of=32, max_seq_len=128, dropout=0.0)     # llama2.c's ModelArgs


@pytest.fixture(scope="module")
def llama2c(tmp_path_factory):
    """A tiny random llama2.c training checkpoint ({"model", "model_args"}: what llama2.c's
    train.py saves as ckpt.pt; tied output) beside Llama 2's tokenizer.model
    -> (ckpt.pt path, model, tokenizer)."""
    folder = tmp_path_factory.mktemp("llama2c")
    tokenizer_model = need_data("tokenizers", "llama2-tokenizer.model")
    shutil.copy(tokenizer_model, folder / "tokenizer.model")
    torch.manual_seed(0)
    config = llama.LlamaConfig.tiny(**{k: LLAMA2C_ARGS[k] for k in ("vocab_size", "n_kv_heads")},
                                    hidden_dim=None, multiple_of=32)
    model = llama.Llama(config).eval()
    torch.save({"model": model.state_dict(), "model_args": LLAMA2C_ARGS, "iter_num": 10},
               folder / "ckpt.pt")
    return folder / "ckpt.pt", model, T.Tokenizer.from_file(tokenizer_model)


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_llama2c_checkpoint_exports_and_reads_back(llama2c, tmp_path, fmt):
    """f32: the same logits exactly, and the SentencePiece tokenizer's ids (text and Llama 2
    chat: the export carries chat_templates.LLAMA2_CHAT_TEMPLATE)."""
    path, model, tok = llama2c
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m")
    export("--pretrained-model-path", path, "--format", fmt, "--out", out)
    again, tok2 = weights.load_pretrained(out)
    # multiple_of only derives hidden_dim, which the formats store: compared through it
    assert dataclasses.replace(again.config, multiple_of=32) == model.config
    assert again.config.hidden_dim == 192 and tok2.chat_format == "llama2"
    assert tok2.encode_chat(CHAT) == tok.encode_chat(CHAT)
    text = "Once upon a time, 12 cafés 日本 🙂\n  end"
    assert tok2.encode(text, bos=True) == tok.encode(text, bos=True)
    torch.testing.assert_close(probe_logits(again, tok), probe_logits(model, tok), rtol=0, atol=0)


@pytest.mark.parametrize("config,fmt", [
    (lora.LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "up_proj"]), "gguf"),
    (adapters.IA3Config(["k_proj", "v_proj", "down_proj"], ["down_proj"]), "hf")],
    ids=["lora-gguf", "ia3-hf"])
def test_llama2c_adapter_merged_equals_unmerged(llama2c, tmp_path, config, fmt):
    path, model, tok = llama2c
    tuned = adapted(model, config)
    peft_format.save_adapter(tmp_path / "adapter", tuned, config)
    expected = probe_logits(tuned, tok)
    assert (expected - probe_logits(model, tok)).abs().max() > 1e-2     # the adapter does something
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m")
    export("--pretrained-model-path", path, "--adapter", tmp_path / "adapter", "--format", fmt,
           "--out", out)
    merged, _ = weights.load_pretrained(out)
    torch.testing.assert_close(probe_logits(merged, tok), expected, **TINY_TOL)


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_llama2c_export_in_transformers(llama2c, tmp_path, fmt):
    """Oracle: transformers reads the export (the GGUF with gguf_file=, the HF folder): logits
    within 1e-4 of ours, and its tokenizer gives our ids for text; from the HF folder's
    tokenizer.json also for the Llama 2 chat, template included (its GGUF tokenizer adds no "▁"
    after "<s>" inside a chat, see tests/test_gguf_writer.py)."""
    transformers = pytest.importorskip("transformers")
    path, model, tok = llama2c
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "hf")
    export("--pretrained-model-path", path, "--format", fmt, "--out", out)
    where = dict(gguf_file="m.gguf") if fmt == "gguf" else {}
    folder = str(tmp_path if fmt == "gguf" else out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **where)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, **where)
    text = "Once upon a time, 12 cafés 日本 🙂 end"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text, bos=True)
    if fmt == "hf":
        chat = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True)
        assert list(chat["input_ids"] if hasattr(chat, "keys") else chat) == tok.encode_chat(CHAT)
    with torch.no_grad():
        tokens = torch.tensor([ids])
        torch.testing.assert_close(hf.eval()(tokens).logits, model(tokens)[0], rtol=0, atol=1e-4)


def test_sentencepiece_tokenizer_json_equals_sentencepiece(llama2c):
    """hf_writer's tokenizer.json of Llama 2's tokenizer.model (BPE with byte fallback, merges
    ranked by score) run by the `tokenizers` library: sentencepiece's ids and text back."""
    tokenizers = pytest.importorskip("tokenizers")
    _, _, tok = llama2c
    keys = gguf_writer.tokenizer_keys(tok, tok.vocab_size)
    theirs = tokenizers.Tokenizer.from_str(json.dumps(hf_writer.sentencepiece_tokenizer_json(keys)))
    for text in ["Hello world", "  two  spaces\n\nnewlines\t tab", "12345 3.14159 1,000,000",
                 "café naïve Ångström", "日本語のテキスト 中文 한국어", "emoji 🤗🚀 👩\u200d👩\u200d👧",
                 "a   \n   b", "trailing  ", "سلام دنیا", "x<s>y</s>"]:
        ids = tok.encode(text, bos=True, allow_special=True)   # tokenizers always parses <s>
        assert theirs.encode(text).ids == ids, text
        assert theirs.decode(ids, skip_special_tokens=True) == tok.decode(ids), text


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


def test_a_transformers_saved_hf_folder_exports_with_its_adapter(source, tmp_path):
    """The source an HF Llama user has: a folder transformers itself saved (save_pretrained:
    its config.json and safetensors) with the tokenizer files beside it, plus a LoRA adapter;
    exported to GGUF, read back: the unmerged adapted model's logits."""
    transformers = pytest.importorskip("transformers")
    folder, model, tok = source
    ours = hf_writer.write_hf_folder(tmp_path / "ours", model.config, model.state_dict(), tok)
    theirs = tmp_path / "theirs"
    transformers.AutoModelForCausalLM.from_pretrained(str(ours)).save_pretrained(str(theirs))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(ours) / name, theirs / name)
    config = lora.LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"])
    tuned = adapted(model, config, seed=3)
    peft_format.save_adapter(tmp_path / "adapter", tuned, config)
    export("--pretrained-model-path", theirs, "--adapter", tmp_path / "adapter", "--format",
           "gguf", "--out", tmp_path / "m.gguf")
    merged, tok2 = weights.load_pretrained(tmp_path / "m.gguf")
    assert tok2.encode_chat(CHAT) == tok.encode_chat(CHAT)
    torch.testing.assert_close(probe_logits(merged, tok), probe_logits(tuned, tok),
                               rtol=0, atol=1e-4)
