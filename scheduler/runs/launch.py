"""``python -m dcsched.runs.launch RUN_DIR``: a single-worker CPU ``run`` job, started by
Ray as the job's entrypoint on the node that holds its reservation.

Sets the rank's environment (rank 0 of 1, a free local port for MASTER_PORT), runs the
command as a child (output to ``logs/rank-0.log`` and to Ray's job log), and exits with
its status; on failure ``error.txt`` says which code and the last lines. SIGTERM (cancel,
max_runtime, preemption) stops the child's whole process group. Standard library only,
so the job starts as fast as a plain ``ray job submit``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from dcsched.rundir import RunDir
from dcsched.runs.environment import rank_environments
from dcsched.runs.process import RankProcess, describe_exit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def job_environment(files: RunDir, run: dict[str, Any]) -> dict[str, str]:
    """What every rank gets besides its rendezvous variables: the spec's ``run.env`` and
    dcsched's own variables."""
    return {
        **{str(k): str(v) for k, v in (run.get("env") or {}).items()},
        "DCSCHED_CHECKPOINT_DIR": str(files.checkpoint),
        "DCSCHED_PROGRESS_FILE": str(files.progress),
        "DCSCHED_RUN_DIR": str(files.path),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dcsched.runs.launch RUN_DIR", file=sys.stderr)
        return 2
    files = RunDir(Path(args[0]))
    run = files.read_spec()["run"]
    files.checkpoint.mkdir(parents=True, exist_ok=True)
    (rendezvous,) = rank_environments(["local"], "127.0.0.1", free_port())
    env = {**job_environment(files, run), **rendezvous}
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job sees no GPU
    log = files.rank_log(0)
    process = RankProcess(run["command"], env, log, echo=True)

    stopping: list[int] = []

    def on_term(signum: int, _frame: FrameType | None) -> None:
        if stopping:
            return  # a repeat: Ray's stop signals both the tee (dcsched.runs.tee) and us
        stopping.append(signum)
        process.stop()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    code = process.wait()
    if code != 0:
        files.write_error(describe_exit(0, code, log))
        return code if 0 < code < 256 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
