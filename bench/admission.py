"""One admission pass (``dcsched.core.admission.plan``) over 10,000 pending jobs from 50
teams on a 1,000-node, 8,000-GPU cluster snapshot, for each queueing policy with and
without backfill. Prints one JSON line per policy (floors below).

The snapshot: 1,000 nodes of 8 GPUs, 64 CPUs and 512 GiB (half labelled A100, half
H100); a third of them partly used by ~500 active jobs (most with max_runtime). The
queue: 1/2/4/8-GPU single-worker jobs and 2- and 4-worker gangs (~6 GPUs a job on
average, so the cluster fills after ~1,100 of them), some pinned to a GPU type, three in
four with max_runtime, three priority classes. Teams: 50, each with a nominal quota of
1.5x its even share, in five cohorts with some lending and borrowing limits (so some
jobs borrow, some are blocked by quota, some preempt), preemption on. ``fair`` gets
random past usage. Most of its decisions are waits (the cluster fills after ~1,100).

A second input, ``admitting``, where most decisions admit: the same nodes empty, 10,000
pending 1- and 2-GPU jobs and 2-worker gangs of 1 GPU (~1.3 GPUs a job: about 6,000
admitted), 50 teams without quotas. Both report ``admissions_per_s`` beside
``decisions_per_s``.

Timing covers ``plan()`` only: the input (an ``ActiveSet`` of the active jobs on the
live snapshot, as the service builds it) is built beforehand, afresh for each of the
``--repeat`` passes (median kept), as wall time and as the process's CPU time (on a
shared machine the steadier of the two: ``decisions_per_cpu_s``). Floors: 20,000
decisions/s for every policy on the mixed input, 5,000 admissions/s on the admitting one
(``meets_floor`` is judged on wall time).

Each line also gives ``decisions_digest``, a digest of the pass's decisions (every
admission's nodes, every wait's reason and estimated start), and, at the default sizes,
``decisions_unchanged``: whether it equals the digest pinned in ``PINNED`` (the decisions
before the pass was sped up). ``tests/unit/test_admission.py`` pins the same digests on
a smaller input.

The previous figure beside the new one, from the same run: ``--baseline TREE`` (another
checkout, e.g. ``git worktree add /tmp/before main``) times each pass again with that
tree's ``dcsched``, each tree in a fresh child process, in turns, and each line adds
``baseline_decisions_per_s``, ``baseline_admissions_per_s``, their per-CPU-second
figures, and ``same_decisions_as_baseline`` (the two digests equal).

Usage: python bench/admission.py [--pending N] [--nodes N] [--repeat N] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import baseline_tree, emit, machine, run_json

from dcsched.core.activeset import ActiveSet
from dcsched.core.admission import Admit, Cancel, Preempt, SchedulingInput, Wait, plan
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import GPU_TYPE_LABEL, ClusterConfig
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources
from dcsched.core.spec import SchedulingRequest

FLOOR = 20_000.0
ADMIT_FLOOR = 5_000.0
GiB = 1024**3
NOW = 1_000_000.0
TEAMS = 50

PINNED = {
    ("mixed", "fifo", False): "eaacc5a233d1696f",
    ("mixed", "fifo", True): "83f4842c2a85e75e",
    ("mixed", "priority", False): "eed760a2c6b1896a",
    ("mixed", "priority", True): "126bc18ca0db6c1f",
    ("mixed", "fair", False): "6e5671ee488ac628",
    ("mixed", "fair", True): "a8f6fafb57f47a40",
    ("admitting", "fifo", False): "81caff2f8a620b72",
    ("admitting", "fifo", True): "67ddeb2b4f4dd33a",
    ("admitting", "priority", False): "63df6f36ca3469d4",
    ("admitting", "priority", True): "78d5b9d75b627778",
    ("admitting", "fair", False): "b7ddf6679a4b6add",
    ("admitting", "fair", True): "c461a5074d99bf2f",
}
"""``digest`` of each pass's decisions at the default sizes (10,000 pending, 1,000 nodes),
as main gave them before the admission pass was sped up (commit 9045eb3)."""


def digest(decisions: list[Any]) -> str:
    """A digest of the decisions: any change of one (an admission's nodes, a wait's
    position, reason or estimated start) changes it."""
    return hashlib.sha256(repr(decisions).encode()).hexdigest()[:16]


def scheduling_input(
    inputs: tuple[Any, ...], policy: str, backfill: bool
) -> tuple[SchedulingInput, ClusterConfig]:
    """One pass's input over what ``build`` or ``build_admitting`` made (a fresh active set
    each time, as the service builds one per pass)."""
    cluster, active, pending, team_configs, past = inputs
    config = ClusterConfig.model_validate(
        {
            "queueing": {"policy": policy, "backfill": backfill, "preemption": True},
            "teams": team_configs,
        }
    )
    inp = SchedulingInput(
        pending=pending,
        active=ActiveSet(cluster, config, held=active),
        now=NOW,
        past_usage=past if policy == "fair" else {},
    )
    return inp, config


def spec_factory() -> Any:
    cache: dict[tuple[Any, ...], SchedulingRequest] = {}

    def make(
        team: str,
        gpus: int,
        workers: int,
        priority: str,
        runtime: float | None,
        gpu_type: str | None,
    ) -> SchedulingRequest:
        key = (team, gpus, workers, priority, runtime, gpu_type)
        if key not in cache:
            cache[key] = SchedulingRequest.model_validate(
                {
                    "name": "bench",
                    "team": team,
                    "priority": priority,
                    "resources": {
                        "workers": workers,
                        "cpus": 8 * gpus,
                        "gpus": gpus,
                        "memory": f"{64 * gpus}GiB",
                    },
                    "max_runtime": runtime,
                    "node_selector": {GPU_TYPE_LABEL: gpu_type} if gpu_type else {},
                }
            )
        return cache[key]

    return make


def build(pending_count: int, node_count: int, seed: int = 7) -> tuple[Any, ...]:
    rng = random.Random(seed)
    make = spec_factory()
    teams = [f"team-{i:02d}" for i in range(TEAMS)]
    per_node = Resources(64, 8, 512 * GiB)
    used: dict[str, Resources] = {}
    active: list[Job] = []
    labels = {}
    for i in range(node_count):
        node_id = f"node-{i:04d}"
        labels[node_id] = {GPU_TYPE_LABEL: "A100" if i % 2 == 0 else "H100"}
        used[node_id] = Resources()
        if i % 3 == 0:  # partly used: one or two active jobs of 1-4 GPUs
            for _ in range(rng.randint(1, 2)):
                gpus = rng.choice([1, 2, 4])
                if not (used[node_id] + Resources(8 * gpus, gpus, 64 * gpus * GiB)).fits_in(
                    per_node
                ):
                    continue
                runtime = rng.choice([None, 3600.0, 7200.0, 4 * 3600.0])
                spec = make(rng.choice(teams), gpus, 1, "normal", runtime, None)
                started = NOW - rng.uniform(0, 3000)
                active.append(
                    Job(
                        f"active-{len(active):05d}",
                        spec,
                        JobState.RUNNING,
                        submitted_at=started - 10,
                        admitted_at=started - 1,
                        started_at=started,
                        nodes=(node_id,),
                    )
                )
                used[node_id] = used[node_id] + spec.resources.total()
    nodes = tuple(
        NodeState(n, "10.0.0.1", True, per_node, per_node - used[n], labels[n]) for n in labels
    )
    pending: list[Job] = []
    shapes = [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (8, 4), (4, 2)]
    weights = [30, 20, 15, 15, 10, 5, 5]
    for i in range(pending_count):
        gpus, workers = rng.choices(shapes, weights)[0]
        runtime = rng.choice([None, 1800.0, 3600.0, 4 * 3600.0])
        gpu_type = rng.choice([None, None, "A100", "H100"])
        priority = rng.choices(["low", "normal", "high"], [3, 6, 1])[0]
        spec = make(rng.choice(teams), gpus, workers, priority, runtime, gpu_type)
        pending.append(Job(f"job-{i:05d}", spec, JobState.PENDING, submitted_at=NOW - 5000 + i))
    team_configs = []
    for i, team in enumerate(teams):
        entry: dict[str, Any] = {
            "name": team,
            "cohort": f"cohort-{i % 5}",
            "weight": 1 + (i % 3),
            "quota": {"gpus": 12 * node_count // TEAMS, "cpus": 96 * node_count // TEAMS},
        }
        if i % 4 == 0:
            entry["lending_limit"] = {"gpus": 4 * node_count // TEAMS}
        if i % 7 == 0:
            entry["borrowing_limit"] = {"gpus": 8}
        team_configs.append(entry)
    past = {
        team: Resources(rng.uniform(0, 1e7), rng.uniform(0, 1e6), int(rng.uniform(0, 1e16)))
        for team in teams
    }
    return ClusterSnapshot(nodes), active, pending, team_configs, past


def build_admitting(pending_count: int, node_count: int, seed: int = 11) -> tuple[Any, ...]:
    """Empty nodes, small jobs, no quotas: most decisions admit."""
    rng = random.Random(seed)
    make = spec_factory()
    teams = [f"team-{i:02d}" for i in range(TEAMS)]
    per_node = Resources(64, 8, 512 * GiB)
    nodes = tuple(
        NodeState(
            f"node-{i:04d}",
            "10.0.0.1",
            True,
            per_node,
            per_node,
            {GPU_TYPE_LABEL: "A100" if i % 2 == 0 else "H100"},
        )
        for i in range(node_count)
    )
    pending: list[Job] = []
    for i in range(pending_count):
        gpus, workers = rng.choices([(1, 1), (2, 1), (1, 2)], [60, 25, 15])[0]
        runtime = rng.choice([None, 1800.0, 3600.0])
        priority = rng.choices(["low", "normal", "high"], [3, 6, 1])[0]
        spec = make(rng.choice(teams), gpus, workers, priority, runtime, None)
        pending.append(Job(f"job-{i:05d}", spec, JobState.PENDING, submitted_at=NOW - 5000 + i))
    team_configs = [{"name": team, "weight": 1 + (i % 3)} for i, team in enumerate(teams)]
    past = {team: Resources(0, rng.uniform(0, 1e6), 0) for team in teams}
    return ClusterSnapshot(nodes), [], pending, team_configs, past


def measure(built: tuple[Any, ...], policy: str, backfill: bool, repeat: int) -> dict[str, Any]:
    """``repeat`` passes over a fresh input each: median wall and CPU seconds, the kinds
    of decisions and their digest."""
    times = []
    cpu_times = []
    decisions: list[Any] = []
    for _ in range(repeat):
        inp, _ = scheduling_input(built, policy, backfill)
        started = time.perf_counter()
        cpu_started = time.process_time()
        decisions = plan(inp)
        cpu_times.append(time.process_time() - cpu_started)
        times.append(time.perf_counter() - started)
    counts = {
        kind.__name__.lower(): sum(isinstance(d, kind) for d in decisions)
        for kind in (Admit, Wait, Preempt, Cancel)
    }
    seconds = statistics.median(times)
    cpu_seconds = statistics.median(cpu_times)
    return {
        "decisions": len(decisions),
        "kinds": counts,
        "median_s": round(seconds, 4),
        "min_s": round(min(times), 4),
        "decisions_per_s": round(len(decisions) / seconds, 1),
        "admissions_per_s": round(counts["admit"] / seconds, 1),
        "cpu_median_s": round(cpu_seconds, 4),
        "decisions_per_cpu_s": round(len(decisions) / cpu_seconds, 1),
        "admissions_per_cpu_s": round(counts["admit"] / cpu_seconds, 1),
        "decisions_digest": digest(decisions),
    }


BUILDERS = {"mixed": build, "admitting": build_admitting}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5, help="passes per policy; median kept")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout: time each pass with it too"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the baseline's child: input,policy,bf
    args = parser.parse_args()
    if args.one is not None:
        import dcsched

        name, policy, backfill = json.loads(args.one)
        built = BUILDERS[name](args.pending, args.nodes)
        found = measure(built, policy, backfill, args.repeat)
        emit({**found, "dcsched": str(Path(dcsched.__file__).resolve().parent)})
        return
    with baseline_tree(args.baseline) as baseline_env:
        _main(args, baseline_env)


def _main(args: argparse.Namespace, baseline_env: dict[str, str] | None) -> None:
    default_sizes = (args.pending, args.nodes) == (10_000, 1_000)
    script = str(Path(__file__).resolve())
    turn = 0
    for name, build_input in BUILDERS.items():
        built = build_input(args.pending, args.nodes)  # one input alive at a time
        cluster, active, pending, _, _ = built
        for policy in ("fifo", "priority", "fair"):
            for backfill in (False, True):
                baseline: dict[str, Any] = {}
                if baseline_env is None:
                    found = measure(built, policy, backfill, args.repeat)
                else:
                    # Both trees alike: each in a fresh child process, in turns.
                    child = [
                        script,
                        *("--pending", str(args.pending), "--nodes", str(args.nodes)),
                        *("--repeat", str(args.repeat)),
                        *("--one", json.dumps([name, policy, backfill])),
                    ]
                    own_env = dict(os.environ)
                    turn += 1
                    if turn % 2:
                        found = run_json(own_env, *child)
                        before = run_json(baseline_env, *child)
                    else:
                        before = run_json(baseline_env, *child)
                        found = run_json(own_env, *child)
                    baseline = {
                        "baseline_" + key: before[key]
                        for key in (
                            "decisions_per_s",
                            "admissions_per_s",
                            "decisions_per_cpu_s",
                            "admissions_per_cpu_s",
                            "median_s",
                            "cpu_median_s",
                        )
                    }
                    baseline["same_decisions_as_baseline"] = (
                        before["decisions_digest"] == found["decisions_digest"]
                    )
                    baseline["baseline_dcsched"] = before["dcsched"]
                rate = found["decisions_per_s"]
                admit_rate = found["admissions_per_s"]
                emit(
                    {
                        "benchmark": "admission",
                        "input": name,
                        "policy": policy,
                        "backfill": backfill,
                        "pending": len(pending),
                        "active": len(active),
                        "nodes": len(cluster.nodes),
                        "repeat": args.repeat,
                        **found,
                        "decisions_unchanged": found["decisions_digest"]
                        == PINNED[(name, policy, backfill)]
                        if default_sizes
                        else None,
                        **baseline,
                        "floor_decisions_per_s": FLOOR if name == "mixed" else None,
                        "floor_admissions_per_s": ADMIT_FLOOR if name == "admitting" else None,
                        "meets_floor": rate >= FLOOR
                        if name == "mixed"
                        else admit_rate >= ADMIT_FLOOR,
                        "machine": machine(),
                    }
                )


if __name__ == "__main__":
    main()
