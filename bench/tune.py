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
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, emit, machine, ray_cluster, server_on

HIDDEN = {"32": [32], "64-32": [64, 32]}
BATCH = [16, 32, 64]
LR = (1e-3, 1e-1)


def run_dcsched(
    address: str, dashboard: str, trials: int, parallel: int, epochs: int, seed: int
) -> dict[str, Any]:
    with server_on(address) as env:
        client = client_for(env)
        spec = {
            "name": "bench-tune",
            "kind": "tune",
            "team": "bench",
            "resources": {"cpus": 1, "memory": "512MiB"},
            "model": {"type": "mlp"},
            "data": {
                "source": "sklearn:breast_cancer",
                "test_size": 0.2,
                "validation_size": 0.2,
                "seed": 42,
            },
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
        # A warm runner left by an earlier run (it idles out after 120 s) saves the first
        # trial its imports: say so, the figures differ by about one cold start.
        from dcsched.training.warm import connect, socket_path

        warm = connect(socket_path())
        emit({"bench": "tune", "system": "dcsched", "warm_runner_at_start": warm is not None})
        if warm is not None:
            warm.close()
        began = time.monotonic()
        job = client.submit(spec)
        while True:
            job = client.get_job(job["id"])
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            time.sleep(0.2)
        wall = time.monotonic() - began
        summary = job.get("tuning") or {}
        emit({"bench": "tune", "system": "dcsched", "timeline": timeline(env, dashboard, job)})
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


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def timeline(env: dict[str, str], dashboard: str, tune_job: dict[str, Any]) -> dict[str, Any]:
    """Where a trial's time goes: the median seconds of each step, over the trials that
    have it, from the store's events, Ray's job info (trials that ran as Ray Jobs),
    progress.jsonl and result.json's ``timings`` (the runner's own clock; completed
    trials only)."""
    from ray.job_submission import JobSubmissionClient

    client = client_for(env)
    ray_jobs = JobSubmissionClient(dashboard)
    runs = Path(env["DCSCHED_HOME"]) / "runs"
    steps: dict[str, list[float]] = {}
    trials: list[dict[str, Any]] = []

    def add(step: str, begin: float | None, end: float | None) -> None:
        if begin is not None and end is not None:
            steps.setdefault(step, []).append(end - begin)

    for number in range(int((tune_job.get("tuning") or {}).get("created") or 0)):
        job_id = f"{tune_job['id']}-trial-{number}"
        job = client.get_job(job_id)
        at: dict[str, float] = {}
        for event in job.get("events") or []:
            at.setdefault(event["to_state"], _unix(event["at"]))
        final = next((at[s] for s in ("SUCCEEDED", "CANCELLED", "FAILED") if s in at), None)
        ray_start = ray_end = None  # a trial on its node's trial host has no Ray Job
        with contextlib.suppress(RuntimeError):
            info = ray_jobs.get_job_info(job_id)
            ray_start = info.start_time / 1000 if info.start_time else None
            ray_end = info.end_time / 1000 if info.end_time else None
        progress = []
        with contextlib.suppress(OSError):
            for line in (runs / job_id / "progress.jsonl").read_text().splitlines():
                progress.append(json.loads(line)["at"])
        result: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((runs / job_id / "result.json").read_text())
        t = result.get("timings") or {}
        submitted = at.get("PENDING")
        add("queued (submitted -> admitted)", submitted, at.get("ADMITTED"))
        add("admitted -> Ray job submitted", at.get("ADMITTED"), ray_start)
        add("Ray job submitted -> process started", ray_start, t.get("process"))
        add("admitted -> process started", at.get("ADMITTED"), t.get("process"))
        add("process started -> runner main", t.get("process"), t.get("main"))
        add("runner main -> plugin loaded", t.get("main"), t.get("plugin"))
        add("data loaded", t.get("plugin"), t.get("data"))
        add("torch imported", t.get("data"), t.get("torch"))
        add("torch -> fit begins", t.get("torch"), t.get("fit"))
        add("fit begins -> first epoch", t.get("fit"), progress[0] if progress else None)
        add("Ray job submitted -> first epoch (all)", ray_start, progress[0] if progress else None)
        if len(progress) > 1:
            add("each later epoch", progress[0], progress[-1])
            steps["each later epoch"][-1] /= len(progress) - 1
        add("fit ended -> result saved", t.get("fitted"), t.get("saved"))
        add("result saved -> Ray job ended", t.get("saved"), ray_end)
        if job["state"] == "CANCELLED":
            add("pruned: last epoch -> job cancelled", progress[-1] if progress else None, final)
        else:
            add("Ray job ended -> job final", ray_end, final)
            add("result saved -> job final", t.get("saved"), final)
        trials.append({"n": number, "state": job["state"], "submitted": submitted, "final": final})
    # A slot's next trial: the first submitted after a trial ended.
    for trial in trials:
        later = [
            t["submitted"]
            for t in trials
            if t["submitted"] and trial["final"] and t["submitted"] >= trial["final"]
        ]
        if later and trial["final"]:
            add("trial final -> next trial submitted", trial["final"], min(later))
        trial["wall"] = (
            None if not trial["final"] else round(trial["final"] - trial["submitted"], 2)
        )
    return {
        "median_s": {k: round(statistics.median(v), 3) for k, v in steps.items()},
        "count": {k: len(v) for k, v in steps.items()},
        "trial_wall_s": [t["wall"] for t in trials],
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
        DataSpec(
            source="sklearn:breast_cancer",
            target=None,
            test_size=0.2,
            validation_size=0.2,
            seed=42,
        )
    )
    params = plugin.validate_params({"hidden": HIDDEN[config["hidden"]]})
    model = plugin.create(params, data.info, "cpu")
    train = TrainSpec(
        epochs=config["epochs"], batch_size=config["batch_size"], optimizer="adam", lr=config["lr"]
    )

    def on_epoch(report: Any) -> None:
        tune.report({"f1": float(report.metrics["f1"]), "epoch": report.epoch})

    model.fit(data.for_fit(), train, 42, on_epoch, None)  # as dcsched's runner: no test rows


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
    parser.add_argument(
        "--only", choices=["dcsched", "ray_tune"], help="run one system (no comparison)"
    )
    args = parser.parse_args()
    emit({"bench": "tune", "machine": machine(), "args": vars(args)})
    with ray_cluster(args.nodes, args.cpus_per_node) as (address, dashboard):
        if args.only != "ray_tune":
            ours = run_dcsched(
                address, dashboard, args.trials, args.parallel, args.epochs, args.seed
            )
            emit({"bench": "tune", **ours})
        if args.only != "dcsched":
            theirs = run_ray_tune(address, args.trials, args.parallel, args.epochs, args.seed)
            emit({"bench": "tune", **theirs})
    if args.only:
        return 0
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
