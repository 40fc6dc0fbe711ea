"""End to end: a real server trains a small mlp on real Ray, then `kind: infer` jobs score
a CSV with it (2 workers, a real gang), the CLI fetches the output through the API, and
bad inputs are refused at submit with their reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dcsched.inference.table import read_output
from dcsched.plugins.registry import load_plugin
from tests.conftest import Server

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

TRAIN = """\
name: infer-bc
kind: train
team: research
resources: {workers: 1, cpus: 1, memory: 1GiB}
model: {type: mlp, params: {hidden: [16]}}
data: {source: "sklearn:breast_cancer", seed: 0}
train: {epochs: 3, batch_size: 64}
"""


def infer_spec(folder: Path, name: str, **infer: Any) -> Path:
    workers = infer.pop("workers", 2)
    body = {"model": "infer-bc:1", "input": "rows.csv", "batch_size": 100, **infer}
    document = {
        "name": name,
        "kind": "infer",
        "team": "research",
        "resources": {"workers": workers, "cpus": 1, "memory": "1GiB"},
        "infer": body,
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def trained(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder with rows.csv (breast_cancer's features, 4 copies: 2,276 rows) and the
    specs; the model infer-bc:1 registered by a real train job."""
    folder = tmp_path_factory.mktemp("infer")
    (folder / "train.yaml").write_text(TRAIN)
    done = server.cli("submit", str(folder / "train.yaml"), "--wait")
    assert done.returncode == 0, done.stderr
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    lines = [",".join(str(n) for n in raw.feature_names)]
    for _ in range(4):
        lines += [",".join(repr(float(v)) for v in row) for row in raw.data]
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    return folder


def expected_predictions(server: Server, folder: Path) -> list[dict[str, Any]]:
    """What the plugin's own predict says of every row, on the registered model."""
    model = load_plugin("mlp").load(server.home / "models" / "infer-bc" / "1", "cpu")
    lines = (folder / "rows.csv").read_text().splitlines()
    names = lines[0].split(",")
    rows = [dict(zip(names, map(float, line.split(",")), strict=True)) for line in lines[1:]]
    return list(model.predict(rows))


def test_two_workers_score_in_input_order_as_the_plugin_predicts(
    server: Server, trained: Path
) -> None:
    done = server.cli("submit", str(infer_spec(trained, "score-two")), "--wait")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    job = server.cli_json("status", job_id)
    assert isinstance(job, dict) and job["state"] == "SUCCEEDED" and job["kind"] == "infer"
    result = job["result"]
    assert result["rows"] == 2276 and result["workers"] == 2
    assert result["model"] == {"name": "infer-bc", "version": 1}
    assert job["progress"]["rows_done"] == job["progress"]["rows_total"] == 2276
    assert len(job["nodes"]) == 2
    for rank in (0, 1):  # both ranks ran, each on its own shard
        log = server.cli("logs", job_id, "--rank", str(rank))
        assert f"rank {rank} of 2: 1138 rows" in log.stdout, log.stdout

    out = trained / "fetched.parquet"
    fetched = server.cli("results", job_id, "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    table = read_output(out)
    assert table.column("row_id").to_pylist() == list(range(2276))
    expected = expected_predictions(server, trained)
    assert table.column("prediction").to_pylist() == [e["label"] for e in expected]
    for label in ("0", "1"):
        got = np.asarray(table.column(f"probability_{label}").to_pylist())
        want = np.asarray([e["probabilities"][label] for e in expected])
        assert np.allclose(got, want, rtol=0, atol=1e-6)

    # the latest version, one worker, CSV out: the same answers
    single = infer_spec(trained, "score-one", model="infer-bc", output="p.csv", workers=1)
    done = server.cli("submit", str(single), "--wait")
    assert done.returncode == 0, done.stderr
    out_csv = trained / "fetched.csv"
    fetched = server.cli("results", done.stdout.strip(), "--out", str(out_csv))
    assert fetched.returncode == 0, fetched.stderr
    assert read_output(out_csv).column("prediction").to_pylist() == [e["label"] for e in expected]


def test_bad_inputs_are_refused_at_submit_with_the_reason(server: Server, trained: Path) -> None:
    before = server.cli_json("list")
    header = (trained / "rows.csv").read_text().splitlines()[0].split(",")
    (trained / "wrong.csv").write_text(
        ",".join([*header[1:], "patient_id"]) + "\n" + "1," * 29 + "1\n"
    )
    (trained / "empty.csv").write_text(",".join(header) + "\n")
    mismatch = [f"missing 1 column(s): '{header[0]}'", "extra 1 column(s): 'patient_id'"]
    cases = [
        ({"input": "wrong.csv"}, mismatch),
        ({"input": "empty.csv"}, ["the input has no rows"]),
        ({"model": "no-such-model"}, ["no registered model named 'no-such-model'", "infer-bc"]),
        ({"model": "infer-bc:7"}, ["model 'infer-bc' has no version 7; its versions are: 1"]),
    ]  # fmt: skip
    for change, words in cases:
        refused = server.cli("submit", str(infer_spec(trained, "bad", **change)))
        assert refused.returncode != 0, (change, refused.stdout)
        for word in words:
            assert word in refused.stderr, (change, refused.stderr)
    # a path the server would open for the user (the CLI uploads local files instead)
    document = json.loads(infer_spec(trained, "bad", input="/etc/passwd").read_text())
    status, body = server.api("POST", "/v1/jobs", {"spec": document})
    assert status == 400 and b"not under an allowed data root" in body
    assert b"root:" not in body
    assert server.cli_json("list") == before  # nothing was stored


def test_results_are_the_teams_own_and_exist_only_for_a_finished_infer_job(
    server: Server, trained: Path
) -> None:
    jobs = server.cli_json("list")
    assert isinstance(jobs, list)
    scored = next(j["id"] for j in jobs if j["name"] == "score-two" and j["state"] == "SUCCEEDED")
    trainer = next(j["id"] for j in jobs if j["kind"] == "train")
    refused = server.cli("results", trainer, "--out", str(trained / "x.csv"))
    assert refused.returncode != 0 and "only infer jobs have results" in refused.stderr
    assert not (trained / "x.csv").exists()

    created = server.cli("tokens", "create", "vera", "--team", "vision")
    assert created.returncode == 0, created.stderr
    status, body = server.api("GET", f"/v1/jobs/{scored}/results", token=created.stdout.strip())
    assert status == 403 and b"results of team research" in body
    status, body = server.api("GET", f"/v1/jobs/{scored}/results")
    assert status == 200 and body.startswith(b"PAR1")
