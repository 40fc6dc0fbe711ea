"""Checkpoints of torch plugins: the weights, the optimizer and every RNG a resumed run
needs to end exactly where an uninterrupted one would, written atomically (temp file,
fsync, rename), and refused on resume when written for other data or settings (the
``stamp``); and a saved model's weights (``WEIGHTS_FILE``: the network's state on CPU).
Used by the built-in ``mlp``, ``cnn`` and ``tiny-lm``; torch is imported inside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from dcsched.plugins.api import CheckpointError, DatasetInfo

if TYPE_CHECKING:
    from dcsched.kinds.train import TrainSpec

WEIGHTS_FILE = "weights.pt"


def stamp(
    format_version: int,
    params: BaseModel,
    info: DatasetInfo,
    n_train: int,
    seed: int,
    train: TrainSpec,
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the model's format, parameters and
    dataset, the training set's size, the seed and the optimiser settings (``epochs`` may
    differ: a resumed job may be asked for more)."""
    return {
        "format": format_version,
        "params": params.model_dump(mode="json"),
        "info": info.to_json(),
        "n_train": n_train,
        "seed": seed,
        "batch_size": train.batch_size,
        "optimizer": train.optimizer,
        "lr": train.lr,
    }


def save(
    path: Path,
    stamp: dict[str, Any],
    epoch: int,
    net: Any,
    optimizer: Any,
    generator: Any,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the training state after ``epoch`` (plus the plugin's ``extra`` values)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "stamp": stamp,
        "epoch": epoch,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def restore(
    path: Path, stamp: dict[str, Any], device: str, net: Any, optimizer: Any, generator: Any
) -> dict[str, Any]:
    """Load the state into ``net``, ``optimizer``, ``generator`` and torch's RNG; return
    the whole state (``state["epoch"]`` is the last finished epoch). CheckpointError if
    it cannot be read or was written for another job."""
    import torch

    try:
        state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if state.get("stamp") != stamp:
        raise CheckpointError(
            f"checkpoint {path} was written for other data, parameters or training "
            "settings; delete it to start over"
        )
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    return state


def save_weights(net: Any, directory: Path) -> None:
    """Write ``net``'s state, on CPU, as ``directory``/``WEIGHTS_FILE``."""
    import torch

    state = {key: value.detach().cpu() for key, value in net.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)


def load_weights(net: Any, directory: Path, device: str) -> None:
    """Load ``directory``/``WEIGHTS_FILE`` (tensors only) into ``net`` on ``device``."""
    import torch

    net.load_state_dict(
        torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
    )
