"""Embedded-backend cost per iteration for Llama-3.1-70B TP8 (cache off) and end-to-end wall time
of 1000 requests on TP8. Also TP4xPP2 per-iteration cost (general event loop).
Usage: python bench/bench_tp.py
"""

from __future__ import annotations

import time
from pathlib import Path

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import IterationHook, simulate

REPO = Path(__file__).resolve().parents[1]


class Capture(IterationHook):
    """The first iterations' instance and plan, to rebuild and re-execute them timed."""

    def __init__(self, limit: int) -> None:
        super().__init__(set(range(limit)))
        self.items = []

    def take(self, k, inst, out, start_ns) -> None:
        self.items.append((inst, out.plan))


def per_iteration_cost(cfg: str, n_req: int, n_iters: int) -> tuple[float, float]:
    """Mean ms per iteration to build the graphs and execute them in the embedded backend, cache off."""
    run = load_and_resolve(REPO / "configs/examples" / cfg,
                           {"workload": {"num_requests": n_req}, "backend": {"cache": False}})
    cap = Capture(n_iters)
    simulate(run, dump=cap)
    from astra_bridge.embedded.backend import EmbeddedBackend

    be = EmbeddedBackend(cache=False)
    t_build = t_exec = 0.0
    for inst, plan in cap.items:
        t0 = time.perf_counter()
        graphs = inst.graphs_for(plan)
        t1 = time.perf_counter()
        be.run(inst.system, graphs)
        t2 = time.perf_counter()
        t_build += t1 - t0
        t_exec += t2 - t1
    n = len(cap.items)
    return 1e3 * t_build / n, 1e3 * t_exec / n


def main() -> None:
    for cfg, n_req, n_it in (("h100x8-llama3.1-70b-tp8.yaml", 200, 1000), ("h100-2x4-llama3.1-70b-tp4pp2.yaml", 20, 100)):
        b, e = per_iteration_cost(cfg, n_req, n_it)
        print(f"{cfg:40s} per iteration (cache off): build {b:.3f} ms + execute {e:.3f} ms = {b + e:.3f} ms")
    run = load_and_resolve(REPO / "configs/examples/h100x8-llama3.1-70b-tp8.yaml")
    t0 = time.perf_counter()
    result, extra = simulate(run)
    wall = time.perf_counter() - t0
    s = summarize(result, extra)
    print(f"TP8 Llama-3.1-70B, {s['requests']} requests: {s['iterations']} iterations, {wall:.2f} s wall "
          f"({s['iterations'] / wall:.0f} it/s), exposed comm share {s['exposed_comm_share']:.1%}, "
          f"cache hits {s['backend']['cache_hits']}")


if __name__ == "__main__":
    main()
