"""Resumable training checkpoints: everything train.fit needs to continue a killed run exactly.

A checkpoint is one folder, written by atomic.replace_folder_atomic (built beside the old one and
swapped in whole, so a kill at any instant leaves the previous complete checkpoint):
    model.safetensors      the trainable state (trainable parameters and persistent buffers)
    best.safetensors       the best state so far (restored at the end of fit), if any
    optimizer.safetensors  AdamW's moments m, v per parameter ("<index>.<key>")
    rng.safetensors        torch's CPU generator state (and CUDA's, one per device)
    state.json             format, step, epoch, optimizer steps done in that epoch, the epoch's
                           running loss sum and count, best value, evaluations without gain,
                           seconds trained, Python's and numpy's RNG states, optimizer groups and
                           scalars, the history so far
Continuing = rebuild the model and optimizer as the first run did, load this folder into them,
replay the data order of the saved epoch (batches with set_epoch(epoch) are a pure function of
seed and epoch) and skip the micro-batches already consumed. With the RNG states restored, a
resumed CPU run is bit-identical to an uninterrupted one (tests/test_checkpoint.py kills a run with
SIGKILL and checks exactly that).

Tests: tests/test_checkpoint.py (optimizer state round trip; SIGKILL + resume == uninterrupted;
a half-written checkpoint leaves the previous one).
"""
import json
import random
from pathlib import Path

import numpy as np
import torch

import atomic
import distributed
import safetensors_io

FORMAT = "llmlab-train-1"


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
# the folder

def save(folder, trainable, best, optimizer, state):
    """Write a checkpoint folder (see the module docstring); `state` is the JSON part."""
    optimizer_tensors, optimizer_meta = optimizer_state_tensors(optimizer)
    rng_tensors, rng_json = rng_states()
    state = {"format": FORMAT, **state, "optimizer": optimizer_meta, "rng": rng_json}

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
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete the folder and start again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an llmlab training checkpoint ({FORMAT}); drop --resume")
    best = folder / "best.safetensors"
    return (safetensors_io.read_safetensors(folder / "model.safetensors"),
            safetensors_io.read_safetensors(best) if best.is_file() else None,
            safetensors_io.read_safetensors(folder / "optimizer.safetensors"),
            safetensors_io.read_safetensors(folder / "rng.safetensors"), state)
