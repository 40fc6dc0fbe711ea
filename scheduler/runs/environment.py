"""The rendezvous environment of each rank: what ``torchrun`` would set, so that a script
written for it runs unchanged under dcsched.

Ranks are numbered in the order of the job's bundles (the placement policy's node
order). ``LOCAL_RANK`` counts the ranks on the same node, ``GROUP_RANK`` numbers the
nodes in the order their first rank appears, ``MASTER_ADDR``/``MASTER_PORT`` are rank 0's
node address and a port that was free there. Pure: no Ray, no sockets.
"""

from __future__ import annotations

from collections.abc import Sequence


def rank_environments(
    nodes: Sequence[str],
    master_addr: str,
    master_port: int,
    gpu_ids: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, str]]:
    """One environment per rank; ``nodes[i]`` is the node (any key) rank i runs on and
    ``gpu_ids[i]`` the GPUs Ray gave it."""
    world = len(nodes)
    groups: list[str] = []
    for node in nodes:
        if node not in groups:
            groups.append(node)
    seen: dict[str, int] = {}
    envs = []
    for rank, node in enumerate(nodes):
        local_rank = seen.get(node, 0)
        seen[node] = local_rank + 1
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(sum(1 for n in nodes if n == node)),
            "GROUP_RANK": str(groups.index(node)),
            "GROUP_WORLD_SIZE": str(len(groups)),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(world),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "TORCHELASTIC_RUN_ID": "",
        }
        if gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids[rank])
        envs.append(env)
    return envs
