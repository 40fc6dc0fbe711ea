"""A plain torch.distributed script: DistributedDataParallel on CPU (gloo) or GPU (nccl).

Written for torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); dcsched sets the same for each worker of a `kind: run` gang, so this runs
unchanged under `torchrun --nproc-per-node 2 train_ddp.py` and under
`dcsched submit examples/run-ddp.yaml`. It imports nothing of dcsched. If
DCSCHED_CHECKPOINT_DIR (or --checkpoint-dir) is set, rank 0 saves a checkpoint each epoch
and a restarted job resumes from it.

It fits y = sin(x0) + x1 * x2 with a small MLP on synthetic data sharded across ranks and
prints each epoch's mean loss (averaged over the ranks).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def synthetic(n: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=generator) * 4 - 2
    y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    return TensorDataset(x, y.unsqueeze(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--checkpoint-dir", default=os.environ.get("DCSCHED_CHECKPOINT_DIR"))
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # torchrun shows every GPU of the node (pick by LOCAL_RANK); dcsched shows each rank
    # only its own (CUDA_VISIBLE_DEVICES), so the rank's GPU is then device 0.
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and torch.cuda.device_count() <= local_rank:
        local_rank = 0
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    print(f"rank {rank} of world size {world} on {device}", flush=True)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    ).to(device)  # fmt: skip
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    start_epoch, mean_loss = 0, float("nan")
    checkpoint = os.path.join(args.checkpoint_dir, "ddp.pt") if args.checkpoint_dir else None
    if checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        print(f"rank {rank}: resumed after epoch {state['epoch']}", flush=True)

    data = synthetic(args.rows)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=max(1, args.batch_size // world), sampler=sampler)
    loss_fn = torch.nn.MSELoss()
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        began, total, batches = time.perf_counter(), 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(ddp(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        mean = torch.tensor([total / max(1, batches)], device=device)
        dist.all_reduce(mean)
        mean_loss = mean.item() / world
        if rank == 0:
            seconds = time.perf_counter() - began
            print(f"epoch {epoch} loss {mean_loss:.4f} ({seconds:.2f}s)", flush=True)
            if checkpoint:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                torch.save({**state, "epoch": epoch}, checkpoint + ".tmp")
                os.replace(checkpoint + ".tmp", checkpoint)
    if rank == 0:
        print(f"final loss {mean_loss:.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
