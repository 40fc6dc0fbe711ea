"""SQLite implementation of the JobStore port: the durable source of truth.

One file (WAL mode, synchronous=FULL) holds jobs, their append-only event history and
registered model versions. Schema changes are numbered migrations applied in order at
open; ``schema_migrations`` records which ran. Every state change goes through
``transition``, which checks the lifecycle and appends the event in the same
transaction, so the history can never disagree with the job row.

Connections are per thread; writers take ``BEGIN IMMEDIATE`` so that check-then-write
sequences are atomic across threads and processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dcsched.core.accounting import AllocationInterval
from dcsched.core.job import Job, JobEvent
from dcsched.core.lifecycle import JobState, check_transition
from dcsched.core.spec import REQUEST_FIELDS, SchedulingRequest, request_of
from dcsched.core.waits import WaitKind, WaitReason
from dcsched.ports import (
    AuditEntry,
    Deployment,
    ModelNameTaken,
    ModelVersion,
    PrincipalExists,
    StoreFull,
    TokenRecord,
)

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, events, models
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        team TEXT NOT NULL,
        priority TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        admitted_at REAL,
        started_at REAL,
        finished_at REAL,
        nodes TEXT NOT NULL DEFAULT '[]',
        reason TEXT,
        result TEXT
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_submitted ON jobs(submitted_at);
    CREATE TABLE job_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX job_events_job ON job_events(job_id, seq);
    CREATE TABLE models (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        job_id TEXT NOT NULL UNIQUE REFERENCES jobs(id),
        plugin TEXT NOT NULL,
        params TEXT NOT NULL,
        metrics TEXT NOT NULL,
        created_at REAL NOT NULL,
        checksum TEXT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    """,
    # 2: applied cluster configurations (the newest one is in force)
    """
    CREATE TABLE cluster_config (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        applied_at REAL NOT NULL,
        text TEXT NOT NULL
    );
    """,
    # 3: how many times each job was admitted (each admission is a new run on Ray)
    """
    ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: indexes for what /metrics reads at every scrape (counts by state, team and kind;
    # allocation intervals that ended recently)
    """
    CREATE INDEX jobs_state_team_kind ON jobs(state, team, kind);
    CREATE INDEX jobs_finished ON jobs(finished_at);
    """,
    # 5: principals (tokens stored as sha256; a revoked token keeps its row) and the
    # audit log of every state-changing call
    """
    CREATE TABLE principals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        team TEXT,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX principals_active_name ON principals(name) WHERE revoked_at IS NULL;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        remote TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    """,
    # 6: the kind of a pending job's waiting reason (dcsched.core.waits.WaitKind) beside
    # its words; NULL for rows written before, and whenever the reason is a transition's
    """
    ALTER TABLE jobs ADD COLUMN reason_kind TEXT;
    """,
    # 7: online-serving deployments (dcsched.ports.Deployment), one row each; a stopped
    # one keeps its row until a deployment of the same name replaces it
    """
    CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        plugin TEXT NOT NULL,
        replicas INTEGER NOT NULL,
        min_replicas INTEGER NOT NULL,
        max_replicas INTEGER NOT NULL,
        target_in_flight REAL NOT NULL,
        scale_down_after_s REAL NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        slots TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 8: cancels asked for but not yet carried out (the job's run still being stopped);
    # a server killed meanwhile finishes them at its first pass. A row goes with its
    # job's end.
    """
    CREATE TABLE cancel_requests (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id),
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
)

PAGE_CACHE_KIB = 512
"""SQLite's page cache per connection (one a thread: the API's pool has up to 40). The
default 2 MiB each is ~80 MiB of server memory once the store outgrows it (about 10,000
jobs); reads that miss come from the OS's file cache (a 200-job list: ~1.1 ms, not 0.8)."""

_DEPLOYMENT_COLUMNS = (
    "name, team, state, spec, model, version, plugin, replicas, min_replicas, max_replicas,"
    " target_in_flight, scale_down_after_s, host, port, slots, message, created_at, updated_at"
)

_IDS_PER_QUERY = 500
"""Most ids one ``jobs_by_id`` query names (SQLite limits a statement's parameters)."""

_JOB_COLUMNS = (
    "id, spec, state, submitted_at, admitted_at, started_at, finished_at, nodes, reason, result,"
    " attempt, reason_kind"
)


class SQLiteStore:
    def __init__(self, path: Path, models_dir: Path):
        self.path = Path(path)
        self.models_dir = Path(models_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # private whatever the umask; -wal and -shm follow its mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._local = threading.local()
        self._window_lock = threading.Lock()
        self._window: _IntervalWindow | None = None
        self._migrate()

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction; a full disk (or database) rolls it back whole
        and raises StoreFull."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise StoreFull(
                    "the scheduler's disk is full: nothing was recorded; free space under "
                    "$DCSCHED_HOME and try again"
                ) from exc
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for number, script in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations(version) VALUES (?)", (number,))

    def schema_version(self) -> int:
        row = self._conn().execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # -- jobs --------------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, name, kind, team, priority, state, spec, submitted_at,"
                " nodes, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.name,
                    job.kind,
                    job.team,
                    job.priority,
                    job.state.value,
                    json.dumps(_document(job)),
                    job.submitted_at,
                    json.dumps(list(job.nodes)),
                    job.reason,
                ),
            )
            conn.execute(
                "INSERT INTO job_events (job_id, at, from_state, to_state, reason)"
                " VALUES (?,?,?,?,?)",
                (job.id, job.submitted_at, None, job.state.value, "submitted"),
            )

    def get_job(self, job_id: str) -> Job | None:
        row = (
            self._conn()
            .execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return _job_from_row(row) if row else None

    def list_jobs(
        self,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        sql, args = _list_query(_JOB_COLUMNS, states, team, limit)
        return [_job_from_row(row) for row in self._conn().execute(sql, args)]

    def list_job_states(
        self,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, JobState]]:
        """(id, state) of the jobs ``list_jobs`` returns, in its order; nothing parsed."""
        sql, args = _list_query("id, state", states, team, limit)
        return [(row[0], JobState(row[1])) for row in self._conn().execute(sql, args)]

    def jobs_by_id(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of these ids that exist, by id."""
        found: dict[str, Job] = {}
        conn = self._conn()
        for first in range(0, len(job_ids), _IDS_PER_QUERY):
            chunk = job_ids[first : first + _IDS_PER_QUERY]
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({','.join('?' * len(chunk))})"
            found.update((row[0], _job_from_row(row)) for row in conn.execute(sql, chunk))
        return found

    def transition(
        self,
        job_id: str,
        target: JobState,
        at: float,
        reason: str | None = None,
        *,
        nodes: Sequence[str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> Job:
        with self._write() as conn:
            return self._transition(conn, job_id, target, at, reason, nodes, result)

    def _transition(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        target: JobState,
        at: float,
        reason: str | None,
        nodes: Sequence[str] | None,
        result: dict[str, Any] | None,
    ) -> Job:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        current = JobState(row[0])
        check_transition(job_id, current, target)
        sets = ["state = ?", "reason = ?", "reason_kind = NULL"]
        args: list[Any] = [target.value, reason]
        if target is JobState.ADMITTED:
            sets.extend(["admitted_at = ?", "attempt = attempt + 1", "started_at = NULL"])
            args.append(at)
        if target is JobState.RUNNING:
            sets.append("started_at = ?")
            args.append(at)
        if target is JobState.PENDING:
            sets.extend(["admitted_at = NULL", "nodes = '[]'"])
        if target.is_terminal():
            sets.append("finished_at = ?")
            args.append(at)
            _forget_spec(job_id)
            conn.execute("DELETE FROM cancel_requests WHERE job_id = ?", (job_id,))
        if nodes is not None:
            sets.append("nodes = ?")
            args.append(json.dumps(list(nodes)))
        if result is not None:
            sets.append("result = ?")
            args.append(json.dumps(result))
        conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*args, job_id])
        conn.execute(
            "INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?,?,?,?,?)",
            (job_id, at, current.value, target.value, reason),
        )
        fresh = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_from_row(fresh)

    def set_reasons(self, reasons: dict[str, WaitReason]) -> None:
        """Update many pending jobs' reasons and their kinds in one transaction (only
        those that changed)."""
        if not reasons:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE jobs SET reason = ?, reason_kind = ? WHERE id = ? AND state = 'PENDING'"
                " AND (reason IS NOT ? OR reason_kind IS NOT ?)",
                [
                    (why.words, why.kind.value, job_id, why.words, why.kind.value)
                    for job_id, why in reasons.items()
                ],
            )

    def request_cancel(self, job_id: str, reason: str, at: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cancel_requests (job_id, reason, at) VALUES (?,?,?)",
                (job_id, reason, at),
            )

    def withdraw_cancel(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM cancel_requests WHERE job_id = ?", (job_id,))

    def cancel_requests(self) -> dict[str, str]:
        rows = self._conn().execute("SELECT job_id, reason FROM cancel_requests")
        return {row[0]: row[1] for row in rows}

    def events(self, job_id: str) -> list[JobEvent]:
        rows = self._conn().execute(
            "SELECT job_id, at, from_state, to_state, reason FROM job_events"
            " WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        return [
            JobEvent(r[0], r[1], JobState(r[2]) if r[2] else None, JobState(r[3]), r[4])
            for r in rows
        ]

    def counts_by_state(self) -> dict[tuple[str, str, str], int]:
        rows = self._conn().execute(
            "SELECT state, team, kind, COUNT(*) FROM jobs GROUP BY state, team, kind"
        )
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    def allocation_intervals(self, since: float | None = None) -> list[AllocationInterval]:
        """Each interval during which a job held its resources: from its admission to the
        next requeue or its end (still open while it holds them). Read from the event
        history, so preempted and requeued jobs count every interval.

        With ``since`` (intervals still open or ended since then), answered from a window
        kept in memory and brought up to date with the events written since the last call
        (by their sequence number): the scheduling pass asks this for fair share many times
        a second, and reading every recent job's whole history each time costs a pass
        ~0.1 s per 10,000 jobs. The window holds the intervals that ended at or after its
        ``since``; a call with an earlier one reads the history again from there."""
        if since is None:
            return self._read_intervals(None)
        with self._window_lock:
            window = self._window
            if window is None or since < window.since:
                window = self._window = self._open_window(since)
            else:
                self._advance_window(window)
            return window.intervals(since)

    def _read_intervals(
        self, since: float | None, through_seq: int | None = None
    ) -> list[AllocationInterval]:
        """Allocation intervals from the history (events up to ``through_seq`` if given)."""
        # Only jobs ever admitted have intervals (a requeued job waiting again has
        # admitted_at NULL but attempt > 0; stores from before migration 3 have attempt 0
        # for jobs that then ended); with ``since``, only jobs not ended, or ended since
        # then (both found through an index).
        sql = (
            "SELECT e.job_id, e.at, e.to_state, j.spec FROM jobs j JOIN job_events e"
            " ON e.job_id = j.id"
            " WHERE (j.attempt > 0 OR j.admitted_at IS NOT NULL OR j.finished_at IS NOT NULL)"
            " AND j.kind != 'tune'"  # a tune job holds nothing; its trials are the usage
        )
        args: list[Any] = []
        if since is not None:
            sql += (
                " AND j.id IN (SELECT id FROM jobs WHERE finished_at >= ?"
                " UNION SELECT id FROM jobs WHERE finished_at IS NULL)"
            )
            args.append(since)
        if through_seq is not None:
            sql += " AND e.seq <= ?"
            args.append(through_seq)
        sql += " ORDER BY e.job_id, e.seq"
        intervals: list[AllocationInterval] = []
        open_since: dict[str, float] = {}
        for job_id, at, to_state, spec_text in self._conn().execute(sql, args):
            if to_state == JobState.ADMITTED.value:
                open_since[job_id] = at
            elif to_state != JobState.RUNNING.value and job_id in open_since:
                request = _spec_of(job_id, spec_text, keep=False)[0]  # read once
                intervals.append(_interval(job_id, request, open_since.pop(job_id), at))
        for job_id, start in open_since.items():
            job = self.get_job(job_id)
            if job is not None:
                intervals.append(_interval(job_id, job.request, start, None))
        if since is not None:
            intervals = [i for i in intervals if i.end is None or i.end >= since]
        return intervals

    def _open_window(self, since: float) -> _IntervalWindow:
        row = self._conn().execute("SELECT MAX(seq) FROM job_events").fetchone()
        last_seq = int(row[0] or 0)
        window = _IntervalWindow(since, last_seq)
        for interval in self._read_intervals(since, through_seq=last_seq):
            window.add(interval)
        return window

    def _advance_window(self, window: _IntervalWindow) -> None:
        rows = self._conn().execute(
            "SELECT e.seq, e.job_id, e.at, e.to_state, j.kind, j.spec FROM job_events e"
            " JOIN jobs j ON j.id = e.job_id WHERE e.seq > ? ORDER BY e.seq",
            (window.last_seq,),
        )
        for seq, job_id, at, to_state, kind, spec_text in rows:
            window.last_seq = seq
            if kind == "tune":
                continue
            if to_state == JobState.ADMITTED.value:
                request = _spec_of(job_id, spec_text)[0]
                window.add(_interval(job_id, request, at, None))
            elif to_state != JobState.RUNNING.value:
                window.close(job_id, at)

    # -- configuration -------------------------------------------------------------------

    def save_config(self, text: str, at: float) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO cluster_config (applied_at, text) VALUES (?, ?)", (at, text))

    def latest_config(self) -> tuple[str, float] | None:
        row = (
            self._conn()
            .execute("SELECT text, applied_at FROM cluster_config ORDER BY seq DESC LIMIT 1")
            .fetchone()
        )
        return (str(row[0]), float(row[1])) if row else None

    # -- principals and audit ------------------------------------------------------------

    _PRINCIPAL_COLUMNS = "name, role, team, created_at, revoked_at"

    def add_principal(
        self, name: str, role: str, team: str | None, token_hash: str, at: float
    ) -> TokenRecord:
        with self._write() as conn:
            active = conn.execute(
                "SELECT 1 FROM principals WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if active is not None:
                raise PrincipalExists(name)
            conn.execute(
                "INSERT INTO principals (name, role, team, token_sha256, created_at)"
                " VALUES (?,?,?,?,?)",
                (name, role, team, token_hash, at),
            )
        return TokenRecord(name, role, team, at)

    def principal_by_hash(self, token_hash: str) -> TokenRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._PRINCIPAL_COLUMNS} FROM principals"
                " WHERE token_sha256 = ? AND revoked_at IS NULL",
                (token_hash,),
            )
            .fetchone()
        )
        return TokenRecord(*row) if row else None

    def principals(self, include_revoked: bool = False) -> list[TokenRecord]:
        sql = f"SELECT {self._PRINCIPAL_COLUMNS} FROM principals"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        return [TokenRecord(*row) for row in self._conn().execute(sql + " ORDER BY name, id")]

    def revoke_principal(self, name: str, at: float) -> TokenRecord | None:
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {self._PRINCIPAL_COLUMNS} FROM principals"
                " WHERE name = ? AND revoked_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE principals SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (at, name),
            )
        return TokenRecord(row[0], row[1], row[2], row[3], at)

    def add_audit(self, entry: AuditEntry) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO audit (at, principal, action, object, remote, outcome)"
                " VALUES (?,?,?,?,?,?)",
                (
                    entry.at,
                    entry.principal,
                    entry.action,
                    entry.object,
                    entry.remote,
                    entry.outcome,
                ),
            )

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        rows = self._conn().execute(
            "SELECT at, principal, action, object, remote, outcome FROM audit"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [AuditEntry(*row) for row in rows]

    # -- deployments -------------------------------------------------------------------

    def save_deployment(self, record: Deployment) -> None:
        """Insert or replace the deployment's row (by name)."""
        values = (
            record.name,
            record.team,
            record.state,
            json.dumps(record.spec),
            record.model,
            record.version,
            record.plugin,
            record.replicas,
            record.min_replicas,
            record.max_replicas,
            record.target_in_flight,
            record.scale_down_after_s,
            record.host,
            record.port,
            json.dumps(record.slots),
            record.message,
            record.created_at,
            record.updated_at,
        )
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO deployments ({_DEPLOYMENT_COLUMNS})"
                f" VALUES ({','.join('?' * len(values))})",
                values,
            )

    def deployments(self) -> list[Deployment]:
        rows = self._conn().execute(f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments ORDER BY name")
        return [_deployment_from_row(row) for row in rows]

    # -- models ------------------------------------------------------------------------

    def finish_with_model(
        self,
        job_id: str,
        at: float,
        artifact: Path,
        metrics: dict[str, float],
        plugin: str,
        params: dict[str, Any],
        result: dict[str, Any],
    ) -> ModelVersion:
        checksum = directory_checksum(artifact)
        with self._write() as conn:
            existing = conn.execute(
                "SELECT name, version FROM models WHERE job_id = ?", (job_id,)
            ).fetchone()
            if existing is not None:  # already registered before a crash; finish the job only
                version = self.model_version(existing[0], existing[1])
                assert version is not None
                self._finish(conn, job_id, at, result, version)
                return version
            name, team = conn.execute(
                "SELECT name, team FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            owner = _model_owner(conn, name)
            if owner is not None and owner != team:
                raise ModelNameTaken(name, owner)
            row = conn.execute("SELECT MAX(version) FROM models WHERE name = ?", (name,)).fetchone()
            number = int(row[0] or 0) + 1
            target = self.models_dir / name / str(number)
            if target.exists():  # left by a crash before the commit below
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(artifact, target)
            version = ModelVersion(
                name, number, job_id, plugin, params, metrics, at, checksum, str(target)
            )
            conn.execute(
                "INSERT INTO models (name, version, job_id, plugin, params, metrics, created_at,"
                " checksum, path) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    number,
                    job_id,
                    plugin,
                    json.dumps(params),
                    json.dumps(metrics),
                    at,
                    checksum,
                    str(target),
                ),
            )
            self._finish(conn, job_id, at, result, version)
            return version

    def _finish(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        at: float,
        result: dict[str, Any],
        version: ModelVersion,
    ) -> None:
        full = {**result, "model": {"name": version.name, "version": version.version}}
        self._transition(conn, job_id, JobState.SUCCEEDED, at, None, None, full)

    def model_versions(self, name: str) -> list[ModelVersion]:
        rows = self._conn().execute(
            "SELECT name, version, job_id, plugin, params, metrics, created_at, checksum, path"
            " FROM models WHERE name = ? ORDER BY version",
            (name,),
        )
        return [_model_from_row(r) for r in rows]

    def model_version(self, name: str, version: int) -> ModelVersion | None:
        row = (
            self._conn()
            .execute(
                "SELECT name, version, job_id, plugin, params, metrics, created_at, checksum,"
                " path FROM models WHERE name = ? AND version = ?",
                (name, version),
            )
            .fetchone()
        )
        return _model_from_row(row) if row else None

    def model_owner(self, name: str) -> str | None:
        return _model_owner(self._conn(), name)

    def model_names(self) -> list[tuple[str, int, int, float]]:
        rows = self._conn().execute(
            "SELECT name, MAX(version), COUNT(*), MAX(created_at) FROM models"
            " GROUP BY name ORDER BY name"
        )
        return [(r[0], int(r[1]), int(r[2]), float(r[3])) for r in rows]


def _model_owner(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute(
        "SELECT jobs.team FROM models JOIN jobs ON jobs.id = models.job_id"
        " WHERE models.name = ? ORDER BY models.version LIMIT 1",
        (name,),
    ).fetchone()
    return str(row[0]) if row else None


def directory_checksum(directory: Path) -> str:
    """sha256 over the relative paths and contents of every file, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


_SPEC_CACHE_SIZE = 4096
"""Most parsed specs kept (~3 KiB and ~35 objects the garbage collector scans each; one
parse costs ~25 us): those of jobs that have not ended (the queue and the running jobs,
which every scheduling pass reads), least recently used first out. An ended job's spec
is parsed when read and not kept, and a job's is dropped when it ends: memory and
collection pauses follow the jobs in flight, not the size of the store."""
_ParsedSpec = tuple[SchedulingRequest, str, dict[str, Any]]
_spec_cache: OrderedDict[str, _ParsedSpec] = OrderedDict()
_spec_cache_lock = threading.Lock()


class _IntervalWindow:
    """Allocation intervals that ended at or after ``since`` or are still open, as of
    event ``last_seq`` (see ``SQLiteStore.allocation_intervals``)."""

    PRUNE_AFTER_S = 60.0

    def __init__(self, since: float, last_seq: int):
        self.since = since
        self.last_seq = last_seq
        self._lowest_asked = since  # since the last pruning
        self._closed: dict[str, list[AllocationInterval]] = {}
        self._open: dict[str, AllocationInterval] = {}

    def add(self, interval: AllocationInterval) -> None:
        if interval.end is None:
            self._open[interval.job_id] = interval
        else:
            self._closed.setdefault(interval.job_id, []).append(interval)

    def close(self, job_id: str, at: float) -> None:
        """The job's open interval (if any) ended at ``at``."""
        held = self._open.pop(job_id, None)
        if held is not None:
            self.add(dataclasses.replace(held, end=at))

    def intervals(self, since: float) -> list[AllocationInterval]:
        """Those ended at or after ``since``, then the open ones; each group by job id, as
        the history reads them. When every ``since`` asked since the last pruning is a
        minute past the window's, the window lets go of what ended before the earliest
        of them (several callers, each with its own horizon, share it)."""
        self._lowest_asked = min(self._lowest_asked, since)
        if self._lowest_asked > self.since + self.PRUNE_AFTER_S:
            floor = self.since = self._lowest_asked
            self._lowest_asked = math.inf
            kept = {
                job_id: [i for i in held if i.end is not None and i.end >= floor]
                for job_id, held in self._closed.items()
            }
            self._closed = {job_id: held for job_id, held in kept.items() if held}
        result = [
            i
            for job_id in sorted(self._closed)
            for i in self._closed[job_id]
            if i.end is not None and i.end >= since
        ]
        result.extend(self._open[job_id] for job_id in sorted(self._open))
        return result


def _list_query(
    columns: str, states: Sequence[JobState] | None, team: str | None, limit: int | None
) -> tuple[str, list[Any]]:
    """SQL and arguments of a listing: newest first, the limit applied by SQLite."""
    where: list[str] = []
    args: list[Any] = []
    if states is not None:
        where.append(f"state IN ({','.join('?' * len(states))})")
        args.extend(s.value for s in states)
    if team is not None:
        where.append("team = ?")
        args.append(team)
    sql = f"SELECT {columns} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY submitted_at DESC, id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


def _document(job: Job) -> dict[str, Any]:
    """The stored spec: the request's fields, ``kind`` and the kind's payload."""
    return {**job.request.model_dump(mode="json"), "kind": job.kind, **job.payload}


def _interval(
    job_id: str, request: SchedulingRequest, start: float, end: float | None
) -> AllocationInterval:
    return AllocationInterval(request.team, request.resources.total(), start, end, job_id)


def _spec_of(job_id: str, text: str, keep: bool = True) -> _ParsedSpec:
    """(request, kind, payload) of a stored spec. Specs never change after submission:
    a job's is parsed once while it has not ended (``keep``), see ``_SPEC_CACHE_SIZE``."""
    with _spec_cache_lock:
        parsed = _spec_cache.get(job_id)
        if parsed is not None:
            _spec_cache.move_to_end(job_id)
            return parsed
    document = json.loads(text)
    payload = {k: v for k, v in document.items() if k not in REQUEST_FIELDS and k != "kind"}
    parsed = (request_of(document), str(document.get("kind", "train")), payload)
    if keep:
        with _spec_cache_lock:
            _spec_cache[job_id] = parsed
            while len(_spec_cache) > _SPEC_CACHE_SIZE:
                _spec_cache.popitem(last=False)
    return parsed


def _forget_spec(job_id: str) -> None:
    """The job ended: its parsed spec is no longer kept."""
    with _spec_cache_lock:
        _spec_cache.pop(job_id, None)


def _job_from_row(row: tuple[Any, ...]) -> Job:
    request, kind, payload = _spec_of(row[0], row[1], keep=not JobState(row[2]).is_terminal())
    return Job(
        id=row[0],
        request=request,
        state=JobState(row[2]),
        submitted_at=row[3],
        admitted_at=row[4],
        started_at=row[5],
        finished_at=row[6],
        nodes=tuple(json.loads(row[7])),
        reason=row[8],
        result=json.loads(row[9]) if row[9] else None,
        attempt=int(row[10]),
        kind=kind,
        payload=payload,
        reason_kind=WaitKind.parse(row[11]),
    )


def _model_from_row(row: tuple[Any, ...]) -> ModelVersion:
    return ModelVersion(
        name=row[0],
        version=int(row[1]),
        job_id=row[2],
        plugin=row[3],
        params=json.loads(row[4]),
        metrics=json.loads(row[5]),
        created_at=float(row[6]),
        checksum=row[7],
        path=row[8],
    )


def _deployment_from_row(row: Sequence[Any]) -> Deployment:
    (name, team, state, spec, model, version, plugin, replicas, low, high, target, down,
     host, port, slots, message, created, updated) = row  # fmt: skip
    return Deployment(
        name=name,
        team=team,
        spec=json.loads(spec),
        model=model,
        version=int(version),
        plugin=plugin,
        replicas=int(replicas),
        min_replicas=int(low),
        max_replicas=int(high),
        target_in_flight=float(target),
        scale_down_after_s=float(down),
        host=host,
        port=int(port),
        state=state,
        created_at=float(created),
        updated_at=float(updated),
        slots=json.loads(slots),
        message=message,
    )
