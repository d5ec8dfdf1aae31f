"""Tests for peft_format.py beyond the peft round trips of every method (those are in
tests/test_lora.py and tests/test_adapters.py): adapter_config.json dicts both ways, the
classifier's saved config, one-line errors for config files we cannot load.

Run: .venv/bin/python -m pytest tests/test_peft_format.py -q   (CPU, tiny models, seconds)

Oracles: the configs themselves (a config written and read back is the same config, up to the
fields peft fills in); the LoraConfig classifier.add_lora trained with; file_checks' messages.
"""
import argparse
import dataclasses

import pytest

import adapters
import classifier
import llama
import lora
import peft_format
import run_classifier


def test_config_dicts_round_trip():
    """peft_config_dict then config_from_peft_dict gives the config back; P-tuning's and the
    prefix's hidden size are filled in (peft's defaults), a prefix is saved as plain P, PiSSA as
    its rank-2r LoRA delta (alpha doubled, or times sqrt(2) under rsLoRA: the same scale)."""
    c = llama.LlamaConfig.tiny()
    kv = c.n_kv_heads * c.head_dim
    cases = [
        (lora.LoraConfig(r=4, alpha=8.0, dropout=0.1, target_modules=["wq", "v_proj"]),
         lora.LoraConfig(r=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "v_proj"])),
        (lora.LoraConfig(r=4, alpha=8.0, use_dora=True, use_rslora=True),) * 2,
        (lora.LoraConfig(r=4, alpha=8.0, init="pissa"),                # saved as its LoRA delta
         lora.LoraConfig(r=8, alpha=16.0)),
        (lora.LoraConfig(r=4, alpha=8.0, init="pissa", use_rslora=True),
         lora.LoraConfig(r=8, alpha=8.0 * 2 ** 0.5, use_rslora=True)),
        (adapters.IA3Config(["wk", "wv", "w2"], ["w2"]), adapters.IA3Config(
            ["down_proj", "k_proj", "v_proj"], ["down_proj"])),
        (adapters.PromptTuningConfig(3),) * 2,
        (adapters.PTuningConfig(3, "LSTM"), adapters.PTuningConfig(3, "LSTM", c.dim)),
        (adapters.PrefixTuningConfig(3, True, 16), adapters.PrefixTuningConfig(3, False, 16)),
        (adapters.PrefixTuningConfig(3), adapters.PrefixTuningConfig(3, False, kv)),
    ]
    for config, expected in cases:
        data = peft_format.peft_config_dict(config, c)
        assert data["peft_type"] == peft_format.PEFT_TYPES[type(config)]
        assert peft_format.config_from_peft_dict(data, "adapter_config.json") == expected


def test_lora_config_errors():
    data = peft_format.peft_config_dict(lora.LoraConfig())
    for key, value in (("rank_pattern", {"q_proj": 2}), ("fan_in_fan_out", True)):
        with pytest.raises(ValueError, match=f"x.json: .*{key}"):
            peft_format.config_from_peft_dict({**data, key: value}, "x.json")


def test_classifier_adapter_keeps_the_trained_config(tmp_path):
    """save_lora_classifier writes the LoraConfig add_lora built (dropout included), not one
    rebuilt from the command line."""
    from test_llama import tiny_model
    model = classifier.LlamaEmbeddingClassifier(tiny_model(0), num_labels=2)
    classifier.add_lora(model, rank=2, alpha=4.0, targets="heavy", dropout=0.25)
    args = argparse.Namespace(out_dir=str(tmp_path), option="lora", train="data/train.txt",
                              lora_rank=2, lora_alpha=4.0, lora_targets="heavy")
    folder = run_classifier.save_lora_classifier(model, args)
    saved = peft_format.read_config(folder)
    assert dataclasses.asdict(saved) == {**dataclasses.asdict(model.lora_config),
                                         "target_modules": sorted(lora.HEAVY)}
    assert saved.dropout == 0.25
