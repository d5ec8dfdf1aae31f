"""Tests for memory.py: the training-memory estimate against measured runs, and --option memory.

Run: .venv/bin/python -m pytest tests/test_memory.py -q          (CPU, a few seconds)

Oracles: a real training run of a tiny GQA Llama on the CPU (memory.measure: train.fit steps of
sft.answer_loss), whose parameters, gradients and AdamW states are summed tensor by tensor, and
whose activations are the storages autograd actually saved (saved_tensors_hooks); the parameter
counts of real llama.Llama / lora.inject_lora modules (lora.count_parameters, on the meta device
for the 1B model); autograd's own rule for exp (it saves its result) for the meter.
Tolerances: weights, gradients and optimizer states must match to the byte (they are sizes, not
approximations). Activations: the estimate names every tensor our forward saves, and on torch
2.13's CPU kernels it agrees to the byte (this test prints the difference); the 1 % allowed covers
only kernel bookkeeping that may change between torch versions (SDPA's logsumexp layout is 0.4 %
of a block here); a larger gap means the estimate no longer describes llama.py's forward.
"""
import dataclasses
import json

import pytest
import torch

import llama
import lora
import memory
import run_memory
import run
import weights

CPU = torch.device("cpu")


def tiny_config(**overrides):
    """dim 64, 2 layers, 4 query heads over 2 kv heads (GQA), vocab 256, tied."""
    return llama.LlamaConfig.tiny(**overrides)


@pytest.mark.parametrize("method, dtype, dropout, targets, B, T, answer", [
    ("full", "float32", 0.0, "heavy", 2, 16, 3),
    ("full", "bfloat16", 0.0, "heavy", 4, 32, None),         # LM loss: every position labelled
    ("lora", "float32", 0.0, "heavy", 2, 16, 3),             # shared fp32 inputs, no masks
    ("lora", "float32", 0.05, "light", 3, 32, 4),
    ("lora", "bfloat16", 0.0, "medium", 2, 24, 2),           # an fp32 copy per adapter
    ("lora", "bfloat16", 0.1, "heavy", 4, 16, None),
    ("lora", "float32", 0.0, "w2", 2, 16, 3),                 # nothing trains before layer 0's w2
])
def test_estimate_equals_a_measured_cpu_run(method, dtype, dropout, targets, B, T, answer):
    config = tiny_config()
    setup = memory.TrainingSetup(batch_size=B, max_len=T, dtype=dtype, lora_targets=targets,
                                 lora_rank=4, lora_dropout=dropout, answer_tokens=answer)
    estimate = memory.estimate(config, setup, method)
    measured = memory.measure(config, None, setup, method, 2, CPU)
    for row in ("weights", "gradients", "optimizer"):
        assert measured["bytes"][row] == estimate["bytes"][row], row
    gap = measured["bytes"]["activations"] - estimate["bytes"]["activations"]
    print(f"{method} {dtype} dropout {dropout} {targets}: activations differ by {gap} bytes")
    assert abs(gap) <= 0.01 * estimate["bytes"]["activations"]
    assert (measured["trainable"], measured["parameters"]) == (estimate["trainable"],
                                                               estimate["parameters"])


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False}, {"norm": "layernorm"},
                                       {"n_kv_heads": 4, "n_layers": 1}])
def test_estimate_holds_for_untied_layernorm_and_multi_head(overrides):
    config = tiny_config(**overrides)
    for method in memory.METHODS:
        setup = memory.TrainingSetup(batch_size=2, max_len=16, lora_rank=4)
        estimate = memory.estimate(config, setup, method)["bytes"]
        measured = memory.measure(config, None, setup, method, 1, CPU)["bytes"]
        assert measured["weights"] == estimate["weights"]
        assert abs(measured["activations"] - estimate["activations"]) <= 0.01 * estimate[
            "activations"]


@pytest.mark.parametrize("method, dtype, dropout", [("full", "float32", 0.0),
                                                    ("full", "bfloat16", 0.0),
                                                    ("lora", "float32", 0.05),
                                                    ("lora", "bfloat16", 0.0)])
def test_gradient_checkpointing_against_a_measured_run(method, dtype, dropout):
    """llama.Llama.gradient_checkpointing: block inputs kept, one block rerun in backward."""
    config = tiny_config(n_layers=3)
    setup = memory.TrainingSetup(batch_size=2, max_len=16, dtype=dtype, lora_rank=4,
                                 lora_dropout=dropout, gradient_checkpointing=True)
    estimate = memory.estimate(config, setup, method)["bytes"]
    measured = memory.measure(config, None, setup, method, 2, CPU)["bytes"]
    assert measured["optimizer"] == estimate["optimizer"]
    gap = measured["activations"] - estimate["activations"]
    print(f"checkpointed {method} {dtype}: activations differ by {gap} bytes")
    assert abs(gap) <= 0.01 * estimate["activations"]
    plain = dataclasses.replace(setup, gradient_checkpointing=False)
    assert estimate["activations"] < memory.estimate(config, plain, method)["bytes"]["activations"]


def test_checkpointing_estimate_keeps_block_inputs_and_one_block():
    config = tiny_config(n_layers=4)
    plain = memory.TrainingSetup(batch_size=2, max_len=16)
    checkpointed = memory.TrainingSetup(batch_size=2, max_len=16, gradient_checkpointing=True)
    a = memory.activation_bytes(config, plain, "full")
    b = memory.activation_bytes(config, checkpointed, "full")
    tokens, one_block = 2 * 16, a["blocks"] // 4          # full: every block saves the same
    rerun = one_block - 4 * config.dim * tokens           # fp32: x.float() is the kept input
    assert b["blocks"] == 4 * 4 * config.dim * tokens + rerun
    assert {k: v for k, v in a.items() if k != "blocks"} == {k: v for k, v in b.items()
                                                            if k != "blocks"}


def test_parameter_counts_equal_real_modules():
    """Presets built on the meta device (no memory): our formulas vs lora.count_parameters."""
    for name in run_memory.PRESETS:
        config = getattr(llama.LlamaConfig, name)()
        with torch.device("meta"):
            model = llama.Llama(config)
        assert memory.parameter_count(config) == lora.count_parameters(model)[1], name
        setup = memory.TrainingSetup(lora_targets="medium", lora_rank=8)
        lora.inject_lora(model, lora.LoraConfig(r=8, target_modules="medium"))
        assert memory.state_bytes(config, setup, "lora")[1:] == lora.count_parameters(model)


def test_llama32_1b_bf16_numbers():
    """The docstring's worked example: B=8, T=512, bf16, LoRA heavy r=16, CUDA masks."""
    config = llama.LlamaConfig.llama32_1b()
    setup = memory.TrainingSetup(batch_size=8, max_len=512, dtype="bfloat16", device_type="cuda")
    P = 1_235_814_400
    assert memory.parameter_count(config) == P
    full, lora_ = (memory.estimate(config, setup, m) for m in memory.METHODS)
    assert full["bytes"]["weights"] == full["bytes"]["gradients"] == 2 * P
    assert full["bytes"]["optimizer"] == 4 * P                 # m and v in the parameter's bf16
    assert lora_["trainable"] == 11_272_192 and lora_["bytes"]["gradients"] == 4 * 11_272_192
    blocks = {m: sum(memory.block_saved(config, setup, m == "full", True)[0].values())
              for m in memory.METHODS}
    assert blocks == {"full": 108_680, "lora": 178_760}       # bytes per token per layer
    gib = {m: {k: round(v / memory.GIB, 3) for k, v in e["bytes"].items()}
           for m, e in (("full", full), ("lora", lora_))}
    assert gib["full"] == dict(weights=2.302, gradients=2.302, optimizer=4.604,
                               activations=6.696, total=15.903)
    assert gib["lora"] == dict(weights=2.344, gradients=0.042, optimizer=0.084,
                               activations=10.903, total=13.372)
    lm = memory.TrainingSetup(batch_size=8, max_len=512, dtype="bfloat16", answer_tokens=None)
    extra = memory.loss_saved(config, lm, True) - memory.loss_saved(config, setup, True)
    assert abs(extra - 4 * 8 * (511 - 4) * config.vocab_size) < 0.01 * extra   # B(T-1)V fp32


def test_meter_counts_what_autograd_keeps():
    """exp saves its result; a graph dropped before backward holds nothing; parameters are
    left out."""
    weight = torch.nn.Parameter(torch.randn(8, 8))
    meter = memory.SavedTensorMeter(torch.nn.Linear(8, 8).requires_grad_(False))
    meter.parameters.add(weight.untyped_storage().data_ptr())
    x = torch.randn(16, 8, requires_grad=True)
    with meter:
        y = torch.exp(x)                                # saves y: 16 * 8 * 4 bytes
        torch.exp(x * 2.0)                              # graph freed at once
        z = (y @ weight).sum()                          # mm saves y (again) and weight
    assert meter.held_bytes() == 16 * 8 * 4
    z.backward()


def test_bad_targets_and_values_are_one_line_errors():
    with pytest.raises(ValueError, match="--lora_targets output: .*block projections"):
        memory.TrainingSetup(lora_targets="output")
    with pytest.raises(ValueError, match="--answer_tokens 16: must be in 1 .. max_len-1 = 15"):
        memory.TrainingSetup(max_len=16, answer_tokens=16)


# ----------------------------------------------------------------------------
# the command line

def refuse_weights(monkeypatch):
    """No weights read, no model built (a 1B preset would be built with random weights)."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")
    monkeypatch.setattr(weights, "load_pretrained", refuse)
    monkeypatch.setattr(weights, "read_model_file", refuse)
    monkeypatch.setattr(memory, "build_model", refuse)


def test_cli_estimate_of_the_1b_preset_reads_no_weights(tmp_path, monkeypatch, capsys):
    refuse_weights(monkeypatch)
    out = tmp_path / "memory.json"
    run.main(["--option", "memory", "--preset", "llama32_1b", "--batch_size", "8", "--max_len",
              "512", "--dtype", "bfloat16", "--json", str(out)])
    printed = capsys.readouterr().out
    for words in ("1,235,814,400 parameters", "full fine-tuning", "LoRA heavy r=16",
                  "optimizer states (AdamW m, v)", "(0.904%)", "plain LM loss"):
        assert words in printed
    report = json.loads(out.read_text())
    setup = memory.TrainingSetup(batch_size=8, max_len=512, dtype="bfloat16")
    config = llama.LlamaConfig.llama32_1b()
    assert report["estimate"]["lora"]["bytes"] == memory.estimate(config, setup, "lora")["bytes"]
    assert report["measured"] is None


def test_cli_measures_a_checkpoint_folder(tmp_path, monkeypatch, capsys):
    """The brief's command on a tiny llmlab folder: config read alone, then real steps."""
    config = tiny_config()
    torch.manual_seed(0)
    model = llama.Llama(config)
    weights.save_model_folder(tmp_path / "tiny", config, model.state_dict())
    out = tmp_path / "memory.json"
    run.main(["--option", "memory", "--pretrained-model-path", str(tmp_path / "tiny"),
              "--batch_size", "2", "--max_len", "16", "--measure_steps", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "estimate" in printed and "measured" in printed
    assert "peak, process max RSS so far" in printed
    report = json.loads(out.read_text())
    for method in memory.METHODS:
        estimate, measured = report["estimate"][method], report["measured"][method]
        assert measured["bytes"]["optimizer"] == estimate["bytes"]["optimizer"]
        assert measured["bytes"]["activations"] == pytest.approx(
            estimate["bytes"]["activations"], rel=0.01)
    refuse_weights(monkeypatch)                          # estimate only: the config alone
    run.main(["--option", "memory", "--pretrained-model-path", str(tmp_path / "tiny"),
              "--max_len", "64", "--method", "lora"])
    assert "full fine-tuning" not in capsys.readouterr().out.split("\n", 2)[2]


@pytest.mark.parametrize("flags, words", [
    (["--batch_size", "0"], "--batch_size 0: must be >= 1"),
    (["--max_len", "16", "--answer_tokens", "16"], "--answer_tokens 16"),
    (["--lora_targets", "output"], "--lora_targets output"),
    (["--lora_dropout", "1.5"], "--lora_dropout 1.5"),
    (["--measure_steps", "-1"], "--measure_steps -1"),
    (["--pretrained-model-path", "x.gguf"], "--preset and --pretrained-model-path"),
    (["--max_len", "200000"], "--max_len 200000 > the model's max_seq_len 131072"),
    (["--json", "FOLDER"], "is a folder"),
])
def test_bad_flags_fail_in_one_line_before_loading(tmp_path, monkeypatch, capsys, flags, words):
    refuse_weights(monkeypatch)
    flags = [str(tmp_path) if f == "FOLDER" else f for f in flags]
    measure = [] if "--measure_steps" in flags else ["--measure_steps", "1"]
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "memory", "--preset", "llama32_1b"] + measure + flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--option", "memory", "--pretrained-model-path", str(tmp_path / "none.gguf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.gguf: no such file or folder" in err[0]

