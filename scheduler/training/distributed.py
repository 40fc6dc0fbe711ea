"""Data-parallel training across a gang: what a torch plugin needs to train on several
workers (``resources.workers > 1``) with DistributedDataParallel.

The gang launcher (``dcsched.runs.gang``) starts the training runner once per worker with
torchrun's environment; ``init`` joins the process group (gloo on CPU, nccl on GPU).
Each epoch every rank walks the same shuffled order (same seed) and takes its share of
each *global* batch (``shard``), so the global batch size, and so the result, matches a
single worker's within floating-point noise. DDP averages the gradients. Rank 0 alone
checkpoints, reports and saves; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> None:
    """Join the gang's process group when there is more than one worker."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def finish() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def active() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return bool(dist.is_initialized())


def wrap(net: Any) -> Any:
    """``net`` in DistributedDataParallel when training on several workers."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net)


def shard(batch: Any) -> Any:
    """This rank's rows of a global batch (indices); never empty, so every rank runs
    each step (a last batch smaller than the gang repeats a row on the extra ranks)."""
    if not active():
        return batch
    size, me = world_size(), rank()
    part = batch[me::size]
    return part if len(part) else batch[me % len(batch) :][:1]


def sum_all(value: Any) -> Any:
    """The sum of a tensor over the gang (in place)."""
    if active():
        import torch.distributed as dist

        dist.all_reduce(value)
    return value
