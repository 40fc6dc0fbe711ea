"""API fuzzing with schemathesis against the server's own OpenAPI schema (the job spec's
schema included): every route but none that stops the server, as admin, a bounded number of
examples each. No answer may be a 5xx, and every answer must match the schema it documents.
The API runs in-process over a real store and never runs a job (tests/api_harness.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.api_harness import TOKEN, build_api

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 25
"""Examples per route (22 routes, positive and negative): about 20 s in all."""


# Built at import: schemathesis' fixture-based loader does not work with pytest 9.
HOME = tempfile.TemporaryDirectory(prefix="dcsched-fuzz-")
API = build_api(Path(HOME.name) / "home")
schema = schemathesis.openapi.from_asgi("/openapi.json", API.app, headers=AUTH)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_reaches_a_500_and_answers_match_the_schema(case: Any) -> None:
    case.call_and_validate(
        headers=AUTH,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


def test_the_submit_body_documents_the_job_spec() -> None:
    raw = schema.raw_schema
    spec = raw["components"]["schemas"]["SubmitRequest"]["properties"]["spec"]
    assert spec["$ref"] == "#/components/schemas/JobSpec"
    job_spec = raw["components"]["schemas"]["JobSpec"]
    assert job_spec["discriminator"]["propertyName"] == "kind"
    assert set(job_spec["discriminator"]["mapping"]) == {"train", "run", "tune", "infer", "serve"}
