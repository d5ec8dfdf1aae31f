"""The one training loop every part of llmlab reuses: classifiers, SSMs, pico language models.

What one optimizer step does (micro-batches b = 1..K with K = grad_accum_steps):
    each loss_fn returns (L_b, n_b): L_b = sum of per-item losses, n_b = items (examples or tokens)
    g = (sum_b grad L_b) / (sum_b n_b)       gradient of the mean loss over the K micro-batches
    g = g * min(1, max_grad_norm / ||g||_2)  global-norm clipping (Pascanu et al. 2013, arXiv:1211.5063)
    lr_t = lr_at(t, lr, warmup, total)       linear warmup then cosine/linear decay
                                             (Loshchilov & Hutter 2017, SGDR, arXiv:1608.03983)
    theta = AdamW(theta, g, lr_t)            (Loshchilov & Hutter 2019, arXiv:1711.05101, Alg. 2)
Normalising by the summed count (not by K) makes K micro-batches of size m give exactly the
gradient of one batch of size K*m, also when the micro-batches hold different numbers of tokens.

Each epoch: train (tqdm bar with loss, lr and throughput), evaluate on dev, keep a copy of the best
trainable state by `select_metric` (early stopping after `patience` evaluations without gain), and
restore the best state at the end. Time and peak memory per epoch go into a history dict, written
as <out_dir>/<name>-history.json with learning curves in <name>-curves.png.
Mixed precision: bf16 autocast on CUDA only (Micikevicius et al. 2018, arXiv:1710.03740, Sec. 3
for the idea; bf16 needs no loss scaling). On CPU everything stays fp32.

Shapes are whatever the caller's loss_fn takes; fit never looks inside a batch.
Tests: tests/test_train.py (batch of 8 == 4 accumulated micro-batches of 2, against a plain
full-batch step with torch.optim.AdamW; best-on-dev restore; history JSON/PNG written).
"""
import contextlib
import copy
import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import atomic
import optimizer as optim_lib


# ----------------------------------------------------------------------------
# config

@dataclass
class TrainConfig:
    epochs: int = 1                    # passes over train_batches
    lr: float = 1e-3                   # peak learning rate (after warmup)
    weight_decay: float = 0.0          # AdamW decoupled weight decay (per unit lr)
    betas: tuple = (0.9, 0.999)        # AdamW moment decay rates (beta1, beta2)
    eps: float = 1e-6                  # AdamW denominator epsilon (minllama's default)
    warmup_steps: int = 0              # optimizer steps of linear warmup from 0 to lr
    schedule: str = "constant"         # lr after warmup: "constant" | "cosine" | "linear"
    min_lr_ratio: float = 0.0          # final lr / peak lr for cosine and linear decay
    total_steps: int = None            # schedule length in optimizer steps (None: from len(batches))
    grad_accum_steps: int = 1          # micro-batches per optimizer step
    max_grad_norm: float = 1.0         # clip the global gradient L2 norm to this (None: no clipping)
    max_steps_per_epoch: int = None    # stop an epoch after this many optimizer steps (None: all)
    time_budget_s: float = None        # stop training after this many seconds (None: no limit)
    eval_every_steps: int = None       # also evaluate every this many optimizer steps (None: epochs only)
    patience: int = None               # stop after this many evaluations without improvement
    select_metric: str = "accuracy"    # key of evaluate()'s dict used to pick the best state
    select_mode: str = "max"           # "max" (accuracy) or "min" (loss) for select_metric
    bf16: bool = True                  # bf16 autocast when the model is on CUDA (ignored on CPU)
    out_dir: str = None                # folder for <name>-history.json and <name>-curves.png
    name: str = "run"                  # file-name prefix for outputs
    count_unit: str = "ex"             # what loss_fn's count counts, for throughput ("ex", "tok")
    progress: bool = True              # show tqdm bars

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs={self.epochs}: must be >= 1")
        if self.grad_accum_steps < 1:
            raise ValueError(f"TrainConfig.grad_accum_steps={self.grad_accum_steps}: must be >= 1")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"TrainConfig.select_mode={self.select_mode!r}: use 'max' or 'min'")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: use constant, cosine or linear")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr={self.lr}: the learning rate must be > 0")


# ----------------------------------------------------------------------------
# atomic output helpers

# transition aliases (removed once every caller imports atomic)
write_text_atomic, save_json_atomic = atomic.write_text_atomic, atomic.save_json_atomic





def plot_curves(history, path):
    """Learning curves: train loss per step and per epoch, dev loss (left); dev metrics (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    steps = history["steps"]
    if steps:
        ax_loss.plot([s["step"] for s in steps], [s["loss"] for s in steps],
                     lw=0.8, alpha=0.6, label="train loss (per step)")
    epochs = [e for e in history["epochs"] if e.get("train_loss") is not None]
    if epochs:
        ax_loss.plot([e["end_step"] for e in epochs], [e["train_loss"] for e in epochs],
                     "o-", label="train loss (per epoch)")
    evals = history["evals"]
    if any("loss" in e for e in evals):
        ax_loss.plot([e["step"] for e in evals if "loss" in e],
                     [e["loss"] for e in evals if "loss" in e], "s-", label="dev loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key in _metric_keys(evals):
        ax_metric.plot([e["step"] for e in evals if key in e],
                       [e[key] for e in evals if key in e], "o-", label=f"dev {key}")
    ax_metric.set_xlabel("optimizer step")
    ax_metric.set_ylabel("dev metric")
    if evals:
        ax_metric.legend()
    fig.suptitle(history.get("name", ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _metric_keys(evals):
    """Metric names to plot on the right panel: every numeric key except loss and bookkeeping."""
    skip = {"loss", "step", "epoch", "time_s"}
    keys = []
    for e in evals:
        for k, v in e.items():
            if k not in skip and k not in keys and isinstance(v, (int, float)):
                keys.append(k)
    return keys


# ----------------------------------------------------------------------------
# small pieces of the loop

def peak_memory_mb(device_type):
    """Peak memory: CUDA max allocated since the last reset, or the process's max RSS on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def autocast_context(device_type, bf16):
    """bf16 autocast on CUDA only; a no-op context elsewhere (CPU training stays fp32)."""
    if bf16 and device_type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model, config):
    """Our AdamW over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False); "
                         "unfreeze something before calling fit")
    return optim_lib.AdamW(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                           weight_decay=config.weight_decay, foreach=True)  # fast path, tested equal


def trainable_state(model):
    """CPU copies of everything training can change: trainable parameters and persistent buffers."""
    buffers = {name for name, _ in model.named_buffers()}
    state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    for name, value in model.state_dict().items():
        if name in buffers:
            state[name] = value.detach().to("cpu", copy=True)
    return state


def restore_state(model, state):
    """Copy a trainable_state snapshot back into the model in place."""
    current = dict(model.named_parameters())
    current.update(dict(model.named_buffers()))
    with torch.no_grad():
        for name, value in state.items():
            current[name].copy_(value)


def _count(count):
    return float(count.detach().item() if isinstance(count, torch.Tensor) else count)


def _steps_per_epoch(train_batches, config):
    """Optimizer steps per epoch, or None if train_batches has no len()."""
    try:
        micro = len(train_batches)
    except TypeError:
        micro = None
    steps = None if micro is None else math.ceil(micro / config.grad_accum_steps)
    if config.max_steps_per_epoch is not None:
        steps = config.max_steps_per_epoch if steps is None else min(steps, config.max_steps_per_epoch)
    return steps


def _total_steps(train_batches, config):
    if config.total_steps is not None:
        return config.total_steps
    per_epoch = _steps_per_epoch(train_batches, config)
    if per_epoch is None:
        if config.schedule != "constant":
            raise ValueError("train_batches has no len(): set TrainConfig.total_steps or "
                             "max_steps_per_epoch for a decaying lr schedule")
        return None
    return per_epoch * config.epochs


# ----------------------------------------------------------------------------
# the loop

class _Run:
    """State of one fit() call: model, optimizer, counters, history, best snapshot."""

    def __init__(self, model, train_batches, loss_fn, config, evaluate, optimizer):
        self.model, self.batches, self.loss_fn = model, train_batches, loss_fn
        self.config, self.evaluate = config, evaluate
        self.device_type = next(model.parameters()).device.type
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, config)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.total_steps = _total_steps(train_batches, config)
        self.steps_per_epoch = _steps_per_epoch(train_batches, config)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.step, self.start = 0, time.perf_counter()
        self.best_value, self.best_state, self.bad_evals = None, None, 0
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.history = {"name": config.name, "config": asdict(config), "steps": [], "epochs": [],
                        "evals": [], "best": None, "stopped": "completed",
                        "trainable_parameters": trainable, "device": self.device_type,
                        "memory_kind": "cuda_max_allocated" if self.device_type == "cuda"
                        else "cpu_max_rss"}

    def set_lr(self):
        """Scale each group's initial lr by the schedule's factor at this step."""
        c = self.config
        total = self.total_steps if self.total_steps is not None else self.step + 1
        factor = optim_lib.lr_at(self.step, 1.0, c.warmup_steps, max(total, 1), schedule=c.schedule,
                                 min_lr_ratio=c.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def optimizer_step(self, micro_batches):
        """Forward/backward each micro-batch, normalise grads by the summed count, clip, step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_total, count_total = 0.0, 0.0
        for batch in micro_batches:
            with autocast_context(self.device_type, self.config.bf16):
                loss_sum, count = self.loss_fn(self.model, batch)
            loss_sum.float().backward()
            loss_total += float(loss_sum.detach())
            count_total += _count(count)
        if count_total <= 0:
            raise ValueError(f"loss_fn returned a total count of {count_total} at step {self.step}; "
                             "every micro-batch must count at least one example or token")
        loss = loss_total / count_total
        if not math.isfinite(loss):
            raise ValueError(f"training loss became {loss} at step {self.step}; lower --lr or check "
                             "the data")
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(count_total)  # sum of per-item gradients -> mean over all items
        norm = None
        if self.config.max_grad_norm is not None:
            norm = float(optim_lib.clip_grad_norm(self.params, self.config.max_grad_norm))
        lr = self.set_lr()
        self.optimizer.step()
        self.step += 1
        return loss, count_total, lr, norm

    def run_evaluate(self, epoch):
        """Evaluate in eval mode without gradients; update best snapshot and patience counter."""
        if self.evaluate is None:
            return None
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast_context(self.device_type, self.config.bf16):
            metrics = dict(self.evaluate(self.model))
        self.model.train(was_training)
        metrics = {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v)
                   for k, v in metrics.items()}
        entry = {"step": self.step, "epoch": epoch, **metrics,
                 "time_s": time.perf_counter() - start}
        self.history["evals"].append(entry)
        self._update_best(metrics, epoch)
        return metrics

    def _update_best(self, metrics, epoch):
        key = self.config.select_metric
        if key not in metrics:
            raise ValueError(f"evaluate() returned {sorted(metrics)} but TrainConfig.select_metric is "
                             f"{key!r}; set select_metric to one of those keys")
        value = metrics[key]
        better = (self.best_value is None or
                  (value > self.best_value if self.config.select_mode == "max" else value < self.best_value))
        if better:
            self.best_value, self.bad_evals = value, 0
            self.best_state = trainable_state(self.model)
            self.history["best"] = {"step": self.step, "epoch": epoch, "metric": key,
                                    "value": value, "metrics": copy.deepcopy(metrics)}
        else:
            self.bad_evals += 1

    def should_stop(self):
        """Reason to stop (time budget, patience), or None."""
        c = self.config
        if c.time_budget_s is not None and time.perf_counter() - self.start > c.time_budget_s:
            return "time_budget"
        if c.patience is not None and self.bad_evals >= c.patience:
            return "patience"
        return None

    def run_epoch(self, epoch):
        """One pass over the batches (or max_steps_per_epoch steps); returns a stop reason or None."""
        c = self.config
        if self.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start, start_step = time.perf_counter(), self.step
        loss_sum = count_sum = 0.0
        bar = tqdm(total=self.steps_per_epoch, desc=f"{c.name} epoch {epoch + 1}/{c.epochs}",
                   disable=not c.progress, dynamic_ncols=True)
        stop, evaluated_at, metrics = None, None, None
        batches = iter(self.batches)
        while stop is None:
            if c.max_steps_per_epoch is not None and self.step - start_step >= c.max_steps_per_epoch:
                break
            group = [b for _, b in zip(range(c.grad_accum_steps), batches)]
            if not group:
                break
            loss, count, lr, norm = self.optimizer_step(group)
            loss_sum, count_sum = loss_sum + loss * count, count_sum + count
            elapsed = time.perf_counter() - start
            self.history["steps"].append({"step": self.step, "epoch": epoch, "loss": loss, "lr": lr,
                                          "grad_norm": norm, "count": count,
                                          "time_s": time.perf_counter() - self.start})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                            **{f"{c.count_unit}/s": f"{count_sum / max(elapsed, 1e-9):.1f}"})
            if c.eval_every_steps and self.step % c.eval_every_steps == 0:
                metrics, evaluated_at = self.run_evaluate(epoch), self.step
                if metrics:
                    bar.write(f"step {self.step}: " + _format_metrics(metrics))
            stop = self.should_stop()
        bar.close()
        train_time = time.perf_counter() - start
        if evaluated_at != self.step:
            metrics = self.run_evaluate(epoch)
        stop = stop or self.should_stop()
        self._record_epoch(epoch, start_step, loss_sum, count_sum, train_time, start, metrics)
        return stop

    def _record_epoch(self, epoch, start_step, loss_sum, count_sum, train_time, start, metrics):
        entry = {"epoch": epoch, "start_step": start_step, "end_step": self.step,
                 "steps": self.step - start_step, "count": count_sum,
                 "train_loss": loss_sum / count_sum if count_sum else None,
                 "train_time_s": train_time, "time_s": time.perf_counter() - start,
                 "throughput": count_sum / max(train_time, 1e-9), "count_unit": self.config.count_unit,
                 "peak_memory_mb": peak_memory_mb(self.device_type)}
        if metrics:
            entry.update({f"dev_{k}": v for k, v in metrics.items()})
        self.history["epochs"].append(entry)
        train_loss = "n/a" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
        print(f"{self.config.name} epoch {epoch + 1}: train loss {train_loss}"
              + (", dev " + _format_metrics(metrics) if metrics else "")
              + f", {entry['time_s']:.1f} s, {entry['throughput']:.1f} {self.config.count_unit}/s,"
              f" peak {entry['peak_memory_mb']:.0f} MiB", flush=True)


def _format_metrics(metrics):
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def fit(model, train_batches, loss_fn, config, evaluate=None, optimizer=None):
    """Train model on train_batches (re-iterated every epoch) and return the history dict.

    loss_fn(model, batch) -> (loss_sum, count): summed loss over the batch's items and their number.
    evaluate(model) -> dict of floats (e.g. {"loss": .., "accuracy": ..}); run in eval mode, no grad.
    optimizer: defaults to optimizer.AdamW over the trainable parameters with config's lr/betas/wd.
    The best state by config.select_metric is restored at the end (when evaluate is given).
    """
    run = _Run(model, train_batches, loss_fn, config, evaluate, optimizer)
    model.train()
    for epoch in range(config.epochs):
        stop = run.run_epoch(epoch)
        if stop:
            run.history["stopped"] = stop
            break
    model.eval()
    if run.best_state is not None:
        restore_state(model, run.best_state)
    run.history["total_time_s"] = time.perf_counter() - run.start
    run.history["total_steps"] = run.step
    if config.out_dir:
        out = Path(config.out_dir)
        save_json_atomic(out / f"{config.name}-history.json", run.history)
        plot_curves(run.history, out / f"{config.name}-curves.png")
    return run.history
