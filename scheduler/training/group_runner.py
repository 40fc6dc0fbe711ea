"""Run a job's training *inside* its placement group: ``python -m
dcsched.training.group_runner RUN_DIR GROUP_NAME``.

Used for jobs that need Ray to hand out devices (any GPU job): the Ray job's driver
connects to the cluster and runs the same runner as a Ray task in bundle 0 of the job's
placement group, so Ray sets CUDA_VISIBLE_DEVICES to the GPUs reserved for the job.
CPU-only single-worker jobs skip this hop (it costs a second Python worker and a
``ray.init``, about 3 s here) and train in the driver itself, while the placement group
holds their CPUs and memory (see dcsched.adapters.ray_executor).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dcsched.runs.gang import run_in_first_bundle
from dcsched.training.runner import read_spec


def _train_in_bundle(run_dir: str) -> int:
    from dcsched.training.runner import main

    return main([run_dir])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m dcsched.training.group_runner RUN_DIR GROUP_NAME", file=sys.stderr)
        return 2
    run_dir, group_name = args
    per_worker = read_spec(Path(run_dir)).resources.per_worker()
    return run_in_first_bundle(group_name, per_worker, _train_in_bundle, run_dir)


if __name__ == "__main__":
    sys.exit(main())
