"""Tests for train.py, the shared training loop.

Run: .venv/bin/pytest tests/test_train.py -q   (CPU, a few seconds)

Oracles: a plain full-batch step written out here with torch.optim.AdamW on the mean loss
(accumulation); parameter snapshots taken inside evaluate() (best-on-dev restore); the files on
disk (history JSON, PNG magic bytes); optimizer.lr_at called directly (schedule); a TrainConfig
written out by hand (flags -> config); weights cloned by hand (BestKeeper).
"""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train
from train import TrainConfig, fit


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))


def make_data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def ce_sum(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="sum"), y.numel()


def base_config(**kw):
    defaults = dict(epochs=1, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                    max_grad_norm=None, progress=False)
    defaults.update(kw)
    return TrainConfig(**defaults)


def oracle_step(x, y, config):
    """One full-batch step on the mean loss with torch.optim.AdamW: the independent reference."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
                            weight_decay=config.weight_decay)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return model


@pytest.mark.parametrize("sizes", [[2, 2, 2, 2], [3, 5], [1, 4, 3]])
def test_accumulation_equals_one_big_batch(sizes):
    """4 micro-batches of 2 (or unequal ones) with accumulation == one batch of 8 == torch oracle.

    Tolerance 1e-6: fp32 sums in a different order; AdamW divides by sqrt(v) ~ |g|, so the update
    is O(lr) and differences stay at rounding level.
    """
    x, y = make_data(8)
    config = base_config()
    big = make_model()
    fit(big, [(x, y)], ce_sum, config)
    small = make_model()
    chunks = list(zip(torch.split(x, sizes), torch.split(y, sizes)))
    fit(small, chunks, ce_sum, base_config(grad_accum_steps=len(sizes)))
    ref = oracle_step(x, y, config)
    for p_big, p_small, p_ref in zip(big.parameters(), small.parameters(), ref.parameters()):
        torch.testing.assert_close(p_small.grad, p_big.grad, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(p_ref.grad, p_big.grad, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(p_small, p_big, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(p_ref, p_big, atol=1e-6, rtol=1e-6)


def test_best_on_dev_is_restored():
    """Scripted dev accuracies 0.5, 0.9, 0.3: the weights seen at the 0.9 evaluation come back."""
    x, y = make_data(8)
    scores, snapshots = iter([0.5, 0.9, 0.3]), []

    def evaluate(model):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return {"accuracy": next(scores), "loss": 1.0}

    model = make_model()
    history = fit(model, [(x, y)], ce_sum, base_config(epochs=3, lr=0.1), evaluate=evaluate)
    assert history["best"]["epoch"] == 1 and history["best"]["value"] == 0.9
    assert not torch.equal(snapshots[1][0], snapshots[2][0])  # training did move the weights
    for p, saved in zip(model.parameters(), snapshots[1]):
        torch.testing.assert_close(p, saved, atol=0, rtol=0)


def test_select_min_loss_and_patience_stop():
    """select_mode='min' on loss; patience=2 stops after two evaluations without improvement."""
    x, y = make_data(8)
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 1.0])
    history = fit(make_model(), [(x, y)], ce_sum,
                  base_config(epochs=6, select_metric="loss", select_mode="min", patience=2),
                  evaluate=lambda m: {"loss": next(losses)})
    assert history["stopped"] == "patience"
    assert len(history["epochs"]) == 4
    assert history["best"]["value"] == 0.5


def test_history_belongs_to_the_current_run(tmp_path):
    """A new run replaces an old run's history at once ("running"), so a run killed before its
    end never leaves the previous run's history looking like its own."""
    (tmp_path / "toy-history.json").write_text(json.dumps({"stopped": "completed", "steps": [1] * 9}))
    x, y = make_data(8)
    seen = []

    def evaluate(model):
        seen.append(json.loads((tmp_path / "toy-history.json").read_text()))
        return {"accuracy": 0.5}

    fit(make_model(), [(x, y)], ce_sum, base_config(out_dir=str(tmp_path), name="toy"), evaluate)
    assert seen[0]["stopped"] == "running" and seen[0]["steps"] == []
    assert json.loads((tmp_path / "toy-history.json").read_text())["stopped"] == "completed"


def test_history_json_and_png_written(tmp_path):
    """out_dir gets <name>-history.json (per-step, per-epoch, evals, memory, time) and a PNG."""
    x, y = make_data(8)
    batches = list(zip(torch.split(x, 2), torch.split(y, 2)))
    history = fit(make_model(), batches, ce_sum,
                  base_config(epochs=2, out_dir=str(tmp_path), name="toy", eval_every_steps=2),
                  evaluate=lambda m: {"accuracy": 0.5, "loss": 1.0})
    data = json.loads((tmp_path / "toy-history.json").read_text())
    assert len(data["steps"]) == 8 and len(data["epochs"]) == 2
    assert len(data["evals"]) == 4  # every 2 steps; the epoch-end eval is not repeated
    epoch = data["epochs"][0]
    for key in ("train_loss", "time_s", "peak_memory_mb", "throughput", "dev_accuracy"):
        assert key in epoch, key
    assert epoch["peak_memory_mb"] > 0
    assert (tmp_path / "toy-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files
    assert history["trainable_parameters"] == sum(p.numel() for p in make_model().parameters())


def test_max_steps_time_budget_and_schedule():
    """max_steps_per_epoch caps steps; time_budget_s=0 stops after one step; lr follows lr_at."""
    x, y = make_data(8)
    batches = list(zip(torch.split(x, 1), torch.split(y, 1)))
    config = base_config(epochs=2, max_steps_per_epoch=3, warmup_steps=2, schedule="cosine",
                         min_lr_ratio=0.1)
    history = fit(make_model(), batches, ce_sum, config)
    assert [e["steps"] for e in history["epochs"]] == [3, 3]
    expected = [train.optim_lib.lr_at(t, config.lr, 2, 6, schedule="cosine", min_lr_ratio=0.1)
                for t in range(6)]
    got = [s["lr"] for s in history["steps"]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-12, rtol=1e-9)
    history = fit(make_model(), batches, ce_sum, base_config(epochs=3, time_budget_s=0.0))
    assert history["stopped"] == "time_budget" and history["total_steps"] == 1


def test_clipping_bounds_grad_norm_and_frozen_params_untouched():
    """max_grad_norm clips the global norm; parameters with requires_grad=False never change."""
    x, y = make_data(8)
    model = make_model()
    frozen = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    history = fit(model, [(x * 100, y)], ce_sum, base_config(max_grad_norm=1e-3, lr=1.0))
    assert history["steps"][0]["grad_norm"] > 1e-3  # the norm before clipping is reported
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert float(total) <= 1e-3 * (1 + 1e-4)
    torch.testing.assert_close(model[0].weight, frozen, atol=0, rtol=0)
    assert history["trainable_parameters"] == 16 + 16 * 3 + 3


def test_bad_inputs_raise_one_line_errors():
    x, y = make_data(8)
    with pytest.raises(ValueError, match="select_metric"):
        fit(make_model(), [(x, y)], ce_sum, base_config(), evaluate=lambda m: {"f1": 1.0})
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    model = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, [(x, y)], ce_sum, base_config())


def test_token_runs_get_perplexity_of_their_eval_loss():
    """count_unit "tok": the evaluation hook adds perplexity = exp(loss) (oracle: math.exp)."""
    import math
    x, y = make_data(8)
    history = fit(make_model(), [(x, y)], ce_sum,
                  base_config(epochs=2, count_unit="tok", select_metric="loss", select_mode="min"),
                  evaluate=lambda m: {"loss": 0.25})
    assert [e["perplexity"] for e in history["evals"]] == [math.exp(0.25)] * 2


def test_one_host_sync_per_logged_step(monkeypatch):
    """Loss sums stay on the device: 6 steps logged every 3 read the host 2 times, plus once at the
    epoch end (oracle: counting every Tensor -> Python conversion while fit runs)."""
    x, y = make_data(12)
    batches = list(zip(torch.split(x, 2), torch.split(y, 2)))

    def loss_fn(model, batch):
        xb, yb = batch
        return F.cross_entropy(model(xb), yb, reduction="sum"), torch.tensor(float(len(yb)))

    calls = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name:
                            (calls.append(_n), _o(self, *a))[1])
    history = fit(make_model(), batches, loss_fn, base_config(log_every_steps=3, max_grad_norm=1.0))
    monkeypatch.undo()
    assert [s["step"] for s in history["steps"]] == [3, 6]
    assert calls == ["tolist"] * 3, calls


def test_flags_become_the_train_config(tmp_path):
    """train.add_training_arguments + config_from_args: the parsed flags (new spelling, dash and
    old aliases) give the TrainConfig written out by hand; --resume alone or with a folder."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--out_dir", default=str(tmp_path))
    train.add_training_arguments(parser, epochs=3, lr=1e-3, grad_accum=1, patience=None)
    args = parser.parse_args(["--epochs", "2", "--grad-accum", "4", "--time_budget", "9",
                              "--checkpoint_every_steps", "5", "--no_progress", "--patience", "2"])
    assert train.config_from_args(args, name="toy", select_metric="loss") == TrainConfig(
        epochs=2, lr=1e-3, grad_accum_steps=4, patience=2, time_budget_s=9.0,
        checkpoint_every_steps=5, checkpoint_dir=str(tmp_path / "toy-checkpoint"),
        out_dir=str(tmp_path), name="toy", select_metric="loss", progress=False)
    resumed = train.config_from_args(parser.parse_args(["--resume"]), name="toy")
    assert resumed.resume and resumed.checkpoint_dir == str(tmp_path / "toy-checkpoint")
    elsewhere = train.config_from_args(parser.parse_args(["--resume", "dir"]), name="toy")
    assert elsewhere.resume and elsewhere.checkpoint_dir == "dir"
    assert train.config_from_args(parser.parse_args([])).checkpoint_dir is None


def test_best_keeper_snapshot_patience_and_restore():
    """min mode: an equal value is no gain; two evaluations without gain reach patience 2;
    restore puts back the weights cloned by hand at the best evaluation."""
    model = make_model()
    keeper = train.BestKeeper("loss", "min", patience=2)
    assert keeper.update({"loss": 1.0}, model) and keeper.bad_evals == 0
    best = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not keeper.update({"loss": 1.5}, model) and not keeper.should_stop
    assert not keeper.update({"loss": 1.0}, model) and keeper.should_stop
    keeper.restore(model)
    for p, saved in zip(model.parameters(), best):
        torch.testing.assert_close(p, saved, atol=0, rtol=0)
    with pytest.raises(ValueError, match="select_metric"):
        keeper.update({"accuracy": 0.5}, model)
