"""Batch inference without Ray: the spec, sharding and order, the column checks, the
submit-time checks over a real SQLite registry, and the runner's ranks run in-process on
a real (briefly trained) mlp model, compared with the plugin's own ``predict``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcsched.adapters.sqlite_store import SQLiteStore
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.spec import SpecError
from dcsched.inference import batch
from dcsched.inference.models import ModelNotFound, resolution, resolve, saved_features
from dcsched.inference.table import (
    column_problems,
    csv_byte_ranges,
    read_output,
    read_shard,
    shard_bounds,
)
from dcsched.inputs import InputStore
from dcsched.kinds import InferJobSpec, parse_job_spec, split
from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.registry import load_plugin
from dcsched.rundir import RunDir
from dcsched.validation import check_runnable

SPEC: dict[str, Any] = {
    "name": "score",
    "kind": "infer",
    "team": "research",
    "resources": {"workers": 2, "cpus": 1, "memory": "1GiB"},
    "infer": {"model": "bc:1", "input": "upload:sha256:" + "0" * 64, "batch_size": 7},
}


def _spec(**infer: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(SPEC))
    document["infer"].update(infer)
    return document


# -- the spec -------------------------------------------------------------------------------


def test_an_infer_spec_parses_with_defaults() -> None:
    spec = parse_job_spec(_spec())
    assert isinstance(spec, InferJobSpec)
    assert (spec.infer.model_name, spec.infer.model_version) == ("bc", 1)
    assert spec.infer.output == "predictions.parquet" and spec.infer.output_format == "parquet"
    latest = parse_job_spec(_spec(model="bc", output="out.csv"))
    assert isinstance(latest, InferJobSpec)
    assert latest.infer.model_version is None and latest.infer.output_format == "csv"
    _, kind, payload = split(spec)
    assert kind == "infer" and payload["infer"]["batch_size"] == 7


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model": "BC:x"}, "is not NAME or NAME:VERSION"),
        ({"output": "../../etc/passwd.csv"}, "plain file name ending in .csv or .parquet"),
        ({"output": "out.json"}, "plain file name ending in .csv or .parquet"),
        ({"batch_size": 0}, "infer.batch_size"),
        ({"colour": "red"}, "infer.colour"),
    ],
)
def test_bad_infer_specs_say_what_is_wrong(change: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_job_spec(_spec(**change))
    assert words in str(caught.value)


# -- shards and order -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "world"), [(0, 1), (1, 2), (10, 3), (7, 7), (5, 8), (1000, 4)])
def test_shards_are_contiguous_cover_every_row_once_and_differ_by_at_most_one(
    n: int, world: int
) -> None:
    bounds = [shard_bounds(n, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(world - 1))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world", [1, 2, 3, 5, 40])
def test_csv_byte_ranges_cut_at_line_ends_and_keep_every_line_in_order(world: int) -> None:
    lines = [f"{i},{i * 2}.5" for i in range(23)]
    data = ("a,b\n" + "\n".join(lines) + "\n").encode()
    header_end, ranges = csv_byte_ranges(data, world)
    assert data[:header_end] == b"a,b\n"
    pieces = [data[start:stop] for start, stop in ranges]
    assert all(p == b"" or p.endswith(b"\n") for p in pieces)
    assert b"".join(pieces).decode().splitlines() == lines


def test_read_shard_of_csv_and_parquet_gives_the_rows_in_feature_order(tmp_path: Path) -> None:
    rows = np.arange(30, dtype=np.float64).reshape(10, 3)
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("c,a,b\n" + "".join(f"{r[2]},{r[0]},{r[1]}\n" for r in rows))
    parquet_path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"b": rows[:, 1], "c": rows[:, 2], "a": rows[:, 0]}),
        parquet_path,
        row_group_size=3,
    )
    for path, fmt in ((csv_path, "csv"), (parquet_path, "parquet")):
        for world in (1, 2, 3, 4):
            shards = [read_shard(path, fmt, ["a", "b", "c"], "m:1", r, world) for r in range(world)]
            assert np.array_equal(np.concatenate(shards), rows), (fmt, world)


def test_column_mismatch_lists_missing_and_extra_columns() -> None:
    (message,) = column_problems(["a", "x", "c", "c"], ["a", "b", "c"], "bc:1")
    assert "model bc:1" in message
    assert "missing 1 column(s): 'b'" in message
    assert "extra 1 column(s): 'x'" in message
    assert "duplicated column(s): 'c'" in message
    assert "exactly these 3 columns, in any order: 'a', 'b', 'c'" in message
    assert column_problems(["c", "b", "a"], ["a", "b", "c"], "bc:1") == []


def test_a_cell_that_is_not_a_number_is_named_by_column_never_by_value(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,2\n3,secret-value\n")
    with pytest.raises(ValueError) as caught:
        read_shard(path, "csv", ["a", "b"], "m:1", 0, 1)
    assert "'b'" in str(caught.value) and "secret-value" not in str(caught.value)
    path.write_text("a,b\n1,\n")
    with pytest.raises(ValueError, match="column 'b' has 1 empty cell"):
        read_shard(path, "csv", ["a", "b"], "m:1", 0, 1)


# -- a real model in a real registry ----------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLiteStore, Path]]:
    """An mlp trained for 2 epochs on breast_cancer, registered as bc:1 in a SQLite store;
    and the raw rows it was trained on as a CSV (feature columns only)."""
    home = tmp_path_factory.mktemp("infer-home")
    plugin = load_plugin("mlp")
    data_spec = DataSpec(source="sklearn:breast_cancer", test_size=0.2, seed=0)
    data = plugin.load_data(data_spec)
    model = plugin.create(plugin.validate_params({"hidden": [16]}), data.info, "cpu")
    model.fit(data, TrainSpec(epochs=2, batch_size=64), 0, lambda _: None, None)
    model_dir = home / "trained"
    model.save(model_dir)
    store = SQLiteStore(home / "dcsched.db", home / "models")
    request, _, _ = split(parse_job_spec(_spec()))
    store.add_job(
        Job(id="bc-1", request=request.model_copy(update={"name": "bc"}), state=JobState.PENDING,
            submitted_at=1.0, kind="train", payload={})
    )  # fmt: skip
    for state in (JobState.ADMITTED, JobState.RUNNING):
        store.transition(
            "bc-1", state, 2.0, None, nodes=("n",) if state is JobState.ADMITTED else None
        )
    store.finish_with_model("bc-1", 3.0, model_dir, {}, "mlp", {"hidden": [16]}, {})
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    table = home / "rows.csv"
    names = [str(n) for n in raw.feature_names]
    with table.open("w") as handle:
        handle.write(",".join(names) + "\n")
        for row in raw.data:
            handle.write(",".join(repr(float(v)) for v in row) + "\n")
    yield store, table
    store.close()


def _inputs(home: Path) -> InputStore:
    return InputStore(home / "uploads", data_roots=lambda: [str(home)], max_upload=lambda: 1 << 30)


def _check(store: SQLiteStore, table: Path, **infer: Any) -> list[str]:
    spec = parse_job_spec(_spec(input=str(table), **infer))
    return check_runnable(spec, _inputs(table.parent), models=store)


def test_submit_checks_find_the_model_and_the_matching_columns(registry: Any) -> None:
    store, table = registry
    assert _check(store, table, model="bc:1") == []
    assert _check(store, table, model="bc") == []
    assert resolve(store, "bc").version == 1
    assert saved_features(Path(resolve(store, "bc").path)) is not None


def test_unknown_models_and_versions_are_refused_listing_what_exists(registry: Any) -> None:
    store, table = registry
    (problem,) = _check(store, table, model="nope")
    assert "no registered model named 'nope'" in problem and "registered models: bc" in problem
    (problem,) = _check(store, table, model="bc:9")
    assert "model 'bc' has no version 9; its versions are: 1" in problem
    with pytest.raises(ModelNotFound):
        resolve(store, "bc:2")
    assert "no version 3" in resolution(store, {"infer": {"model": "bc:3"}})["error"]


def test_mismatched_columns_and_empty_inputs_are_refused_at_submit(registry: Any) -> None:
    store, table = registry
    header = table.read_text().splitlines()[0].split(",")
    wrong = table.parent / "wrong.csv"
    wrong.write_text(",".join([*header[1:], "patient_id"]) + "\n" + ",".join(["1"] * 30) + "\n")
    (problem,) = _check(store, wrong)
    assert f"missing 1 column(s): '{header[0]}'" in problem
    assert "extra 1 column(s): 'patient_id'" in problem
    empty = table.parent / "empty.csv"
    empty.write_text(",".join(header) + "\n")
    assert _check(store, empty) == [
        "infer.input: the input has no rows (only a header); give a table with at least one "
        "row to score"
    ]
    nothing = table.parent / "nothing.csv"
    nothing.write_text("")
    (problem,) = _check(store, nothing)
    assert "the input is empty" in problem
    outside = parse_job_spec(_spec(input="/etc/hostname"))
    (problem,) = check_runnable(outside, _inputs(table.parent), models=store)
    assert "not under an allowed data root" in problem


def _run_dir(tmp_path: Path, store: SQLiteStore, table: Path, world: int, **infer: Any) -> RunDir:
    files = RunDir(tmp_path / f"run-{world}")
    document = _spec(input=str(table), **infer)
    document["resources"]["workers"] = world
    document["resolved_model"] = resolution(store, document)
    files.write_spec(document)
    return files


def _run_ranks(files: RunDir, world: int) -> dict[str, Any]:
    """Every rank of a gang in its own thread, as the gang driver runs them in processes."""
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            batch.run(files, r, world)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    result = files.read_result()
    assert result is not None
    return result


@pytest.mark.parametrize(("world", "output"), [(1, "p.parquet"), (3, "p.csv")])
def test_ranks_score_their_shards_and_the_output_equals_the_plugins_predict(
    registry: Any, tmp_path: Path, world: int, output: str
) -> None:
    store, table = registry
    files = _run_dir(tmp_path, store, table, world, output=output, batch_size=50)
    result = _run_ranks(files, world)
    assert result["rows"] == 569 and result["workers"] == world
    assert result["model"] == {"name": "bc", "version": 1}
    out = read_output(files.path / "artifacts" / output)
    assert out.column_names == ["row_id", "prediction", "probability_0", "probability_1"]
    assert out.column("row_id").to_pylist() == list(range(569))

    version = resolve(store, "bc:1")
    model = load_plugin("mlp").load(Path(version.path), "cpu")
    lines = table.read_text().splitlines()
    names = lines[0].split(",")
    rows = [dict(zip(names, map(float, line.split(",")), strict=True)) for line in lines[1:]]
    expected = model.predict(rows)
    assert out.column("prediction").to_pylist() == [e["label"] for e in expected]
    for label in ("0", "1"):
        got = np.asarray(out.column(f"probability_{label}").to_pylist())
        want = np.asarray([e["probabilities"][label] for e in expected])
        assert np.allclose(got, want, rtol=0, atol=1e-6)

    progress = files.last_progress()
    assert progress is not None
    assert progress["rows_done"] == progress["rows_total"] == 569
    assert progress["workers"] == world and progress["rows_per_s"] > 0


def test_a_failed_rank_leaves_no_result_and_no_output(registry: Any, tmp_path: Path) -> None:
    store, table = registry
    bad = tmp_path / "bad.csv"
    lines = table.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], "x" + lines[2]]) + "\n")
    files = _run_dir(tmp_path, store, bad, 1)
    with pytest.raises(ValueError, match="is not a number"):
        batch.run(files, 0, 1)
    assert files.read_result() is None
    assert not (files.path / "artifacts" / "predictions.parquet").exists()
    assert batch.main([str(files.path)]) == 1
    assert "is not a number" in files.read_error()


def test_a_model_gone_since_submit_fails_the_run_with_the_reason(
    registry: Any, tmp_path: Path
) -> None:
    store, table = registry
    files = _run_dir(tmp_path, store, table, 1, model="bc:4")
    assert batch.main([str(files.path)]) == 1
    assert "model 'bc' has no version 4" in files.read_error()


# -- progress in /metrics ---------------------------------------------------------------------


def test_a_running_infer_jobs_progress_is_exported_and_dropped_when_it_ends(
    tmp_path: Path,
) -> None:
    from prometheus_client import CollectorRegistry

    from dcsched.exporters.scheduler import SchedulerMetrics, SchedulerStateCollector
    from dcsched.paths import Paths
    from dcsched.service import SchedulerService
    from tests.unit.test_scheduler_metrics import (
        CONFIG,
        Clock,
        FixedCluster,
        RecordingExecutor,
        samples,
        value,
    )
    from tests.unit.test_scheduler_metrics import spec as train_spec

    paths = Paths(tmp_path)
    store = SQLiteStore(paths.db, paths.models)
    from dcsched.core.cluster import NodeState
    from dcsched.core.resources import Resources

    node = NodeState(
        "node-a", "127.0.0.1", True, Resources(16, 2, 1 << 36), Resources(16, 2, 1 << 36)
    )
    registry = CollectorRegistry()
    service = SchedulerService(
        store=store,
        executor=RecordingExecutor(),
        cluster=FixedCluster((node,)),
        paths=paths,
        check_runnable=lambda _: [],
        clock=Clock(1_000.0),
        events=SchedulerMetrics(registry, store.counts_by_state),
    )
    service.apply_config(CONFIG)
    registry.register(SchedulerStateCollector(service))
    document = _spec()
    document["team"] = train_spec("x", "research")["team"]
    job = service.submit(document)
    service.tick()
    service.tick()
    run = RunDir(paths.run_dir(job.id))
    run.path.mkdir(parents=True, exist_ok=True)
    run.progress.write_text(
        json.dumps({"rows_done": 100, "rows_total": 1000, "rows_per_s": 50.0, "workers": 2})
        + "\n"
        + json.dumps({"rows_done": 400, "rows_total": 1000, "rows_per_s": 80.0, "workers": 2})
        + "\n"
    )
    found = samples(registry)
    key = {"job_id": job.id, "team": job.team}
    assert value(found, "dcsched_job_inference_rows_done", **key) == 400
    assert value(found, "dcsched_job_inference_rows", **key) == 1000
    assert value(found, "dcsched_job_inference_rows_per_second", **key) == 80
    service.cancel(job.id)
    assert not any(name.startswith("dcsched_job_inference") for name, _ in samples(registry))
