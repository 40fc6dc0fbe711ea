"""A batch inference job itself: ``python -m dcsched.inference.batch RUN_DIR``, once per
worker (``RANK``/``WORLD_SIZE`` from the gang driver, ``dcsched.runs.gang``; alone, the
job's driver runs it as rank 0 of 1).

Each rank loads the model version the job names (``spec.json``'s ``resolved_model``,
written by the server when the run starts) with its plugin's ``load``, reads its
contiguous shard of the input rows (``dcsched.inference.table``), applies the model's
own saved preprocessing (the plugin's ``prepare``, else ``predict`` row by row) and
``predict_arrays`` batch by batch, and writes its part file. Rank 0 then waits for every
part, assembles the output in input order, publishes it atomically in
``artifacts/OUTPUT`` and writes ``result.json`` last: a run that stops anywhere before
leaves no result, and the job is not SUCCEEDED, so a partial output never looks complete.

Files of a run attempt, under ``RUN_DIR/infer/attempt-N/``: ``part-R.npy`` (rank R's
predictions, renamed into place when whole) and ``rank-R.json`` (rank R's progress:
rows done, rows in its shard, when it started and finished predicting). Rank 0 sums
them into ``progress.jsonl`` about twice a second: ``{"rows_done", "rows_total",
"rows_per_s", "workers", "at"}`` (what ``status``, ``top`` and ``/metrics`` show).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dcsched.core.spec import SpecError
from dcsched.inference.table import (
    InputTableError,
    output_table,
    read_shard,
    table_format,
    write_output,
)
from dcsched.kinds import parse_job_spec
from dcsched.kinds.infer import InferJobSpec
from dcsched.plugins.registry import PluginLoadError, UnknownPluginError
from dcsched.rundir import RunDir, one_line, write_text_atomically

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
PART_WAIT_S = 0.05


class InferError(Exception):
    """A run that cannot go on, for a reason the user can act on (one line)."""


EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    InferError,
    InputTableError,
    SpecError,
    UnknownPluginError,
    PluginLoadError,
)


def artifacts_dir(files: RunDir) -> Path:
    return files.path / "artifacts"


def attempt_dir(files: RunDir) -> Path:
    return files.path / "infer" / f"attempt-{os.environ.get('DCSCHED_RUN_ATTEMPT', '0')}"


def read_job(files: RunDir) -> tuple[InferJobSpec, dict[str, Any]]:
    """The infer spec and the resolved model of ``spec.json``."""
    try:
        document = files.read_spec()
    except (OSError, ValueError) as exc:
        raise InferError(f"cannot read {files.spec}: {exc}") from None
    resolved = document.pop("resolved_model", None)
    spec = parse_job_spec(document)
    if not isinstance(spec, InferJobSpec):
        raise InferError(f"{files.spec} holds a {spec.kind!r} job, not an infer job")
    if not isinstance(resolved, dict):
        raise InferError("the server did not say which model version to use; submit again")
    if resolved.get("error"):
        raise InferError(str(resolved["error"]))
    return spec, resolved


class RankProgress:
    """This rank's counts, written atomically to ``rank-R.json`` at most every 0.5 s."""

    def __init__(self, path: Path, rank: int):
        self.path, self.rank = path, rank
        self.state: dict[str, Any] = {"rank": rank, "rows_done": 0, "rows": None}
        self._last = 0.0

    def update(self, force: bool = False, **fields: Any) -> None:
        self.state.update(fields)
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            write_text_atomically(self.path, json.dumps(self.state))


def predict_rows(
    model: Any, rows: npt.NDArray[np.float64], batch_size: int, progress: RankProgress
) -> npt.NDArray[np.float64]:
    """``predict_arrays`` over ``rows`` (raw features) batch by batch, the model's own
    preprocessing applied; (n, classes) probabilities or (n,) values."""
    info = model.info
    n = len(rows)
    width = info.n_classes if info.task != "regression" else 0
    out = np.empty((n, width) if width else (n,), dtype=np.float64)
    vectorised = True
    started = time.time()
    progress.update(force=True, rows=n, started_at=started)
    for first in range(0, n, batch_size):
        raw = rows[first : first + batch_size]
        if vectorised:
            try:
                x = model.prepare(raw)
            except NotImplementedError:
                vectorised = False
            except ValueError as exc:
                raise InferError(
                    f"rows {first}..{first + len(raw) - 1} of a shard: {exc}"
                ) from None
        if vectorised:
            out[first : first + len(raw)] = model.predict_arrays(x)
        else:
            out[first : first + len(raw)] = _predict_one_by_one(model, raw, first)
        progress.update(rows_done=first + len(raw))
    progress.update(force=True, rows_done=n, finished_at=time.time())
    return out


def _predict_one_by_one(model: Any, raw: npt.NDArray[np.float64], first: int) -> Any:
    """A plugin without ``prepare``: its ``predict`` on each row's values (in feature
    order), its JSON answers turned back into probabilities or values."""
    try:
        answers = model.predict([row.tolist() for row in raw])
    except ValueError as exc:
        raise InferError(f"rows {first}..{first + len(raw) - 1} of the shard: {exc}") from None
    info = model.info
    if info.task == "regression":
        return np.asarray(answers, dtype=np.float64)
    labels = [str(label) for label in info.classes]
    return np.asarray(
        [[float(a["probabilities"][label]) for label in labels] for a in answers],
        dtype=np.float64,
    )


def run(files: RunDir, rank: int, world: int) -> dict[str, Any] | None:
    """Score this rank's shard; on rank 0 also assemble and publish. Returns result.json's
    dict on rank 0, None on the others."""
    from dcsched.plugins.registry import load_plugin

    began = time.time()
    spec, resolved = read_job(files)
    work = attempt_dir(files)
    work.mkdir(parents=True, exist_ok=True)
    plugin = load_plugin(str(resolved["plugin"]))
    cpus = max(1, int(spec.resources.cpus))
    device = "cpu"
    if plugin.uses_torch:
        import torch

        torch.set_num_threads(cpus)
        if spec.resources.gpus > 0 and torch.cuda.is_available():
            device = "cuda"
    import pyarrow as pa

    pa.set_cpu_count(cpus)
    pa.set_io_thread_count(cpus)
    model = plugin.load(Path(str(resolved["path"])), device)
    label = f"{resolved['name']}:{resolved['version']}"
    input_path = Path(spec.infer.input)
    fmt = table_format(input_path, spec.infer.input_format)
    features = list(model.info.feature_names)
    progress = RankProgress(work / f"rank-{rank}.json", rank)
    aggregator = None
    if rank == 0:
        aggregator = ProgressLog(files, work, world)
        aggregator.start()
    try:
        read_began = time.perf_counter()
        rows = read_shard(input_path, fmt, features, label, rank, world)
        read_s = time.perf_counter() - read_began
        logger.info(
            "rank %s of %s: %s rows of %s (%s) read in %.2fs; model %s (%s) on %s",
            rank, world, len(rows), input_path.name, fmt, read_s, label, plugin.name, device,
        )  # fmt: skip
        predict_began = time.perf_counter()
        predictions = predict_rows(model, rows, spec.infer.batch_size, progress)
        predict_s = time.perf_counter() - predict_began
        logger.info(
            "rank %s: %s rows predicted in %.2fs (%.0f rows/s)",
            rank, len(rows), predict_s, len(rows) / predict_s if predict_s > 0 else 0.0,
        )  # fmt: skip
        part = work / f"part-{rank}.npy"
        tmp = work / f".part-{rank}.npy.partial"
        with tmp.open("wb") as handle:
            np.save(handle, predictions)
        os.replace(tmp, part)
        if rank != 0:
            return None
        parts = [_wait_for_part(work / f"part-{r}.npy") for r in range(world)]
        assembled = np.concatenate(parts) if parts else predictions
        if len(assembled) == 0:
            raise InferError(
                "infer.input: the input has no rows; give a table with at least one row"
            )
        table = output_table(assembled, model.info.task, model.info.classes)
        output = artifacts_dir(files) / spec.infer.output
        write_output(table, output, spec.infer.output_format)
        ranks = [_read_json(work / f"rank-{r}.json") for r in range(world)]
        first_start = min(float(r.get("started_at") or began) for r in ranks)
        last_end = max(float(r.get("finished_at") or time.time()) for r in ranks)
        steady_s = max(last_end - first_start, 1e-9)
        own_rates = [  # each rank's rows over its own predict loop (no start-up skew)
            float(r["rows"]) / (float(r["finished_at"]) - float(r["started_at"]))
            for r in ranks
            if r.get("rows") and r.get("finished_at") and r["finished_at"] > r["started_at"]
        ]
        total = len(assembled)
        seconds = time.time() - began
        result = {
            "output": spec.infer.output,
            "format": spec.infer.output_format,
            "rows": total,
            "columns": list(table.column_names),
            "model": {"name": resolved["name"], "version": resolved["version"]},
            "plugin": plugin.name,
            "task": model.info.task,
            "workers": world,
            "batch_size": spec.infer.batch_size,
            "predict_seconds": round(steady_s, 4),
            "rows_per_s_predicting": round(total / steady_s, 1),
            "rows_per_s_per_worker_predicting": (
                round(sum(own_rates) / len(own_rates), 1) if own_rates else None
            ),
            "seconds": round(seconds, 4),
            "rows_per_s": round(total / seconds, 1) if seconds > 0 else None,
            "bytes": output.stat().st_size,
        }
        if aggregator is not None:
            aggregator.stop(final=True)
        files.write_result(result)  # last: its presence means the output is whole
        logger.info("wrote %s rows to %s; done in %.2fs", total, output, seconds)
        return result
    finally:
        if aggregator is not None:
            aggregator.stop(final=False)


def _wait_for_part(path: Path) -> npt.NDArray[np.float64]:
    """A part file, once its rank has renamed it into place (the gang driver stops this
    rank if another fails, so the wait is bounded by the job's own fate)."""
    while not path.exists():
        time.sleep(PART_WAIT_S)
    loaded: npt.NDArray[np.float64] = np.load(path)
    return loaded


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class ProgressLog:
    """On rank 0: the ranks' counts summed into ``progress.jsonl``, in a thread."""

    def __init__(self, files: RunDir, work: Path, world: int):
        self.files, self.work, self.world = files, work, world
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self.files.progress.write_text("")
        self._thread.start()

    def stop(self, final: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._thread.join(timeout=5)
        if final:
            self.write()

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                self.write()
            except OSError as exc:  # progress is best effort; the work goes on
                logger.warning("cannot write progress: %s", exc)

    def snapshot(self) -> dict[str, Any]:
        ranks = [_read_json(self.work / f"rank-{r}.json") for r in range(self.world)]
        done = sum(int(r.get("rows_done") or 0) for r in ranks)
        sizes = [r.get("rows") for r in ranks]
        known = [int(s) for s in sizes if s is not None]
        total: int | None = sum(known) if len(known) == len(sizes) else None
        starts = [float(r["started_at"]) for r in ranks if r.get("started_at")]
        now = time.time()
        ends = [float(r.get("finished_at") or now) for r in ranks if r.get("started_at")]
        span = (max(ends) - min(starts)) if starts else 0.0
        return {
            "rows_done": done,
            "rows_total": total,
            "rows_per_s": round(done / span, 1) if span > 0 else 0.0,
            "workers": self.world,
            "at": now,
        }

    def write(self) -> None:
        with self.files.progress.open("a") as handle:
            handle.write(json.dumps(self.snapshot()) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dcsched.inference.batch RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    files = RunDir(Path(args[0]))
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        run(files, rank, world)
    except EXPECTED_ERRORS as exc:
        return files.fail("inference", one_line(exc))
    except Exception as exc:
        traceback.print_exc()
        return files.fail("inference", f"internal error: {type(exc).__name__}: {one_line(exc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
