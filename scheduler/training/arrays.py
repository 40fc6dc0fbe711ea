"""Array data for image models: ``npz:FILE``, a NumPy ``.npz`` holding ``x`` and ``y``.

``x``: numeric, shape ``(n, h, w)`` (one channel) or ``(n, c, h, w)``; ``y``: shape
``(n,)``, integer or string labels (classification). Every image has the same size by
construction of an array; a ragged folder of images must be resized before packing.

``check_npz`` is for the server at submit time: it reads the zip's directory and the two
``.npy`` headers only (never the arrays; ``allow_pickle`` is never on), and its errors
never quote the file's contents; it also checks that the images split into non-empty
parts. ``load_npz`` splits into train, validation and test images as every loader does
(``dcsched.training.splits``: stratified, ``data.seed``) and standardises with the mean
and standard deviation of the training pixels (one each): ``Dataset.preprocessing`` is
``{"mean", "std", "input_shape"}``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dcsched.core.spec import SpecError
from dcsched.kinds.train import DataSpec
from dcsched.plugins.api import ClassLabel, Dataset, DatasetInfo
from dcsched.training.splits import class_problems, split_indices, split_problems

MAX_IMAGE_VALUES = 1 << 26


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    where = f"data.source: npz file {str(path)!r}"
    if not path.is_file():
        raise SpecError([f"{where} does not exist or is not a file"])
    found: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for key in ("x", "y"):
                if f"{key}.npy" not in names:
                    continue
                with archive.open(f"{key}.npy") as handle:
                    version = np.lib.format.read_magic(handle)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(handle)
                    found[key] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError):
        raise SpecError([f"{where} is not a readable .npz archive"]) from None
    missing = [f"{n}.npy" for n in ("x", "y") if n not in found]
    if missing:
        raise SpecError(
            [
                f"{where} lacks the arrays {', '.join(missing)}; save it with "
                "numpy.savez(FILE, x=images, y=labels)"
            ]
        )
    return found


def check_npz(data: DataSpec) -> None:
    """Raise SpecError unless ``data.location`` is an npz of images and labels (cheap)."""
    where = "data.source: npz"
    headers = _headers(Path(data.location))
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    if x_dtype.hasobject or y_dtype.hasobject:
        raise SpecError(
            [
                f"{where}: arrays of Python objects are refused (no pickles); images of mixed "
                "sizes stack into one: resize every image to one size (h, w) and save x as a "
                "numeric array (n, h, w)"
            ]
        )
    if len(x_shape) not in (3, 4) or x_dtype.kind not in "uif":
        raise SpecError(
            [
                f"{where}: x must be numeric images of shape (n, h, w) or (n, c, h, w), got "
                f"{x_shape} of {x_dtype}"
            ]
        )
    if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise SpecError([f"{where}: y must have shape ({x_shape[0]},), got {y_shape}"])
    if int(np.prod(x_shape)) > MAX_IMAGE_VALUES:
        raise SpecError([f"{where}: x has more than {MAX_IMAGE_VALUES} values"])
    # the labels are not read here: two classes at least, as every classifier has
    problems = split_problems(x_shape[0], data, n_classes=2, what="images")
    if problems:
        raise SpecError(problems)


def load_npz(data: DataSpec) -> Dataset:
    check_npz(data)
    with np.load(data.location, allow_pickle=False) as arrays:
        x = np.asarray(arrays["x"], dtype=np.float32)
        labels = np.asarray(arrays["y"])
    if x.ndim == 3:
        x = x[:, None, :, :]
    if not np.all(np.isfinite(x)):
        raise SpecError(["data.source: npz: x holds missing or infinite values"])
    classes: tuple[ClassLabel, ...] = tuple(sorted(set(labels.tolist())))
    if len(classes) < 2:
        raise SpecError(["data.source: npz: y has a single label; nothing to learn"])
    index = {label: i for i, label in enumerate(classes)}
    y = np.fromiter((index[v] for v in labels.tolist()), dtype=np.int64, count=len(labels))
    problems = split_problems(len(x), data, len(classes), what="images")
    if not problems:
        counts = dict(zip(classes, np.bincount(y, minlength=len(classes)).tolist(), strict=True))
        problems = class_problems(counts, data, len(x), what="images")
    if problems:
        raise SpecError(problems)
    try:
        train, validation, test = split_indices(y, data, stratified=True)
    except ValueError as exc:
        raise SpecError([f"data.test_size: cannot split {len(x)} images: {exc}"]) from None
    x_train = x[train]
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    shape = tuple(int(n) for n in x.shape[1:])
    info = DatasetInfo(
        task="binary" if len(classes) == 2 else "multiclass",
        n_features=int(np.prod(shape)),
        classes=classes,
        feature_names=tuple(f"p{i}" for i in range(int(np.prod(shape)))),
        input_shape=shape,
    )

    def scaled(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return ((x[rows] - mean) / std).astype(np.float32)

    return Dataset(
        x_train=scaled(train),
        y_train=y[train],
        x_test=scaled(test),
        y_test=y[test],
        x_val=scaled(validation) if len(validation) else None,
        y_val=y[validation] if len(validation) else None,
        info=info,
        preprocessing={"mean": mean, "std": std, "input_shape": list(shape)},
    )
