"""Where this process runs: its device, and its place among data-parallel processes.

One process (python run.py ...): rank 0 of a world of size 1, device "cpu" or "cuda".
torchrun --nproc_per_node=N run.py ...: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; each
process takes device cuda:LOCAL_RANK (or the CPU with the gloo backend) and a 1/N shard of the
data. DistributedDataParallel (Li et al. 2020, "PyTorch Distributed", arXiv:2006.15704) averages
gradients over the N processes after backward, so with per-process sums L_r over n_r items
    grad of the global mean = sum_r grad L_r / sum_r n_r = (N / sum_r n_r) * mean_r grad L_r
which is why train.py all-reduces the count and scales by world_size / count.

Every helper here is a no-op on one process, so the training loop reads the same either way.
Tests: tests/test_distributed.py (device choice; the helpers on one process).
"""
import contextlib
import os

import torch
import torch.distributed as dist


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


def no_sync(model, last):
    """DDP's no_sync() for every micro-batch but the last: gradients are averaged once per step."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()
