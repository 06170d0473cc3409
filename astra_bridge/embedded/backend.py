"""The embedded analytical backend: executes the graphs in-process."""

from __future__ import annotations

from astra_bridge.backend import InstanceSystem, ResultCache, backend_stats
from astra_bridge.embedded.executor import Executor, NetworkContext
from astra_bridge.embedded.memory import MemorySystem
from astra_bridge.result import IterationResult
from chakra_gen.graph import Graph


def make_executor(system: InstanceSystem) -> Executor:
    net = NetworkContext(dims=system.dims, knobs=system.knobs, comm_groups=dict(system.comm_groups))
    mem = MemorySystem({t.name: t for t in system.tiers}, system.tiers[0].name if system.tiers else None) \
        if system.tiers else None
    return Executor(net, mem)


class EmbeddedBackend:
    name = "embedded"
    # engine run-ahead contract: a result depends only on the graphs, the system and the start time, and a
    # compute/collective chain takes the sum of its compute durations (0 ns as 1 ns) plus its collectives' times
    runahead_safe = True

    def __init__(self, cache: bool = True, cache_size: int = 4096) -> None:
        self.cache = ResultCache(cache_size) if cache else None
        self.shared_pools: dict[str, int] = {}  # pool tier -> busy until (absolute ns), across instances
        self._executors: dict[tuple, Executor] = {}
        self._by_id: dict[int, Executor] = {}
        self._systems: list[InstanceSystem] = []
        self.runs = 0

    def executor(self, system: InstanceSystem) -> Executor:
        ex = self._by_id.get(id(system))
        if ex is not None:
            return ex
        fp = system.fingerprint()
        ex = self._executors.get(fp)
        if ex is None:
            ex = make_executor(system)
            self._executors[fp] = ex
        self._by_id[id(system)] = ex
        self._systems.append(system)  # keep it alive so its id is not reused
        return ex

    def run(self, system: InstanceSystem, graphs: list[Graph], start_ns: int = 0) -> IterationResult:
        ex = self.executor(system)
        if ex.memory is not None:
            ex.memory.t0 = start_ns
            ex.memory.shared_pools = self.shared_pools

        def simulate() -> IterationResult:
            self.runs += 1
            return ex.run(graphs)

        # memory traffic is not cached: a shared pool's state makes its timing history-dependent
        if self.cache is None or graphs[0].has_memory_nodes():
            return simulate()
        # a chain template's closed form (no memory nodes, so no memory state) is cheaper than its cache key
        r = ex.template_result(graphs)
        if r is not None:
            self.runs += 1
            return r
        return self.cache.run(system, graphs, simulate)

    def stats(self) -> dict[str, int]:
        return backend_stats(self.runs, self.cache)
