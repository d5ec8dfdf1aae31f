"""Where this process runs: its device, and its place among data-parallel processes.

One process (python run.py ...): rank 0 of a world of size 1, device "cpu" or "cuda".
torchrun --nproc_per_node=N run.py ...: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; each
process takes device cuda:LOCAL_RANK (or the CPU with the gloo backend) and a 1/N shard of the
data. DistributedDataParallel (Li et al. 2020, "PyTorch Distributed", arXiv:2006.15704) averages
gradients over the N processes after backward, so with per-process sums L_r over n_r items
    grad of the global mean = sum_r grad L_r / sum_r n_r = (N / sum_r n_r) * mean_r grad L_r
which is why train.py all-reduces the count and scales by world_size / count.

Data: every rank draws the same seeded order and takes a strided share of each global batch
(data.Batches), so N ranks of batch B see exactly the examples one process of batch N * B sees.
Only rank 0 prints and writes (atomic.py skips writes elsewhere); every rank evaluates.
Not here yet: FSDP (Zhao et al. 2023, arXiv:2304.11277), which would shard parameters, gradients
and optimizer states for a model that does not fit one GPU; every save path would then have to
gather the shards on all ranks first.

Every helper here is a no-op on one process, so the training loop reads the same either way.
Tests: tests/test_distributed.py (device choice; 2 gloo processes on the CPU train to the same
loss and weights as one process with the same global batch).
"""
import atexit
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def is_distributed():
    """True inside a torchrun process group."""
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def rank():
    return dist.get_rank() if is_distributed() else 0


def is_main():
    """Only rank 0 prints progress and writes files."""
    return rank() == 0


def pick_device(use_gpu):
    """The one device rule for every option: cuda:LOCAL_RANK (torchrun) or cuda with --use_gpu,
    else the CPU. ValueError when a GPU is asked for and none is visible."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--use_gpu was given but no CUDA GPU is visible; drop --use_gpu to run on "
                         "the CPU")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(tensor):
    """Sum a tensor over all processes in place (no-op on one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag):
    """True if flag is true on any process (so all ranks take the same branch)."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor(float(flag))) > 0)


def no_sync(model, last):
    """DDP's no_sync() for every micro-batch but the last: gradients are averaged once per step."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


# ----------------------------------------------------------------------------
# torchrun: the process group, the model wrapper

def init_from_env(use_gpu):
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs.
    Ranks other than 0 print nothing (their stdout goes to /dev/null; errors still show)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    atexit.register(leave)                      # gloo's threads abort a process left in a group
    if not is_main():
        sys.stdout = open(os.devnull, "w")


def leave():
    """Leave the process group at exit (torch warns, and gloo may abort, when a process exits
    still in one)."""
    if is_distributed():
        dist.destroy_process_group()


class DDP(DistributedDataParallel):
    """DistributedDataParallel whose attributes fall through to the wrapped model, so a loss
    function can call model(...) (through DDP's hooks) and still read model.output.weight."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model):
    """The model as one process trains it: itself, or wrapped in DDP under torchrun."""
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
