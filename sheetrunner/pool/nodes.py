"""What one node of a run across hosts is launched with: the placeholders of the job's
command filled in and the environment the common launchers read (torchrun and
torch.distributed, jax.distributed), all pointing at rank 0's host.

A run on one host gets the placeholders filled in too (rank 0 of 1), but none of the
environment, so a job that reads WORLD_SIZE or MASTER_ADDR behaves there as before.
"""

from __future__ import annotations

from ..config import HostConfig
from ..reconcile import Launch
from ..remote import protocol

LOCAL_ADDRESS = "127.0.0.1"


def coordinator_address(host: HostConfig) -> str:
    """Rank 0's address as the other nodes reach it: its `address`, else its name (an
    ~/.ssh/config alias resolves on the other hosts only if their DNS knows it)."""
    if host.address:
        return host.address
    return LOCAL_ADDRESS if host.local else host.name


def node_values(launch: Launch, rank0: HostConfig) -> dict[str, str]:
    """The placeholder values of this node (see config_checks.PLACEHOLDERS)."""
    address = coordinator_address(rank0)
    port = str(launch.coordinator_port)
    return {
        "{node_rank}": str(launch.node_rank),
        "{num_nodes}": str(max(1, len(launch.nodes))),
        "{coordinator}": f"{address}:{port}",
        "{master_addr}": address,
        "{master_port}": port,
    }


def node_env(launch: Launch, rank0: HostConfig) -> dict[str, str]:
    """The environment of a node of a run across hosts. WORLD_SIZE is the number of nodes
    (one process per node, as `torch.distributed.init_process_group` counts them when the
    job starts one process per host); a job that starts several processes per node with
    torchrun passes `--nnodes "$SHEETRUNNER_NUM_NODES"` and lets torchrun set its own."""
    values = node_values(launch, rank0)
    rank, count = values["{node_rank}"], values["{num_nodes}"]
    return {
        protocol.ENV_NODE_RANK: rank,
        protocol.ENV_NUM_NODES: count,
        protocol.ENV_COORDINATOR: values["{coordinator}"],
        protocol.TORCH_MASTER_ADDR: values["{master_addr}"],
        protocol.TORCH_MASTER_PORT: values["{master_port}"],
        protocol.TORCH_NODE_RANK: rank,
        protocol.TORCH_WORLD_SIZE: count,
        protocol.JAX_COORDINATOR_ADDRESS: values["{coordinator}"],
        protocol.JAX_PROCESS_ID: rank,
        protocol.JAX_NUM_PROCESSES: count,
    }


def for_node(spec: dict, launch: Launch, rank0: HostConfig) -> dict:
    """The launch spec of this node: placeholders (whole argv items) filled in; the
    environment of a run across hosts added when it spans more than one."""
    values = node_values(launch, rank0)
    spec["argv"] = [values.get(item, item) for item in spec["argv"]]
    if len(launch.nodes) > 1:
        spec["env"] = {**spec["env"], **node_env(launch, rank0)}
        spec["nodes"] = list(launch.nodes)  # in spec.json: which hosts ran this attempt
    return spec
