"""The plugin's own tests: dcsched's conformance helper, and a quality bar."""

from __future__ import annotations

from pathlib import Path

from dcsched_ridge.plugin import RidgePlugin

from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.testing import check_plugin


def test_ridge_conforms(tmp_path: Path) -> None:
    check_plugin(
        RidgePlugin(),
        DataSpec(source="sklearn:diabetes", validation_size=0.2),
        tmp_path,
        train=TrainSpec(epochs=3, batch_size=32, lr=0.01),
    )


def test_ridge_learns_diabetes(tmp_path: Path) -> None:
    plugin = RidgePlugin()
    data = plugin.load_data(DataSpec(source="sklearn:diabetes", seed=42))
    model = plugin.create(plugin.validate_params({}), data.info, "cpu")
    model.fit(data, TrainSpec(epochs=30, batch_size=32, lr=0.01), 0, lambda r: None, None)
    assert model.evaluate(data.x_test, data.y_test)["r2"] > 0.4
