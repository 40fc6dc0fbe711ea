"""``kind: infer``: score a table with a registered model, in batches, on a gang.

The payload is one section, ``infer``: the model (``NAME`` for its latest version or
``NAME:VERSION``), the input table, the output file's name and the batch size. The
input is never a path the server opens because a user named it: the CLI uploads a local
file (``upload:sha256:HEX``) or it lies under a data root an admin listed (see
``dcsched.inputs``). The output is written into the job's own run directory
(``artifacts/NAME``) and fetched with ``dcsched results JOB --out FILE``.

Words: a *row* is one line of the input table (one sample); a *shard* is the contiguous
run of rows one worker scores.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from dcsched.core.spec import SchedulingRequest, StrictModel

MODEL_REF = re.compile(r"^(?P<name>[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(:(?P<version>[0-9]{1,9}))?$")
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(csv|parquet)$")
INPUT_FORMATS = ("csv", "parquet")


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """(name, version or None for the latest) of ``NAME[:VERSION]``; ValueError if not one."""
    match = MODEL_REF.match(ref)
    if match is None:
        raise ValueError(
            f"model {ref!r} is not NAME or NAME:VERSION (a registered model, e.g. "
            "mlp-breast-cancer:3; `dcsched models list` shows them)"
        )
    version = match.group("version")
    return match.group("name"), None if version is None else int(version)


class InferSpec(StrictModel):
    model: str = Field(
        max_length=80,
        description="A registered model: NAME (its latest version) or NAME:VERSION.",
    )
    input: str = Field(
        min_length=1,
        max_length=4096,
        description="The table to score (.csv with a header line, or .parquet), one column "
        "per feature of the model. The CLI uploads a local FILE; on the server it reads "
        "upload:sha256:HEX or a path under an admin-listed data root.",
    )
    output: str = Field(
        "predictions.parquet",
        description="Name of the output file in the job's artifacts: NAME.csv or "
        "NAME.parquet (row_id, prediction, and one probability column per class).",
    )
    input_format: Literal["csv", "parquet"] | None = Field(
        None, description="csv or parquet; by default parquet if the file starts as one."
    )
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="Rows per predict call.")

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model_ref(value)
        return value

    @field_validator("output")
    @classmethod
    def _output_name(cls, value: str) -> str:
        if not OUTPUT_NAME.match(value):
            raise ValueError(
                f"output {value!r} must be a plain file name ending in .csv or .parquet "
                "(letters, digits, . _ -), e.g. predictions.parquet; it is written in the "
                "job's artifacts"
            )
        return value

    @property
    def model_name(self) -> str:
        return parse_model_ref(self.model)[0]

    @property
    def model_version(self) -> int | None:
        return parse_model_ref(self.model)[1]

    @property
    def output_format(self) -> str:
        return self.output.rsplit(".", 1)[1]


class InferJobSpec(SchedulingRequest):
    """A batch inference job: the scheduling request plus the ``infer`` section."""

    kind: Literal["infer"] = Field(description="Score a table with a registered model.")
    infer: InferSpec
