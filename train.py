"""The one training loop every part of llmlab reuses: classifiers, instruction tuning, SSMs, pico.

`fit` is the whole loop on one screen:
    for each epoch:
        for each group of K = grad_accum_steps micro-batches:
            forward + backward each micro-batch          L_b = summed loss, n_b = items it counts
            g = (sum_b grad L_b) / (sum_b n_b)            gradient of the mean over the K batches
            g = g * min(1, max_grad_norm / ||g||_2)       global-norm clipping (Pascanu et al. 2013,
                                                          arXiv:1211.5063)
            lr_t = lr * lr_at(t)                          warmup, then cosine/linear decay (SGDR,
                                                          Loshchilov & Hutter 2017, arXiv:1608.03983)
            theta = AdamW(theta, g, lr_t)                 (Loshchilov & Hutter 2019, arXiv:1711.05101)
            every eval_every_steps: evaluate -> keep the best state, count evaluations without gain
            stop on the time budget or after `patience` evaluations without gain (early stopping)
        evaluate at the end of the epoch, record time, throughput and peak memory
    restore the best state; write <name>-history.json and <name>-curves.png
Normalising by the summed count (not by K) makes K micro-batches of size m give exactly the
gradient of one batch of size K*m, also when micro-batches hold different numbers of tokens.
Loss sums and counts stay on the device between micro-batches and steps: the host reads them
once per logged step (log_every_steps) and once per epoch, so a GPU is never stalled by `.item()`.

Data parallel (distributed.py): each process runs this loop on its shard; DDP averages gradients
over the N processes during the last micro-batch's backward (no_sync before), and the count is
summed over processes, so the update is the gradient of the global mean: g * N / sum_r n_r.
Under FSDP (a model distributed.shard made) the same mean arrives reduce-scattered: each rank
holds its shard of g, clips with the norm over all shards and steps AdamW on its shard alone;
snapshots and checkpoints gather the shards (trainable_state) and put them back (restore_state).
On one process these are no-ops.
Evaluation hook: evaluate(model) -> dict of floats, run in eval mode without gradients every
eval_every_steps steps and at each epoch end; a "loss" of a token-counting run (count_unit ending
in "tok") also gets its perplexity exp(loss). select_metric picks the state restored at the end.
Mixed precision: bf16 autocast on CUDA only (Micikevicius et al. 2018, arXiv:1710.03740, Sec. 3
for the idea; bf16 needs no loss scaling). On CPU everything stays fp32.

Shapes are whatever the caller's loss_fn takes; fit never looks inside a batch.
Tests: tests/test_train.py (batch of 8 == 4 accumulated micro-batches of 2, against a plain
full-batch step with torch.optim.AdamW; best-on-dev restore; patience; schedule; history and
curves written; perplexity; one host sync per logged step).
"""
import contextlib
import copy
import itertools
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import atomic
import checkpoint
import distributed
import optimizer as optim_lib
import options
import plots


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
    log_every_steps: int = 1           # read the loss on the host every this many steps
    patience: int = None               # stop after this many evaluations without improvement
    select_metric: str = "accuracy"    # key of evaluate()'s dict used to pick the best state
    select_mode: str = "max"           # "max" (accuracy) or "min" (loss) for select_metric
    bf16: bool = True                  # bf16 autocast when the model is on CUDA (ignored on CPU)
    out_dir: str = None                # folder for <name>-history.json and <name>-curves.png
    name: str = "run"                  # file-name prefix for outputs
    count_unit: str = "ex"             # what loss_fn's count counts ("ex", "tok", "answer tok")
    progress: bool = True              # show tqdm bars
    checkpoint_dir: str = None         # folder of the resumable checkpoint (checkpoint.py)
    checkpoint_every_steps: int = None  # write it every this many steps (and at epoch ends)
    resume: bool = False               # continue from checkpoint_dir when a checkpoint is there

    def __post_init__(self):
        for field in ("epochs", "grad_accum_steps", "log_every_steps"):
            if getattr(self, field) < 1:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)}: must be >= 1")
        for field in ("max_steps_per_epoch", "eval_every_steps", "total_steps", "patience",
                      "checkpoint_every_steps"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)}: must be >= 1 or None")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"TrainConfig.select_mode={self.select_mode!r}: use 'max' or 'min'")
        if self.schedule not in optim_lib.SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: use constant, cosine or linear")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"TrainConfig.lr={self.lr}: the learning rate must be > 0")
        if self.warmup_steps < 0 or (self.time_budget_s is not None and self.time_budget_s < 0):
            raise ValueError("TrainConfig: warmup_steps and time_budget_s must be >= 0")
        if (self.checkpoint_every_steps or self.resume) and not self.checkpoint_dir:
            raise ValueError("TrainConfig: checkpoint_every_steps / resume need a checkpoint_dir")


# ----------------------------------------------------------------------------
# the pieces of one optimizer step (free functions)

def autocast_context(device_type, bf16):
    """bf16 autocast on CUDA only; a no-op context elsewhere (CPU training stays fp32)."""
    if bf16 and device_type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulate_gradients(model, micro_batches, loss_fn, config, device):
    """Forward + backward every micro-batch; -> (summed loss, summed count), device tensors.

    Gradients of the summed (not mean) losses accumulate in .grad; DDP synchronises only during
    the last backward. Loss and count are summed over processes (one all-reduce; no-op alone).
    """
    loss_sum = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        with distributed.no_sync(model, last=i == len(micro_batches) - 1), \
                autocast_context(device.type, config.bf16):
            batch_loss, batch_count = loss_fn(model, batch)
            batch_loss.float().backward()
        loss_sum += batch_loss.detach().float()
        count += batch_count                            # an int or a 0-d tensor on the device
    loss_sum, count = distributed.all_reduce_sum(torch.stack([loss_sum, count]))  # all ranks' sums
    return loss_sum, count


def optimizer_step(optimizer, params, count, max_grad_norm):
    """Sum of per-item gradients -> gradient of the mean, clip, AdamW step; -> the grad norm
    before clipping (a 0-d tensor, or None without clipping). No host sync."""
    scale = distributed.world_size() / count.clamp(min=1)   # DDP / FSDP divided by N
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale.to(p.grad.dtype))
    norm = None if max_grad_norm is None else optim_lib.clip_grad_norm(params, max_grad_norm)
    optimizer.step()
    return norm


def set_lr(optimizer, factor):
    """Each group's lr = its initial lr * the schedule's factor at this step; returns group 0's."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def accumulation_groups(batches, config, skip=0):
    """Lists of grad_accum_steps micro-batches (the last may be shorter), at most
    max_steps_per_epoch of them: one list per optimizer step. skip: steps already done in this
    epoch (a resumed run), whose micro-batches are passed over."""
    iterator = itertools.islice(iter(batches), skip * config.grad_accum_steps, None)
    for _ in itertools.count() if config.max_steps_per_epoch is None \
            else range(config.max_steps_per_epoch - skip):
        group = list(itertools.islice(iterator, config.grad_accum_steps))
        if not group:
            return
        yield group


# ----------------------------------------------------------------------------
# the loop

def fit(model, train_batches, loss_fn, config, evaluate=None, optimizer=None):
    """Train model on train_batches (re-iterated every epoch); returns the history dict.

    loss_fn(model, batch) -> (loss_sum, count): summed loss over the batch's items and their number.
    evaluate(model) -> dict of floats (e.g. {"loss": .., "accuracy": ..}); eval mode, no grad.
    optimizer: defaults to optimizer.AdamW over the trainable parameters with config's lr/betas/wd.
    The best state by config.select_metric is restored at the end (when evaluate is given).
    """
    run = Run(model, train_batches, config, evaluate, optimizer)
    for epoch in range(run.epoch, config.epochs):
        skip = run.begin_epoch(epoch, train_batches)            # > 0 only in a resumed epoch
        for micro_batches in accumulation_groups(train_batches, config, skip):
            run.optimizer.zero_grad(set_to_none=True)
            loss_sum, count = accumulate_gradients(run.wrapped, micro_batches, loss_fn, config,
                                                   run.device)
            lr = set_lr(run.optimizer, run.lr_factor())
            grad_norm = optimizer_step(run.optimizer, run.params, count, config.max_grad_norm)
            run.step += 1
            run.epoch_loss += loss_sum
            run.epoch_count += count
            if run.step % config.log_every_steps == 0 or run.checkpoint_due():
                run.log_step(loss_sum, count, lr, grad_norm)     # the one host sync of a step
            if config.eval_every_steps and run.step % config.eval_every_steps == 0:
                run.evaluate_now(announce=True)
            if run.checkpoint_due():
                run.save_checkpoint()
            if run.should_stop():
                break
        run.end_epoch()
        if run.stopped != "completed":
            break
    return run.finish()


class Run:
    """State of one fit() call: optimizer, schedule, counters, history, best snapshot."""

    def __init__(self, model, train_batches, config, evaluate, optimizer):
        self.model, self.config, self.evaluate = model, config, evaluate
        self.device = next(model.parameters()).device
        self.wrapped = distributed.wrap(model)                # DDP under torchrun (or FSDP)
        self.optimizer = optimizer if optimizer is not None else make_optimizer(self.wrapped, config)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.steps_per_epoch = steps_per_epoch(train_batches, config)
        self.total_steps = total_steps(self.steps_per_epoch, config)
        self.step, self.epoch, self.start, self.stopped = 0, 0, time.perf_counter(), "completed"
        self.best_value, self.best_state, self.bad_evals, self.resumed = None, None, 0, None
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.history = {"name": config.name, "config": asdict(config), "steps": [], "epochs": [],
                        "evals": [], "best": None, "stopped": "completed",
                        "trainable_parameters": trainable, "device": self.device.type,
                        "memory_kind": "cuda_max_allocated" if self.device.type == "cuda"
                        else "cpu_max_rss"}
        if config.resume and checkpoint.exists(config.checkpoint_dir):
            self.restore()
        else:
            self.write_history("running")   # a killed run leaves its own history, not an old one
        model.train()

    def lr_factor(self):
        c = self.config
        total = self.total_steps if self.total_steps is not None else self.step + 1
        return optim_lib.lr_at(self.step, 1.0, c.warmup_steps, max(total, 1), schedule=c.schedule,
                               min_lr_ratio=c.min_lr_ratio)

    def begin_epoch(self, epoch, train_batches):
        """Reset the epoch's counters (or restore a resumed epoch's); -> optimizer steps of this
        epoch already done. Batches with set_epoch get their order for this epoch."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if hasattr(train_batches, "set_epoch"):
            train_batches.set_epoch(epoch)
        part = self.resumed if self.resumed and self.resumed["epoch"] == epoch else {}
        done = part.get("steps_in_epoch", 0)
        self.epoch, self.epoch_start_step = epoch, self.step - done
        self.epoch_start = time.perf_counter() - part.get("epoch_elapsed_s", 0.0)
        self.epoch_loss = torch.tensor(part.get("epoch_loss", 0.0), device=self.device)
        self.epoch_count = torch.tensor(part.get("epoch_count", 0.0), device=self.device)
        self.metrics, self.evaluated_at = part.get("metrics"), part.get("evaluated_at")
        c = self.config
        self.bar = tqdm(total=self.steps_per_epoch, initial=done, dynamic_ncols=True,
                        desc=f"{c.name} epoch {epoch + 1}/{c.epochs}",
                        disable=not (c.progress and distributed.is_main()))
        return done

    # -- crash safety -------------------------------------------------------------------------
    def checkpoint_due(self):
        every = self.config.checkpoint_every_steps
        return bool(every) and self.step % every == 0

    def save_checkpoint(self, epoch_done=False):
        """The resumable state after this step (every rank gathers FSDP shards, rank 0 writes;
        see checkpoint.py)."""
        loss, count = torch.stack([self.epoch_loss, self.epoch_count]).tolist()
        state = {"step": self.step, "epoch": self.epoch + epoch_done,
                 "steps_in_epoch": 0 if epoch_done else self.step - self.epoch_start_step,
                 "epoch_loss": 0.0 if epoch_done else loss, "epoch_count": 0.0 if epoch_done else count,
                 "epoch_elapsed_s": time.perf_counter() - self.epoch_start,
                 "metrics": None if epoch_done else self.metrics,
                 "evaluated_at": None if epoch_done else self.evaluated_at,
                 "best_value": self.best_value, "bad_evals": self.bad_evals,
                 "elapsed_s": time.perf_counter() - self.start, "history": self.history}
        checkpoint.save(self.config.checkpoint_dir, trainable_state(self.model), self.best_state,
                        self.optimizer, state)
        self.write_history("running")

    def restore(self):
        """Continue from config.checkpoint_dir: weights, optimizer, RNG, counters, history."""
        trainable, best, optimizer_tensors, rng, state = checkpoint.load(self.config.checkpoint_dir)
        missing = sorted(set(trainable_state(self.model)) ^ set(trainable))
        if missing:
            raise ValueError(f"{self.config.checkpoint_dir}: the checkpoint holds other trainable "
                             f"tensors than this model ({missing[:3]}); resume with the same options")
        restore_state(self.model, trainable)
        checkpoint.load_optimizer_state(self.optimizer, optimizer_tensors, state["optimizer"])
        checkpoint.set_rng_states(rng, state["rng"])
        self.best_state = {k: v.clone() for k, v in best.items()} if best is not None else None
        self.step, self.epoch, self.history = state["step"], state["epoch"], state["history"]
        self.best_value, self.bad_evals = state["best_value"], state["bad_evals"]
        self.start, self.resumed = time.perf_counter() - state["elapsed_s"], state
        print(f"{self.config.name}: resumed from {self.config.checkpoint_dir} at step {self.step} "
              f"(epoch {self.epoch + 1})", flush=True)

    def log_step(self, loss_sum, count, lr, grad_norm):
        """Read this step's loss on the host, record it; a non-finite loss stops the run."""
        values = torch.stack([loss_sum, count.float()] +
                             ([] if grad_norm is None else [grad_norm.float()])).tolist()
        loss_total, n = values[0], values[1]
        if n <= 0:
            raise ValueError(f"loss_fn returned a total count of {n} at step {self.step}; every "
                             "micro-batch must count at least one example or token")
        loss = loss_total / n
        if not math.isfinite(loss):
            raise ValueError(f"training loss became {loss} at step {self.step}; lower --lr or check "
                             "the data (the last checkpoint written, if any, is intact)")
        self.history["steps"].append({"step": self.step, "epoch": self.epoch, "loss": loss,
                                      "lr": lr, "grad_norm": values[2] if len(values) > 2 else None,
                                      "count": n, "time_s": time.perf_counter() - self.start})
        self.bar.update(self.step - self.bar.n - self.epoch_start_step)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def evaluate_now(self, announce=False):
        """The evaluation hook: eval mode, no grad; update the best snapshot and patience."""
        if self.evaluate is None:
            return None
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast_context(self.device.type, self.config.bf16):
            metrics = dict(self.evaluate(self.model))
        self.model.train()
        metrics = {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v)
                   for k, v in metrics.items()}
        if self.config.count_unit.endswith("tok") and "loss" in metrics:
            metrics.setdefault("perplexity", math.exp(min(metrics["loss"], 50.0)))
        self.history["evals"].append({"step": self.step, "epoch": self.epoch, **metrics,
                                      "time_s": time.perf_counter() - start})
        self.update_best(metrics)
        self.metrics, self.evaluated_at = metrics, self.step
        if announce:
            self.bar.write(f"step {self.step}: " + format_metrics(metrics))
        return metrics

    def update_best(self, metrics):
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
            self.history["best"] = {"step": self.step, "epoch": self.epoch, "metric": key,
                                    "value": value, "metrics": copy.deepcopy(metrics)}
        else:
            self.bad_evals += 1

    def should_stop(self):
        """Set and return the reason to stop (time budget, patience), or None."""
        c = self.config
        over = c.time_budget_s is not None and time.perf_counter() - self.start > c.time_budget_s
        if distributed.any_rank(over):          # every rank stops at the same step
            self.stopped = "time_budget"
        elif c.patience is not None and self.bad_evals >= c.patience:
            self.stopped = "patience"
        return None if self.stopped == "completed" else self.stopped

    def end_epoch(self):
        """Evaluate (unless this step was just evaluated) and record the epoch's summary line."""
        self.bar.close()
        train_time = time.perf_counter() - self.epoch_start
        if self.evaluated_at != self.step:
            self.evaluate_now()
        self.should_stop()
        loss_sum, count = torch.stack([self.epoch_loss, self.epoch_count]).tolist()
        entry = {"epoch": self.epoch, "start_step": self.epoch_start_step, "end_step": self.step,
                 "steps": self.step - self.epoch_start_step, "count": count,
                 "train_loss": loss_sum / count if count else None,
                 "train_time_s": train_time, "time_s": time.perf_counter() - self.epoch_start,
                 "throughput": count / max(train_time, 1e-9), "count_unit": self.config.count_unit,
                 "peak_memory_mb": peak_memory_mb(self.device.type)}
        if self.metrics:
            entry.update({f"dev_{k}": v for k, v in self.metrics.items()})
        self.history["epochs"].append(entry)
        if distributed.is_main():
            print(epoch_line(self.config, entry, self.metrics), flush=True)
        if self.config.checkpoint_dir:
            self.save_checkpoint(epoch_done=True)

    def finish(self):
        """Restore the best state, write history JSON and curves (rank 0), return the history."""
        self.model.eval()
        if self.best_state is not None:
            restore_state(self.model, self.best_state)
        self.history.update(stopped=self.stopped, total_steps=self.step,
                            total_time_s=time.perf_counter() - self.start)
        self.write_history(self.stopped)
        if self.config.out_dir and distributed.is_main():
            plot_curves(self.history, Path(self.config.out_dir) / f"{self.config.name}-curves.png")
        return self.history

    def write_history(self, stopped):
        """<out_dir>/<name>-history.json as it stands ("running" until the run ends)."""
        if self.config.out_dir:
            atomic.save_json_atomic(Path(self.config.out_dir) / f"{self.config.name}-history.json",
                                    {**self.history, "stopped": stopped})


# ----------------------------------------------------------------------------
# the crash-safety flags every training option shares

def add_checkpoint_arguments(parser):
    parser.add_argument("--checkpoint_every_steps", "--checkpoint-every-steps", default=None,
                        type=options.positive_int, help="write a resumable checkpoint every N "
                        "optimizer steps (and at every epoch end) into OUT_DIR/<name>-checkpoint")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run from its checkpoint (same flags otherwise)")


def checkpoint_fields(args, name):
    """TrainConfig fields from those flags: the checkpoint lives at OUT_DIR/<name>-checkpoint."""
    if not (args.checkpoint_every_steps or args.resume):
        return {}
    return {"checkpoint_dir": str(Path(args.out_dir) / f"{name}-checkpoint"),
            "checkpoint_every_steps": args.checkpoint_every_steps, "resume": args.resume}


# ----------------------------------------------------------------------------
# small helpers: schedule length, snapshots, memory, printing, curves

def steps_per_epoch(train_batches, config):
    """Optimizer steps per epoch, or None if train_batches has no len()."""
    try:
        steps = math.ceil(len(train_batches) / config.grad_accum_steps)
    except TypeError:
        steps = None
    if config.max_steps_per_epoch is not None:
        steps = config.max_steps_per_epoch if steps is None else min(steps, config.max_steps_per_epoch)
    return steps


def total_steps(per_epoch, config):
    """Schedule length: config.total_steps, else steps per epoch * epochs (None: unknown)."""
    if config.total_steps is not None:
        return config.total_steps
    if per_epoch is None:
        if config.schedule != "constant":
            raise ValueError("train_batches has no len(): set TrainConfig.total_steps or "
                             "max_steps_per_epoch for a decaying lr schedule")
        return None
    return per_epoch * config.epochs


def make_optimizer(model, config):
    """Our AdamW over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False); "
                         "unfreeze something before calling fit")
    return optim_lib.AdamW(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                           weight_decay=config.weight_decay, foreach=True)  # fast path, tested equal


def trainable_state(model):
    """CPU copies of everything training can change: trainable parameters and persistent buffers
    (FSDP shards gathered: every rank calls this)."""
    distributed.reshard(model)
    buffers = {name for name, _ in model.named_buffers()}
    state = {n: distributed.full(p.detach()).to("cpu", copy=True)
             for n, p in model.named_parameters() if p.requires_grad}
    for name, value in model.state_dict().items():
        if name in buffers:
            state[name] = value.detach().to("cpu", copy=True)       # FSDP leaves buffers whole
    return state


def restore_state(model, state):
    """Copy a trainable_state snapshot back into the model in place (into each FSDP shard)."""
    distributed.reshard(model)
    current = dict(model.named_parameters())
    current.update(dict(model.named_buffers()))
    with torch.no_grad():
        for name, value in state.items():
            current[name].copy_(distributed.shard_like(value, current[name]))


def peak_memory_mb(device_type):
    """Peak memory: CUDA max allocated since the last reset, or the process's max RSS on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def format_metrics(metrics):
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def epoch_line(config, entry, metrics):
    loss = "n/a" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
    return (f"{config.name} epoch {entry['epoch'] + 1}: train loss {loss}"
            + (", dev " + format_metrics(metrics) if metrics else "")
            + f", {entry['time_s']:.1f} s, {entry['throughput']:.1f} {config.count_unit}/s,"
            f" peak {entry['peak_memory_mb']:.0f} MiB")


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
