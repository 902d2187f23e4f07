"""Distributed training helpers: one code path for 1 process or ``torchrun --nproc_per_node=N``.

Under torchrun (``WORLD_SIZE`` > 1) the process group is NCCL on GPUs and gloo on CPUs; every helper
here is a no-op in a single process, so trainers call them unconditionally.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pleura.device import pick_device


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and draws progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process runs (under torchrun), so collectives are needed."""
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one and pick this process's device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup(env: DistEnv) -> None:
    """Leave the process group (at the end of a distributed run), every rank together: a rank that tears its
    connections down while another still uses them can abort it (gloo: "terminate called without an active
    exception")."""
    if env.distributed and dist.is_initialized():
        if sys.exc_info()[0] is None:  # after a failure the other ranks may never arrive: do not wait for them
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (returns it)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sync_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Average floating buffers (BatchNorm running statistics) over processes, so ranks stay identical.

    DDP keeps parameters in step through gradient averaging, but each rank updates its BatchNorm
    statistics from its own batches; averaging them once an epoch gives every rank the same model.
    """
    if not env.distributed:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= env.world_size
        else:
            dist.broadcast(buf, src=0)


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, to check that ranks hold the same model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def all_gather_objects(obj: object, env: DistEnv) -> list[object]:
    """Every process's ``obj``, in rank order (a list of one in a single process)."""
    if not env.distributed:
        return [obj]
    out: list[object] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
