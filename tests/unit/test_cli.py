"""The CLI against a fake dcsched API (a ThreadingHTTPServer in a thread; no Ray, no server).

The fake checks the bearer token, records every request and serves canned jobs, nodes,
models and plugins. Commands run in-process through click's CliRunner with
DCSCHED_HOME pointing at a temporary folder holding ``token`` and ``server.json``;
the import-weight checks run ``dcsched`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import types
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import pytest
from click.testing import CliRunner, Result

import dcsched
import dcsched.cli as cli_module
import dcsched.cli.jobs as cli_jobs
from dcsched.cli import cli
from dcsched.daemon import ServerOptions

TOKEN = "s3cret-token"
T0 = "2024-05-01T12:00:00Z"
T1 = "2024-05-01T12:00:05Z"
T2 = "2024-05-01T12:01:05Z"
JOB_FIELDS = {
    "id",
    "name",
    "kind",
    "team",
    "state",
    "priority",
    "resources",
    "submitted_at",
    "admitted_at",
    "started_at",
    "finished_at",
    "nodes",
    "reason",
    "position",
    "result",
    "progress",
}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def make_job(job_id: str, state: str, **fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "name": f"{job_id}-name",
        "kind": "train",
        "team": "vision",
        "state": state,
        "priority": "normal",
        "resources": {"workers": 1, "cpus": 1.0, "gpus": 0.0, "memory": 1024**3},
        "submitted_at": T0,
        "admitted_at": None,
        "started_at": None,
        "finished_at": None,
        "nodes": [],
        "reason": None,
        "position": None,
        "result": None,
        "progress": None,
    }
    job.update(fields)
    return job


class FakeApi:
    """Canned state of the fake server plus a log of what the CLI asked for."""

    def __init__(self) -> None:
        self.url = ""
        self.token = TOKEN
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.submitted: list[dict[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {
            "j-run": make_job(
                "j-run",
                "RUNNING",
                admitted_at=T1,
                started_at=T1,
                nodes=["node-aaaaaaaaaaaaaaaaaaaa"],
                progress={"epoch": 3, "loss": 0.25},
            ),
            "j-pend": make_job(
                "j-pend", "PENDING", position=2, reason="waiting for 2 GPUs", priority="low"
            ),
            "j-ok": make_job(
                "j-ok",
                "SUCCEEDED",
                admitted_at=T1,
                started_at=T1,
                finished_at=T2,
                resources={"workers": 2, "cpus": 2.0, "gpus": 0.5, "memory": 512 * 1024**2},
                result={"metrics": {"accuracy": 0.96}, "model": {"name": "iris", "version": 2}},
            ),
            "j-bad": make_job(
                "j-bad", "FAILED", started_at=T1, finished_at=T2, reason="loss became NaN"
            ),
        }
        # Successive GETs of a job walk through these states (the last one stays).
        self.sequences: dict[str, list[str]] = {}
        self.logs: dict[str, str] = {"j-ok": "epoch 1\nepoch 2\ntrained\n", "j-run": "tick\n"}
        self.log_page = 7
        self.log_calls: dict[str, int] = {}
        self.logs_done_after = 4  # a non-terminal job's logs are done after this many calls
        self.next_id = 1
        self.fail_with: int | None = None  # answer every request with this status
        self.uploads: dict[str, bytes] = {}
        self.max_upload = 1024 * 1024

    def count(self, prefix: str = "/v1/") -> int:
        return sum(1 for _, path, _ in self.requests if path.startswith(prefix))

    # -- routes ------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        parts = path.strip("/").split("/")
        if self.fail_with:
            return self.fail_with, {"error": "the store is locked"}
        if method == "POST" and path == "/v1/jobs":
            return self.submit(body)
        if method == "GET" and path == "/v1/info":
            return 200, {"data_roots": ["/abs"], "max_upload": self.max_upload}
        if method == "POST" and path == "/v1/uploads":
            digest = hashlib.sha256(body).hexdigest()
            self.uploads[digest] = body
            return 201, {"ref": f"upload:sha256:{digest}", "size": len(body)}
        if method == "GET" and path == "/v1/jobs":
            jobs = list(self.jobs.values())
            state, team = query.get("state", [None])[0], query.get("team", [None])[0]
            jobs = [j for j in jobs if (not state or j["state"] == state)]
            jobs = [j for j in jobs if (not team or j["team"] == team)]
            return 200, {"jobs": jobs[: int(query.get("limit", ["200"])[0])]}
        if parts[:2] == ["v1", "jobs"] and len(parts) >= 3:
            job = self.jobs.get(parts[2])
            if job is None:
                return 404, {"error": f"no job named {parts[2]}"}
            if len(parts) == 3 and method == "GET":
                return 200, self.detail(job)
            if parts[3:] == ["logs"] and method == "GET":
                return 200, self.page_of_logs(job, int(query.get("offset", ["0"])[0]))
            if parts[3:] == ["cancel"] and method == "POST":
                if job["state"] in TERMINAL:
                    return 409, {"error": f"job {job['id']} already ended as {job['state']}"}
                job["state"] = "CANCELLED"
                return 200, job
        if method == "GET" and path == "/v1/nodes":
            return 200, {"nodes": [NODE]}
        if method == "GET" and path == "/v1/models":
            return 200, {"models": [MODEL_SUMMARY]}
        if method == "GET" and parts[:2] == ["v1", "models"] and len(parts) >= 3:
            if parts[2] != "iris":
                return 404, {"error": f"no model named {parts[2]}"}
            if len(parts) == 3:
                return 200, {"name": "iris", "versions": MODEL_VERSIONS}
            if len(parts) == 5 and parts[3] == "versions":
                for version in MODEL_VERSIONS:
                    if str(version["version"]) == parts[4]:
                        return 200, version
                return 404, {"error": f"model iris has no version {parts[4]}"}
        if method == "GET" and path == "/v1/plugins":
            return 200, {"plugins": [PLUGIN, BROKEN]}
        return 404, {"error": f"no route {method} {path}"}

    def submit(self, body: Any) -> tuple[int, Any]:
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            return 422, {"detail": [{"loc": ["body", "spec"], "msg": "field required"}]}
        self.submitted.append(spec)
        if spec.get("name") == "huge":
            return 413, {"error": "the request body is over the limit of 1048576 bytes"}
        if spec.get("name") == "bad":
            problems = ["resources.cpus: must be greater than 0", "team: required field is missing"]
            return 400, {"error": "invalid job spec", "problems": problems}
        job_id = f"j-new-{self.next_id}"
        self.next_id += 1
        self.jobs[job_id] = make_job(job_id, "PENDING", name=spec.get("name"), position=1)
        if spec.get("name") == "doomed":
            self.sequences[job_id] = ["PENDING", "RUNNING", "FAILED"]
        else:
            self.sequences[job_id] = ["PENDING", "RUNNING", "SUCCEEDED"]
        return 201, self.jobs[job_id]

    def detail(self, job: dict[str, Any]) -> dict[str, Any]:
        sequence = self.sequences.get(job["id"])
        if sequence:
            job["state"] = sequence.pop(0) if len(sequence) > 1 else sequence[0]
            if job["state"] != "PENDING":
                job["position"] = None
            if job["state"] == "RUNNING":
                job["progress"] = {"epoch": 1, "loss": 0.5}
        events = [
            {"at": T0, "from_state": None, "to_state": "PENDING", "reason": "submitted"},
            {"at": T1, "from_state": "PENDING", "to_state": "RUNNING", "reason": None},
        ]
        return {**job, "spec": {"name": job["name"], "model": {"type": "mlp"}}, "events": events}

    def page_of_logs(self, job: dict[str, Any], offset: int) -> dict[str, Any]:
        calls = self.log_calls[job["id"]] = self.log_calls.get(job["id"], 0) + 1
        text = self.logs.get(job["id"], "")
        chunk = text[offset : offset + self.log_page]
        end = offset + len(chunk)
        ended = job["state"] in TERMINAL
        done = end >= len(text) if ended else calls >= self.logs_done_after
        return {"logs": chunk, "offset": end, "done": done}


NODE = {
    "id": "node-aaaaaaaaaaaaaaaaaaaa",
    "address": "10.0.0.5",
    "alive": True,
    "labels": {"zone": "a"},
    "total": {"cpus": 8.0, "gpus": 1.0, "memory": 16 * 1024**3},
    "available": {"cpus": 7.0, "gpus": 1.0, "memory": 15 * 1024**3},
    "jobs": ["j-run"],
}
MODEL_SUMMARY = {"name": "iris", "latest_version": 2, "versions": 2, "updated_at": T2}
MODEL_VERSIONS = [
    {
        "name": "iris",
        "version": v,
        "job_id": f"j-train-{v}",
        "plugin": "mlp",
        "params": {"hidden": [16]},
        "metrics": {"accuracy": 0.9 + v / 100},
        "created_at": T2,
        "checksum": f"sha256-{v}" + "0" * 40,
        "path": f"/home/models/iris/{v}",
    }
    for v in (1, 2)
]
PLUGIN = {
    "name": "mlp",
    "status": "ok",
    "description": "A small MLP",
    "distribution": "dcsched",
    "version": "0.1",
    "error": None,
    "api_version": 1,
    "params_schema": {
        "properties": {
            "hidden": {
                "type": "array",
                "items": {"type": "integer"},
                "default": [64, 32],
                "description": "Units of each hidden layer.",
            },
            "activation": {"enum": ["relu", "tanh"], "type": "string", "default": "relu"},
        }
    },
    "data_sources": ["sklearn", "csv"],
    "metrics": {
        "binary": {"names": ["accuracy", "f1"], "objective": "f1", "direction": "maximize"}
    },
    "search_space": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}},
    "resources": {"cpus": 1, "gpus": 0, "memory": "1GiB"},
    "gpu": True,
    "multi_worker": True,
}
BROKEN = {
    "name": "old-tree",
    "status": "broken",
    "description": "",
    "distribution": "acme-trees",
    "version": "0.3",
    "error": "model plugin 'old-tree' (acme.tree:Plugin) from acme-trees 0.3 is for api_version 0",
    "params_schema": None,
}


def make_handler(fake: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            fake.requests.append((method, parts.path, query))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                status, payload = 401, {"error": "missing or wrong bearer token"}
            else:
                binary = self.headers.get("Content-Type") == "application/octet-stream"
                body = raw if binary else (json.loads(raw) if raw else None)
                status, payload = fake.handle(method, parts.path, query, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

    return Handler


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DCSCHED_URL", "DCSCHED_TOKEN", "DCSCHED_PORT", "DCSCHED_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DCSCHED_HOME", str(tmp_path))
    monkeypatch.setattr(cli_jobs, "POLL_INTERVAL_S", 0.01)
    (tmp_path / "token").write_text(TOKEN + "\n")
    return tmp_path


@pytest.fixture
def api(home: Path) -> Iterator[FakeApi]:
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    (home / "server.json").write_text(json.dumps({"url": fake.url, "pid": 123}))
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str) -> Result:
    """Invoke the CLI in-process; an escaped exception (a traceback) fails the test."""
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\n{result.output}")
    return result


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


SPEC = """\
name: iris-mlp
kind: train
team: vision
model: {type: mlp}
data: {source: "csv:data/iris.csv", target: species}
"""


@pytest.fixture(autouse=True)
def _iris_csv(home: Path) -> None:
    """The file SPEC names, beside wherever a test writes SPEC (the CLI uploads it)."""
    write(home / "data" / "iris.csv", "a,species\n1,x\n")


# -- submit ----------------------------------------------------------------------------------


def test_submit_prints_only_the_id_and_uploads_a_relative_csv(
    api: FakeApi, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(home / "specs" / "job.yaml", SPEC)
    write(home / "specs" / "data" / "iris.csv", "a,species\n1,x\n")
    (home / "data" / "iris.csv").unlink()  # the csv path follows the spec file
    monkeypatch.chdir(home)  # a relative FILE: the csv path follows the file, not the cwd

    result = run("submit", "specs/job.yaml")

    assert result.exit_code == 0, result.output
    assert result.stdout == "j-new-1\n"
    sent = api.submitted[0]
    digest = hashlib.sha256(b"a,species\n1,x\n").hexdigest()
    assert sent["data"]["source"] == f"csv:upload:sha256:{digest}"
    assert api.uploads[digest] == b"a,species\n1,x\n"
    assert sent["data"]["target"] == "species"
    assert sent["name"] == "iris-mlp"


def test_submit_refuses_a_file_over_the_upload_limit_before_sending_it(
    api: FakeApi, home: Path
) -> None:
    api.max_upload = 10
    spec = write(home / "job.yaml", SPEC)
    write(home / "data" / "iris.csv", "a,species\n" + "1,x\n" * 10)

    result = run("submit", str(spec))

    assert result.exit_code == 2
    assert "over the server's upload limit of 10 bytes" in result.output
    assert not api.uploads and not api.submitted


def test_submit_shorthand_and_yaml_give_the_same_run_job(
    api: FakeApi, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(home / "work" / "train.py", "print('hi')\n")
    write(
        home / "work" / "job.yaml",
        "name: train\nkind: run\nteam: research\npriority: normal\n"
        "resources: {workers: 2, cpus: 1, gpus: 0, memory: 1GiB}\n"
        "run:\n  command: [python, train.py, --lr, '0.01']\n  working_dir: .\n"
        "  env: {OMP_NUM_THREADS: '1'}\n",
    )
    monkeypatch.chdir(home / "work")

    by_yaml = run("submit", "job.yaml")
    by_flags = run(
        "submit", "--team", "research", "--workers", "2", "--cpus", "1",
        "--env", "OMP_NUM_THREADS=1", "--", "python", "train.py", "--lr", "0.01",
    )  # fmt: skip

    assert by_yaml.exit_code == 0 and by_flags.exit_code == 0, (by_yaml.output, by_flags.output)
    from_yaml, from_flags = api.submitted
    assert from_yaml == from_flags
    assert from_flags["run"]["working_dir"].startswith("upload:sha256:")
    (archive,) = api.uploads.values()
    with zipfile.ZipFile(io.BytesIO(archive)) as packed:
        assert sorted(packed.namelist()) == ["job.yaml", "train.py"]


@pytest.mark.parametrize(
    "source",
    ["csv:/abs/iris.csv", "sklearn:breast_cancer"],
)
def test_submit_keeps_data_root_and_non_csv_sources(api: FakeApi, home: Path, source: str) -> None:
    spec = write(home / "job.yaml", SPEC.replace("csv:data/iris.csv", source))

    assert run("submit", str(spec)).exit_code == 0
    assert api.submitted[0]["data"]["source"] == source


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: [unclosed\nkind: train\n", "not valid YAML"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- name: a\n- name: b\n", "not a list"),
        ("just a string\n", "not a str"),
    ],
)
def test_submit_invalid_local_spec_exits_2_without_a_request(
    api: FakeApi, home: Path, text: str, fragment: str
) -> None:
    spec = write(home / "job.yaml", text)

    result = run("submit", str(spec))

    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert result.stdout == ""
    assert api.requests == []


def test_submit_missing_file_exits_2_without_a_request(api: FakeApi, home: Path) -> None:
    result = run("submit", str(home / "nope.yaml"))

    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot read")
    assert api.requests == []


def test_a_spec_over_the_size_limit_is_bad_input(api: FakeApi, home: Path) -> None:
    spec = write(home / "job.yaml", SPEC.replace("iris-mlp", "huge"))

    result = run("submit", str(spec))

    assert result.exit_code == 2
    assert "over the limit of 1048576 bytes" in result.stderr


def test_submit_rejected_spec_lists_the_problems_and_exits_2(api: FakeApi, home: Path) -> None:
    spec = write(home / "job.yaml", SPEC.replace("iris-mlp", "bad"))

    result = run("submit", str(spec))

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: invalid job spec",
        "  - resources.cpus: must be greater than 0",
        "  - team: required field is missing",
    ]
    assert result.stdout == ""


def test_submit_wait_follows_the_job_and_exits_0_on_success(api: FakeApi, home: Path) -> None:
    spec = write(home / "job.yaml", SPEC)

    result = run("submit", str(spec), "--wait", "--timeout", "10")

    assert result.exit_code == 0, result.output
    assert result.stdout == "j-new-1\n"
    assert "RUNNING" in result.stderr
    assert "job j-new-1: SUCCEEDED" in result.stderr


def test_submit_wait_exits_1_when_the_job_fails(api: FakeApi, home: Path) -> None:
    spec = write(home / "job.yaml", SPEC.replace("iris-mlp", "doomed"))

    result = run("submit", str(spec), "--wait")

    assert result.exit_code == 1
    assert result.stdout == "j-new-1\n"
    assert "job j-new-1: FAILED" in result.stderr


# -- connection and auth errors ---------------------------------------------------------------


def test_wrong_token_exits_1_and_names_the_token_file(api: FakeApi, home: Path) -> None:
    (home / "token").write_text("not-the-token\n")

    result = run("list")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: the server refused the API token from ")
    assert str(home / "token") in result.stderr


def test_missing_token_exits_1_and_names_the_token_file(api: FakeApi, home: Path) -> None:
    (home / "token").unlink()

    result = run("status", "j-run")

    assert result.exit_code == 1
    assert "no API token" in result.stderr
    assert str(home / "token") in result.stderr


def test_token_and_url_from_the_environment(
    api: FakeApi, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "server.json").unlink()
    (home / "token").unlink()
    monkeypatch.setenv("DCSCHED_URL", api.url)
    monkeypatch.setenv("DCSCHED_TOKEN", TOKEN)

    result = run("list", "-o", "json")

    assert result.exit_code == 0, result.output
    assert {job["id"] for job in json.loads(result.stdout)} == set(api.jobs)


def test_unreachable_server_exits_1_and_says_how_to_start_it(home: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    (home / "server.json").write_text(json.dumps({"url": url}))

    result = run("list")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the dcsched server at " + url)
    assert "dcsched up" in result.stderr
    assert "Traceback" not in result.output


def test_missing_server_json_exits_1_and_says_how_to_start_it(home: Path) -> None:
    result = run("wait", "j-run")

    assert result.exit_code == 1
    assert "server.json" in result.stderr
    assert "dcsched up" in result.stderr


def test_server_error_exits_1(api: FakeApi) -> None:
    api.fail_with = 500

    result = run("nodes")

    assert result.exit_code == 1
    assert result.stderr == "error: the store is locked\n"


# -- list / queue ------------------------------------------------------------------------------


def test_list_table_shows_every_job_with_resources_and_queue_reason(api: FakeApi) -> None:
    result = run("list")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "TEAM",
        "KIND",
        "STATE",
        "PRIORITY",
        "RESOURCES",
        "AGE",
        "NODES",
        "REASON",
    ]
    for job_id in api.jobs:
        assert any(line.startswith(job_id + " ") for line in lines[1:]), job_id
    pending = next(line for line in lines if line.startswith("j-pend "))
    assert "1x 1cpu 0gpu 1GiB" in pending
    assert "#2 in queue: waiting for 2 GPUs" in pending
    assert " ago" in pending
    ok = next(line for line in lines if line.startswith("j-ok "))
    assert "2x 2cpu 0.5gpu 512MiB" in ok
    # aligned: every column starts at the header's offset
    start = lines[0].index("STATE")
    assert all(line[start:].split()[0] in api.jobs[line.split()[0]]["state"] for line in lines[1:])


def test_queue_is_an_alias_of_list(api: FakeApi) -> None:
    listed, queued = run("list", "-o", "json"), run("queue", "-o", "json")

    assert listed.exit_code == queued.exit_code == 0
    assert listed.stdout == queued.stdout


def test_list_json_is_an_array_of_jobs_with_the_api_field_names(api: FakeApi) -> None:
    result = run("list", "-o", "json")

    jobs = json.loads(result.stdout)
    assert isinstance(jobs, list)
    assert len(jobs) == len(api.jobs)
    for job in jobs:
        assert set(job) == JOB_FIELDS
        assert set(job["resources"]) == {"workers", "cpus", "gpus", "memory"}


def test_list_passes_filters_to_the_api(api: FakeApi) -> None:
    result = run("list", "--state", "pending", "--team", "vision", "--limit", "5", "-o", "json")

    assert result.exit_code == 0
    assert [job["id"] for job in json.loads(result.stdout)] == ["j-pend"]
    method, path, query = api.requests[-1]
    assert (method, path) == ("GET", "/v1/jobs")
    assert query == {"state": ["PENDING"], "team": ["vision"], "limit": ["5"]}


def test_list_rejects_an_unknown_state_with_exit_2(api: FakeApi) -> None:
    result = run("list", "--state", "sleeping")

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith("error: Invalid value for '--state'")
    assert api.requests == []


def test_usage_errors_are_reported_as_error_lines_with_exit_2(api: FakeApi) -> None:
    for args in (["nope"], ["models", "show"], ["list", "-o", "yaml"], ["wait"]):
        result = run(*args)
        assert result.exit_code == 2, args
        assert result.stderr.splitlines()[-1].startswith("error: "), result.stderr
        assert "Traceback" not in result.output
    assert api.requests == []


# -- status / logs / cancel / wait ----------------------------------------------------------


def test_status_table_shows_history_result_and_model(api: FakeApi) -> None:
    result = run("status", "j-ok")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "j-ok" in out
    assert "SUCCEEDED" in out
    assert "accuracy=0.96" in out
    assert "iris:2" in out
    assert "2x 2cpu 0.5gpu 512MiB (total 4cpu 1gpu 1GiB)" in out
    assert "RAN FOR" in out and "1m00s" in out
    assert "EVENTS" in out and "submitted" in out


def test_status_json_is_the_job_with_spec_and_events(api: FakeApi) -> None:
    result = run("status", "j-pend", "-o", "json")

    job = json.loads(result.stdout)
    assert set(job) == JOB_FIELDS | {"spec", "events"}
    assert job["position"] == 2
    assert set(job["events"][0]) == {"at", "from_state", "to_state", "reason"}


def test_status_of_an_unknown_job_exits_2(api: FakeApi) -> None:
    result = run("status", "nope")

    assert result.exit_code == 2
    assert result.stderr == "error: no job named nope\n"


def test_logs_prints_all_available_text(api: FakeApi) -> None:
    result = run("logs", "j-ok")

    assert result.exit_code == 0
    assert result.stdout == api.logs["j-ok"]


def test_logs_without_follow_stops_when_nothing_new_arrives(api: FakeApi) -> None:
    result = run("logs", "j-run")

    assert result.exit_code == 0
    assert result.stdout == "tick\n"
    assert api.log_calls["j-run"] == 2  # the text, then an empty page


def test_logs_follow_keeps_polling_until_done(api: FakeApi) -> None:
    result = run("logs", "j-run", "--follow")

    assert result.exit_code == 0
    assert result.stdout == "tick\n"
    assert api.log_calls["j-run"] == api.logs_done_after
    offsets = [q["offset"] for _, path, q in api.requests if path.endswith("/logs")]
    assert offsets == [["0"], ["5"], ["5"], ["5"]]


def test_logs_of_an_unknown_job_exits_2(api: FakeApi) -> None:
    assert run("logs", "nope", "--follow").exit_code == 2


def test_cancel_prints_the_new_state(api: FakeApi) -> None:
    result = run("cancel", "j-run")

    assert result.exit_code == 0
    assert result.stdout == "j-run: CANCELLED\n"
    assert ("POST", "/v1/jobs/j-run/cancel", {}) in api.requests


def test_cancel_of_an_ended_job_exits_1(api: FakeApi) -> None:
    result = run("cancel", "j-ok")

    assert result.exit_code == 1
    assert result.stderr == "error: job j-ok already ended as SUCCEEDED\n"


def test_cancel_of_an_unknown_job_exits_2(api: FakeApi) -> None:
    result = run("cancel", "nope")

    assert result.exit_code == 2
    assert "no job named nope" in result.stderr


def test_wait_exit_code_follows_the_final_state(api: FakeApi) -> None:
    succeeded, failed = run("wait", "j-ok"), run("wait", "j-bad")

    assert succeeded.exit_code == 0
    assert "job j-ok: SUCCEEDED" in succeeded.stderr
    assert "accuracy=0.96" in succeeded.stderr
    assert failed.exit_code == 1
    assert "job j-bad: FAILED" in failed.stderr
    assert "loss became NaN" in failed.stderr
    assert succeeded.stdout == failed.stdout == ""


def test_wait_polls_until_the_job_ends(api: FakeApi) -> None:
    api.sequences["j-pend"] = ["PENDING", "PENDING", "RUNNING", "SUCCEEDED"]

    result = run("wait", "j-pend")

    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert lines[0] == "job j-pend: PENDING  #2 in queue: waiting for 2 GPUs"
    assert lines[1].startswith("job j-pend: RUNNING")  # the repeated PENDING is not repeated
    assert lines[-1].startswith("job j-pend: SUCCEEDED")
    assert api.count("/v1/jobs/j-pend") == 4


def test_wait_timeout_exits_1_with_a_message(api: FakeApi) -> None:
    result = run("wait", "j-run", "--timeout", "0.05")

    assert result.exit_code == 1
    assert "error: job j-run is still RUNNING after 0.05s" in result.stderr


def test_wait_for_an_unknown_job_exits_2(api: FakeApi) -> None:
    assert run("wait", "nope").exit_code == 2


# -- nodes, models, plugins -------------------------------------------------------------------


def test_nodes_table_and_json(api: FakeApi) -> None:
    table, raw = run("nodes"), run("nodes", "-o", "json")

    assert table.exit_code == raw.exit_code == 0
    assert "node-aaaaaaa" in table.stdout
    assert "7/8" in table.stdout and "15GiB/16GiB" in table.stdout and "zone=a" in table.stdout
    assert json.loads(raw.stdout) == [NODE]


def test_models_list_and_show(api: FakeApi) -> None:
    listed = run("models", "list", "-o", "json")
    assert json.loads(listed.stdout) == [MODEL_SUMMARY]
    assert "iris" in run("models", "list").stdout

    versions = run("models", "show", "iris")
    assert versions.exit_code == 0
    assert "j-train-1" in versions.stdout and "j-train-2" in versions.stdout

    one = run("models", "show", "iris:1", "-o", "json")
    assert json.loads(one.stdout) == MODEL_VERSIONS[0]
    assert api.requests[-1][1] == "/v1/models/iris/versions/1"

    latest = run("models", "show", "iris:latest")
    assert "/home/models/iris/2" in latest.stdout


def test_models_show_bad_input_exits_2(api: FakeApi) -> None:
    bad_ref = run("models", "show", "iris:two")
    assert bad_ref.exit_code == 2
    assert api.requests == []
    assert run("models", "show", "nope").exit_code == 2
    assert run("models", "show", "iris:9").exit_code == 2


def test_plugins_list(api: FakeApi) -> None:
    table, raw = run("plugins", "list"), run("plugins", "list", "-o", "json")

    assert "mlp" in table.stdout and "A small MLP" in table.stdout
    assert json.loads(raw.stdout) == [PLUGIN, BROKEN]
    broken_line = next(line for line in table.stdout.splitlines() if "old-tree" in line)
    assert "broken" in broken_line and "acme-trees" in broken_line
    assert "api_version 0" in broken_line


def test_plugins_show(api: FakeApi) -> None:
    shown = run("plugins", "show", "mlp")
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "hidden" in out and "[64, 32]" in out and "Units of each hidden layer." in out
    assert "relu|tanh" in out
    assert "data sources: sklearn, csv" in out
    assert "binary: accuracy, f1; objective f1 (maximize)" in out
    assert "dropout" in out and "memory 1GiB" in out
    assert json.loads(run("plugins", "show", "mlp", "-o", "json").stdout) == PLUGIN
    broken = run("plugins", "show", "old-tree")
    assert broken.exit_code == 0 and "BROKEN" in broken.stdout and "api_version 0" in broken.stdout
    missing = run("plugins", "show", "nope")
    assert missing.exit_code == 2 and "installed: mlp, old-tree" in missing.output


# -- server lifecycle (dcsched.daemon faked) ---------------------------------------------------


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch, home: Path) -> types.SimpleNamespace:
    calls = types.SimpleNamespace(start=[], stop=[], run=[], fail=None)

    def start_background(*args: Any) -> dict[str, Any]:
        calls.start.append(args)
        if calls.fail:
            raise RuntimeError(calls.fail)
        return {"url": "http://127.0.0.1:9999", "pid": 42, "metrics_url": "http://m"}

    def stop_background(paths: Any, stop_ray: bool = True) -> list[str]:
        calls.stop.append((paths, stop_ray))
        return ["stopped the server (pid 42)"]

    fake = types.ModuleType("dcsched.daemon")
    fake.start_background = start_background  # type: ignore[attr-defined]
    fake.stop_background = stop_background  # type: ignore[attr-defined]
    fake.run_server = lambda *args: calls.run.append(args)  # type: ignore[attr-defined]
    fake.ServerOptions = ServerOptions  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dcsched.daemon", fake)
    monkeypatch.setattr(dcsched, "daemon", fake, raising=False)
    return calls


def test_up_starts_the_background_server_and_says_where_it_is(
    daemon: types.SimpleNamespace, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCSCHED_PORT", "9999")

    result = run("up", "--timeout", "5")

    assert result.exit_code == 0, result.output
    paths, options, timeout = daemon.start[0]
    assert (paths.home, timeout) == (home, 5.0)
    assert options == ServerOptions(host="127.0.0.1", port=9999)
    assert "http://127.0.0.1:9999" in result.stdout and "pid 42" in result.stdout


def test_up_failure_is_reported_without_a_traceback(daemon: types.SimpleNamespace) -> None:
    daemon.fail = "Ray did not start within 5s"

    result = run("up")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: Ray did not start within 5s")


def test_down_and_keep_ray(daemon: types.SimpleNamespace) -> None:
    assert run("down").stdout == "stopped the server (pid 42)\n"
    assert run("down", "--keep-ray").exit_code == 0
    assert [stop_ray for _, stop_ray in daemon.stop] == [True, False]


def test_server_runs_in_the_foreground_with_the_options(daemon: types.SimpleNamespace) -> None:
    result = run("server", "--port", "8000", "--host", "0.0.0.0", "--ray-address", "ray://h:1")

    assert result.exit_code == 0
    _, options = daemon.run[0]
    assert options == ServerOptions(host="0.0.0.0", port=8000, ray_address="ray://h:1")


def test_up_passes_exporter_and_ray_dashboard_options(daemon: types.SimpleNamespace) -> None:
    result = run(
        "up",
        "--no-exporters",
        "--exporter-port",
        "9500",
        "--grafana-url",
        "http://grafana:3000",
        "--prometheus-url",
        "http://prom:9090",
    )

    assert result.exit_code == 0, result.output
    _, options, _ = daemon.start[0]
    assert not options.exporters and options.exporter_port == 9500
    assert options.ray_dashboard_env() == {
        "RAY_GRAFANA_HOST": "http://grafana:3000",
        "RAY_PROMETHEUS_HOST": "http://prom:9090",
    }
    assert options.argv()[-6:] == [
        "--exporter-port",
        "9500",
        "--grafana-url",
        "http://grafana:3000",
        "--prometheus-url",
        "http://prom:9090",
    ]


# -- start-up weight (subprocess) ----------------------------------------------------------------

HEAVY = ("ray", "torch", "pydantic", "fastapi", "uvicorn", "httpx", "yaml")
WRAPPER = f"""
import sys
from dcsched.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def run_process(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
    env["DCSCHED_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_does_not_import_heavy_modules(home: Path) -> None:
    proc = run_process(home, "--help")

    assert proc.returncode == 0
    assert "queue" in proc.stdout and "submit" in proc.stdout
    assert "HEAVY=\n" in proc.stderr


def test_list_does_not_import_heavy_modules(api: FakeApi, home: Path) -> None:
    api.jobs.update({f"j-{i:04d}": make_job(f"j-{i:04d}", "PENDING") for i in range(1000)})

    for output in ("json", "table"):
        proc = run_process(home, "list", "--limit", "1000", "-o", output)
        assert proc.returncode == 0, proc.stderr
        assert "HEAVY=\n" in proc.stderr
    assert len(json.loads(run_process(home, "list", "--limit", "1000", "-o", "json").stdout)) == (
        1000
    )


HELP_OF_EVERY_COMMAND = """
import sys
import click
from dcsched.cli import cli

def walk(group, path):
    for name in sorted(group.commands):  # the eager commands; LAZY_COMMANDS are heavy
        command = group.commands[name]
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from walk(command, [*path, name])

helped = 0
for args in walk(cli, []):
    try:
        cli.main([*args, "--help"], prog_name="dcsched", standalone_mode=False)
    except SystemExit:
        pass
    helped += 1
heavy = sorted(m for m in ("ray", "torch", "pydantic") if m in sys.modules)
print(helped, "HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def test_no_eager_command_imports_ray_torch_or_pydantic(home: Path) -> None:
    """The runtime half of the import-linter contract on the CLI (pyproject.toml): every
    eager command and subcommand, loaded and asked for its help in one fresh process,
    imports no ray, torch or pydantic (the contract's ignored imports are function-level
    ones of submit, server, up and down, reached only when those run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
    env["DCSCHED_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", HELP_OF_EVERY_COMMAND],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    helped, heavy = proc.stderr.strip().splitlines()[-1].split(" ")
    assert int(helped) >= 25, proc.stderr  # the walk reached the subcommands too
    assert heavy == "HEAVY=", proc.stderr


def test_python_m_dcsched_cli_runs_the_cli(home: Path) -> None:
    env = {**os.environ, "DCSCHED_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "dcsched.cli", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: dcsched")


def test_failure_is_a_click_exception_with_its_exit_code() -> None:
    assert issubclass(cli_module.Failure, click.ClickException)
    assert cli_module.Failure("x").exit_code == 1
    assert cli_module.BadInput("x").exit_code == 2


def test_a_gang_lists_each_node_once_with_its_worker_count() -> None:
    from dcsched.cli.format import _node_list

    assert _node_list(["a" * 40, "a" * 40, "b" * 40]) == "aaaaaaaaaaaa x2,bbbbbbbbbbbb"
