"""The training job itself: ``python -m dcsched.training.runner RUN_DIR``, run inside Ray.

The run directory is the whole interface with the scheduler:

- in: ``spec.json``, the train spec document (files: ``dcsched.rundir``);
- ``checkpoint/``: the plugin's checkpoint after every epoch; a rerun resumes from it;
- ``progress.jsonl``: one JSON line per epoch ``{"epoch", "loss", "samples_per_s",
  "seconds", "at", "metrics"}`` (``at``: unix time; ``metrics``: the plugin's validation
  metrics, on the validation rows, or on the test rows when the job has none),
  appended as training goes;
- ``model/``: the trained model (``ModelPlugin.load`` reads it back), preprocessing
  fitted at training time included;
- ``result.json``: written last and atomically, so its presence means success. Its
  ``metrics`` (registered with the model) follow one rule: ``NAME`` is on the test rows,
  ``val_NAME`` on the validation rows (present when ``data.validation_size`` > 0);
  ``validation_on`` says which rows the per-epoch metrics were on (``validation`` or
  ``test``);
- ``error.txt``: one line saying why the run failed (exit status 1).

``fit`` never sees the test rows of a job with a validation split: it gets
``Dataset.for_fit()``. stdout carries a short human log (it shows in the Ray dashboard).
``run`` does the same
work in-process and returns the result dict. torch is imported only for a plugin whose
``uses_torch`` is true (a ``gbdt`` job never imports it); scikit-learn inside functions.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from dcsched.core.spec import SpecError
from dcsched.kinds import TrainJobSpec, parse_job_spec
from dcsched.kinds.train import VALIDATION_PREFIX
from dcsched.plugins.api import (
    CheckpointError,
    DataError,
    EpochReport,
    MetricSet,
    PluginParamsError,
)
from dcsched.plugins.registry import DuplicatePluginError, PluginLoadError, UnknownPluginError
from dcsched.rundir import RunDir, one_line
from dcsched.training import distributed

logger = logging.getLogger(__name__)


class RunDirError(Exception):
    """The run directory or its spec.json is missing or unreadable."""


class PluginFitError(RuntimeError):
    """A plugin's ``fit`` raised something unexpected; the message names the plugin."""


EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    RunDirError,
    SpecError,
    PluginParamsError,
    UnknownPluginError,
    DuplicatePluginError,
    PluginLoadError,
    DataError,
    CheckpointError,
    FloatingPointError,  # training diverged; the message suggests a smaller lr
)
"""Failures caused by the job's input: reported in one line, without a traceback."""


def read_spec(run_dir: Path) -> TrainJobSpec:
    """The train spec in ``run_dir/spec.json``; RunDirError or SpecError if unusable."""
    path = RunDir(run_dir).spec
    try:
        document = RunDir(run_dir).read_spec()
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}") from None
    spec = parse_job_spec(document)
    if not isinstance(spec, TrainJobSpec):
        raise RunDirError(f"{path} holds a {spec.kind!r} job, not a train job")
    return spec


def choose_device(spec: TrainJobSpec) -> str:
    """The torch device: cuda when the job asked for GPUs and one is visible, else cpu."""
    import torch

    return "cuda" if spec.resources.gpus > 0 and torch.cuda.is_available() else "cpu"


def run(
    spec: TrainJobSpec, run_dir: Path, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """Train, evaluate and save the model of ``spec`` in ``run_dir``; return result.json's dict.

    ``timings``: unix times of the steps so far (``process``: when this process began);
    the steps of this run are added and the whole lands in result.json's ``timings``.
    Raises the errors of the steps (SpecError, PluginParamsError, UnknownPluginError, ...).
    """
    from dcsched.plugins.registry import load_plugin

    timings = {} if timings is None else timings

    files = RunDir(Path(run_dir))
    files.path.mkdir(parents=True, exist_ok=True)
    main_rank = distributed.is_main()  # on a gang, rank 0 alone writes the run's files
    if main_rank:
        files.clear_outcome()
    checkpoint_dir = files.checkpoint
    # Without a checkpoint training starts over, and so does the progress log.
    resuming = checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir())

    # The cheap checks come first, so that a bad spec fails before torch is imported.
    plugin = load_plugin(spec.model.type)
    params = plugin.validate_params(spec.model.params)
    plugin.check_data(spec.data)

    timings["plugin"] = time.time()
    data = plugin.load_data(spec.data)
    timings["data"] = time.time()
    info = data.info
    logger.info(
        "data %s: %s task, %s features, %s train rows, %s validation rows, %s test rows",
        spec.data.source,
        info.task,
        info.n_features,
        data.n_train,
        data.n_val,
        data.n_test,
    )

    device = "cpu"
    if plugin.uses_torch:
        import torch

        torch.set_num_threads(max(1, int(spec.resources.cpus)))
        _preload_torch_compiler()
        device = choose_device(spec)
    timings["torch"] = time.time()
    if distributed.world_size() > 1:
        # Each rank sees only the GPUs of its own bundle (CUDA_VISIBLE_DEVICES): cuda:0.
        distributed.init(device)
        logger.info(
            "rank %s of %s (data-parallel, global batch %s)",
            distributed.rank(),
            distributed.world_size(),
            spec.train.batch_size,
        )
    model = plugin.create(params, info, device)
    logger.info(
        "model %s %s on %s; %s epochs, batch %s, %s lr=%s",
        plugin.name,
        json.dumps(params.model_dump(mode="json")),
        device,
        spec.train.epochs,
        spec.train.batch_size,
        spec.train.optimizer,
        spec.train.lr,
    )

    epochs_run = 0
    progress_path = files.progress if main_rank else Path(os.devnull)
    with open(progress_path, "a" if resuming else "w") as progress:

        def on_epoch(report: EpochReport) -> None:
            nonlocal epochs_run
            epochs_run += 1
            if not main_rank:
                return
            line = {
                "epoch": report.epoch,
                "loss": report.loss,
                "samples_per_s": report.samples_per_s,
                "seconds": report.seconds,
                "at": time.time(),
                "metrics": dict(report.metrics),
            }
            progress.write(json.dumps(line) + "\n")
            progress.flush()
            logger.info(
                "epoch %s/%s loss %.4f (%.0f samples/s)%s",
                report.epoch,
                spec.train.epochs,
                report.loss,
                report.samples_per_s,
                "".join(f" {k} {v:.4f}" for k, v in report.metrics.items()),
            )

        began = time.perf_counter()
        timings["fit"] = time.time()
        try:
            model.fit(data.for_fit(), spec.train, spec.data.seed, on_epoch, checkpoint_dir)
        except EXPECTED_ERRORS:
            raise
        except Exception as exc:
            raise PluginFitError(
                f"model type {plugin.name!r} failed in fit: {type(exc).__name__}: {exc}"
            ) from exc
        train_seconds = time.perf_counter() - began
    timings["fitted"] = time.time()
    distributed.finish()
    if not main_rank:
        return {"rank": distributed.rank(), "train_seconds": train_seconds}

    metrics = model.evaluate(data.x_test, data.y_test)
    logger.info(
        "test metrics: %s", ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    )
    if data.x_val is not None and data.y_val is not None:
        validation = model.evaluate(data.x_val, data.y_val)
        logger.info(
            "validation metrics: %s",
            ", ".join(f"{name} {value:.4f}" for name, value in validation.items()),
        )
        metrics = {**metrics, **{f"{VALIDATION_PREFIX}{k}": v for k, v in validation.items()}}
    model_dir = files.model
    model.save(model_dir)

    result: dict[str, Any] = {
        "task": info.task,
        "metrics": metrics,
        "objective": _objective(plugin.metrics.get(info.task), metrics),
        "plugin": plugin.name,
        "params": params.model_dump(mode="json"),
        "n_train": data.n_train,
        "n_validation": data.n_val,
        "n_test": data.n_test,
        "validation_on": "validation" if data.has_validation else "test",
        "n_features": info.n_features,
        "classes": list(info.classes),
        "epochs": spec.train.epochs,
        "epochs_run": epochs_run,
        "train_seconds": train_seconds,
        "device": device,
        "workers": distributed.world_size(),
    }
    timings["saved"] = time.time()
    result["timings"] = {name: round(at, 3) for name, at in timings.items()}
    files.write_result(result)
    logger.info("done in %.2fs of training; model saved in %s", train_seconds, model_dir)
    return result


def _objective(metric_set: MetricSet | None, metrics: dict[str, float]) -> dict[str, Any] | None:
    """The plugin's default objective for this task, with its value."""
    if metric_set is None:
        return None
    return {
        "name": metric_set.objective,
        "direction": metric_set.direction,
        "value": metrics.get(metric_set.objective),
    }


def _preload_torch_compiler() -> None:
    """Import torch._dynamo now, so that ``train_seconds`` measures training alone.

    Every torch optimizer imports it on first construction (it disables the compiler
    around ``Optimizer.__init__``); that costs seconds on a small CPU, once per process.
    """
    try:
        import torch._dynamo  # noqa: F401 -- imported for its side effect only
    except ImportError:  # pragma: no cover - a torch without the compiler
        logger.debug("torch._dynamo is not available")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dcsched.training.runner RUN_DIR``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dcsched.training.runner RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    run_dir = Path(args[0])
    timings = {"process": process_started_at() or time.time(), "main": time.time()}
    files = RunDir(run_dir)
    try:
        spec = read_spec(run_dir)
        run(spec, run_dir, timings)
    except EXPECTED_ERRORS as exc:
        return files.fail("training", one_line(exc))
    except PluginFitError as exc:
        traceback.print_exc()  # for the plugin's author, in the job's log
        return files.fail("training", one_line(exc))
    except Exception as exc:
        traceback.print_exc()
        return files.fail("training", f"internal error: {type(exc).__name__}: {one_line(exc)}")
    return 0


def process_started_at() -> float | None:
    """When this process began (unix time, from /proc; 10 ms resolution), or None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of proc(5): starttime, in clock ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


if __name__ == "__main__":
    sys.exit(main())
