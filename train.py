"""The one training loop every part of llmlab reuses: classifiers, instruction tuning, SSMs, pico.

`fit` is the whole loop on one screen:
    for each epoch:
        for each group of K = grad_accum_steps micro-batches:
            forward + backward each micro-batch          L_b = summed loss, n_b = items it counts
            g = (sum_b grad L_b) / (sum_b n_b)            gradient of the mean over the K batches
            g = g * min(1, max_grad_norm / ||g||_2)       global-norm clipping (Pascanu et al. 2013,
                                                          arXiv:1211.5063)
            lr_t = lr * lr_at(t)                          warmup, then cosine/linear decay (SGDR,
                                                          Loshchilov & Hutter 2017, 1608.03983)
            theta = AdamW(theta, g, lr_t)                 (Loshchilov & Hutter 2019, 1711.05101)
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
snapshots and checkpoints gather the shards (checkpoint.trainable_state) and put them back
(checkpoint.restore_state). On one process these are no-ops.
Evaluation hook: evaluate(model) -> dict of floats, run in eval mode without gradients every
eval_every_steps steps and at each epoch end; a "loss" of a token-counting run (count_unit ending
in "tok") also gets its perplexity exp(loss). BestKeeper keeps the state of the best
select_metric (restored at the end) and counts evaluations without gain (patience).
Mixed precision: bf16 autocast on CUDA only (Micikevicius et al. 2018, arXiv:1710.03740, Sec. 3
for the idea; bf16 needs no loss scaling). On CPU everything stays fp32.

Who owns what: fit owns the counters (step; the epoch's tally of loss sums); history.py the
record, its JSON, printed lines and curves; checkpoint.py the resumable state (what is saved, when,
what a resumed run skips). The training flags of every trainer (`--epochs`, `--lr`,
`--time_budget_s`, `--resume`, ...) are declared once here (TRAINING_FLAGS, add_training_arguments)
and turned into a TrainConfig by config_from_args.

Shapes are whatever the caller's loss_fn takes; fit never looks inside a batch.
Size: ~520 lines: the loop, its steps (resume, evaluate, stop, save) and TrainConfig read as one.
Tests: tests/test_train.py (batch of 8 == 4 accumulated micro-batches of 2, against a plain
full-batch step with torch.optim.AdamW; best-on-dev restore; patience; schedule; history and
curves written; perplexity; one host sync per logged step; the flags -> TrainConfig).
"""
import contextlib
import copy
import itertools
import math
import resource
import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import distributed
import optimizer as optim_lib
import options
from history import History, format_metrics


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
    total_steps: int = None            # schedule length in steps (None: from len(batches))
    grad_accum_steps: int = 1          # micro-batches per optimizer step
    max_grad_norm: float = 1.0         # clip the global gradient L2 norm to this (None: never)
    max_steps_per_epoch: int = None    # stop an epoch after this many optimizer steps (None: all)
    time_budget_s: float = None        # stop training after this many seconds (None: no limit)
    eval_every_steps: int = None       # also evaluate every this many steps (None: epoch ends only)
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
    resume: bool = False               # continue from checkpoint_dir (refused when none is there)
    start_if_missing: bool = False     # with resume: start fresh when no checkpoint is there
    identity: dict = dataclass_field(default=None, compare=False)  # flags, data digests

    def __post_init__(self):
        for field in ("epochs", "grad_accum_steps", "log_every_steps"):
            if getattr(self, field) < 1:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)}: must be >= 1")
        for field in ("max_steps_per_epoch", "eval_every_steps", "total_steps", "patience",
                      "checkpoint_every_steps"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)}: must be >= 1 "
                                 "or None")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"TrainConfig.select_mode={self.select_mode!r}: use 'max' or 'min'")
        if self.schedule not in optim_lib.SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: use constant, cosine or "
                             "linear")
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


def batch_tokens(batch):
    """The real tokens of a batch's examples (a packed batch says how many it holds, its shared
    prefix counted once per example; else its attention mask's ones; 0 if it has neither)."""
    if not isinstance(batch, dict):
        return 0
    if "real_tokens" in batch:
        return batch["real_tokens"]
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else 0


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
    fit owns its counters: `step` (optimizer steps done) and each epoch's tally (loss sums).
    """
    setup = Setup(model, train_batches, config, evaluate, optimizer)
    progress = resume_or_start(setup)                  # checkpoint.Progress; zeros when fresh
    step, stopped = progress.step, None
    for epoch in range(progress.epoch, config.epochs):
        tally = begin_epoch(setup, epoch, step, checkpoint.epoch_part(progress, epoch),
                            train_batches)
        for micro_batches in accumulation_groups(train_batches, config, step - tally.start_step):
            setup.optimizer.zero_grad(set_to_none=True)
            loss_sum, count = accumulate_gradients(setup.wrapped, micro_batches, loss_fn, config,
                                                   setup.device)
            lr = set_lr(setup.optimizer, setup.lr_factor(step))
            grad_norm = optimizer_step(setup.optimizer, setup.params, count, config.max_grad_norm)
            step += 1
            tally.loss += loss_sum
            tally.count += count
            tally.tokens += sum(batch_tokens(batch) for batch in micro_batches)
            save_now = checkpoint.due(step, config.checkpoint_every_steps)
            if step % config.log_every_steps == 0 or save_now:
                log_step(setup, tally, step, loss_sum, count, lr, grad_norm)  # the one host sync
            if config.eval_every_steps and step % config.eval_every_steps == 0:
                evaluate_now(setup, tally, step, announce=True)
            if save_now:
                save_progress(setup, tally, step)
            stopped = stop_reason(setup)
            if stopped:
                break
        stopped = end_epoch(setup, tally, step) or stopped
        if stopped:
            break
    return finish(setup, step, stopped)


class Setup:
    """What fit builds once and never counts with: the DDP/FSDP-wrapped model, the optimizer and
    its parameters, the schedule length, the best-state keeper, the history and the clock."""

    def __init__(self, model, train_batches, config, evaluate, optimizer):
        self.model, self.config, self.evaluate = model, config, evaluate
        self.device = next(model.parameters()).device
        self.wrapped = distributed.wrap(model)                # DDP under torchrun (or FSDP)
        self.optimizer = (optimizer if optimizer is not None
                          else make_optimizer(self.wrapped, config))
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.steps_per_epoch = steps_per_epoch(train_batches, config)
        self.total_steps = total_steps(self.steps_per_epoch, config)
        self.start = time.perf_counter()
        self.keeper = BestKeeper(config.select_metric, config.select_mode, config.patience)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.history = History(config, trainable, self.device.type)

    def lr_factor(self, step):
        """The schedule's lr / peak lr at optimizer step `step` (optimizer.lr_at)."""
        c = self.config
        total = self.total_steps if self.total_steps is not None else step + 1
        return optim_lib.lr_at(step, 1.0, c.warmup_steps, max(total, 1), schedule=c.schedule,
                               min_lr_ratio=c.min_lr_ratio)


@dataclass
class EpochTally:
    """fit's running counters for the epoch under way (a resumed epoch starts from the
    checkpoint's). Loss and count stay on the device: no host sync per step."""
    epoch: int                     # 0-based
    start_step: int                # global step before the epoch's first step
    start_time: float              # perf_counter at its start (earlier by a resumed part's time)
    loss: torch.Tensor             # summed training loss so far (0-d, on the device)
    count: torch.Tensor            # the items (examples, tokens) it counts
    metrics: dict = None           # the epoch's latest evaluation
    evaluated_at: int = None       # the step of that evaluation
    bar: object = None             # the tqdm progress bar
    tokens: int = 0                # real (not padding) tokens trained in this epoch so far


class BestKeeper:
    """Model selection and early stopping on one metric (Prechelt 1998, "Early stopping - but
    when?"): the trainable state at the best value of `metric` so far ("max" or "min" mode), and
    the evaluations since it last improved; `patience` of those without gain stops the run."""

    def __init__(self, metric, mode, patience):
        self.metric, self.mode, self.patience = metric, mode, patience
        self.value, self.state, self.bad_evals = None, None, 0

    def update(self, metrics, model):
        """Compare metrics[metric] with the best so far, snapshot the model on a gain;
        -> improved?"""
        if self.metric not in metrics:
            raise ValueError(f"evaluate() returned {sorted(metrics)} but TrainConfig.select_metric "
                             f"is {self.metric!r}; set select_metric to one of those keys")
        value = metrics[self.metric]
        improved = (self.value is None or
                    (value > self.value if self.mode == "max" else value < self.value))
        if improved:
            self.value, self.bad_evals = value, 0
            self.state = checkpoint.trainable_state(model)
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self):
        return self.patience is not None and self.bad_evals >= self.patience

    def restore(self, model):
        """Put the best snapshot back into the model (nothing when no evaluation ran)."""
        if self.state is not None:
            checkpoint.restore_state(model, self.state)


# ----------------------------------------------------------------------------
# the loop's steps: resume, epoch start and end, logging, evaluation, stopping, saving

def resume_or_start(setup):
    """-> checkpoint.Progress: the checkpoint's, put back in place, when config.resume finds one
    of the same run (checkpoint.check_identity: the flags, data digests, processes and trainable
    shapes); else a fresh start, whose history file replaces an older run's at once. --resume
    with no checkpoint there is refused unless config.start_if_missing (--resume_or_start)."""
    config = setup.config
    setup.identity = {**(config.identity or {}), "processes": distributed.world_size(),
                      "trainable": {name: list(p.shape) for name, p
                                    in setup.model.named_parameters() if p.requires_grad}}
    if config.resume and not config.start_if_missing and not checkpoint.exists(
            config.checkpoint_dir):
        raise FileNotFoundError(f"--resume {config.checkpoint_dir}: no checkpoint there (no "
                                "state.json); drop --resume, or pass --resume_or_start to start "
                                "fresh when none is there")
    if config.resume and checkpoint.exists(config.checkpoint_dir):
        progress, setup.keeper.state = checkpoint.restore(config.checkpoint_dir, setup.model,
                                                          setup.optimizer, setup.identity)
        setup.keeper.value, setup.keeper.bad_evals = progress.best_value, progress.bad_evals
        setup.history.record = progress.history
        setup.start = time.perf_counter() - progress.elapsed_s
        print(f"{config.name}: resumed from {config.checkpoint_dir} at step {progress.step} "
              f"(epoch {progress.epoch + 1})", flush=True)
    else:
        progress = checkpoint.Progress()
        setup.history.write("running")   # a killed run leaves its own history, not an old one
    setup.model.train()
    return progress


def begin_epoch(setup, epoch, step, part, train_batches):
    """The epoch's tally, from `part` (checkpoint.epoch_part: zeros, or a resumed epoch's
    counters); batches with set_epoch get this epoch's order; CUDA's peak memory is reset."""
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if hasattr(train_batches, "set_epoch"):
        train_batches.set_epoch(epoch)
    c = setup.config
    bar = tqdm(total=setup.steps_per_epoch, initial=part.steps_in_epoch, dynamic_ncols=True,
               desc=f"{c.name} epoch {epoch + 1}/{c.epochs}",
               disable=not (c.progress and distributed.is_main()))
    return EpochTally(epoch, step - part.steps_in_epoch,
                      time.perf_counter() - part.epoch_elapsed_s,
                      torch.tensor(part.epoch_loss, device=setup.device),
                      torch.tensor(part.epoch_count, device=setup.device),
                      part.metrics, part.evaluated_at, bar, part.epoch_tokens)


def log_step(setup, tally, step, loss_sum, count, lr, grad_norm):
    """Read this step's loss on the host, record it; a non-finite loss stops the run."""
    values = torch.stack([loss_sum, count.float()] +
                         ([] if grad_norm is None else [grad_norm.float()])).tolist()
    loss_total, n = values[0], values[1]
    if n <= 0:
        raise ValueError(f"loss_fn returned a total count of {n} at step {step}; every "
                         "micro-batch must count at least one example or token")
    loss = loss_total / n
    if not math.isfinite(loss):
        raise ValueError(f"training loss became {loss} at step {step}; lower --lr or check "
                         "the data (the last checkpoint written, if any, is intact)")
    setup.history.add_step(step, tally.epoch, loss, lr, values[2] if len(values) > 2 else None,
                           n, time.perf_counter() - setup.start)
    tally.bar.update(step - tally.bar.n - tally.start_step)
    seconds = time.perf_counter() - tally.start_time
    tally.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                          **({"tok/s": f"{tally.tokens / seconds:.0f}"} if tally.tokens else {}))


def evaluate_now(setup, tally, step, announce=False):
    """The evaluation hook: eval mode, no grad; record it (history, best state, patience) and
    keep it as the tally's latest metrics."""
    if setup.evaluate is None:
        return
    model, config = setup.model, setup.config
    model.eval()
    start = time.perf_counter()
    with torch.no_grad(), autocast_context(setup.device.type, config.bf16):
        metrics = dict(setup.evaluate(model))
    model.train()
    metrics = {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v)
               for k, v in metrics.items()}
    if config.count_unit.endswith("tok") and "loss" in metrics:
        metrics.setdefault("perplexity", math.exp(min(metrics["loss"], 50.0)))
    setup.history.add_eval(step, tally.epoch, metrics, time.perf_counter() - start)
    if setup.keeper.update(metrics, model):
        setup.history.set_best(step, tally.epoch, setup.keeper.metric, setup.keeper.value,
                               copy.deepcopy(metrics))
    tally.metrics, tally.evaluated_at = metrics, step
    if announce:
        tally.bar.write(f"step {step}: " + format_metrics(metrics))


def stop_reason(setup):
    """"time_budget" or "patience" when the run must stop now, else None (every rank agrees)."""
    c = setup.config
    over = c.time_budget_s is not None and time.perf_counter() - setup.start > c.time_budget_s
    if distributed.any_rank(over):          # every rank stops at the same step
        return "time_budget"
    return "patience" if setup.keeper.should_stop else None


def save_progress(setup, tally, step, epoch_done=False):
    """The resumable state after this step (checkpoint.save_progress), then the history file."""
    loss, count = torch.stack([tally.loss, tally.count]).tolist()
    progress = checkpoint.Progress(
        step=step, epoch=tally.epoch + epoch_done,
        steps_in_epoch=0 if epoch_done else step - tally.start_step,
        epoch_loss=0.0 if epoch_done else loss, epoch_count=0.0 if epoch_done else count,
        epoch_elapsed_s=time.perf_counter() - tally.start_time,
        epoch_tokens=0 if epoch_done else tally.tokens,
        metrics=None if epoch_done else tally.metrics,
        evaluated_at=None if epoch_done else tally.evaluated_at,
        best_value=setup.keeper.value, bad_evals=setup.keeper.bad_evals,
        elapsed_s=time.perf_counter() - setup.start, history=setup.history.record,
        identity=setup.identity)
    checkpoint.save_progress(setup.config.checkpoint_dir, setup.model, setup.keeper.state,
                             setup.optimizer, progress)
    setup.history.write("running")


def end_epoch(setup, tally, step):
    """Evaluate (unless this step just was), record and print the epoch's summary, checkpoint
    it; -> the reason to stop that this evaluation or the clock gives, or None."""
    tally.bar.close()
    train_time = time.perf_counter() - tally.start_time
    if tally.evaluated_at != step:
        evaluate_now(setup, tally, step)
    stopped = stop_reason(setup)
    loss_sum, count = torch.stack([tally.loss, tally.count]).tolist()
    setup.history.add_epoch({
        "epoch": tally.epoch, "start_step": tally.start_step, "end_step": step,
        "steps": step - tally.start_step, "count": count,
        "train_loss": loss_sum / count if count else None, "train_time_s": train_time,
        "time_s": time.perf_counter() - tally.start_time,
        "throughput": count / max(train_time, 1e-9), "count_unit": setup.config.count_unit,
        "tokens": tally.tokens, "tokens_per_s": tally.tokens / max(train_time, 1e-9),
        "peak_memory_mb": peak_memory_mb(setup.device.type)}, tally.metrics)
    if setup.config.checkpoint_dir:
        save_progress(setup, tally, step, epoch_done=True)
    return stopped


def finish(setup, step, stopped):
    """Restore the best state, write history JSON and curves (rank 0), return the history."""
    setup.model.eval()
    setup.keeper.restore(setup.model)
    return setup.history.finish(stopped or "completed", step,
                                time.perf_counter() - setup.start)


# ----------------------------------------------------------------------------
# the training flags: one spelling, type and help per concept, for every trainer

# every trainer has these (crash safety and the budget of a reduced run)
COMMON_FLAGS = dict(max_steps_per_epoch=None, time_budget_s=None, no_progress=False,
                    checkpoint_every_steps=None, resume=False, resume_or_start=False)
# flag -> the TrainConfig field it sets (config_from_args)
CONFIG_FIELDS = {"epochs": "epochs", "lr": "lr", "weight_decay": "weight_decay",
                 "schedule": "schedule", "warmup_steps": "warmup_steps",
                 "grad_accum": "grad_accum_steps", "eval_every_steps": "eval_every_steps",
                 "patience": "patience", "max_steps_per_epoch": "max_steps_per_epoch",
                 "time_budget_s": "time_budget_s", "out_dir": "out_dir",
                 "checkpoint_every_steps": "checkpoint_every_steps"}


def add_training_arguments(parser, **defaults):
    """A trainer's flags: COMMON_FLAGS plus the options.TRAINING_FLAGS it names, with its
    defaults (e.g. epochs=5, lr=2e-5, batch_size=8)."""
    options.add_flags(parser, **{**COMMON_FLAGS, **defaults})


def config_from_args(args, **overrides):
    """TrainConfig from the parsed training flags (those the trainer declared), then overrides
    (name, select_metric, count_unit, ...: what the trainer fixes itself). With
    --checkpoint_every_steps or --resume the checkpoint is OUT_DIR/<name>-checkpoint (or the
    folder --resume names), unless overrides set checkpoint_dir."""
    fields = {field: getattr(args, flag) for flag, field in CONFIG_FIELDS.items()
              if hasattr(args, flag)}
    or_start = bool(getattr(args, "resume_or_start", False))
    fields.update({"progress": not args.no_progress, "resume": bool(args.resume) or or_start,
                   "start_if_missing": or_start, **overrides})
    if "checkpoint_dir" not in fields and (args.checkpoint_every_steps or fields["resume"]):
        name = fields.get("name", TrainConfig.name)
        fields["checkpoint_dir"] = (args.resume if isinstance(args.resume, str)
                                    else str(Path(args.out_dir) / f"{name}-checkpoint"))
    if fields.get("checkpoint_dir") and "identity" not in fields:
        fields["identity"] = checkpoint.run_identity(args)     # data files by their digests
    return TrainConfig(**fields)


# ----------------------------------------------------------------------------
# small helpers: schedule length, the default optimizer, memory

def steps_per_epoch(train_batches, config):
    """Optimizer steps per epoch, or None if train_batches has no len()."""
    try:
        steps = math.ceil(len(train_batches) / config.grad_accum_steps)
    except TypeError:
        steps = None
    if config.max_steps_per_epoch is not None:
        cap = config.max_steps_per_epoch
        steps = cap if steps is None else min(steps, cap)
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
                           weight_decay=config.weight_decay,
                           foreach=True)                    # fast path, tested equal


def peak_memory_mb(device_type):
    """Peak memory: CUDA max allocated since the last reset, or the process's max RSS on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB
