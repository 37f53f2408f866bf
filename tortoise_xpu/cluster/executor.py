"""``RayExecutor``: the long-form ``Executor`` on a Ray cluster.

One actor per accelerator slot (``backends/cluster_resources.py``), each with its own engine
loaded once.  Voice latents are made once on one worker and live in Ray's object store; every
chunk refers to them.  The driver keeps ``depth`` chunks queued on each worker (so a worker
never waits for the driver) and yields results as they finish, in any order; ``run_units``
writes each one atomically into the folder and the journal.

A worker that dies mid-chunk: its chunks come back as errors of the Ray machinery and go back
to the front of the queue, for the other workers; Ray restarts the actor (``max_restarts``) and
it rejoins once it answers again.  A chunk is given up after ``max_attempts`` failures (with a
one-line error), and the run stops when no worker is left.  Errors of the chunk itself (bad
text) come back as results and are never retried.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tortoise_xpu.backends.cluster_resources import WorkerSlot, plan_slots
from tortoise_xpu.cluster import ClusterTarget, import_ray
from tortoise_xpu.errors import TortoiseError, UserError
from tortoise_xpu.pipeline.chunk_synthesis import EngineSpec
from tortoise_xpu.pipeline.longform import Task, TaskResult


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


class RayExecutor:
    """Runs chunks on Ray actors; see the module docstring.

    Args:
        target: where the cluster is (``cluster.parse_cluster``).
        spec: the engine flags; its ``device`` names the backend kind (``auto``: every
            accelerator the nodes declare, CPU where none), each worker gets its own index.
        models: the driver's model files fingerprint; a worker with other files is refused.
        depth: chunks queued per worker.
        max_attempts: tries per chunk before the run fails.
        max_restarts: Ray restarts of a dead worker.
        on_workers: called with the workers' ``info()`` rows once they are up.
    """

    def __init__(self, target: ClusterTarget, spec: EngineSpec, models: str, *, depth: int = 2,
                 max_attempts: int = 3, max_restarts: int = 2,
                 on_workers: Callable[[list[dict[str, Any]]], None] | None = None):
        self.target = target
        self.spec = spec
        self.models = models
        self.depth = depth
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts
        self.on_workers = on_workers
        from tortoise_xpu.pipeline.chunk_synthesis import models_fingerprint

        self.driver_missing = models_fingerprint(Path("/nonexistent-models-folder"))  # all files missing
        self.actors: list[Any] = []
        self.infos: list[dict[str, Any]] = []
        self.latent_refs: dict[str, Any] = {}
        self.retries = 0
        self._ray = None
        self._started_ray = False

    # -------------------------------------------------------------------------------- set-up
    def _connect(self) -> Any:
        ray = import_ray()
        self._ray = ray
        if ray.is_initialized():
            return ray
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.target.mode == "local":
                ray.init(num_cpus=self.target.workers, include_dashboard=False,
                         object_store_memory=256 * 2 ** 20, **quiet)
                self._started_ray = True
            elif self.target.mode == "client":
                ray.init(address=self.target.address, **quiet)
            else:
                ray.init(address="auto", **quiet)
        except ConnectionError as exc:
            hint = "start one with `ray start --head` (or set RAY_ADDRESS), or run on this machine with " \
                   "--cluster local"
            raise UserError(f"cannot reach {self.target.describe()}: {_one_line(exc)}; {hint}") from None
        return ray

    def _slots(self, ray: Any) -> list[WorkerSlot]:
        from tortoise_xpu.backends import parse_device

        kind, _ = parse_device(self.spec.device)
        backend = None if kind == "auto" else kind
        per_node = self.target.workers if self.target.mode == "local" else None
        slots = plan_slots(ray.nodes(), backend, cpu_workers_per_node=per_node)
        if self.target.mode == "local" and self.target.workers:
            slots = slots[:self.target.workers]
        if not slots:
            raise UserError(f"{self.target.describe()} has no resources for {self.spec.device} workers "
                            f"(declare custom ones with: ray start --resources '{{\"xpu\": N}}')")
        return slots

    def start(self, voices: Mapping[str, tuple[Any, int]]) -> None:
        """Start one actor per slot, check their model files, make each voice's latents once."""
        ray = self._connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from tortoise_xpu.cluster.worker import ChunkWorker

        remote = ray.remote(ChunkWorker)
        for i, slot in enumerate(self._slots(ray)):
            options: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus,
                                       "resources": dict(slot.resources), "max_restarts": self.max_restarts,
                                       "max_task_retries": 0}
            if slot.node_id:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=False)
            spec = replace(self.spec, device=slot.device, threads=slot.threads or self.spec.threads)
            self.actors.append(remote.options(**options).remote(spec, f"w{i}-{slot.device}"))
        try:
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=600)
        except ray.exceptions.GetTimeoutError:
            raise TortoiseError("the Ray workers did not start within 10 minutes (not enough free resources "
                                "on the cluster?)") from None
        except ray.exceptions.RayError as exc:
            raise TortoiseError(f"a Ray worker failed to start: {_one_line(exc)}") from None
        # One run never mixes two sets of weights: every worker must see the same files, and the
        # driver's too when it has them (a driver without model files leaves the check to the workers).
        expected = self.models if self.models != self.driver_missing else self.infos[0]["models"]
        for info in self.infos:
            if info["models"] != expected:
                raise UserError(f"worker {info['name']} on {info['host']} has other model files than "
                                f"{'this machine' if expected == self.models else 'worker ' + self.infos[0]['name']} "
                                f"(fingerprint {info['models']} vs {expected}); give every node the same files "
                                f"(same --models-dir path, or TORTOISE_XPU_MODELS on the nodes)")
        if self.on_workers:
            self.on_workers(self.infos)
        self._make_latents(voices)

    def _make_latents(self, voices: Mapping[str, tuple[Any, int]]) -> None:
        """Each voice's latents made once, spread over the workers, kept in the object store (tasks
        pass the reference, not the tensors).  A worker lost meanwhile: the voice goes to another."""
        ray = self._ray
        pending = list(voices.items())
        for attempt in range(self.max_attempts):
            refs = {key: self.actors[(n + attempt) % len(self.actors)].voice_latents.remote(material, seed)
                    for n, (key, (material, seed)) in enumerate(pending)}
            failed = []
            for key, ref in refs.items():
                try:
                    value = ray.get(ref)  # (1, D) and (1, 2D) floats: a few kB
                except ray.exceptions.RayError as exc:
                    failed.append((key, voices[key]))
                    last = exc
                    continue
                if isinstance(value, dict) and "error" in value:
                    kind, msg = value["error"]
                    raise (UserError if kind == "user" else TortoiseError)(msg)
                self.latent_refs[key] = ref
            if not failed:
                return
            self.retries += len(failed)
            pending = failed
        raise TortoiseError(f"could not make the voice latents on the Ray workers: {_one_line(last)}")

    # -------------------------------------------------------------------------------- running
    def run(self, tasks: Sequence[Task]) -> Iterator[TaskResult]:
        """Yield one result per task, as they finish; lost tasks are re-dispatched."""
        ray = self._ray
        queue = deque(tasks)
        inflight: dict[Any, tuple[Task, int]] = {}
        pings: dict[Any, int] = {}
        load = Counter()
        ready_workers = set(range(len(self.actors)))
        failures = Counter()
        attempts = Counter()
        while queue or inflight:
            for i in sorted(ready_workers, key=lambda w: load[w]):
                while queue and load[i] < self.depth:
                    task = queue.popleft()
                    ref = self.actors[i].run.remote(task, self.latent_refs[task.voice])
                    inflight[ref] = (task, i)
                    load[i] += 1
            if not inflight and not pings:
                raise TortoiseError(f"every Ray worker died; {len(queue)} chunk(s) were not made (finished "
                                    f"ones are kept: run the same command again to resume)")
            done, _ = ray.wait(list(inflight) + list(pings), num_returns=1, timeout=30)
            for ref in done:
                if ref in pings:
                    i = pings.pop(ref)
                    try:
                        ray.get(ref)
                        ready_workers.add(i)  # restarted and answering: it gets work again
                    except ray.exceptions.RayError:
                        failures[i] += 1
                        if failures[i] <= self.max_restarts + 1:
                            pings[self.actors[i].info.remote()] = i
                    continue
                task, i = inflight.pop(ref)
                load[i] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    attempts[task.key] += 1
                    self.retries += 1
                    if attempts[task.key] >= self.max_attempts:
                        raise TortoiseError(f"chunk {task.key} failed {attempts[task.key]} times on Ray workers "
                                            f"(last: {_one_line(exc)}); finished chunks are kept") from None
                    queue.appendleft(task)
                    if i in ready_workers:
                        # Its worker is gone or broken: no more work for it until it answers again.
                        ready_workers.discard(i)
                        failures[i] += 1
                        pings[self.actors[i].info.remote()] = i
                    continue
                failures[i] = 0
                yield result

    def stats(self) -> dict[str, Any]:
        """The workers that ran (name, device, host) and how many tasks were sent again."""
        return {"workers": [{k: i[k] for k in ("name", "device", "host", "threads")} for i in self.infos],
                "retries": self.retries}

    def close(self) -> None:
        """Stop the actors; stop Ray too when this run started it (``local``)."""
        ray = self._ray
        if ray is None:
            return
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone: nothing to stop
                pass
        self.actors.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
