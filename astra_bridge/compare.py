"""Run the same iterations through the embedded backend and upstream ASTRA-sim."""

from __future__ import annotations

from dataclasses import dataclass, field

from astra_bridge.astrasim import AstraSimBackend
from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.backend import make_executor
from chakra_gen.et_io import with_micro_durations
from chakra_gen.graph import Graph
from frontend.session import IterationHook, simulate


@dataclass
class IterationCapture(IterationHook):
    """The chosen iterations' graphs as ASTRA-sim times them (exact ns, or whole µs with compute_time
    "micros")."""

    jobs: list[tuple[int, str, InstanceSystem, list[Graph]]] = field(default_factory=list)
    compute_time: str = "exact"

    def take(self, k: int, inst, out, start_ns: int) -> None:
        self.jobs.append((k, inst.name, inst.timing_system, [with_micro_durations(g, self.compute_time) for g in out.graphs]))


def compare_backends(resolved, iterations: set[int]) -> list[dict]:
    """Per chosen iteration: embedded vs ASTRA-sim duration on the graphs as the binary times them."""
    backend = AstraSimBackend(resolved.config.backend.astra_sim, cache=True)
    cap = IterationCapture(iterations, compute_time=backend.compute_time)
    run = resolved
    run.config.backend.kind = "embedded"
    simulate(run, dump=cap)
    if not cap.jobs:
        raise ValueError(f"the run had {cap.counter} iterations; none of {sorted(iterations)[:10]} exist")
    astra = backend.run_many([(s, g) for _, _, s, g in cap.jobs])
    rows = []
    for (k, name, system, graphs), a in zip(cap.jobs, astra, strict=True):
        e = make_executor(system).run(graphs)
        rows.append({"iteration": k, "instance": name, "embedded_ns": e.duration_ns, "astrasim_ns": a.duration_ns,
                     "diff_pct": 100.0 * (e.duration_ns - a.duration_ns) / a.duration_ns if a.duration_ns else 0.0,
                     "ranks": len(graphs)})
    return rows
