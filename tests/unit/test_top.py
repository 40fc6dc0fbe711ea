"""`dcsched top`'s frame, from API objects of the shapes /v1/nodes and /v1/jobs return
(tests/e2e/test_monitoring_live.py runs it against a live server)."""

from __future__ import annotations

from typing import Any

from dcsched.cli.top import render

NOW = 1_800_000_000.0
GiB = 1024**3


def node(node_id: str, gpus: float, free_gpus: float, usage: dict[str, Any] | None) -> dict:
    return {
        "id": node_id,
        "alive": True,
        "total": {"cpus": 16, "gpus": gpus, "memory": 64 * GiB},
        "available": {"cpus": 12, "gpus": free_gpus, "memory": 60 * GiB},
        "jobs": ["train-a"] if usage else [],
        "utilization": None,
        "usage": usage,
    }


def job(job_id: str, state: str, gpus: int, **extra: Any) -> dict:
    return {
        "id": job_id,
        "team": "research",
        "state": state,
        "priority": "normal",
        "resources": {"workers": 1, "cpus": 4, "gpus": gpus, "memory": GiB},
        "submitted_at": "2027-01-15T08:00:00.000Z",
        "admitted_at": None,
        "started_at": None,
        "position": None,
        "reason": None,
        "progress": None,
        **extra,
    }


USAGE = {
    "cpu_utilization_ratio": 0.25,
    "memory_used_bytes": 8 * GiB,
    "memory_total_bytes": 64 * GiB,
    "gpus": [
        {
            "index": 0,
            "model": "NVIDIA H200",
            "utilization_ratio": 0.9,
            "memory_used_bytes": 40 * GiB,
            "memory_total_bytes": 141 * GiB,
            "temperature_celsius": 61.0,
            "power_watts": 450.0,
        }
    ],
    "jobs": [
        {
            "job": "train-a",
            "team": "research",
            "gpus": [0],
            "gpu_memory_used_bytes": 40 * GiB,
            "gpu_utilization_ratio": 0.87,
            "cpu_seconds": 120.0,
            "memory_rss_bytes": 3 * GiB,
        }
    ],
}


def test_frame_shows_allocation_beside_measured_use_and_the_queue_with_reasons() -> None:
    nodes = [node("node-aaaaaaaaaaaaaaaa", 2, 1, USAGE), node("node-b", 2, 2, None)]
    running = [
        job(
            "train-a",
            "RUNNING",
            1,
            started_at="2027-01-15T08:00:00.000Z",
            progress={"epoch": 3, "loss": 0.1234},
        )
    ]
    pending = [
        job("later", "PENDING", 2, position=2, reason="needs 2 GPUs on one node; most free 1"),
        job("first", "PENDING", 1, position=1, reason="team research is at its GPU quota 1/1"),
    ]

    frame = render(nodes, running, pending, NOW)

    lines = frame.splitlines()
    assert "nodes 2/2 alive" in lines[0] and "GPUs 1/4 allocated" in lines[0]
    assert "running 1   pending 2" in lines[0]
    node_line = next(line for line in lines if line.startswith("node-aaaaaaa "))
    assert "1/2" in node_line and "25%" in node_line  # GPUs allocated, CPU measured
    gpu_line = next(line for line in lines if "NVIDIA H200" in line)
    assert "90%" in gpu_line and "61C" in gpu_line and "450W" in gpu_line
    job_line = next(line for line in lines if line.startswith("train-a"))
    assert "87%" in job_line and "40GiB" in job_line and "0.1234" in job_line
    queue = lines[lines.index("QUEUE") + 2 :]
    assert queue[0].startswith("1") and "first" in queue[0] and "GPU quota 1/1" in queue[0]
    assert queue[1].startswith("2") and "later" in queue[1]


def test_frame_without_exporters_says_nothing_was_measured() -> None:
    frame = render([node("node-b", 0, 0, None)], [], [], NOW)

    node_line = next(line for line in frame.splitlines() if line.startswith("node-b"))
    assert node_line.split()[4:6] == ["-", "-"]  # CPU USED, MEMORY USED
    assert "GPUS" not in frame.splitlines()  # no GPU section


def test_long_queue_is_cut_and_says_how_many_more() -> None:
    pending = [job(f"j{i}", "PENDING", 0, position=i + 1) for i in range(30)]

    frame = render([], [], pending, NOW, max_rows=5)

    assert "... and 25 more pending" in frame
    assert "j5 " not in frame and "j4 " in frame
