"""examples/plugin-template keeps passing its own tests (check_plugin and its quality bar),
run as its author would, from its source folder (the live install: tests/e2e)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import EXAMPLES

TEMPLATE = EXAMPLES / "plugin-template"


def test_the_template_passes_its_own_tests() -> None:
    env = {**os.environ, "PYTHONPATH": str(TEMPLATE / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=TEMPLATE,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
