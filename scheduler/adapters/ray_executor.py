"""Ray implementations of the Executor and ClusterView ports.

A job's gang is reserved as a *detached* placement group named ``dcsched-<run id>``
(one bundle per worker, each pinned with ``bundle_label_selector`` to the node that the
placement policy chose), so the reservation survives a restart of the dcsched server.
Once it is ready, the job runs as a Ray Job whose submission id is the dcsched job id,
visible in the Ray dashboard with its logs (a job that runs again after a preemption
gets run id ``<job id>-run<N>``: Ray keeps every submission id forever). The driver
runs under ``dcsched.runs.tee``, which copies its output to Ray's job log and to
``logs/driver-<run id>.log`` in the run directory, which `dcsched logs` reads by byte
range. The job's driver is pinned with ``entrypoint_label_selector`` to the first
worker's node and asks Ray for no resources of its own: the placement group already
holds them.

How each kind runs (``entrypoint``):
- CPU-only single-worker jobs run in the driver itself, on the node whose CPUs and memory
  the group holds: ``train`` as a plain PyTorch loop (``dcsched.training.runner``), forked
  by the machine's warm runner (``dcsched.training.warm``: torch and the plugins already
  imported, which saves seconds per job, most of a short tune trial), ``run`` as the
  user's command under a small launcher (``dcsched.runs.launch``). This saves a
  ``ray.init`` and a second worker (~3 s here).
- A tune job's trials (single-worker CPU ``train`` jobs) have no Ray Job of their own:
  the node's trial host (``dcsched.training.host``, a detached actor) has the warm runner
  fork them, which saves Ray's job supervisor start (1.7-3.3 s here, most of a short
  trial). They still hold their own placement group. If the host cannot be had, the trial
  runs as a Ray Job like any other train job.
- Jobs with GPUs, and ``run`` gangs, run inside the group: a ``train`` as a Ray task in
  bundle 0 (``dcsched.training.group_runner``), a GPU ``serve`` replica likewise
  (``dcsched.serving.group_replica``), a ``run`` as one actor per bundle
  (``dcsched.runs.gang``), so Ray assigns each the reserved GPUs. The group is always
  named after the *run* id: a job's second run reserves a new group.
- A ``run`` job's working_dir (an upload or a data-root folder) is its Ray runtime_env
  ``working_dir``: Ray ships it to every node that runs a rank.

Never let a job's driver consume the group's bundle resources by name
(``CPU_group_0_<id>`` as ``entrypoint_resources``): removing the group afterwards
crashed the raylet in Ray 2.60 (measured here).

Ray is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.job import Job
from dcsched.core.resources import Resources
from dcsched.kinds.tune import TRIAL_ID, is_trial_run
from dcsched.ports import RunPhase, RunStatus
from dcsched.rundir import RunDir

logger = logging.getLogger(__name__)

NAMESPACE = "dcsched"
NODE_ID_LABEL = "ray.io/node-id"


def placement_group_name(run_id: str) -> str:
    return f"dcsched-{run_id}"


def connect(gcs_address: str) -> str:
    """Connect this process to the Ray cluster as a driver; return the dashboard URL."""
    import ray

    context = ray.init(
        address=gcs_address,
        namespace=NAMESPACE,
        logging_level=logging.WARNING,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    url = str(getattr(context, "dashboard_url", "") or "")
    return url if not url or url.startswith("http") else f"http://{url}"


def needs_group_task(job: Job) -> bool:
    """GPU jobs run as a task inside the group, so that Ray assigns their devices."""
    return job.per_worker.gpus > 0


class HostSlow(RuntimeError):
    """A trial host did not answer a start in time; it may still start the run, so the
    run must not be started as a Ray Job as well (the next pass asks the host again)."""


def on_trial_host(job: Job, run_in_group: Callable[[Job], bool] = needs_group_task) -> bool:
    """Whether a job is one that its node's trial host runs: a tune trial (a ``train``
    job with a trial's id) on one worker, outside its group (no GPUs)."""
    return (
        job.kind == "train"
        and job.workers == 1
        and bool(job.nodes)
        and not run_in_group(job)
        and TRIAL_ID.match(job.id) is not None
    )


class RayExecutor:
    def __init__(
        self,
        dashboard_url: str,
        python: str = sys.executable,
        run_in_group: Callable[[Job], bool] = needs_group_task,
        agent_wait_s: float = 30.0,
        warm_train: bool = True,
        trial_host: bool = True,
    ):
        from ray.job_submission import JobSubmissionClient

        self.dashboard_url = dashboard_url
        self.python = python
        self.run_in_group = run_in_group
        self.agent_wait_s = agent_wait_s
        self.warm_train = warm_train
        self.trial_host = trial_host and warm_train
        self._client = JobSubmissionClient(dashboard_url)
        self._hosts: dict[str, Any] = {}  # node id -> its trial host's actor handle
        self._hosted: dict[str, str] = {}  # run id -> node whose trial host runs it
        self._host_class: Any = None

    # -- reservations ------------------------------------------------------------------

    def _group(self, run_id: str) -> Any | None:
        from ray.util import get_placement_group

        try:
            return get_placement_group(placement_group_name(run_id))
        except ValueError:
            return None

    def reserve(self, job: Job, nodes: Sequence[str]) -> None:
        from ray.util.placement_group import placement_group

        if self._group(job.run_id) is not None:
            return
        bundle: dict[str, float] = {"CPU": job.per_worker.cpus}
        if job.per_worker.gpus:
            bundle["GPU"] = job.per_worker.gpus
        if job.per_worker.memory:
            bundle["memory"] = float(job.per_worker.memory)
        placement_group(
            [dict(bundle) for _ in nodes],
            strategy="PACK",
            name=placement_group_name(job.run_id),
            lifetime="detached",
            bundle_label_selector=[{NODE_ID_LABEL: node} for node in nodes],
        )

    def reservation_ready(self, run_id: str, timeout_s: float) -> bool:
        group = self._group(run_id)
        return bool(group is not None and group.wait(timeout_s))

    def reservations(self) -> dict[str, tuple[str, ...]]:
        from ray.util import placement_group_table

        prefix = placement_group_name("")
        runs: dict[str, tuple[str, ...]] = {}
        for entry in placement_group_table().values():
            name = str(entry.get("name") or "")
            if name.startswith(prefix) and entry.get("state") != "REMOVED":
                placed = entry.get("bundles_to_node_id") or {}
                nodes = tuple(str(placed[i]) for i in sorted(placed) if placed[i])
                runs[name[len(prefix) :]] = nodes
        return runs

    def release(self, run_id: str) -> None:
        from ray.util import remove_placement_group

        group = self._group(run_id)
        if group is not None:
            remove_placement_group(group)
        self._hosted.pop(run_id, None)

    # -- runs --------------------------------------------------------------------------

    def start(self, job: Job, run_dir: Path) -> None:
        if self.status(job.run_id) is not None:
            return  # already submitted (e.g. before a server restart)
        if self._group(job.run_id) is None:
            raise RuntimeError(f"job {job.id} has no reservation to run in")
        if self.hosted(job):
            try:
                self._start_hosted(job, run_dir)
                return
            except HostSlow:
                raise  # it may still start the run: never start it a second way
            except Exception as exc:
                logger.warning(
                    "the trial host could not start run %s (%s); running it as a Ray Job",
                    job.run_id,
                    exc,
                )
        # The driver runs under a tee: its output goes both to Ray's job log (the
        # dashboard's) and to the run's driver log, which `dcsched logs` reads by byte
        # range (Ray's log can only be read whole). Created here, private, so that the
        # tee only appends.
        log = driver_log_file(RunDir(run_dir), job.run_id)
        argv = [*teed(log), self.python, *self.entrypoint(job, run_dir)]
        entrypoint = shlex.join([self.python, *argv])
        env_vars = {
            "DCSCHED_JOB_ID": job.id,
            "DCSCHED_TEAM": job.team,
            "DCSCHED_RUN_ATTEMPT": str(job.attempt),
        }
        runtime_env: dict[str, Any] = {"env_vars": env_vars}
        if job.kind == "run":
            working_dir = RunDir(run_dir).read_spec()["run"].get("working_dir")
            if working_dir:
                runtime_env["working_dir"] = _ray_working_dir(Path(working_dir), run_dir)
        submit_args: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": job.run_id,
            "metadata": {
                "dcsched_job": job.id,
                "dcsched_team": job.team,
                "dcsched_kind": job.kind,
                "dcsched_name": job.name,
                "dcsched_resources": f"{job.workers}x {job.per_worker.describe()}",
            },
            # The node exporter attributes processes (and their GPU memory) to jobs by
            # DCSCHED_JOB_ID and DCSCHED_TEAM; tasks and actors the run starts inherit them.
            "runtime_env": runtime_env,
            "entrypoint_num_cpus": 0,
            "entrypoint_label_selector": {NODE_ID_LABEL: job.nodes[0]} if job.nodes else None,
        }
        # A dashboard that has just started may have no job agent yet; Ray says to retry.
        deadline = time.monotonic() + self.agent_wait_s
        while True:
            try:
                self._client.submit_job(**submit_args)
                return
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def entrypoint(self, job: Job, run_dir: Path) -> list[str]:
        """The Python arguments of the run's driver (see the module docstring)."""
        group = placement_group_name(job.run_id)
        if job.kind == "serve":  # a replica server (dcsched.serving)
            if self.run_in_group(job):  # GPUs: in bundle 0, where Ray hands them out
                return ["-m", "dcsched.serving.group_replica", str(run_dir), group]
            return ["-m", "dcsched.serving.replica", str(run_dir)]
        if job.kind == "run":
            if job.workers > 1 or self.run_in_group(job):
                return ["-m", "dcsched.runs.gang", str(run_dir), group]
            return ["-m", "dcsched.runs.launch", str(run_dir)]
        if job.kind == "infer":
            if job.workers > 1 or self.run_in_group(job):
                return ["-m", "dcsched.runs.gang", str(run_dir), group]
            return ["-m", "dcsched.inference.batch", str(run_dir)]
        if job.workers > 1:
            return ["-m", "dcsched.runs.gang", str(run_dir), group]
        if self.run_in_group(job):
            return ["-m", "dcsched.training.group_runner", str(run_dir), group]
        if self.warm_train:
            return ["-m", "dcsched.training.warm", str(run_dir)]
        return ["-m", "dcsched.training.runner", str(run_dir)]

    def status(self, run_id: str) -> RunStatus | None:
        hosted = self._hosted_status(run_id)
        if hosted is not None:
            return hosted
        try:
            info = self._client.get_job_info(run_id)
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise
        return RunStatus(RunPhase(str(info.status.value)), info.message or "")

    def stop(self, run_id: str, wait_s: float = 15.0) -> None:
        """Stop the run and wait for its end: a hosted trial through its host, a Ray job
        with Ray's stop (a PENDING one by killing its supervisor)."""
        if self._stop_hosted(run_id, wait_s):
            return
        status = self.status(run_id)
        if status is None or status.phase.is_terminal():
            return
        if status.phase is RunPhase.PENDING:
            self._kill_supervisor(run_id)
        self._client.stop_job(run_id)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status is None or status.phase.is_terminal():
                return
            time.sleep(0.2)
        logger.warning("run %s did not stop within %ss", run_id, wait_s)

    def _kill_supervisor(self, run_id: str) -> None:
        import ray
        from ray.dashboard.modules.job.common import SUPERVISOR_ACTOR_RAY_NAMESPACE

        try:
            actor = ray.get_actor(
                f"_ray_internal_job_actor_{run_id}", namespace=SUPERVISOR_ACTOR_RAY_NAMESPACE
            )
        except ValueError:
            return
        ray.kill(actor, no_restart=True)

    # -- trials on the node's trial host ---------------------------------------------------

    def hosted(self, job: Job) -> bool:
        """Whether ``job`` runs on its node's trial host (see the module docstring)."""
        return self.trial_host and on_trial_host(job, self.run_in_group)

    def _host(self, node: str, create: bool) -> Any | None:
        import ray

        from dcsched.training.host import TrialHost, host_name

        handle = self._hosts.get(node)
        if handle is not None:
            return handle
        try:
            handle = ray.get_actor(host_name(node), namespace=NAMESPACE)
        except ValueError:
            if not create:
                return None
            if self._host_class is None:
                self._host_class = ray.remote(TrialHost)
            handle = self._host_class.options(
                name=host_name(node),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=32,
                max_restarts=0,
                label_selector={NODE_ID_LABEL: node},
            ).remote()
        self._hosts[node] = handle
        return handle

    def _host_node(self, run_id: str) -> str | None:
        """The node whose trial host would run ``run_id``: bundle 0's node."""
        node = self._hosted.get(run_id)
        if node is not None:
            return node
        from ray.util import placement_group_table

        group = self._group(run_id)
        if group is None:
            return None
        placed = placement_group_table(group).get("bundles_to_node_id") or {}
        first = placed.get(0)
        return str(first) if first else None

    def _start_hosted(self, job: Job, run_dir: Path) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        node = job.nodes[0]
        env = {
            "DCSCHED_JOB_ID": job.id,
            "DCSCHED_TEAM": job.team,
            "DCSCHED_RUN_ATTEMPT": str(job.attempt),
        }
        umask = os.umask(0o077)
        os.umask(umask)
        for attempt in (1, 2):  # a host that idled out just now: make a new one
            host = self._host(node, create=True)
            if host is None:
                raise RuntimeError(f"no trial host on node {node}")
            try:
                ray.get(host.start.remote(job.run_id, str(run_dir), env, umask), timeout=60)
                self._hosted[job.run_id] = node
                return
            except GetTimeoutError as exc:
                self._hosted[job.run_id] = node  # the next pass asks this host again
                raise HostSlow(f"the trial host of node {node} did not answer in 60 s") from exc
            except RayActorError:
                self._hosts.pop(node, None)
                if attempt == 2:
                    raise

    def _call_host(self, run_id: str, method: str, *args: Any, timeout_s: float) -> Any:
        """``method`` of the trial host that runs ``run_id``; None if there is no such
        host (never started, idled out, or its node is gone)."""
        if not self.trial_host or not is_trial_run(run_id):
            return None
        import ray
        from ray.exceptions import RayActorError

        node = self._host_node(run_id)
        if node is None:
            return None
        host = self._host(node, create=False)
        if host is None:
            return None
        try:
            return ray.get(getattr(host, method).remote(run_id, *args), timeout=timeout_s)
        except RayActorError:
            self._hosts.pop(node, None)
            return None

    def _hosted_status(self, run_id: str) -> RunStatus | None:
        # Short: a host on a node that died but is not yet known dead does not answer,
        # and the pass waits for this call (the next pass asks again).
        answer = self._call_host(run_id, "status", timeout_s=5)
        if answer is None:
            return None
        phase, message = answer
        return RunStatus(RunPhase(phase), message)

    def _stop_hosted(self, run_id: str, wait_s: float) -> bool:
        """Stop a run its trial host knows; False if no host knows it."""
        if self._hosted_status(run_id) is None:
            return False
        self._call_host(run_id, "stop", wait_s, timeout_s=2 * wait_s + 30)
        return True

    def logs(self, run_id: str) -> str:
        """Ray's log of the run's Ray Job, whole: for runs started before their driver
        had a log file of its own (``start``)."""
        try:
            return str(self._client.get_job_logs(run_id))
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return ""
            raise


def teed(log: Path) -> list[str]:
    """The Python arguments that run a driver command (appended to them) under
    ``dcsched.runs.tee``: its output to its stdout, Ray's job log, and to ``log``."""
    return ["-m", "dcsched.runs.tee", str(log), "--"]


def driver_log_file(files: RunDir, run_id: str) -> Path:
    """The run's driver log (``RunDir.driver_log``), created empty and private (0600)
    if it is not there, its folder too (0700)."""
    path = files.driver_log(run_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return path


class RayClusterView:
    """Nodes, their labels, totals and free resources, as Ray's GCS reports them, and each
    node's measured busyness where a node exporter reports it (``usage``: node id -> the
    exporter's NodeUsage dict, see dcsched.adapters.node_exporters)."""

    def __init__(self, usage: Callable[[], dict[str, dict[str, Any]]] | None = None):
        self._usage = usage

    def snapshot(self) -> ClusterSnapshot:
        import ray
        from ray._private import state

        # Ray's state API is untyped.
        available = state.available_resources_per_node()  # type: ignore[no-untyped-call]
        usage = self._usage() if self._usage is not None else {}
        nodes = []
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            node_id = node["NodeID"]
            nodes.append(
                NodeState(
                    id=node_id,
                    address=node.get("NodeManagerAddress", ""),
                    alive=bool(node.get("Alive")),
                    total=_resources(node.get("Resources", {})),
                    available=_resources(available.get(node_id, {})),
                    labels=dict(node.get("Labels", {})),
                    utilization=measured_utilization(usage.get(node_id)),
                )
            )
        nodes.sort(key=lambda n: n.id)
        return ClusterSnapshot(tuple(nodes))


def _ray_working_dir(path: Path, run_dir: Path) -> str:
    """A folder as it is; an uploaded zip (a content-addressed blob without a suffix)
    linked into the run directory as ``working_dir.zip``, the name Ray wants."""
    if path.is_dir():
        return str(path)
    link = run_dir / "working_dir.zip"
    if not link.exists():
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)
    return str(link)


def measured_utilization(usage: dict[str, Any] | None) -> float | None:
    """A node's busyness, 0..1: the larger of its CPU use and its GPUs' mean use."""
    if not usage:
        return None
    values = [float(usage.get("cpu_utilization_ratio") or 0.0)]
    gpus = [g.get("utilization_ratio") for g in usage.get("gpus") or ()]
    measured = [float(g) for g in gpus if isinstance(g, int | float)]
    if measured:
        values.append(sum(measured) / len(measured))
    return min(1.0, max(values))


def _resources(raw: dict[str, float]) -> Resources:
    return Resources(
        cpus=float(raw.get("CPU", 0.0)),
        gpus=float(raw.get("GPU", 0.0)),
        memory=int(raw.get("memory", 0)),
    )
