"""Checkpoints: the folders a run continues from, and every function that reads or writes them.

Two kinds, each one folder written by atomic.replace_folder_atomic (built beside the old one and
swapped in whole, so a kill at any instant leaves the previous complete folder, at worst as
`<folder>.old`, which atomic.folder_or_backup finds):

1. Training checkpoint (train.fit, `--checkpoint_every_steps N`, `--resume`), format
   "llmlab-train-1", OUT_DIR/<name>-checkpoint: everything fit needs to continue a killed run
   exactly.
    model.safetensors      the trainable state (trainable parameters and persistent buffers)
    best.safetensors       the best state so far (restored at the end of fit), if any
    optimizer.safetensors  AdamW's moments m, v per parameter ("<index>.<key>")
    rng.safetensors        torch's CPU generator state (and CUDA's, one per device)
    state.json             format, then the Progress fields (step, epoch, optimizer steps done in
                           that epoch, the epoch's running loss sum and count, best value,
                           evaluations without gain, seconds trained, the history so far), then
                           optimizer groups and scalars, Python's and numpy's RNG states
   Continuing = rebuild the model and optimizer as the first run did, load this folder into them,
   replay the data order of the saved epoch (batches with set_epoch(epoch) are a pure function of
   seed and epoch) and skip the steps_in_epoch steps already done (epoch_part). With the RNG
   states restored, a resumed CPU run is bit-identical to an uninterrupted one.
2. Finished pico run (run_pico.py, `--option pico`), format "llmlab-pico-1", OUT_DIR/<name>: a
   trained pico model to continue (`--resume`: --epochs more) or to sample from.
    model.safetensors      the model's state_dict
    optimizer.safetensors  AdamW's moments, when saved with the optimizer
    tokenizer.model        the SentencePiece BPE model (tokenizer "bpe"; bytes need no file)
    pico.json              format, PicoConfig, tokenizer kind, optimizer groups and scalars, and
                           the run's steps / epochs / complete (False: a killed run, whose training
                           checkpoint OUT_DIR/<name>-checkpoint finishes it)

Reading back is checked before anything changes: state.json and pico.json field by field
(file_checks.check_fields), every tensor's name and shape against the model, every size of a pico
config within options.MAX_SIZE and its parameter count within options.MAX_ELEMENTS, and the run's
identity (run_identity: every flag but RESUMABLE_FLAGS, data files by digest, processes,
trainable shapes): `--resume` of another run is one line naming what differs.

Tests: tests/test_checkpoint.py (optimizer state round trip; SIGKILL + resume == uninterrupted,
through train.fit and through run.py; a half-written checkpoint leaves the previous one);
tests/test_pico.py (a pico checkpoint resumed == an uninterrupted run; another model kind or a
foreign folder refused; a save that fails midway keeps the old folder);
tests/test_reliability_inputs.py (hostile state.json / pico.json, another run refused).
Size: ~430 lines: both checkpoint kinds with the checks of what they read back, in one place.
"""
import hashlib
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

import atomic
import distributed
import file_checks
import options
import pico
import safetensors_io
from tokenizer import ByteTokenizer, SentencePieceTokenizer

TRAIN_FORMAT = "llmlab-train-1"
PICO_FORMAT = "llmlab-pico-1"


@dataclass
class Progress:
    """Where a training run stands: state.json's counters, in its order (a fresh run: zeros)."""
    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # the epoch under way (0-based)
    steps_in_epoch: int = 0        # optimizer steps of that epoch done (a resumed run skips them)
    epoch_loss: float = 0.0        # that epoch's summed training loss so far
    epoch_count: float = 0.0       # the items (examples or tokens) that sum counts
    epoch_elapsed_s: float = 0.0   # seconds spent in that epoch
    epoch_tokens: int = 0          # the real tokens trained in that epoch
    metrics: dict = None           # that epoch's latest evaluation (None: none yet)
    evaluated_at: int = None       # the step of that evaluation
    best_value: float = None       # best select_metric so far (train.BestKeeper)
    bad_evals: int = 0             # evaluations since it last improved (patience)
    elapsed_s: float = 0.0         # seconds since the run started
    history: dict = None           # the history record so far (history.py)
    identity: dict = None          # what defines the run (run_identity); --resume compares it


# ----------------------------------------------------------------------------
# the trainable state: what a snapshot and a training checkpoint hold

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


# ----------------------------------------------------------------------------
# optimizer and RNG states as tensors + JSON

def optimizer_state_tensors(optimizer):
    """(tensors {"<param index>.<key>": tensor}, meta {"param_groups", "scalars"})."""
    state_dict = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state_dict["param_groups"], "scalars": {}}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):            # an FSDP shard is gathered whole
                tensors[f"{index}.{key}"] = distributed.full(value.detach()).cpu().contiguous()
            else:
                meta["scalars"][f"{index}.{key}"] = value
    return tensors, meta


def load_optimizer_state(optimizer, tensors, meta):
    """Inverse of optimizer_state_tensors (each moment back into its parameter's FSDP shard)."""
    state = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for param, moments in optimizer.state.items():
        for key, value in moments.items():
            if isinstance(value, torch.Tensor):
                moments[key] = distributed.shard_like(value, param)


def rng_states():
    """(tensors, JSON-able dict) of every generator a training step may draw from."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(state), gauss],
                     "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def set_rng_states(tensors, states):
    torch.set_rng_state(tensors["torch"].clone())
    cuda = [tensors[k].clone() for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------
# 1. the training checkpoint folder

def save(folder, trainable, best, optimizer, state):
    """Write a training checkpoint folder (see the module docstring); `state` is the JSON part."""
    optimizer_tensors, optimizer_meta = optimizer_state_tensors(optimizer)
    rng_tensors, rng_json = rng_states()
    state = {"format": TRAIN_FORMAT, **state, "optimizer": optimizer_meta, "rng": rng_json}

    def fill(tmp):
        safetensors_io.write_safetensors(tmp / "model.safetensors", trainable)
        if best is not None:
            safetensors_io.write_safetensors(tmp / "best.safetensors", best)
        safetensors_io.write_safetensors(tmp / "optimizer.safetensors", optimizer_tensors)
        safetensors_io.write_safetensors(tmp / "rng.safetensors", rng_tensors)
        atomic.save_json_atomic(tmp / "state.json", state)   # written last
    atomic.replace_folder_atomic(folder, fill)


def exists(folder):
    return (atomic.folder_or_backup(folder) / "state.json").is_file()


def load(folder):
    """-> (trainable, best or None, optimizer tensors, rng tensors, state dict)."""
    folder = atomic.folder_or_backup(folder)
    path = Path(folder) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no training checkpoint there (state.json missing); "
                                "drop --resume to start from scratch")
    state = file_checks.read_json(path, kind=dict)
    if state.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path}: not an llmlab training checkpoint ({TRAIN_FORMAT}); drop "
                         "--resume")
    best = folder / "best.safetensors"
    return (safetensors_io.read_safetensors(folder / "model.safetensors"),
            safetensors_io.read_safetensors(best) if best.is_file() else None,
            safetensors_io.read_safetensors(folder / "optimizer.safetensors"),
            safetensors_io.read_safetensors(folder / "rng.safetensors"), state)


# ----------------------------------------------------------------------------
# resuming train.fit: when to save, what to save, what to put back, which steps to skip

def due(step, every):
    """True when a training checkpoint is written after optimizer step `step` (every N steps)."""
    return bool(every) and step % every == 0


def save_progress(folder, model, best, optimizer, progress):
    """A training checkpoint: the model's trainable state now, the best snapshot (or None), the
    optimizer and RNG states and `progress` (every rank gathers FSDP shards, rank 0 writes)."""
    save(folder, trainable_state(model), best, optimizer,
         {f.name: getattr(progress, f.name) for f in fields(progress)})


def restore(folder, model, optimizer, identity=None):
    """Put a training checkpoint back: the model's trainable state, the optimizer's moments and
    every RNG, in place; -> (Progress, best snapshot or None). Refused in one line, before
    anything changes: a state.json field of the wrong kind, another run's identity (the flags
    and data of run_identity), tensors of other names or shapes."""
    trainable, best, optimizer_tensors, rng, state = load(folder)
    source = atomic.folder_or_backup(folder) / "state.json"
    file_checks.check_fields(state, source, STATE_FIELDS)
    if identity is not None:
        check_identity(state.get("identity"), identity, folder)
    shapes = {name: tuple(v.shape) for name, v in trainable_state(model).items()}
    for what, tensors in [("model.safetensors", trainable), ("best.safetensors", best)]:
        if tensors is not None:
            check_shapes(tensors, shapes, atomic.folder_or_backup(folder) / what)
    with file_checks.format_errors(source, "training checkpoint"):
        check_moments(optimizer, optimizer_tensors, source)
        restore_state(model, trainable)
        load_optimizer_state(optimizer, optimizer_tensors, state["optimizer"])
        set_rng_states(rng, state["rng"])
    best = {k: v.clone() for k, v in best.items()} if best is not None else None
    return Progress(**{f.name: state.get(f.name, f.default) for f in fields(Progress)}), best


def check_shapes(tensors, shapes, source):
    """One line when a checkpoint's tensors are not the model's, by name or by shape."""
    missing = sorted(set(shapes) ^ set(tensors))
    if missing:
        raise ValueError(f"{source}: the checkpoint holds other trainable tensors than this "
                         f"model ({missing[:3]}); resume with the same options")
    for name, value in tensors.items():
        if tuple(value.shape) != shapes[name]:
            raise ValueError(f"{source}: {name} is {tuple(value.shape)} in the checkpoint but "
                             f"{shapes[name]} in this model (another rank or base model?); "
                             "resume with the same options")


def check_moments(optimizer, tensors, source):
    """Each AdamW moment "<index>.<key>" names a parameter of this optimizer, in its shape."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, value in tensors.items():
        index, _, key = name.partition(".")
        if not index.isdigit() or int(index) >= len(params):
            raise ValueError(f"{source}: optimizer moment {name} names no parameter of this "
                             f"model ({len(params)} trainable); resume with the same options")
        if key in ("exp_avg", "exp_avg_sq") and value.shape != params[int(index)].shape:
            raise ValueError(f"{source}: optimizer moment {name} is {tuple(value.shape)}, its "
                             f"parameter {tuple(params[int(index)].shape)}; resume with the same "
                             "options")


def epoch_part(progress, epoch):
    """The counters `epoch` starts from: the checkpoint's when the resumed run stopped inside
    it (its steps_in_epoch steps are skipped, their micro-batches already consumed), else zeros."""
    return progress if progress.epoch == epoch else Progress(epoch=epoch)


# ----------------------------------------------------------------------------
# the identity of a run: what --resume must find unchanged

# state.json's fields (after format), checked before any is used
_COUNT, _NUMBER = (int, lambda v: v >= 0, "an integer >= 0"), (float, None, "")
STATE_FIELDS = {"step": _COUNT, "epoch": _COUNT, "steps_in_epoch": _COUNT,
                "epoch_loss": _NUMBER, "epoch_count": _NUMBER, "epoch_elapsed_s": _NUMBER,
                "epoch_tokens?": _COUNT,
                "metrics": ((dict, type(None)), None, ""),
                "evaluated_at": ((int, type(None)), None, ""),
                "best_value": ((float, type(None)), None, ""), "bad_evals": _COUNT,
                "elapsed_s": _NUMBER, "history": ((dict, type(None)), None, ""),
                "identity?": ((dict, type(None)), None, ""), "optimizer": (dict, None, ""),
                "rng": (dict, None, "")}
# flags that may change between a run and its resume (budgets, outputs, evaluation, display);
# every other flag defines the run, and a data file by its digest.
RESUMABLE_FLAGS = {"epochs", "time_budget_s", "max_steps_per_epoch", "patience", "resume",
                   "resume_or_start", "checkpoint_every_steps", "no_progress", "threads",
                   "device", "use_gpu", "out_dir", "dev_out", "test_out", "submission", "test",
                   "json", "eval_data", "eval_limit", "eval_batch_size", "max_test_examples",
                   "compile", "compile_backend", "rendezvous_timeout_s", "name"}
PLAIN = (int, float, str, bool, type(None))
SAMPLED = 256 << 20          # files larger than this are digested by their size, head and tail


def file_digest(path):
    """sha256 of a file ("sha256:..."); past SAMPLED bytes, of its size, first and last 64 MiB."""
    digest, size = hashlib.sha256(), Path(path).stat().st_size
    with open(path, "rb") as f:
        spans = [(0, size)] if size <= SAMPLED else [(0, 64 << 20), (size - (64 << 20), 64 << 20)]
        digest.update(str(size).encode())
        for start, length in spans:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(length, 1 << 20))
                digest.update(chunk)
                length -= len(chunk)
    return ("sha256:" if size <= SAMPLED else "sha256-sampled:") + digest.hexdigest()


def run_identity(args):
    """What defines a run, from its flags: every flag but RESUMABLE_FLAGS; a flag naming a file
    is recorded by the file's digest (the same data under another path is the same run)."""
    identity = {}
    for name, value in sorted(vars(args).items()):
        if name in RESUMABLE_FLAGS:
            continue
        if isinstance(value, (list, tuple)) and all(isinstance(v, PLAIN) for v in value):
            identity[name] = [_digest_if_file(v) for v in value]      # e.g. --input_files
        elif isinstance(value, PLAIN):
            identity[name] = _digest_if_file(value)
    return identity            # (objects a driver attached to args are not flags: left out)


def _digest_if_file(value):
    return file_digest(value) if isinstance(value, str) and _is_file(value) else value


def _is_file(text):
    try:
        return Path(text).is_file()
    except (OSError, ValueError):         # a name too long, a NUL: text, not a path
        return False


def check_identity(saved, current, folder):
    """One line naming the fields of the run that differ from the checkpoint's (up to four)."""
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {folder}: the checkpoint records no run identity (written by "
                         "an older llmlab), so it cannot be matched to this run; drop --resume")
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if not differ:
        return
    shown = []
    for key in differ[:4]:
        now, then = current.get(key), saved.get(key)
        if isinstance(now, dict) or isinstance(then, dict):
            now, then = _first_difference(now or {}, then or {})
        shown.append(f"{key} {str(now)[:40]} (checkpoint: {str(then)[:40]})")
    raise ValueError(f"--resume {folder}: the checkpoint is another run: {'; '.join(shown)}; "
                     "rerun with its flags and data, or drop --resume to start over")


def _first_difference(now, then):
    key = next(k for k in sorted(set(now) | set(then), key=str) if now.get(k) != then.get(k))
    return f"{key}={now.get(key)}", f"{key}={then.get(key)}"


# ----------------------------------------------------------------------------
# 2. a finished pico run

def save_pico(directory, model, tokenizer, optimizer=None, extra=None):
    """Write a pico run folder; the old folder is replaced only once the new one is complete
    (until then it stays at `directory`, or at `directory.old` for the final swap)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": PICO_FORMAT, "config": asdict(model.cfg), "tokenizer": tokenizer.kind,
            "optimizer": None, **(extra or {})}
    optimizer_tensors = None
    if optimizer is not None:
        optimizer_tensors, meta["optimizer"] = optimizer_state_tensors(optimizer)

    def fill(folder):
        safetensors_io.write_safetensors(folder / "model.safetensors", tensors)
        if optimizer_tensors is not None:
            safetensors_io.write_safetensors(folder / "optimizer.safetensors", optimizer_tensors)
        if tokenizer.kind == "bpe":
            atomic.write_bytes_atomic(folder / "tokenizer.model", tokenizer.model_proto)
        atomic.save_json_atomic(folder / "pico.json", meta)             # written last
    atomic.replace_folder_atomic(directory, fill)


# pico.json's fields besides the config (checked before use)
PICO_FIELDS = {"config": (dict, None, ""),
               "tokenizer": (str, ("bpe", "byte").__contains__, "bpe or byte"),
               "optimizer": ((dict, type(None)), None, ""),
               "steps?": _COUNT, "epochs?": _COUNT, "complete?": (bool, None, "")}


def saved_config(cls, data, source):
    """A config dataclass (PicoConfig) from a saved JSON object, field by field: every field
    present and of its default's kind, every integer a size within options.MAX_SIZE."""
    spec = {f.name: options.size_field() if type(f.default) is int else (type(f.default), None, "")
            for f in fields(cls)}
    file_checks.check_fields(data, source, spec)
    try:
        return cls(**{name: data[name] for name in spec})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def load_pico(directory, expected_model=None):
    """-> (model, tokenizer, meta); one-line errors for a missing, foreign or other-kind folder.
    A folder a crash left as `<directory>.old` (atomic.folder_or_backup) is loaded too."""
    directory = atomic.folder_or_backup(directory)
    meta_path = directory / "pico.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"--resume {directory}: no pico.json there, so it is not a pico "
                                "checkpoint; give a folder written by --option pico")
    meta = file_checks.read_json(meta_path, kind=dict, flag="--resume")
    if meta.get("format") != PICO_FORMAT:
        raise ValueError(f"--resume {meta_path}: format {meta.get('format')!r} is not "
                         f"{PICO_FORMAT!r}; give a folder written by --option pico")
    file_checks.check_fields(meta, meta_path, PICO_FIELDS)
    cfg = saved_config(pico.PicoConfig, meta["config"], f"{meta_path} config")  # sizes bounded
    if expected_model is not None and cfg.model != expected_model:
        raise ValueError(f"--resume {directory} holds a {cfg.model!r} model but --model is "
                         f"{expected_model!r}; pass --model {cfg.model} or a "
                         f"{expected_model} checkpoint")
    model = pico.build_model(cfg)
    model.load_state_dict(safetensors_io.read_safetensors(directory / "model.safetensors"),
                          strict=True)
    tokenizer = (SentencePieceTokenizer((directory / "tokenizer.model").read_bytes(), kind="bpe",
                                        source=directory / "tokenizer.model")
                 if meta["tokenizer"] == "bpe" else ByteTokenizer())
    return model, tokenizer, meta


def load_pico_optimizer(directory, optimizer, meta):
    """Restore the AdamW moments and step counts save_pico wrote beside the model."""
    folder = atomic.folder_or_backup(directory)
    tensors = safetensors_io.read_safetensors(folder / "optimizer.safetensors")
    load_optimizer_state(optimizer, tensors, meta["optimizer"])
