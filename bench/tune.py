"""dcsched tuning against Ray Tune, in one run, on the same local Ray cluster.

The same study both ways: the mlp on sklearn:breast_cancer, the same search space
(hidden layers, lr, batch size), trial count, concurrency, sampler (Optuna's TPE) and
seed, and ASHA (dcsched: Optuna's SuccessiveHalvingPruner(min_resource=1,
reduction_factor=3); Ray Tune: ASHAScheduler(grace_period=1, reduction_factor=3,
max_t=epochs)) on the per-epoch validation f1. Ray Tune runs ``Tuner`` with
``OptunaSearch`` and ``max_concurrent_trials``; each trial trains with the same plugin
code as a dcsched trial (``ModelPlugin.create`` + ``fit``), on one CPU.

Prints JSON lines: the machine, then one line per system (wall seconds from submit to the
study's end, trials completed and pruned, best f1), then the comparison (dcsched's wall
over Ray Tune's; best f1 difference in points). Goal (issue 13): ratio <= 0.5 and best
f1 no worse than Ray Tune's by more than 1 point.

    .venv/bin/pip install -e '.[bench]'      # ray[tune] and what it needs
    .venv/bin/python bench/tune.py [--trials 12] [--parallel 2] [--epochs 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, emit, machine, ray_cluster, server_on

HIDDEN = {"32": [32], "64-32": [64, 32]}
BATCH = [16, 32, 64]
LR = (1e-3, 1e-1)


def run_dcsched(address: str, trials: int, parallel: int, epochs: int, seed: int) -> dict[str, Any]:
    with server_on(address) as env:
        client = client_for(env)
        spec = {
            "name": "bench-tune",
            "kind": "tune",
            "team": "bench",
            "resources": {"cpus": 1, "memory": "512MiB"},
            "model": {"type": "mlp"},
            "data": {"source": "sklearn:breast_cancer", "test_size": 0.2, "seed": 42},
            "train": {"epochs": epochs},
            "tune": {
                "trials": trials,
                "parallel": parallel,
                "metric": "f1",
                "mode": "max",
                "algorithm": "tpe",
                "pruner": "asha",
                "seed": seed,
                "search_space": {
                    "params.hidden": {"choice": list(HIDDEN.values())},
                    "train.lr": {"loguniform": list(LR)},
                    "train.batch_size": {"choice": BATCH},
                },
            },
        }
        began = time.monotonic()
        job = client.submit(spec)
        while True:
            job = client.get_job(job["id"])
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            time.sleep(0.2)
        wall = time.monotonic() - began
        summary = job.get("tuning") or {}
        return {
            "system": "dcsched",
            "state": job["state"],
            "wall_s": round(wall, 1),
            "trials_completed": summary.get("done"),
            "trials_pruned": summary.get("pruned"),
            "trials_failed": summary.get("failed"),
            "best_f1": (summary.get("best") or {}).get("value"),
            "best_params": (summary.get("best") or {}).get("params"),
        }


def trainable(config: dict[str, Any]) -> None:
    """One Ray Tune trial: the mlp plugin's own fit, reporting validation f1 per epoch."""
    import torch
    from ray import tune

    from dcsched.kinds.train import DataSpec, TrainSpec
    from dcsched.plugins.registry import load_plugin

    torch.set_num_threads(1)
    plugin = load_plugin("mlp")
    data = plugin.load_data(
        DataSpec(source="sklearn:breast_cancer", target=None, test_size=0.2, seed=42)
    )
    params = plugin.validate_params({"hidden": HIDDEN[config["hidden"]]})
    model = plugin.create(params, data.info, "cpu")
    train = TrainSpec(
        epochs=config["epochs"], batch_size=config["batch_size"], optimizer="adam", lr=config["lr"]
    )

    def on_epoch(report: Any) -> None:
        tune.report({"f1": float(report.metrics["f1"]), "epoch": report.epoch})

    model.fit(data, train, 42, on_epoch, None)


def run_ray_tune(
    address: str, trials: int, parallel: int, epochs: int, seed: int
) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address=address, logging_level="WARNING")
    try:
        space = {
            "hidden": tune.choice(list(HIDDEN)),
            "lr": tune.loguniform(*LR),
            "batch_size": tune.choice(BATCH),
            "epochs": epochs,
        }
        with tempfile.TemporaryDirectory(prefix="dcsched-bench-raytune-") as storage:
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": 1}),
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric="f1",
                    mode="max",
                    num_samples=trials,
                    max_concurrent_trials=parallel,
                    search_alg=OptunaSearch(seed=seed),
                    scheduler=ASHAScheduler(
                        time_attr="epoch", grace_period=1, reduction_factor=3, max_t=epochs
                    ),
                ),
                run_config=tune.RunConfig(storage_path=storage, verbose=0),
            )
            began = time.monotonic()
            with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's tables: not JSON lines
                results = tuner.fit()
            wall = time.monotonic() - began
            epochs_run = [r.metrics.get("epoch", 0) for r in results if r.metrics]
            completed = sum(1 for e in epochs_run if e >= epochs)
            best = results.get_best_result(metric="f1", mode="max", scope="last")
            return {
                "system": "ray_tune",
                "state": "SUCCEEDED" if not results.errors else "ERRORS",
                "wall_s": round(wall, 1),
                "trials_completed": completed,
                "trials_pruned": len(epochs_run) - completed,
                "trials_failed": len(results.errors),
                "best_f1": best.metrics.get("f1") if best.metrics else None,
                "best_params": best.config,
            }
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=float, default=2)
    args = parser.parse_args()
    emit({"bench": "tune", "machine": machine(), "args": vars(args)})
    with ray_cluster(args.nodes, args.cpus_per_node) as (address, _dashboard):
        ours = run_dcsched(address, args.trials, args.parallel, args.epochs, args.seed)
        emit({"bench": "tune", **ours})
        theirs = run_ray_tune(address, args.trials, args.parallel, args.epochs, args.seed)
        emit({"bench": "tune", **theirs})
    ratio = ours["wall_s"] / theirs["wall_s"] if theirs["wall_s"] else None
    gap = None
    if ours["best_f1"] is not None and theirs["best_f1"] is not None:
        gap = round((theirs["best_f1"] - ours["best_f1"]) * 100, 2)
    emit(
        {
            "bench": "tune",
            "comparison": "dcsched vs ray_tune",
            "wall_ratio": None if ratio is None else round(ratio, 3),
            "best_f1_points_behind": gap,
            "goal_wall_ratio_max": 0.5,
            "goal_points_behind_max": 1.0,
            "goal_met": ratio is not None and ratio <= 0.5 and gap is not None and gap <= 1.0,
        }
    )
    print(json.dumps({"bench": "tune", "done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
