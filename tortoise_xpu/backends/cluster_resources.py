"""Which Ray resource a worker of each backend asks for (the cluster path's only device knowledge).

NVIDIA and AMD GPUs are Ray's built-in ``GPU`` resource (Ray detects both and sets
``CUDA_VISIBLE_DEVICES`` / ``HIP_VISIBLE_DEVICES`` per worker, so the worker's device is
index 0 of what it sees).  Intel GPUs, Apple MPS and DirectML are custom resources that
a node declares when it joins (``ray start --resources '{"xpu": 4}'``); Ray does not
isolate those devices, so each such worker is pinned to its node and given its own index.
The CPU needs no accelerator resource: a CPU worker reserves CPU cores only.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Backend registry name -> the Ray resource that stands for one of its devices.
RAY_RESOURCE: dict[str, str] = {"cuda": "GPU", "xpu": "xpu", "mps": "mps", "directml": "directml"}

#: Backends whose devices Ray itself hands out (it sets the visible-device variables).
RAY_ISOLATED = frozenset({"cuda"})


@dataclass(frozen=True)
class WorkerSlot:
    """One worker to start: its device string, the resources it reserves, and its node (or None)."""

    device: str
    num_cpus: float
    num_gpus: float = 0.0
    resources: tuple[tuple[str, float], ...] = ()
    node_id: str | None = None
    threads: int | None = None


def plan_slots(nodes: list[dict], backend: str | None, cpu_workers_per_node: int | None = None) -> list[WorkerSlot]:
    """One worker slot per accelerator on the alive ``nodes`` (``ray.nodes()`` rows).

    ``backend`` None means auto: every accelerator resource a node has gets its workers, and a
    node with none gets CPU workers.  A named backend (``cpu``, ``cuda``, ``xpu``, ...) uses only
    that kind.  CPU workers: ``cpu_workers_per_node`` each (default 1), sharing the node's cores.
    """
    slots: list[WorkerSlot] = []
    for node in nodes:
        if not node.get("Alive", True):
            continue
        res = node.get("Resources", {})
        node_id = node.get("NodeID")
        found = False
        for name, resource in RAY_RESOURCE.items():
            if backend not in (None, name):
                continue
            count = int(res.get(resource, 0))
            for i in range(count):
                found = True
                if name in RAY_ISOLATED:
                    slots.append(WorkerSlot(name, 1, num_gpus=1, node_id=node_id))
                else:
                    slots.append(WorkerSlot(f"{name}:{i}", 1, resources=((resource, 1),), node_id=node_id))
        if backend == "cpu" or (backend is None and not found):
            cpus = int(res.get("CPU", 0))
            per = max(1, cpu_workers_per_node or 1)
            if cpus >= 1:
                share = max(1, cpus // per)
                for _ in range(min(per, cpus)):
                    slots.append(WorkerSlot("cpu", share, node_id=node_id, threads=share))
    return slots
