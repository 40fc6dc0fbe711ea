"""A job's run directory: the one interface between the scheduler and the code that runs.

``$DCSCHED_HOME/runs/JOB/`` (keyed by the job id, so it outlives each run of the job):

    spec.json        the job's spec document, inputs resolved to paths (written at start)
    progress.jsonl   one JSON object a line: epoch/step and metrics, appended as work goes
    result.json      written last and atomically; its presence means the run succeeded
    error.txt        one line saying why the run failed
    checkpoint/      kept across preemptions and restarts ($DCSCHED_CHECKPOINT_DIR)
    model/           a trained model (train jobs)
    logs/rank-N.log  each rank's output (run jobs and multi-worker train)
    logs/driver-RUN.log  the output of the run's driver, all ranks (per run id)

On a multi-node cluster this folder must be on storage every node mounts. This module is
imported by the server, the runners and ``dcsched.report``: standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAIL_BYTES = 64 * 1024
"""Most bytes read from the end of a file to find its last lines."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def progress(self) -> Path:
        return self.path / "progress.jsonl"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def error(self) -> Path:
        return self.path / "error.txt"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    def driver_log(self, run_id: str) -> Path:
        """The output of a run's driver, all ranks: a Ray Job's driver copies it here
        beside Ray's job log (``dcsched.runs.tee``), a tune trial started by the trial
        host (``dcsched.training.host``) writes it only here."""
        return self.logs / f"driver-{run_id}.log"

    # -- writing ---------------------------------------------------------------------

    def write_spec(self, document: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.spec, json.dumps(document, indent=2) + "\n")

    def write_result(self, result: dict[str, Any]) -> None:
        write_text_atomically(self.result, json.dumps(result, indent=2) + "\n")

    def write_error(self, reason: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.error, reason.rstrip("\n") + "\n")

    def fail(self, what: str, reason: str) -> int:
        """End a runner that failed: say on stderr that ``what`` (training, inference)
        failed and why, record ``reason`` as error.txt (or say why it cannot be), and
        return the exit status, 1."""
        print(f"{what} failed: {reason}", file=sys.stderr)
        try:
            self.write_error(reason)
        except OSError as exc:
            print(f"cannot write {self.error}: {exc}", file=sys.stderr)
        return 1

    def clear_outcome(self) -> None:
        """Forget a previous run's result and error (a rerun starts undecided)."""
        for stale in (self.error, self.result):
            stale.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------

    def read_spec(self) -> dict[str, Any]:
        """spec.json's document; OSError or ValueError if it is missing or broken."""
        document = json.loads(self.spec.read_text())
        if not isinstance(document, dict):
            raise ValueError(f"{self.spec} does not hold a mapping")
        return document

    def read_result(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def read_error(self) -> str:
        try:
            return self.error.read_text(errors="replace").strip()
        except OSError:
            return ""

    def last_progress(self) -> dict[str, Any] | None:
        """The last JSON object of progress.jsonl, read from the end of the file."""
        for line in reversed(tail_lines(self.progress, 4096)):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none): the form of
    error.txt and of a job's reason."""
    return " ".join(str(exc).split()) or type(exc).__name__


def tail_lines(path: Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The lines in the last ``max_bytes`` of a file (the first may be partial); [] if
    the file cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read(max_bytes)
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()


def read_range(path: Path, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """Up to ``max_bytes`` of ``path`` from ``offset``; returns (data, next offset).
    A missing file reads as empty."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            start = max(0, min(offset, size))
            handle.seek(start)
            data = handle.read(max_bytes)
    except OSError:
        return b"", 0
    return data, start + len(data)


def write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
