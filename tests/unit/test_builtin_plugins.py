"""Every built-in model type passes the conformance helper; gbdt's job never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.registry import load_plugin
from dcsched.plugins.testing import check_plugin


@pytest.mark.parametrize(
    ("name", "source", "params", "train"),
    [
        ("mlp", "sklearn:iris", {"hidden": [8]}, TrainSpec(epochs=3, batch_size=32, lr=0.01)),
        ("mlp", "sklearn:diabetes", {"hidden": [8]}, TrainSpec(epochs=2, lr=0.01)),
        ("gbdt", "sklearn:breast_cancer", {"trees_per_epoch": 5}, TrainSpec(epochs=3)),
        ("gbdt", "sklearn:diabetes", {"trees_per_epoch": 5}, TrainSpec(epochs=2)),
    ],
)
def test_builtin_conforms(
    name: str, source: str, params: dict[str, object], train: TrainSpec, tmp_path: Path
) -> None:
    check_plugin(load_plugin(name), DataSpec(source=source), tmp_path, params=params, train=train)


def test_gbdt_refuses_images(tmp_path: Path) -> None:
    from dcsched.core.spec import SpecError

    with pytest.raises(SpecError, match="does not take npz data; it takes: sklearn, csv"):
        load_plugin("gbdt").check_data(DataSpec(source="npz:/x.npz"))


def test_a_gbdt_job_never_imports_torch_and_meets_its_bar(tmp_path: Path) -> None:
    spec = {
        "name": "gbdt-bc",
        "kind": "train",
        "team": "t",
        "model": {"type": "gbdt"},
        "data": {"source": "sklearn:breast_cancer", "test_size": 0.2, "seed": 42},
        "train": {"epochs": 5},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = (
        "import sys\n"
        "from dcsched.training.runner import main\n"
        f"status = main([{str(tmp_path)!r}])\n"
        "print('TORCH', 'torch' in sys.modules, status)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert "TORCH False 0" in out.stdout, out.stdout + out.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["f1"] >= 0.95
    assert result["objective"] == {
        "name": "f1",
        "direction": "maximize",
        "value": result["metrics"]["f1"],
    }
