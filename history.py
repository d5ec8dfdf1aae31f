"""The record of one training run: what train.fit logs, prints, writes and plots.

One JSON object per run, <out_dir>/<name>-history.json, written atomically (atomic.py) when the run
starts ("stopped": "running", so a killed run never leaves an older run's history looking like its
own), at every checkpoint, and at the end:
    name, config            the run's name and its TrainConfig (as a dict)
    steps   [{step, epoch, loss, lr, grad_norm, count, time_s}]    one per logged optimizer step;
            loss = (sum of the step's per-item losses) / count, the mean over its items
    evals   [{step, epoch, <metric>: value, ..., time_s}]          one per evaluation (time_s: its
            own duration); a token-counting run's "loss" also gets its perplexity exp(loss)
    epochs  [{epoch, start_step, end_step, steps, count, train_loss, train_time_s, time_s,
              throughput, count_unit, peak_memory_mb, dev_<metric>, ...}]
            train_loss = sum over the epoch's steps of loss sums / sum of counts;
            throughput = count / train_time_s (items per second)
    best    {step, epoch, metric, value, metrics} of the state restored at the end (or None)
    stopped "completed" | "time_budget" | "patience" ("running" while it runs)
    trainable_parameters, device, memory_kind ("cuda_max_allocated" or "cpu_max_rss"),
    total_steps, total_time_s (at the end)
Printed: one line per epoch (epoch_line), e.g.
    s4 epoch 1: train loss 2.4819, dev loss 1.5012, accuracy 0.6000, 44.3 s, 96.8 ex/s, peak 810 MiB
Plotted: <name>-curves.png, train loss per step and per epoch with dev loss (left), every other
numeric dev metric (right).

Tests: tests/test_train.py (the JSON's keys and counts, "running" at the start, the PNG's magic
bytes, perplexity = math.exp(loss)).
"""
from dataclasses import asdict
from pathlib import Path

import atomic
import distributed
import plots


class History:
    """The history dict of one run (`record`, the schema above) and the files made from it."""

    def __init__(self, config, trainable_parameters, device_type):
        self.config = config
        self.record = {"name": config.name, "config": asdict(config), "steps": [], "epochs": [],
                       "evals": [], "best": None, "stopped": "completed",
                       "trainable_parameters": trainable_parameters, "device": device_type,
                       "memory_kind": "cuda_max_allocated" if device_type == "cuda"
                       else "cpu_max_rss"}

    def add_step(self, step, epoch, loss, lr, grad_norm, count, time_s):
        self.record["steps"].append({"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                                     "grad_norm": grad_norm, "count": count, "time_s": time_s})

    def add_eval(self, step, epoch, metrics, time_s):
        self.record["evals"].append({"step": step, "epoch": epoch, **metrics, "time_s": time_s})

    def set_best(self, step, epoch, metric, value, metrics):
        self.record["best"] = {"step": step, "epoch": epoch, "metric": metric, "value": value,
                               "metrics": metrics}

    def add_epoch(self, entry, metrics):
        """Record an epoch's summary (dev metrics as dev_<key>) and print its line (rank 0)."""
        if metrics:
            entry.update({f"dev_{k}": v for k, v in metrics.items()})
        self.record["epochs"].append(entry)
        if distributed.is_main():
            print(epoch_line(self.config, entry, metrics), flush=True)

    def write(self, stopped="running"):
        """<out_dir>/<name>-history.json as it stands ("running" until the run ends)."""
        if self.config.out_dir:
            atomic.save_json_atomic(Path(self.config.out_dir) / f"{self.config.name}-history.json",
                                    {**self.record, "stopped": stopped})

    def finish(self, stopped, total_steps, total_time_s):
        """The final record: written as JSON, plotted as curves (rank 0), returned."""
        self.record.update(stopped=stopped, total_steps=total_steps, total_time_s=total_time_s)
        self.write(stopped)
        if self.config.out_dir and distributed.is_main():
            plot_curves(self.record, Path(self.config.out_dir) / f"{self.config.name}-curves.png")
        return self.record


# ----------------------------------------------------------------------------
# printing

def format_metrics(metrics):
    """{"loss": 0.5, "accuracy": 0.75} -> "loss 0.5000, accuracy 0.7500"."""
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


def epoch_line(config, entry, metrics):
    loss = "n/a" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
    return (f"{config.name} epoch {entry['epoch'] + 1}: train loss {loss}"
            + (", dev " + format_metrics(metrics) if metrics else "")
            + f", {entry['time_s']:.1f} s, {entry['throughput']:.1f} {config.count_unit}/s,"
            f" peak {entry['peak_memory_mb']:.0f} MiB")


# ----------------------------------------------------------------------------
# curves

def _metric_keys(evals):
    """Metric names to plot on the right panel: every numeric key except losses and bookkeeping."""
    skip = {"loss", "step", "epoch", "time_s", "perplexity"}
    return list(dict.fromkeys(k for e in evals for k, v in e.items()
                              if k not in skip and isinstance(v, (int, float))))


def plot_curves(history, path):
    """Learning curves: train loss per step and per epoch, dev loss (left); dev metrics (right)."""
    plt = plots.pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    steps, evals = history["steps"], history["evals"]
    if steps:
        ax_loss.plot([s["step"] for s in steps], [s["loss"] for s in steps],
                     lw=0.8, alpha=0.6, label="train loss (per step)")
    epochs = [e for e in history["epochs"] if e.get("train_loss") is not None]
    if epochs:
        ax_loss.plot([e["end_step"] for e in epochs], [e["train_loss"] for e in epochs],
                     "o-", label="train loss (per epoch)")
    if any("loss" in e for e in evals):
        ax_loss.plot([e["step"] for e in evals if "loss" in e],
                     [e["loss"] for e in evals if "loss" in e], "s-", label="dev loss")
    ax_loss.set(xlabel="optimizer step", ylabel="loss")
    ax_loss.legend()
    for key in _metric_keys(evals):
        ax_metric.plot([e["step"] for e in evals if key in e],
                       [e[key] for e in evals if key in e], "o-", label=f"dev {key}")
    ax_metric.set(xlabel="optimizer step", ylabel="dev metric")
    if evals:
        ax_metric.legend()
    fig.suptitle(history.get("name", ""))
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=100)
