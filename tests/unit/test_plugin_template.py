"""examples/plugin-template keeps passing its own tests (check_plugin and its quality bar),
run as its author would, from its source folder (the live install: tests/e2e)."""

from __future__ import annotations

import ast
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


def test_the_template_uses_only_the_public_plugin_surface() -> None:
    """A third-party package imports from dcsched only the plugin API, its test helper and
    the train spec types its hooks take (docs/plugins.md), never a built-in plugin's
    helpers."""
    public = {"dcsched.plugins.api", "dcsched.plugins.testing", "dcsched.kinds.train"}
    used = set()
    for path in TEMPLATE.rglob("*.py"):
        if {"build", ".eggs"} & set(path.relative_to(TEMPLATE).parts):
            continue  # what an earlier pip install of the template left (ignored by git)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dcsched."):
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith("dcsched.")}
    assert "dcsched.plugins.api" in used
    assert used <= public, used - public
