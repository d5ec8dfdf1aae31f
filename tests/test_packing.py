"""Packing (packing.py) proven equal to unpacked training, and length-grouped batches.

Run: .venv/bin/python -m pytest tests/test_packing.py -q   (CPU, tiny random Llama, ~20 s)

Oracles: each example run alone through Llama.forward (no padding, positions 0..n-1, the plain
causal mask) for the packed logits; the unpacked right-padded batch (sft.collate +
sft.answer_loss, itself tested against full-logit cross-entropy in tests/test_sft.py) for the
packed summed loss, answer-token count and every gradient; layouts and labels written by hand.
Tolerances: logits 1e-5 (fp32, other matmul shapes); the summed loss 1e-5; each gradient 1e-5 of
its largest entry (sums of ~150 tokens' terms in another order).
"""
import json
import random

import pytest
import torch

import adapters
import data
import fused
import llama
import lora
import packing
import run
import run_sft
import sft
from test_run_sft import base_folder, task  # noqa: F401  (module fixtures)


def examples(seed, count=7, vocab=256, prefix=0):
    """Random (ids, n_prompt) pairs of 3..40 tokens with 1..n-1 prompt tokens, after `prefix`
    prompt tokens that every example shares (a chat template's system prompt)."""
    rng = random.Random(seed)
    head = [rng.randrange(3, vocab) for _ in range(prefix)]
    out = []
    for _ in range(count):
        n = rng.randint(3, 40)
        out.append((head + [rng.randrange(3, vocab) for _ in range(n)],
                    prefix + rng.randint(1, n - 1)))
    return out


def tiny(backend="sdpa", seed=0):
    torch.manual_seed(seed)
    return llama.Llama(llama.LlamaConfig.tiny(attn_backend=backend)).eval()


def test_rows_place_every_example_once_within_max_len_and_never_split():
    for seed in range(20):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 20))]
        layout = packing.rows(lengths, 64)
        assert sorted(i for row in layout for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 for row in layout)
        padded = len(layout) * max(sum(lengths[i] for i in row) for row in layout)
        assert sum(lengths) <= padded <= len(lengths) * max(lengths)   # never worse than unpacked
    assert packing.rows([30, 30, 4], 64) == [[0, 1, 2]]              # exactly full: one row
    assert packing.rows([40, 30, 20], 64) == [[0], [1, 2]]           # 2 rows of 50: 100 slots
    with pytest.raises(ValueError, match="an example of 70 tokens > --max_len 64"):
        packing.rows([10, 70], 64)


def test_pack_by_hand():
    """Two examples in one row: positions restart, blocks 1 and 2, each example's first label
    IGNORE (nothing of its own before it), pads block -1 with labels IGNORE."""
    batch = sft.packed([([5, 6, 7], 1), ([8, 9], 1)], pad_id=0, max_len=8)
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["positions"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["blocks"].tolist() == [[1, 1, 1, 2, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    batch = sft.packed([([5, 6, 7], 1), ([8, 9], 1)], pad_id=0, max_len=4)
    assert batch["tokens"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["blocks"].tolist() == [[1, 1, 1], [2, 2, -1]]
    assert batch["labels"][1].tolist() == [-100, 9, -100]


def test_common_prefix_and_shared_rows_by_hand():
    """Both examples start 5 6 7 (prompt); the shared prefix stops before the token whose label
    is read from the prefix's last position: 5 6 held once per row as block 0."""
    ex = [([5, 6, 7, 8, 9], 4), ([5, 6, 7, 1, 2, 3], 5)]
    labelled = [(ids, sft.masked_labels(ids, n)) for ids, n in ex]
    assert packing.common_prefix(labelled, -100) == 3
    assert packing.common_prefix([([5, 6, 7, 8], [-100, -100, 7, 8])] * 2, -100) == 1
    batch = sft.packed(ex, pad_id=0, max_len=16)
    assert batch["shared"] == 3
    assert batch["tokens"].tolist() == [[5, 6, 7, 1, 2, 3, 8, 9]]
    assert batch["positions"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4]]
    assert batch["blocks"].tolist() == [[0, 0, 0, 2, 2, 2, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, -100, 3, -100, 9]]


@pytest.mark.parametrize("prefix", [0, 12])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_every_packed_example_has_its_logits_alone(backend, prefix):
    """The block-diagonal causal mask and restarted positions: nothing crosses examples; with a
    shared prefix, each example's tokens after it see it and get the logits they get alone."""
    model = tiny(backend)
    for seed in range(3):
        seqs = examples(seed, prefix=prefix)
        batch = sft.packed(seqs, pad_id=0, max_len=64)
        assert batch["shared"] >= prefix
        with torch.no_grad():
            logits = model.output(packing.hidden_states(model, batch))              # (R, L, V)
            p = batch["shared"]
            for r, row in enumerate(batch["rows"]):
                start = p
                for i in row:
                    ids = seqs[i][0]
                    alone, _ = model(torch.tensor([ids]))                           # (1, n, V)
                    torch.testing.assert_close(logits[r, :p], alone[0, :p], atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(logits[r, start:start + len(ids) - p],
                                               alone[0, p:], atol=1e-5, rtol=1e-5)
                    start += len(ids) - p


def adapted(method, model):
    """The model to train for a method, its trainable weights moved off their start (LoRA's
    B = 0 and IA3's ones would hide a wrong gradient through them)."""
    if method == "lora":
        lora.inject_lora(model, lora.LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    elif method == "ia3":
        adapters.inject_ia3(model, adapters.IA3Config())
    else:
        model.requires_grad_(True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and method != "full":
                p.add_(torch.randn_like(p) * 0.1)
    return model.train()


def loss_and_grads(model, batch):
    loss, count = sft.answer_loss(model, batch)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss.detach(), count, grads


@pytest.mark.parametrize("method", ["lora", "ia3", "full"])
@pytest.mark.parametrize("path, prefix", [("reference", 0), ("fused", 0), ("checkpointing", 0),
                                          ("reference", 12), ("fused", 12)])
def test_packed_loss_and_every_gradient_equal_the_unpacked_batch(method, path, prefix):
    """Oracle: the same examples right-padded in one row each (sft.collate). With a shared
    prefix its activations serve every example of a row and collect each one's gradient."""
    model = adapted(method, tiny())
    if path == "fused":
        fused.fuse(model)
    model.gradient_checkpointing = path == "checkpointing"
    seqs = examples(seed=7, count=8, prefix=prefix)
    packed = sft.packed(seqs, pad_id=0, max_len=64)
    assert len(packed["rows"]) < len(seqs)                              # it did pack
    loss, count, grads = loss_and_grads(model, packed)
    loss_ref, count_ref, grads_ref = loss_and_grads(model, sft.collate(seqs, pad_id=0))
    assert int(count) == int(count_ref) == sum(len(ids) - n for ids, n in seqs)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(grads_ref) > 0
    for g, g_ref in zip(grads, grads_ref):
        scale = float(g_ref.abs().max())
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5 * scale)


def test_training_steps_packed_equal_unpacked():
    """Three AdamW steps over packed batches and over the same batches unpacked: the same
    weights after (the batch is kept, only padding goes)."""
    seqs = [s for seed in range(3) for s in examples(seed, count=8)]
    results = []
    for pack_len in (None, 64):
        model = adapted("lora", tiny())
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        for batch in sft.batches(seqs, 8, 0, shuffle=True, seed=3, pack_len=pack_len):
            loss, count = sft.answer_loss(model, batch)
            opt.zero_grad()
            (loss / count).backward()
            opt.step()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_group_by_length_batches_similar_lengths_seeded_and_replayed():
    """Every index once per pass, far less padding than a plain shuffle, a new order each pass,
    and set_epoch replays a pass (resume) like the plain shuffle does."""
    rng = random.Random(0)
    seqs = [[1] * rng.randint(1, 200) for _ in range(1000)]

    def batches(group):
        return data.Batches(seqs, [0] * 1000, 8, 0, shuffle=True, seed=5, group_by_length=group)
    grouped = batches(True)
    first = [b["index"] for b in grouped]
    second = [b["index"] for b in grouped]
    assert sorted(i for index in first for i in index) == list(range(1000))
    assert second != first                                           # a new order each pass
    grouped.set_epoch(1)
    assert [b["index"] for b in grouped] == second                   # replayed from the seed
    assert [b["index"] for b in batches(True)] == first
    padded = [sum(b["tokens"].numel() for b in batches(group)) for group in (True, False)]
    assert padded[0] < 0.7 * padded[1]                               # much less padding


def test_sft_run_packed_takes_the_steps_of_the_unpacked_run(base_folder, task, tmp_path):  # noqa: F811
    """`--option sft` end to end on a tiny Llama: the default (packing on for lora) and
    --no-packing log the same training losses, answer-token counts, real tokens trained (the
    progress bar's tok/s) and validation losses (1e-4;
    lr 1e-3: at 5e-2 Adam's normalised steps grow fp32 rounding past 1e-4 within ~6 steps)."""
    histories = []
    for flags in ([], ["--no-packing"]):
        out = tmp_path / ("packed" if not flags else "unpacked")
        run.main(["--option", "sft", "--train", str(task / "train.txt"),
                  "--val_ratio", "0.25", "--pretrained-model-path", str(base_folder),
                  "--lr", "1e-3", "--epochs", "2", "--batch_size", "4", "--lora_dropout", "0",
                  "--no-zero_shot", "--out_dir", str(out), *flags])
        summary = json.loads((out / "summary.json").read_text())
        assert summary["args"]["packing"] is (not flags)
        histories.append(json.loads((out / "sft-history.json").read_text()))
    losses = [[s["loss"] for s in h["steps"]] for h in histories]
    assert len(losses[0]) > 2 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert [s["count"] for s in histories[0]["steps"]] == [s["count"] for s in histories[1]["steps"]]
    tokens = [[e["tokens"] for e in h["epochs"]] for h in histories]   # real tokens, both ways
    assert tokens[0] == tokens[1] and tokens[0][0] > 0
    assert [e["loss"] for e in histories[0]["evals"]] == pytest.approx(
        [e["loss"] for e in histories[1]["evals"]], rel=1e-4)


@pytest.mark.parametrize("flags, words", [
    (["--method", "prompt", "--packing"], "--packing: --method prompt puts virtual tokens"),
    (["--method", "prefix", "--packing"], "--packing: --method prefix"),
])
def test_packing_where_it_cannot_pack_is_one_line(task, tmp_path, capsys, flags, words):  # noqa: F811
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "sft", "--train", str(task / "train.txt"), "--out_dir",
                  str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_resolve_is_the_one_rule():
    """packing.resolve, shared by --option sft and the classifiers: the default follows whether
    the driver can pack, an explicit choice is kept, an explicit --packing that cannot is one line
    naming the reason and the fix."""
    assert packing.resolve(None, None) is True and packing.resolve(None, "why") is False
    assert packing.resolve(False, None) is False and packing.resolve(False, "why") is False
    assert packing.resolve(True, None) is True
    with pytest.raises(ValueError, match="^--packing: no blocks; use X$"):
        packing.resolve(True, "no blocks", "use X")


def test_packing_default_and_torchrun(monkeypatch):
    """Default: on for lora / ia3 / full in one process, off for the virtual-token methods and
    under torchrun; --packing under torchrun is one line."""
    args = run_sft_args()
    for method, expected in [("lora", True), ("ia3", True), ("full", True), ("prompt", False),
                             ("prefix", False), ("ptuning", False)]:
        args.method, args.packing = method, None
        assert run_sft.resolve_packing(args) is expected, method
    monkeypatch.setenv("WORLD_SIZE", "2")
    args.method, args.packing = "lora", None
    assert run_sft.resolve_packing(args) is False
    args.packing = True
    with pytest.raises(ValueError, match="under torchrun"):
        run_sft.resolve_packing(args)


def run_sft_args():
    import argparse
    return argparse.Namespace(method="lora", packing=None, fsdp=False, adapter=None)
