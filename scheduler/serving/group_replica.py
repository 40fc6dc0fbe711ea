"""Run a GPU replica *inside* its placement group: ``python -m
dcsched.serving.group_replica RUN_DIR GROUP_NAME``.

A replica that asks for GPUs needs Ray to hand them out: its job's driver connects to the
cluster and runs the replica server (``dcsched.serving.replica``) as a Ray task in bundle
0 of the job's placement group, so Ray sets CUDA_VISIBLE_DEVICES to the GPUs reserved for
the replica, and the model is loaded on ``cuda`` there (``dcsched.serving.model``).
CPU-only replicas skip this hop and serve from the driver itself (see
dcsched.adapters.ray_executor). Stopping the job ends the driver, and Ray ends the task
it owns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dcsched.runs.gang import run_in_first_bundle


def _serve_in_bundle(run_dir: str, host: str | None) -> int:
    from dcsched.serving.replica import main

    if host is not None:
        os.environ["DCSCHED_SERVE_HOST"] = host
    return main([run_dir])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m dcsched.serving.group_replica RUN_DIR GROUP_NAME", file=sys.stderr)
        return 2
    run_dir, group_name = args
    from dcsched.core.spec import request_of
    from dcsched.rundir import RunDir

    per_worker = request_of(RunDir(Path(run_dir)).read_spec()).resources.per_worker()
    host = os.environ.get("DCSCHED_SERVE_HOST")
    return run_in_first_bundle(group_name, per_worker, _serve_in_bundle, run_dir, host)


if __name__ == "__main__":
    sys.exit(main())
