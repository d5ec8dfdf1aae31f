"""Tests for lora.py's variants (rsLoRA, DoRA, LoRA+, PiSSA) and their adapters in peft's layout
(peft_format.py), beside tests/test_lora.py (plain LoRA), whose tiny models and helpers they reuse.

Run: .venv/bin/python -m pytest tests/test_lora_variants.py -q   (CPU, tiny models, seconds)

Oracles: peft (get_peft_model with use_rslora / use_dora / init_lora_weights="pissa", its
PeftModel.from_pretrained, save_pretrained(path_initial_model_for_weight_conversion=...),
create_loraplus_optimizer, get_nb_trainable_parameters) on a tiny transformers LlamaForCausalLM;
the unmerged model (DoRA merge); the unfused reference path (fused.py's DoRA fallback); the run's
own validation answers (the CLI: the saved adapter alone must answer the same).
"""
import copy
import csv
import json

import pytest
import torch

import adapters
import fused
import lora
import optimizer as optim_lib
import peft_format
import run
from test_lora import canonical_twin, hf_logits, our_logits, tiny_hf_llama, tokens
from test_run_sft import base_folder, task  # noqa: F401  (module fixtures)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# variant -> (our LoraConfig fields, peft's LoraConfig fields)
VARIANTS = {
    "rslora": ({"use_rslora": True}, {"use_rslora": True}),
    "dora": ({"use_dora": True}, {"use_dora": True}),
    "dora+rslora": ({"use_dora": True, "use_rslora": True}, {"use_dora": True, "use_rslora": True}),
    "pissa": ({"init": "pissa"}, {"init_lora_weights": "pissa"}),
    "pissa+dora": ({"init": "pissa", "use_dora": True},
                   {"init_lora_weights": "pissa", "use_dora": True}),
}
R, ALPHA = 4, 8.0


def ours_and_peft(variant, targets=lora.HEAVY, base=None):
    """(base, ours, theirs): the same tiny Llama adapted by lora.py and by peft."""
    base = tiny_hf_llama() if base is None else base
    ours_fields, peft_fields = VARIANTS[variant]
    config = lora.LoraConfig(r=R, alpha=ALPHA, target_modules=list(targets), **ours_fields)
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, config)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=list(targets), **peft_fields)).eval()
    return base, ours, theirs, config


def trained_look(model, seed=2):
    """A, B (and DoRA's m) moved away from their start, as training would: every
    LoRALayer's tensors get seeded noise added."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            for p in (layer.lora_A, layer.lora_B):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
            if layer.lora_magnitude is not None:
                layer.lora_magnitude.mul_(1 + 0.2 * torch.randn(layer.lora_magnitude.shape,
                                                                generator=gen))


def peft_layers(theirs):
    return dict(theirs.base_model.model.named_modules())


def copy_into_peft(ours, theirs):
    """Our A, B, m into peft's lora_A / lora_B / lora_magnitude_vector["default"]."""
    modules = peft_layers(theirs)
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours):
            target = modules[name]
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
            if layer.lora_magnitude is not None:
                target.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)


# ----------------------------------------------------------------------------
# each variant against peft: the start, the forward and the gradients

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_equals_peft_start_logits_and_gradients(variant):
    """At the start: our A, B (PiSSA: the same SVD), DoRA's m and the (residual) base weights
    equal peft's, and the logits equal the base's. Moved A, B, m copied into peft: same logits,
    same gradients of A, B, m (DoRA: the norm a constant in both). fp32, the same ops up to
    summation order: 1e-5 (SVD factors: 1e-5 of their scale)."""
    base, ours, theirs, _ = ours_and_peft(variant)
    ids = tokens()
    modules = peft_layers(theirs)
    for name, layer in lora.lora_layers(ours):
        target = modules[name]
        assert layer.scale == target.scaling["default"]
        torch.testing.assert_close(layer.weight, target.base_layer.weight, rtol=0, atol=1e-5)
        if variant.startswith("pissa"):
            torch.testing.assert_close(layer.lora_A, target.lora_A["default"].weight,
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(layer.lora_B, target.lora_B["default"].weight,
                                       rtol=1e-4, atol=1e-5)
        if layer.lora_magnitude is not None:
            torch.testing.assert_close(layer.lora_magnitude,
                                       target.lora_magnitude_vector["default"].weight)
    torch.testing.assert_close(hf_logits(ours, ids), hf_logits(base, ids), rtol=0, atol=1e-5)
    trained_look(ours)
    copy_into_peft(ours, theirs)
    grads = []
    for model in (ours, theirs):
        logits = model(input_ids=ids).logits
        (logits.square().mean()).backward()
        grads.append(logits.detach())
    assert (grads[0] - hf_logits(base, ids)).abs().max() > 1e-2
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5)
    for name, layer in lora.lora_layers(ours):
        target = modules[name]
        pairs = [(layer.lora_A, target.lora_A["default"].weight),
                 (layer.lora_B, target.lora_B["default"].weight)]
        if layer.lora_magnitude is not None:
            pairs.append((layer.lora_magnitude, target.lora_magnitude_vector["default"].weight))
        for mine, peft_param in pairs:
            scale = float(peft_param.grad.abs().max())
            torch.testing.assert_close(mine.grad, peft_param.grad, rtol=1e-4, atol=1e-5 * scale)


def test_rslora_scale_is_alpha_over_sqrt_r():
    assert lora.lora_scale(8.0, 16, rslora=True) == 2.0 == lora.LoraConfig(
        r=16, alpha=8.0, use_rslora=True).scale
    assert lora.LoraConfig(r=16, alpha=8.0).scale == 0.5


@pytest.mark.parametrize("variant", ["dora", "pissa+dora"])
def test_dora_merge_is_exact(variant):
    """Merged logits == unmerged (fp32 1e-5); unmerge restores the weight (1e-6); unload keeps
    the logits; a merged DoRA layer in a fused group takes the stacked path."""
    _, ours, _, _ = ours_and_peft(variant)
    trained_look(ours)
    ids = tokens()
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    unmerged = hf_logits(ours, ids)
    lora.merge_lora(ours)
    torch.testing.assert_close(hf_logits(ours, ids), unmerged, rtol=0, atol=1e-5)
    lora.unmerge_lora(ours)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=1e-6)
    lora.unload_lora(ours)
    assert not lora.lora_layers(ours)
    torch.testing.assert_close(hf_logits(ours, ids), unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["rslora", "dora", "pissa"])
def test_trainable_counts_equal_peft_and_the_formula(variant):
    """count_parameters == peft's count == lora_parameter_count (DoRA: + out per Linear)."""
    hf = tiny_hf_llama()
    ours = canonical_twin(hf)
    ours_fields, _ = VARIANTS[variant]
    config = lora.LoraConfig(r=R, alpha=ALPHA, target_modules="heavy", **ours_fields)
    lora.inject_lora(ours, config)
    _, _, theirs, _ = ours_and_peft(variant, base=hf)
    counted = lora.count_parameters(ours)
    assert counted == theirs.get_nb_trainable_parameters()
    assert counted[0] == adapters.formula_count(config, ours.config)


# ----------------------------------------------------------------------------
# LoRA+ parameter groups

def test_loraplus_groups_step_like_peft_create_loraplus_optimizer():
    """lora_B and DoRA's m at ratio x lr, A at lr: one AdamW step from the same gradients moves
    every tensor as peft's create_loraplus_optimizer (with torch.optim.AdamW) does (1e-6)."""
    from peft.optimizers import create_loraplus_optimizer
    _, ours, theirs, _ = ours_and_peft("dora", targets=["q_proj", "v_proj"])
    trained_look(ours)
    copy_into_peft(ours, theirs)
    groups = lora.loraplus_param_groups(ours, 1e-2, 16.0)
    assert [g["lr"] for g in groups] == [1e-2, 0.16]
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for n, p in ours.named_parameters() if n.endswith(("lora_B", "lora_magnitude"))}
    mine = optim_lib.AdamW(groups, lr=1e-2, eps=1e-8, foreach=True)
    reference = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-2,
                                          loraplus_lr_ratio=16.0, eps=1e-8, weight_decay=0.0)
    ids = tokens()
    for model, opt in ((ours, mine), (theirs, reference)):
        model(input_ids=ids).logits.square().mean().backward()
        opt.step()
    modules = peft_layers(theirs)
    for name, layer in lora.lora_layers(ours):
        target = modules[name]
        torch.testing.assert_close(layer.lora_A, target.lora_A["default"].weight, atol=1e-6,
                                   rtol=0)
        torch.testing.assert_close(layer.lora_B, target.lora_B["default"].weight, atol=1e-6,
                                   rtol=0)
        torch.testing.assert_close(layer.lora_magnitude,
                                   target.lora_magnitude_vector["default"].weight, atol=1e-6,
                                   rtol=0)


# ----------------------------------------------------------------------------
# adapters on disk, both ways

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_saved_adapter_loads_in_peft_on_the_original_base(variant, tmp_path):
    """Our saved adapter (PiSSA: converted to a rank-2r LoRA delta) loaded by
    PeftModel.from_pretrained on the ORIGINAL base gives our logits (fp32: 1e-5); loaded back
    into llmlab it gives them too; the config says use_dora / use_rslora / init true."""
    base, ours, _, config = ours_and_peft(variant)
    trained_look(ours)
    peft_format.save_adapter(tmp_path, ours, config)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    pissa = config.init == "pissa"
    assert (saved["use_dora"], saved["use_rslora"], saved["init_lora_weights"], saved["r"]) == (
        config.use_dora, config.use_rslora, True, 2 * R if pissa else R)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    ids = tokens()
    want = hf_logits(ours, ids)
    torch.testing.assert_close(hf_logits(theirs, ids), want, rtol=0, atol=1e-5)
    back = copy.deepcopy(base)
    peft_format.load_adapter(tmp_path, back)
    torch.testing.assert_close(hf_logits(back, ids), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_peft_saved_adapter_loads_in_ours(variant, tmp_path):
    """peft's save_pretrained of each kind loads into llmlab on the original base with peft's
    logits (1e-5). PiSSA saved unconverted (init_lora_weights "pissa"): our load rebuilds the
    residual from the original base, as peft's load does (converted: the next test)."""
    base, _, theirs, _ = ours_and_peft(variant)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    ids = tokens()
    want = hf_logits(theirs, ids)
    theirs.save_pretrained(str(tmp_path))
    ours = copy.deepcopy(base)
    _, config = peft_format.load_adapter(tmp_path, ours)
    assert (config.use_dora, config.use_rslora, config.init) == (
        "dora" in variant, "rslora" in variant, "pissa" if "pissa" in variant else "default")
    torch.testing.assert_close(hf_logits(ours, ids), want, rtol=0, atol=1e-5)


def test_peft_converted_pissa_adapter_loads_in_ours(tmp_path):
    """peft's own PiSSA -> LoRA conversion (path_initial_model_for_weight_conversion): the rank-2r
    delta loads on the original base and gives the PiSSA model's logits (1e-5)."""
    base = tiny_hf_llama()
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"],
                             init_lora_weights="pissa")
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    theirs.peft_config["default"].init_lora_weights = True         # peft's recipe, then save
    theirs.save_pretrained(str(tmp_path / "init"))
    theirs.peft_config["default"].init_lora_weights = "pissa"
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    theirs.save_pretrained(str(tmp_path / "lora"),
                           path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    ours = copy.deepcopy(base)
    _, loaded = peft_format.load_adapter(tmp_path / "lora", ours)
    assert (loaded.r, loaded.init) == (2 * R, "default")
    ids = tokens()
    torch.testing.assert_close(hf_logits(ours, ids), hf_logits(theirs, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["dora", "pissa+dora"])
def test_canonical_llama_adapters_both_ways(variant, tmp_path):
    """Our canonical Llama (interleaved Q/K rows): DoRA's m is permuted with the rows of wq / wk
    on save and back on load; the PiSSA SVD of the permuted weight is the permuted SVD. Our save
    -> peft on the HF model, and back into a fresh canonical model: the same logits (1e-5)."""
    hf = tiny_hf_llama()
    ours = canonical_twin(hf)
    config = lora.LoraConfig(r=R, alpha=ALPHA, target_modules="heavy", **VARIANTS[variant][0])
    lora.inject_lora(ours, config)
    trained_look(ours)
    peft_format.save_adapter(tmp_path, ours, config)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path)).eval()
    ids = tokens()
    want = our_logits(ours, ids)
    torch.testing.assert_close(hf_logits(theirs, ids), want, rtol=0, atol=1e-5)
    back = canonical_twin(hf)
    peft_format.load_adapter(tmp_path, back)
    torch.testing.assert_close(our_logits(back, ids), want, rtol=0, atol=1e-5)


def test_config_errors():
    """One line naming the field or flag and the fix."""
    with pytest.raises(ValueError, match="--lora_init 'olora'"):
        lora.LoraConfig(init="olora")
    with pytest.raises(ValueError, match="--lora_init pissa with --lora_alpha 0"):
        lora.LoraConfig(init="pissa", alpha=0.0)
    data = peft_format.peft_config_dict(lora.LoraConfig())
    for init in ("olora", "pissa_niter_4"):
        with pytest.raises(ValueError, match=f"x.json: init_lora_weights='{init}'.*"
                                             "path_initial_model_for_weight_conversion"):
            peft_format.config_from_peft_dict({**data, "init_lora_weights": init}, "x.json")
    with pytest.raises(ValueError, match="x.json: .*use_dora"):
        peft_format.config_from_peft_dict({**data, "use_dora": "yes"}, "x.json")


# ----------------------------------------------------------------------------
# the fused path

def test_fused_dora_falls_back_to_its_own_branch():
    """fused.fuse on a canonical Llama with DoRA (+ rsLoRA) on every Linear: logits and A, B, m
    gradients equal the unfused reference path (fp32, 1e-5 of the largest gradient)."""
    hf = tiny_hf_llama()
    models = []
    for fuse in (False, True):
        model = canonical_twin(hf)
        torch.manual_seed(3)                             # the same A in both
        lora.inject_lora(model, lora.LoraConfig(r=R, alpha=ALPHA, target_modules="heavy",
                                                use_dora=True, use_rslora=True))
        trained_look(model)
        if fuse:
            assert fused.fuse(model) == 4
        models.append(model)
    ids = tokens()
    outs = []
    for model in models:
        logits = model(ids)[0]
        logits.square().mean().backward()
        outs.append(logits.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in models]
    assert grads[0].keys() == grads[1].keys() and any("lora_magnitude" in n for n in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


# ----------------------------------------------------------------------------
# the command line

@pytest.mark.parametrize("flags", [
    ["--method", "dora", "--lora_scaling", "rs", "--loraplus_ratio", "4"],
    ["--method", "lora", "--lora_init", "pissa"],
])
def test_cli_trains_saves_and_reloads_to_the_same_answers(flags, base_folder, task,  # noqa: F811
                                                          tmp_path):
    """`--option sft` with the variant flags: the trainable count equals the formula, the adapter
    config names the variant (PiSSA saved as rank 2r), and the saved adapter alone, on the
    original base through --adapter, answers the validation file as the run did."""
    out = tmp_path / "run"
    run.main(["--option", "sft", "--train", str(task / "train.txt"), "--val",
              str(task / "test.json"), "--pretrained-model-path", str(base_folder), "--lr", "1e-2",
              "--epochs", "1", "--max_steps_per_epoch", "2", "--batch_size", "8",
              "--lora_rank", "2", "--no-zero_shot", "--out_dir", str(out), *flags])
    params = json.loads((out / "summary.json").read_text())["parameters"]
    assert params["trainable"] == params["formula"]
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (saved["use_dora"], saved["use_rslora"], saved["r"]) == (
        "dora" in flags, "rs" in flags, 4 if "pissa" in flags else 2)
    val = [json.loads(line) for line in (out / "val-predictions.jsonl").read_text().splitlines()]
    path = tmp_path / "again.csv"
    run.main(["--option", "sft", "--adapter", str(out / "adapter"), "--test",
              str(task / "test.json"), "--submission", str(path), "--pretrained-model-path",
              str(base_folder)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert rows == [[v["id"], v["predicted"]] for v in val]


def test_cli_refuses_variant_flags_for_other_methods(task, capsys):  # noqa: F811
    for flags in (["--method", "ia3", "--lora_scaling", "rs"],
                  ["--method", "full", "--loraplus_ratio", "16"]):
        with pytest.raises(SystemExit):
            run.main(["--option", "sft", "--train", str(task / "train.txt"), *flags])
        assert "is for training --method lora | dora" in capsys.readouterr().err
