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
FSDP (--fsdp; Zhao et al. 2023, "PyTorch FSDP", arXiv:2304.11277; torch's FSDP2 fully_shard)
for a model that does not fit one GPU: each of N processes keeps a 1/N row shard of every
parameter, its gradient and its AdamW moments. A block's full weights exist only while it runs:
    forward:  all-gather W = [W_0; ...; W_{N-1}], compute, free W (keep the shard W_r)
    backward: all-gather W again, compute dW, reduce-scatter: rank r keeps (1/N) sum_q dW_q[rows r]
so memory per process is about (weights + gradients + moments) / N plus the full weights of
the units gathered at the time (one block, and the root's embeddings and head, which FSDP keeps
gathered from forward to backward). The mean over ranks is the same as DDP's, so the update above is unchanged; AdamW is
element-wise, so stepping each shard alone is the same step. Units: every block of a ModuleList
named "layers", each module holding such a list, then the root (embeddings, norm, head). The model
is loaded on the CPU and fully_shard moves each shard to the process's device.
Every save path gathers first: full(tensor) and full_state_dict(module) all-gather shards into
ordinary tensors on every rank (a collective: all ranks call it, rank 0 writes); shard_like puts a
full tensor (a resumed checkpoint, the best snapshot) back into a parameter's shard.

Every helper here is a no-op on one process, so the training loop reads the same either way.
torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are checked before
use (torchrun_env), and a group that has not formed after --rendezvous_timeout_s (60 s) is one
line naming them, not the backend's silent 30-minute wait (a stale WORLD_SIZE outside torchrun).
Tests: tests/test_distributed.py (device choice; 2 gloo processes on the CPU, DDP and FSDP, train
to the same loss and weights as one process with the same global batch; an FSDP run resumed from
its gathered checkpoint == the uninterrupted run); tests/test_run_sft.py and
tests/test_classifier.py (run.py --option sft / lora / finetune under torchrun, DDP and --fsdp,
save what one process saves); tests/test_reliability_inputs.py (bad variables, a rendezvous that
never completes).
"""
import atexit
import contextlib
import datetime
import os
import socket
import sys
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor, init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from file_checks import first_line


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
    return torch.device("cuda", torchrun_env()[2])


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
    """DDP's no_sync() (FSDP: no reduce-scatter) for every micro-batch but the last: gradients
    are averaged once per step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last)          # FSDP keeps unsharded grads until then
        return contextlib.nullcontext()
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


# ----------------------------------------------------------------------------
# torchrun: the process group, the model wrapper

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RENDEZVOUS_TIMEOUT_S = 60      # --rendezvous_timeout_s: gloo's and NCCL's own default is 30 min


def _env_int(name, default, low, high=None):
    """An integer torchrun variable in [low, high), or default when unset; one line otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        where = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name}={text[:40]!r}: must be an integer {where}; torchrun sets it "
                         "(outside torchrun, unset WORLD_SIZE, RANK and LOCAL_RANK)")
    return value


def torchrun_env():
    """torchrun's variables, checked -> (world_size, rank, local_rank, (addr, port) or None)."""
    world = _env_int("WORLD_SIZE", 1, 1)
    rank_ = _env_int("RANK", 0, 0, world)
    local = _env_int("LOCAL_RANK", 0, 0, world)
    if world == 1:
        return world, rank_, local, None
    addr, port = os.environ.get("MASTER_ADDR", "").strip(), _env_int("MASTER_PORT", None, 1, 65536)
    if not addr or port is None:
        raise ValueError(f"WORLD_SIZE={world} but MASTER_ADDR / MASTER_PORT are not set: start "
                         "the processes with torchrun, or unset WORLD_SIZE for one process")
    try:
        socket.getaddrinfo(addr, port)
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"MASTER_ADDR={addr[:60]!r} does not resolve to an address; torchrun "
                         "sets it (outside torchrun, unset WORLD_SIZE)") from None
    return world, rank_, local, (addr, port)


def _rendezvous_error(timeout_s):
    names = ", ".join(f"{n}={os.environ.get(n, '')[:40]}" for n in TORCHRUN_VARIABLES)
    return ValueError(f"the process group did not form within {timeout_s:g} s ({names}): start "
                      "every process with torchrun, unset WORLD_SIZE for one process, or raise "
                      "--rendezvous_timeout_s")


def _wait_for_master(master, timeout_s):
    """A rank other than 0 first waits (up to timeout_s) for rank 0's store to accept a
    connection, so a missing master is our one line, not c10d's retry log."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(master, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise _rendezvous_error(timeout_s) from None
            time.sleep(0.2)


def init_from_env(use_gpu, timeout_s=RENDEZVOUS_TIMEOUT_S):
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs.
    The variables are checked first, and a group that does not form within timeout_s seconds
    is one line naming them (instead of the backend's silent 30-minute wait).
    Ranks other than 0 print nothing (their stdout goes to /dev/null; errors still show)."""
    world, rank_, local, master = torchrun_env()
    if world <= 1 or is_distributed():
        return
    if use_gpu:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local}: only {torch.cuda.device_count()} GPUs are "
                             "visible; start at most that many processes per node")
        torch.cuda.set_device(local)
    if rank_ != 0:
        _wait_for_master(master, timeout_s)
    try:
        dist.init_process_group(backend="nccl" if use_gpu else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:      # torch's DistStoreError, DistNetworkError
        if "timed out" not in str(err).lower() and "timeout" not in str(err).lower():
            raise ValueError(f"joining the process group failed ({first_line(err)}); "
                             "check " + ", ".join(TORCHRUN_VARIABLES)) from None
        raise _rendezvous_error(timeout_s) from None
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
    """The model as one process trains it: itself, or wrapped in DDP under torchrun (a model
    shard() already made FSDP reduces its own gradients)."""
    if not is_distributed() or isinstance(model, FSDPModule):
        return model
    device = next(model.parameters()).device
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------
# FSDP: shard the model, gather it for every save

def add_fsdp_argument(parser):
    """--fsdp, for the options that train a Llama (finetune, lora, sft)."""
    parser.add_argument("--fsdp", action="store_true",
                        help="under torchrun: shard weights, gradients and AdamW moments over the "
                        "processes (FSDP), for a model that does not fit one GPU; the model loads "
                        "on the CPU first and runs the split (unfused) projections")


def check_fsdp(fsdp):
    """--fsdp needs torchrun with 2 or more processes (checked before any work)."""
    if fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ValueError("--fsdp shards the model over torchrun's processes: run under "
                         "torchrun --nproc_per_node N (N >= 2), or drop --fsdp")


def load_device(args):
    """Where a trainer loads its weights: the CPU under --fsdp (shard() then moves 1/N of them to
    args.device), else args.device."""
    return torch.device("cpu") if getattr(args, "fsdp", False) else args.device


def shard(model, device):
    """FSDP in place: each block of every ModuleList named "layers", each module holding one,
    then the root; the shards move to `device`. -> model (now an FSDPModule)."""
    if not is_distributed():
        raise ValueError("--fsdp: no process group; run under torchrun --nproc_per_node N")
    mesh = init_device_mesh(device.type, (world_size(),))
    # FSDP warns when a unit returns a view (Llama's last_only logits are one): an in-place op
    # on it would skip the gather. Nothing here writes into a model's output in place (the
    # tests check FSDP's gradients against one process), so the warning is noise.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    owners = [m for m in model.modules()
              if isinstance(getattr(m, "layers", None), nn.ModuleList)]
    for owner in owners:
        for block in owner.layers:
            fully_shard(block, mesh=mesh)
    for owner in owners:
        if owner is not model:
            fully_shard(owner, mesh=mesh)
    fully_shard(model, mesh=mesh)
    held = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"FSDP: {world_size()} processes; each holds 1/{world_size()} of every weight "
          f"(rank 0: {held:,} of {total:,})", flush=True)
    return model


def reshard(model):
    """Free every gathered weight (FSDP keeps the root's after forward): the model's parameters
    are its shards again. No-op without FSDP."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full(tensor):
    """An ordinary tensor with tensor's full value: an FSDP shard is all-gathered (every rank
    must call this), anything else is returned as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(module):
    """module.state_dict() with every shard gathered (a collective; see full)."""
    reshard(module)
    return {name: full(value.detach()) for name, value in module.state_dict().items()}


def shard_like(value, like):
    """value (a full tensor) as `like` holds it: this rank's shard when like is an FSDP shard,
    else value itself. Every rank holds the same value, so no data moves."""
    if not isinstance(like, DTensor):
        return value
    value = value.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)
