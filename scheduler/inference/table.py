"""The input and output tables of batch inference: checks, shards, and the output file.

Input: a CSV file with a header line, or a Parquet file (recognised by its ``PAR1``
magic, or named by ``infer.input_format``), one column per feature of the model, one
row per sample. ``check_input`` is what the server runs at submit: it reads a CSV's
first line (at most 1 MiB) and one more, or a Parquet file's footer, never the whole
file, and no message quotes a value of the file. ``read_shard`` is what a worker runs:
rank R of W reads the R-th of W contiguous parts of the rows (CSV: a byte range cut at
line ends, so no worker parses the whole file; Parquet: a slice of the rows).
Consequence for CSV: a quoted field must not contain a line break.

Output: ``row_id`` (0-based, the row's place in the input), ``prediction`` (the class
label, or the value for regression) and, for classifiers, ``probability_<label>`` per
class; written to a temporary name and renamed, so a partial file never has the name.

pyarrow is imported lazily (the CLI imports nothing from here).
"""

from __future__ import annotations

import csv
import io
import mmap
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HEADER_LIMIT = 1024 * 1024
"""Most bytes read to find a CSV's header line at submit."""
LIST_LIMIT = 20
"""Most column names one message lists."""


class InputTableError(ValueError):
    """An input table that cannot be scored; the message says what to change."""


def table_format(path: Path, declared: str | None) -> str:
    """csv or parquet: the declared format, else parquet when the file starts with PAR1."""
    if declared is not None:
        return declared
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InputTableError(f"infer.input: cannot read the input ({exc.strerror})") from None
    return "parquet" if magic == b"PAR1" else "csv"


@dataclass(frozen=True)
class TableShape:
    columns: tuple[str, ...]
    rows: int | None
    """Number of rows when known cheaply (Parquet), else None."""
    has_rows: bool


def describe(path: Path, fmt: str) -> TableShape:
    """The columns of the table and whether it has any row, read cheaply."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
        except Exception:  # pyarrow raises several types for a file that is not parquet
            raise InputTableError(
                "infer.input: the file is not a readable Parquet file; give a .parquet file "
                "or a CSV with a header line (infer.input_format: csv)"
            ) from None
        names = tuple(str(n) for n in meta.schema.to_arrow_schema().names)
        return TableShape(names, int(meta.num_rows), meta.num_rows > 0)
    try:
        with path.open("rb") as handle:
            head = handle.read(HEADER_LIMIT)
            first_end = head.find(b"\n")
            if first_end < 0 and len(head) == HEADER_LIMIT:
                raise InputTableError(
                    "infer.input: the CSV's first line is longer than 1 MiB; the first line "
                    "must be the header (column names)"
                )
            header_bytes = head if first_end < 0 else head[:first_end]
            rest = b"" if first_end < 0 else head[first_end + 1 :]
            if not rest.strip() and len(head) == HEADER_LIMIT:
                rest = handle.read(HEADER_LIMIT)
    except OSError as exc:
        raise InputTableError(f"infer.input: cannot read the input ({exc.strerror})") from None
    try:
        text = header_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputTableError(
            "infer.input: the CSV's header line is not UTF-8 text; give a CSV whose first "
            "line names the columns, or a Parquet file"
        ) from None
    columns = tuple(cell.strip() for cell in next(csv.reader([text]), []))
    if not any(columns):
        raise InputTableError(
            "infer.input: the input is empty; give a CSV whose first line names the columns "
            "(one per feature of the model) and at least one row"
        )
    return TableShape(columns, None, bool(rest.strip()))


def column_problems(columns: Sequence[str], features: Sequence[str], model: str) -> list[str]:
    """What is wrong with ``columns`` as the input of a model with ``features``: missing
    and extra columns, listed by name (the order of the columns does not matter)."""
    have = list(columns)
    missing = [name for name in features if name not in have]
    extra = [name for name in have if name not in features]
    duplicated = sorted({name for name in have if have.count(name) > 1})
    if not (missing or extra or duplicated):
        return []
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} column(s): {_names(missing)}")
    if extra:
        parts.append(f"extra {len(extra)} column(s): {_names(extra)}")
    if duplicated:
        parts.append(f"duplicated column(s): {_names(duplicated)}")
    return [
        f"infer.input: the columns do not match the features of model {model}: "
        + "; ".join(parts)
        + f". The input needs exactly these {len(features)} columns, in any order: "
        + _names(list(features))
    ]


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n if len(n) <= 64 else n[:61] + "...") for n in names[:LIST_LIMIT])
    more = len(names) - LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


# -- what a worker reads ---------------------------------------------------------------


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of ``n`` items (the first ``n % world``
    ranks get one more)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def csv_byte_ranges(data: bytes | mmap.mmap, world: int) -> tuple[int, list[tuple[int, int]]]:
    """(end of the header line, one [start, stop) byte range per rank): the body cut into
    ``world`` near-equal parts, each boundary moved to just after a line end."""
    size = len(data)
    newline = data.find(b"\n")
    header_end = size if newline < 0 else newline + 1
    cuts = [header_end]
    for rank in range(1, world):
        guess = max(header_end + (size - header_end) * rank // world, cuts[-1])
        if guess <= header_end:
            cuts.append(header_end)
            continue
        found = data.find(b"\n", guess - 1)
        cuts.append(size if found < 0 else found + 1)
    cuts.append(size)
    return header_end, [(cuts[i], max(cuts[i], cuts[i + 1])) for i in range(world)]


def read_shard(
    path: Path, fmt: str, features: Sequence[str], model: str, rank: int, world: int
) -> npt.NDArray[np.float64]:
    """Rank's contiguous share of the rows, as float64 ``(n, len(features))`` in feature
    order; InputTableError for columns that do not match or cells that are not numbers."""
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        problems = column_problems(parquet.schema_arrow.names, features, model)
        if problems:
            raise InputTableError(problems[0])
        start, stop = shard_bounds(parquet.metadata.num_rows, rank, world)
        table = _parquet_rows(parquet, list(features), start, stop)
        return _matrix(table, features)

    import pyarrow.csv as pacsv

    with path.open("rb") as handle:
        try:
            data: bytes | mmap.mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data = b""
    header_end, ranges = csv_byte_ranges(data, world)
    header = bytes(data[:header_end]).decode("utf-8-sig", errors="replace")
    columns = [cell.strip() for cell in next(csv.reader([header]), [])]
    problems = column_problems(columns, features, model)
    if problems:
        raise InputTableError(problems[0])
    start, stop = ranges[rank]
    if stop <= start:
        return np.zeros((0, len(features)), dtype=np.float64)
    body = pa.py_buffer(memoryview(data)[start:stop]) if isinstance(data, mmap.mmap) else data
    try:
        table = pacsv.read_csv(
            pa.BufferReader(body),
            read_options=pacsv.ReadOptions(column_names=columns, block_size=16 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.float64() for name in features},
                include_columns=list(features),
            ),
        )
    except pa.ArrowInvalid as exc:
        raise InputTableError(_csv_problem(str(exc), columns)) from None
    return _matrix(table, features)


def _parquet_rows(parquet: Any, columns: list[str], start: int, stop: int) -> Any:
    """Rows [start, stop) of the chosen columns, reading only the row groups they lie in."""
    import pyarrow as pa

    pieces, offset = [], 0
    for group in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        if offset + n > start and offset < stop:
            table = parquet.read_row_group(group, columns=columns)
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            pieces.append(table.slice(lo, hi - lo))
        offset += n
    if not pieces:
        return pa.table({name: pa.array([], pa.float64()) for name in columns})
    return pa.concat_tables(pieces)


def _matrix(table: Any, features: Sequence[str]) -> npt.NDArray[np.float64]:
    import pyarrow as pa
    import pyarrow.compute as pc

    out = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for i, name in enumerate(features):
        column = table.column(name)
        if column.null_count:
            raise InputTableError(
                f"infer.input: column {name!r} has {column.null_count} empty cell(s); every "
                "feature of every row needs a number"
            )
        try:
            column = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputTableError(
                f"infer.input: column {name!r} is not numeric; every feature needs a number"
            ) from None
        out[:, i] = column.to_numpy()
    return out


def _csv_problem(message: str, columns: Sequence[str]) -> str:
    """Pyarrow's CSV error in our words: the column when it names one, never a value."""
    found = re.search(r"column #(\d+)", message)
    if found and int(found.group(1)) < len(columns):
        return (
            f"infer.input: column {columns[int(found.group(1))]!r} has a value that is not a "
            "number; every feature of every row needs a number"
        )
    if "Expected" in message and "columns" in message:
        return "infer.input: a line of the CSV has a different number of fields than the header"
    return "infer.input: the CSV cannot be read as numbers in every feature column"


# -- the output -------------------------------------------------------------------------


def output_table(
    predictions: npt.NDArray[Any], task: str, classes: Sequence[Any], start_row: int = 0
) -> Any:
    """The output as a pyarrow Table: row_id, prediction, probability_<label> per class."""
    import pyarrow as pa

    n = len(predictions)
    columns: dict[str, Any] = {"row_id": pa.array(np.arange(start_row, start_row + n))}
    if task == "regression":
        columns["prediction"] = pa.array(np.asarray(predictions, dtype=np.float64))
        return pa.table(columns)
    labels = list(classes)
    index = np.argmax(predictions, axis=1) if n else np.zeros(0, dtype=np.int64)
    if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        columns["prediction"] = pa.array(np.asarray(labels, dtype=np.int64)[index])
    else:
        columns["prediction"] = pa.array(np.asarray([str(x) for x in labels], dtype=object)[index])
    for k, label in enumerate(labels):
        columns[f"probability_{label}"] = pa.array(np.asarray(predictions[:, k], dtype=np.float64))
    return pa.table(columns)


def write_output(table: Any, path: Path, fmt: str) -> None:
    """Write ``table`` to ``path`` atomically (a temporary name in the same folder, then
    rename): a reader never sees a partial file under the final name."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_output(path: Path) -> Any:
    """An output file back as a pyarrow Table (csv or parquet, by suffix)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pyarrow.csv as pacsv

    return pacsv.read_csv(io.BytesIO(path.read_bytes()))
