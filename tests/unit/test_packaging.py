"""The wheel holds every subpackage under the single import name ``dcsched``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_contains_every_subpackage(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dcsched-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source_packages = {
        "dcsched": REPO / "scheduler",
        "dcsched/plugins": REPO / "plugins",
        "dcsched/exporters": REPO / "exporters",
    }
    expected = set()
    for prefix, folder in source_packages.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder)
            if prefix == "dcsched" and relative.parts[:1] in {("plugins",), ("exporters",)}:
                continue
            expected.add(f"{prefix}/{relative.as_posix()}/__init__.py".replace("/./", "/"))
    missing = {name for name in expected if name not in names}
    assert not missing, f"subpackages missing from the wheel: {sorted(missing)}"
    for module in (
        "dcsched/plugins/mlp.py",
        "dcsched/exporters/scheduler.py",
        "dcsched/core/spec.py",
    ):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "dcsched = dcsched.cli:main" in text and "mlp = dcsched.plugins.mlp:MLPPlugin" in text
