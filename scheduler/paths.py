"""Where dcsched keeps its state: everything lives under ``$DCSCHED_HOME`` (default ~/.dcsched).

    dcsched.db       SQLite store (WAL): jobs, event history, models
    token            bearer token of the API (mode 0600), created at first start
    server.json      how to reach the running server (url, pid, Ray addresses)
    server.pid       pid of a background server started by ``dcsched up``
    server.log       its output
    runs/JOB/        a job's run directory (dcsched.rundir; the Ray job writes here; on a
                     multi-node cluster this folder must be on storage that every node mounts)
    uploads/sha256/  files sent with submissions, content-addressed (dcsched.inputs)
    models/NAME/V/   registered model artifacts
    ray/             the local Ray head that dcsched started, if any (head.json, head.pid)

This module is imported by the CLI: it must stay free of heavy imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8765


def default_home() -> Path:
    return Path(os.environ.get("DCSCHED_HOME") or Path.home() / ".dcsched").expanduser()


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(default_home())

    @property
    def db(self) -> Path:
        return self.home / "dcsched.db"

    @property
    def token(self) -> Path:
        return self.home / "token"

    @property
    def server_json(self) -> Path:
        return self.home / "server.json"

    @property
    def server_pid(self) -> Path:
        return self.home / "server.pid"

    @property
    def server_log(self) -> Path:
        return self.home / "server.log"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    def run_dir(self, job_id: str) -> Path:
        return self.runs / job_id

    @property
    def uploads(self) -> Path:
        return self.home / "uploads"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def ray(self) -> Path:
        return self.home / "ray"
