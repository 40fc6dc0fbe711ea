"""``python -m dcsched.runs.gang RUN_DIR GROUP_NAME``: the driver of a gang ``run`` job
(several workers, or any GPU), started by Ray as the job's entrypoint.

One actor per bundle of the job's placement group holds that bundle's CPUs, GPUs and
memory; the driver asks each where it runs, gives each rank its torchrun-compatible
environment (``dcsched.runs.environment``; MASTER_PORT is a port free on rank 0's node,
CUDA_VISIBLE_DEVICES the GPUs Ray assigned to the bundle) and starts the command on
every rank at once. Gang semantics: when a rank exits non-zero the others are stopped
and the job fails with that rank's code and last lines; it succeeds only when every rank
exits 0. SIGTERM (cancel, max_runtime, preemption) stops every rank.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from dcsched.rundir import RunDir
from dcsched.runs.environment import rank_environments
from dcsched.runs.launch import free_port, job_environment
from dcsched.runs.process import RankProcess, describe_exit


class Rank:
    """A Ray actor holding one bundle; runs one rank's command (threaded: ``stop`` can
    be called while ``run`` waits)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.process: RankProcess | None = None

    def __repr__(self) -> str:  # Ray prefixes the actor's output with this
        return f"rank {self.rank}"

    def where(self) -> tuple[str, str, list[str]]:
        import ray

        context = ray.get_runtime_context()
        gpus = [str(g) for g in ray.get_gpu_ids()]
        address = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        return context.get_node_id(), address, gpus

    def free_port(self) -> int:
        return free_port()

    def run(self, command: Any, env: dict[str, str], log: str) -> int:
        self.process = RankProcess(command, env, Path(log), cwd=os.getcwd(), echo=True)
        return self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def connect_to_ray(attempts: int = 4) -> None:
    """``ray.init`` as the job's driver, retried: on a loaded node the first connection
    can time out (seen here at load 14 on 2 cores), which must not fail the job."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(namespace="dcsched", logging_level=logging.WARNING)
            return
        except ConnectionError:
            if attempt == attempts:
                raise
            print(f"dcsched: connecting to Ray failed (try {attempt}); retrying", flush=True)
            time.sleep(2.0 * attempt)


def run_in_first_bundle(group_name: str, per_worker: Any, function: Any, *args: Any) -> int:
    """Connect as the job's driver and run ``function(*args)`` as one Ray task in bundle 0
    of the placement group ``group_name``, holding ``per_worker`` (a ``Resources``) there,
    so that Ray sets CUDA_VISIBLE_DEVICES to the GPUs reserved for it; its int result.
    (Single-worker GPU jobs: a train job's runner, a GPU serving replica.)"""
    import ray
    from ray.util import get_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    connect_to_ray()
    group = get_placement_group(group_name)
    task = ray.remote(function).options(
        num_cpus=per_worker.cpus,
        num_gpus=per_worker.gpus,
        memory=per_worker.memory,
        max_retries=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        ),
    )
    return int(ray.get(task.remote(*args)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m dcsched.runs.gang RUN_DIR GROUP_NAME", file=sys.stderr)
        return 2
    files = RunDir(Path(args[0]))
    document = files.read_spec()
    resources = document["resources"]
    # A `run` job runs its command; a `train` gang runs the training runner on each rank
    # (data-parallel, see dcsched.training.distributed); an `infer` gang the batch
    # inference runner (each rank scores its shard, see dcsched.inference.batch).
    runner = "dcsched.inference.batch" if document.get("kind") == "infer" else None
    run = document.get("run") or {
        "command": [sys.executable, "-m", runner or "dcsched.training.runner", str(files.path)]
    }
    files.checkpoint.mkdir(parents=True, exist_ok=True)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # identical lines of two ranks are two lines
    import ray
    from ray.util import get_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    connect_to_ray()
    group = get_placement_group(args[1])
    workers = int(resources.get("workers", 1))
    remote: Any = ray.remote(Rank)
    actors: list[Any] = [
        remote.options(
            num_cpus=float(resources.get("cpus", 1)),
            num_gpus=float(resources.get("gpus", 0)),
            memory=int(resources.get("memory", 0)) or None,
            max_concurrency=2,
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=rank
            ),
        ).remote(rank)
        for rank in range(workers)
    ]

    def stop_all() -> None:
        ray.get([actor.stop.remote() for actor in actors], timeout=30)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        try:
            stop_all()
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    places = ray.get([actor.where.remote() for actor in actors])
    port = int(ray.get(actors[0].free_port.remote()))
    envs = rank_environments(
        [node for node, _, _ in places], places[0][1], port, [gpus for _, _, gpus in places]
    )
    base = job_environment(files, run)
    running = {
        actor.run.remote(run["command"], {**base, **env}, str(files.rank_log(rank))): rank
        for rank, (actor, env) in enumerate(zip(actors, envs, strict=True))
    }
    for rank, (node, address, gpus) in enumerate(places):
        print(f"dcsched: rank {rank} on node {node[:12]} ({address}), GPUs [{','.join(gpus)}]")
    sys.stdout.flush()
    while running:
        # A bounded wait: Python runs the SIGTERM handler only between calls.
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        if not done:
            continue
        rank = running.pop(done[0])
        try:
            code = int(ray.get(done[0]))
        except ray.exceptions.RayError as exc:
            code = 1
            reason = f"rank {rank} was lost: {type(exc).__name__}"
            files.write_error(reason)
            stop_all()
            print(f"dcsched: {reason}; stopped the other ranks", file=sys.stderr)
            return 1
        if code != 0:
            stop_all()
            own = files.read_error()  # what the rank itself said (the training runner)
            reason = (
                f"rank {rank}: {own}" if own else describe_exit(rank, code, files.rank_log(rank))
            )
            files.write_error(reason)
            print(f"dcsched: {reason.splitlines()[0]}; stopped the other ranks", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
