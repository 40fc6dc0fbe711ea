"""The replica server without Ray: the request decoding, the numpy forward pass against
the plugin's own predict, the spec, the roles, and a real replica over real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dcsched.core.auth import Call, Denied, Principal, Role, action_of, authorize, deployment_of
from dcsched.core.spec import SpecError
from dcsched.kinds import parse_job_spec
from dcsched.kinds.serve import parse_model_ref
from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.mlp import MLPPlugin
from dcsched.serving.haproxy import render_config
from dcsched.serving.metrics import ReplicaMetrics
from dcsched.serving.model import ServedModel, choose_device, load_model
from dcsched.serving.protocol import BadRequest, FeatureShape, decode_oip, decode_predict
from dcsched.serving.replica import Replica, serve

SHAPE = FeatureShape(["a", "b", "c"])


def test_predict_bodies_decode_to_rows() -> None:
    assert decode_predict(b'{"features": [1, 2.5, 3]}', SHAPE) == ([[1, 2.5, 3]], True)
    assert decode_predict(b'{"features": {"c": 3, "a": 1, "b": 2}}', SHAPE) == ([[1, 2, 3]], True)
    rows, single = decode_predict(b'{"instances": [[1, 2, 3], [4, 5, 6]]}', SHAPE)
    assert rows == [[1, 2, 3], [4, 5, 6]] and single is False


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "no body"),
        (b"{", 400, "not valid JSON"),
        (b"[1]", 400, "must be a JSON object"),
        (b'{"features": [1, 2]}', 422, "has 2 values; the model takes 3"),
        (b'{"features": [1, "2", 3]}', 422, "must be numbers, got a string"),
        (b'{"features": [1, true, 3]}', 422, "got a boolean"),
        (b'{"features": [1, null, 3]}', 422, "got null"),
        (b'{"features": [1, 1e999, 3]}', 400, "infinity"),
        (b'{"features": [1, ' + b"9" * 400 + b", 3]}", 400, "infinity"),
        (b'{"features": {"a": 1, "b": 2}}', 422, "missing features ['c']"),
        (b'{"features": {"a": 1, "b": 2, "c": 3, "d": 4}}', 422, "unknown features ['d']"),
        (b'{"features": 3}', 422, "must be a list of 3 numbers"),
        (b'{"instances": []}', 422, "non-empty list"),
        (b'{"instances": [[1, 2, 3], [1]]}', 422, "instances[1] has 1 values"),
        (b'{"features": [1, 2, 3], "instances": []}', 400, "not both"),
        (b'{"x": 1}', 400, 'needs "features" or "instances"; it has: x'),
    ],
)
def test_bad_predict_bodies_are_4xx_with_the_reason(body: bytes, status: int, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_predict(body, SHAPE)
    assert caught.value.status == status and words in caught.value.message


def test_oip_infer_bodies() -> None:
    body = {"id": "7", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                   "data": [1, 2, 3, 4, 5, 6]}]}  # fmt: skip
    assert decode_oip(json.dumps(body).encode(), SHAPE) == ([[1, 2, 3], [4, 5, 6]], "7")
    nested = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [[1, 2, 3]]}]}
    assert decode_oip(json.dumps(nested).encode(), SHAPE) == ([[1, 2, 3]], None)
    for bad, words in [
        ({"inputs": []}, "one input tensor"),
        ({"inputs": [{"shape": [1, 3], "datatype": "BYTES", "data": []}]}, "must be numeric"),
        ({"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}, "3 features"),
        ({"inputs": [{"shape": [2, 3], "datatype": "FP32", "data": [1] * 5}]}, "needs 6"),
        ({"inputs": [{"shape": [-1, 3], "datatype": "FP32", "data": [1] * 3}]}, "shape must"),
    ]:
        with pytest.raises(BadRequest) as caught:
            decode_oip(json.dumps(bad).encode(), SHAPE)
        assert words in caught.value.message and 400 <= caught.value.status < 500


def test_serve_spec_and_model_references() -> None:
    assert parse_model_ref("mlp-x") == ("mlp-x", None)
    assert parse_model_ref("mlp-x:3") == ("mlp-x", 3)
    for bad in ("Mlp", "m:0", "m:x", "m:1:2", ""):
        with pytest.raises(ValueError):
            parse_model_ref(bad)
    base = {"name": "svc", "kind": "serve", "team": "t", "serve": {"model": "m:1"}}
    spec = parse_job_spec({**base, "serve": {"model": "m", "replicas": 2}})
    assert spec.kind == "serve" and spec.serve.replicas == 2  # type: ignore[union-attr]
    with pytest.raises(SpecError) as caught:
        parse_job_spec({**base, "resources": {"workers": 2}})
    assert "a replica is one worker" in str(caught.value)
    with pytest.raises(SpecError) as caught:
        parse_job_spec({**base, "serve": {"model": "m", "replicas": 5, "max_replicas": 3}})
    assert "must lie between" in str(caught.value)


def test_members_change_their_own_teams_deployments_only() -> None:
    assert action_of("POST", "/v1/deployments") == "serve.create"
    assert action_of("POST", "/v1/deployments/svc/update") == "serve.update"
    assert action_of("GET", "/v1/deployments/svc") is None
    assert deployment_of("/v1/deployments/svc/stop") == "svc"
    alice = Principal("alice", Role.MEMBER, "research")
    authorize(alice, Call("POST", "/v1/deployments", spec_team="research"))
    authorize(alice, Call("POST", "/v1/deployments/svc/stop", job_team="research"))
    with pytest.raises(Denied, match="submits for that team only"):
        authorize(alice, Call("POST", "/v1/deployments", spec_team="vision"))
    with pytest.raises(Denied, match="deployment belongs to team vision"):
        authorize(alice, Call("POST", "/v1/deployments/svc/scale", job_team="vision"))
    with pytest.raises(Denied):
        authorize(Principal("v", Role.VIEWER), Call("POST", "/v1/deployments/svc/stop"))


def test_the_balancer_configuration_lists_every_slot(tmp_path: Path) -> None:
    from dcsched.serving.haproxy import SLOTS, Slot

    text = render_config("svc", "127.0.0.1", 8080, tmp_path / "s.sock", {2: Slot(2, "10.0.0.1", 9)})
    assert "bind 127.0.0.1:8080" in text and "option httpchk GET /v2/health/ready" in text
    assert "server r2 10.0.0.1:9 check\n" in text
    assert text.count(" check disabled") == SLOTS - 1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    plugin = MLPPlugin()
    data = plugin.load_data(DataSpec(source="sklearn:breast_cancer"))
    trained = plugin.create(plugin.validate_params({"hidden": [16]}), data.info, "cpu")
    trained.fit(data, TrainSpec(epochs=2), 0, lambda report: None, None)
    directory = tmp_path_factory.mktemp("model")
    trained.save(directory)
    return plugin.load(directory, "cpu")


def test_the_numpy_forward_pass_answers_as_the_plugins_predict(model: Any) -> None:
    rows = (np.random.default_rng(0).normal(size=(64, 30)) * 5 + 10).tolist()
    served = ServedModel("m", 1, "mlp", model)
    assert served.fast
    ours, theirs = served.predict(rows), model.predict(rows)
    for a, b in zip(ours, theirs, strict=True):
        assert a["label"] == b["label"]
        for label, p in a["probabilities"].items():
            # Both compute in float32 but sum in different orders (numpy's BLAS, torch's
            # kernels): differences of a few 1e-6 are rounding, not a different model.
            assert abs(p - b["probabilities"][label]) < 1e-5


def test_a_replica_uses_cuda_only_when_it_asked_for_gpus_and_cuda_is_there() -> None:
    asked: list[bool] = []

    def cuda(answer: bool) -> Any:
        def available() -> bool:
            asked.append(answer)
            return answer

        return available

    assert choose_device(1, cuda(True)) == "cuda"
    assert choose_device(0.5, cuda(True)) == "cuda"
    assert choose_device(1, cuda(False)) == "cpu"  # Ray gave no device it can see
    assert asked == [True, True, False]
    assert choose_device(0, cuda(True)) == "cpu"  # the node's GPUs are not its to use
    assert asked == [True, True, False]


def test_a_model_on_a_device_is_scored_by_the_plugin_not_the_numpy_path(
    model: Any, tmp_path: Path
) -> None:
    model.save(tmp_path)
    on_cpu = load_model("m", 1, "mlp", tmp_path)
    assert (on_cpu.device, on_cpu.fast) == ("cpu", True)
    import torch

    gpu_replica = load_model("m", 1, "mlp", tmp_path, gpus=1)
    assert gpu_replica.device == ("cuda" if torch.cuda.is_available() else "cpu")
    # The same model as a GPU replica sees it where torch finds no CUDA (this machine).
    served = ServedModel("m", 1, "mlp", model, device="cuda")
    assert not served.fast
    rows = [[float(i) for i in range(30)]]
    assert served.predict(rows) == model.predict(rows)


@pytest.fixture
def replica(model: Any) -> Iterator[tuple[str, int, ReplicaMetrics]]:
    metrics = ReplicaMetrics("svc", "svc-r1", "m", 1)
    app = Replica(ServedModel("m", 1, "mlp", model), metrics, max_body=64 * 1024)
    bound: list[tuple[str, int]] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def ready(host: str, port: int) -> None:
        bound.append((host, port))
        started.set()

    thread = threading.Thread(
        target=lambda: loop.run_until_complete(serve(app, "127.0.0.1", 0, ready, stop)),
        daemon=True,
    )
    thread.start()
    assert started.wait(30)
    yield bound[0][0], bound[0][1], metrics
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=30)
    loop.close()


def test_a_replica_answers_both_protocols_and_refuses_bad_requests(replica: Any) -> None:
    host, port, _metrics = replica
    conn = http.client.HTTPConnection(host, port, timeout=10)

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()

    features = json.dumps({"features": [12.0] * 30}).encode()
    status, body = call("POST", "/predict", features)
    assert status == 200 and json.loads(body)["prediction"]["label"] in (0, 1)
    status, body = call("POST", "/predict", b'{"features": [1]}')
    assert status == 422 and b"takes 30 features" in body
    status, body = call("GET", "/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, body = call("GET", "/v2/models/m")
    assert status == 200 and json.loads(body)["versions"] == ["1"]
    status, body = call("GET", "/v2/models/other")
    assert status == 404
    status, body = call("DELETE", "/predict")
    assert status == 405
    # Still serving on the same connection after all of that.
    assert call("POST", "/predict", features)[0] == 200
    status, body = call("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert (
        'dcsched_serve_requests_total{code="200",deployment="svc",replica="svc-r1"} 4.0' in text
    )  # 2 predicts, ready, metadata
    assert 'dcsched_serve_requests_total{code="422",deployment="svc",replica="svc-r1"} 1.0' in text
    conn.close()
    # Over the body limit: 413 before the body is read, then the connection closes.
    big = http.client.HTTPConnection(host, port, timeout=10)
    big.request("POST", "/predict", body=b"1" * (128 * 1024))
    response = big.getresponse()
    assert response.status == 413 and b"larger than 65536 bytes" in response.read()
    big.close()
    # Malformed HTTP: 400, and the replica keeps serving others.
    import socket

    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(b"NOT HTTP\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 400")
    again = http.client.HTTPConnection(host, port, timeout=10)
    again.request("POST", "/predict", body=features)
    assert again.getresponse().status == 200
    again.close()


def test_a_deployments_spread_group_is_per_version_and_a_valid_name() -> None:
    from dcsched.serving.controller import spread_group

    assert spread_group("svc", 2) == "svc-v2"
    long = spread_group("a" * 60 + "-bc", 123)
    assert long.endswith("-v123") and len(long) <= 63
    parse_job_spec(
        {
            "name": "x", "kind": "serve", "team": "t", "spread_group": long,
            "serve": {"model": "m"},
        }
    )  # fmt: skip
