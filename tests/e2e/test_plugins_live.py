"""Model-type plugins through a live server on real Ray: a third-party plugin package
(examples/plugin-template) pip-installed, listed, trained and used; tiny-lm beating its
unigram baseline; a cnn job preempted by a higher-priority job resuming from its
checkpoint; bad input refused at submit, or failing with the plugin's message.

The template and a plugin whose ``fit`` raises are installed into this environment for
the module (``pip install --no-deps``) and uninstalled at its end; the module's server
starts after the install, like a server restarted after ``pip install`` on a real node.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import EXAMPLES, Server, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

TEMPLATE = EXAMPLES / "plugin-template"
CONFIG = "queueing: {policy: priority, preemption: true}\n"
DISTRIBUTIONS = ("dcsched-ridge", "dcsched-explode")

EXPLODE = """\
from pydantic import BaseModel, ConfigDict

from dcsched.plugins.api import ModelPlugin, TrainedModel


class ExplodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExplodeModel(TrainedModel):
    def __init__(self, info):
        self._info = info

    @property
    def info(self):
        return self._info

    def fit(self, data, train, seed, on_epoch, checkpoint_dir):
        raise RuntimeError("explode: the fit hook failed on purpose")

    def predict_arrays(self, x):
        raise NotImplementedError

    def predict(self, inputs):
        raise NotImplementedError

    def input_schema(self):
        return {}

    def save(self, directory):
        raise NotImplementedError


class ExplodePlugin(ModelPlugin):
    api_version = 1
    name = "explode"
    description = "A plugin whose fit raises (test only)."
    params_model = ExplodeParams

    def create(self, params, info, device):
        return ExplodeModel(info)

    def load(self, directory, device):
        raise NotImplementedError
"""


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    explode = tmp_path_factory.mktemp("explode-plugin")
    (explode / "dcsched_explode.py").write_text(EXPLODE)
    (explode / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "dcsched-explode"\nversion = "0.0.1"\n'
        '[project.entry-points."dcsched.models"]\nexplode = "dcsched_explode:ExplodePlugin"\n'
        '[tool.setuptools]\npy-modules = ["dcsched_explode"]\n'
    )
    done = _pip("install", "--no-deps", "--no-build-isolation", str(TEMPLATE), str(explode))
    assert done.returncode == 0, done.stderr
    importlib.invalidate_caches()
    try:
        yield
    finally:
        removed = _pip("uninstall", "-y", *DISTRIBUTIONS)
        assert removed.returncode == 0, removed.stderr


@pytest.fixture(scope="module")
def live(
    installed: None, ray_head: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("plugins-home")
    server = start_server(home, ray_head.gcs_address, config=CONFIG)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def ended(job: dict[str, Any]) -> bool:
    return job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def submit(server: Server, spec: Path, *extra: str) -> str:
    done = server.cli("submit", str(spec), *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def write_spec(folder: Path, document: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{document['name']}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def load_registered(server: Server, name: str, plugin_name: str) -> Any:
    from dcsched.plugins.registry import load_plugin

    version = server.cli_json("models", "show", f"{name}:1")
    assert version["plugin"] == plugin_name  # type: ignore[index]
    return load_plugin(plugin_name).load(Path(version["path"]), "cpu")  # type: ignore[index]


def test_a_pip_installed_plugin_is_listed_trained_and_predicts(live: Server) -> None:
    listed = {p["name"]: p for p in live.cli_json("plugins", "list")}  # type: ignore[union-attr]
    ridge = listed["ridge"]
    assert ridge["status"] == "ok", ridge["error"]
    assert (ridge["distribution"], ridge["version"]) == ("dcsched-ridge", "0.1.0")
    assert "ridge" in live.cli("plugins", "list").stdout
    shown = live.cli_json("plugins", "show", "ridge")
    assert shown["params_schema"]["properties"]["alpha"]["default"] == 0.001  # type: ignore[index]

    job_id = submit(live, TEMPLATE / "train-ridge.yaml", "--wait")
    job = live.cli_json("status", job_id)
    assert job["state"] == "SUCCEEDED", job  # type: ignore[index]
    result = job["result"]  # type: ignore[index]
    assert result["plugin"] == "ridge" and result["metrics"]["r2"] > 0.4
    assert result["objective"]["name"] == "r2" and result["model"]["version"] == 1

    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    model = load_registered(live, "ridge-diabetes", "ridge")
    answers = model.predict(x[:100].tolist())  # raw rows: the saved scaler is applied
    residual = np.asarray(answers) - y[:100]
    assert 1 - residual.var() / y[:100].var() > 0.3


def test_tiny_lm_trains_below_the_unigram_baseline_and_generates(live: Server) -> None:
    job_id = submit(live, EXAMPLES / "train-tiny-lm.yaml", "--wait")
    job = live.cli_json("status", job_id)
    assert job["state"] == "SUCCEEDED", job  # type: ignore[index]
    result = job["result"]  # type: ignore[index]
    metrics = result["metrics"]
    assert metrics["perplexity"] < metrics["unigram_perplexity"], metrics
    assert result["objective"] == {
        "name": "perplexity",
        "direction": "minimize",
        "value": metrics["perplexity"],
    }
    assert result["epochs_run"] == 6
    model = load_registered(live, "tiny-lm-kjv", "tiny-lm")
    [answer] = model.predict([{"prompt": "And Moses said", "max_new_chars": 80, "seed": 3}])
    assert len(answer["completion"]) == 80
    assert set(answer["completion"]) <= set(model.info.classes)


def test_a_preempted_cnn_job_resumes_from_its_checkpoint(live: Server, tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "train-cnn.yaml").read_text())
    document.update(name="cnn-preempted", priority="low")
    document["resources"]["memory"] = "256MiB"
    document["data"]["source"] = f"npz:{EXAMPLES / 'digits.npz'}"
    document["train"]["epochs"] = 40
    low_id = submit(live, write_spec(tmp_path, document))
    live.wait_for_job(low_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 2, timeout=240)
    # A high-priority job that needs every CPU of the node: only preempting cnn frees one.
    (tmp_path / "urgent").mkdir()
    urgent = {
        "name": "urgent",
        "kind": "run",
        "team": "research",
        "priority": "high",
        "resources": {"workers": 1, "cpus": 8, "memory": "64MiB"},
        "run": {"command": ["python", "-c", "print('urgent done')"], "working_dir": "."},
    }
    high_id = submit(live, write_spec(tmp_path / "urgent", urgent))
    assert live.wait_for_job(high_id, ended, timeout=180)["state"] == "SUCCEEDED"
    job = live.wait_for_job(low_id, ended, timeout=300)
    assert job["state"] == "SUCCEEDED", job
    assert job["attempt"] == 2
    assert any("preempted" in (e["reason"] or "") for e in job["events"])
    result = job["result"]
    assert 0 < result["epochs_run"] < 40  # the second run resumed after its checkpoint
    assert result["metrics"]["accuracy"] >= 0.95
    assert result["model"] == {"name": "cnn-preempted", "version": 1}


def _job_count(server: Server) -> int:
    return len(server.cli_json("list", "--limit", "100000"))  # type: ignore[arg-type]


def _train(name: str, model: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "train",
        "team": "research",
        "resources": {"workers": 1, "cpus": 1, "memory": "256MiB"},
        "model": model,
        "data": {"source": source},
        "train": {"epochs": 2},
    }


def test_bad_input_is_refused_at_submit_with_a_clear_error(live: Server, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros((8, 8)), np.zeros((16, 16)), np.zeros((8, 8))]
    np.savez(tmp_path / "mixed.npz", x=ragged, y=np.array([0, 1, 2]))
    digits = str(EXAMPLES / "digits.npz")
    book = str(EXAMPLES / "tiny-lm" / "genesis-exodus.txt")
    cases = {
        "unknown-params": (
            _train("a", {"type": "tiny-lm", "params": {"vocab": 5}}, f"text:{book}"),
            "model.params.vocab: unknown parameter of tiny-lm; it takes: context",
        ),
        "images-to-gbdt": (
            _train("b", {"type": "gbdt"}, f"npz:{digits}"),
            "model type 'gbdt' does not take npz data; it takes: sklearn, csv",
        ),
        "empty-text": (
            _train("c", {"type": "tiny-lm"}, "text:empty.txt"),
            "data.source: text file is empty",
        ),
        "mixed-image-sizes": (
            _train("d", {"type": "cnn"}, "npz:mixed.npz"),
            "images of mixed sizes stack into one: resize every image to one size",
        ),
    }
    before = _job_count(live)
    for case, (document, expected) in cases.items():
        done = live.cli("submit", str(write_spec(tmp_path, document)))
        assert done.returncode == 2, (case, done.stdout, done.stderr)
        assert expected in " ".join(done.stderr.split()), (case, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", case
    assert _job_count(live) == before  # nothing created, nothing lost


def test_a_plugin_that_raises_in_fit_fails_the_job_with_its_message(
    live: Server, tmp_path: Path
) -> None:
    document = _train("explodes", {"type": "explode"}, "sklearn:iris")
    job_id = submit(live, write_spec(tmp_path, document))
    job = live.wait_for_job(job_id, ended, timeout=180)
    assert job["state"] == "FAILED"
    assert (
        "model type 'explode' failed in fit: RuntimeError: explode: the fit hook failed on purpose"
        in job["reason"]
    ), job["reason"]
    assert "Traceback" in live.cli("logs", job_id).stdout  # the author's traceback, in the log
    # The server goes on: the next job runs.
    again = submit(live, TEMPLATE / "train-ridge.yaml", "--wait")
    assert live.cli_json("status", again)["state"] == "SUCCEEDED"  # type: ignore[index]
    assert job["events"][-1]["to_state"] == "FAILED"
