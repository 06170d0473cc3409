"""Embedded-backend cost per iteration for Llama-3.1-70B TP8 (cache off) and end-to-end wall time
of 1000 requests on TP8. Also per-iteration cost with PP (TP4xPP2) and with KV memory traffic
(TP4 with a host-DRAM tier; iterations that hold loads/stores only), against the TP-only closed form.
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


KV_TP4 = {"instances": [{"name": "tp4", "hardware": "H100-SXM", "tp": 4, "network": {"preset": "h100-nvlink-4"}}],
          "model": "Llama-3.1-8B",
          "engine": {"num_gpu_blocks_override": 160, "enable_prefix_caching": True},
          "kv": {"offload": "write_through", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 64,
                                                         "bw_gbps": 25, "latency_ns": 2000, "scope": "instance"}]},
          "workload": {"shared_prefix_tokens": 768, "arrival": {"process": "poisson", "rate_per_s": 6}}}


def per_iteration_cost(cfg: str, n_req: int, n_iters: int, overrides: dict | None = None,
                       memory_only: bool = False) -> tuple[float, float, int]:
    """Mean ms per iteration to build the graphs and execute them in the embedded backend, cache off
    (memory_only: only the iterations whose graphs hold KV loads/stores)."""
    run = load_and_resolve(REPO / "configs/examples" / cfg,
                           {"workload": {"num_requests": n_req}, "backend": {"cache": False}, **(overrides or {})})
    cap = Capture(n_iters)
    simulate(run, dump=cap)
    from astra_bridge.embedded.backend import EmbeddedBackend

    be = EmbeddedBackend(cache=False)
    t_build = t_exec = 0.0
    n = 0
    for inst, plan in cap.items:
        if memory_only and not inst.graphs_for(plan)[0].has_memory_nodes():
            continue
        n += 1
        t0 = time.perf_counter()
        graphs = inst.graphs_for(plan)
        t1 = time.perf_counter()
        be.run(inst.timing_system, graphs)
        t2 = time.perf_counter()
        t_build += t1 - t0
        t_exec += t2 - t1
    return 1e3 * t_build / max(1, n), 1e3 * t_exec / max(1, n), n


def main() -> None:
    base = None
    for label, cfg, n_req, n_it, ov, mem in (
            ("TP8 (closed form)", "h100x8-llama3.1-70b-tp8.yaml", 200, 1000, None, False),
            ("TP4xPP2", "h100-2x4-llama3.1-70b-tp4pp2.yaml", 20, 100, None, False),
            ("TP4 + KV loads/stores", "h100x8-llama3.1-70b-tp8.yaml", 400, 3000, KV_TP4, True)):
        b, e, n = per_iteration_cost(cfg, n_req, n_it, ov, mem)
        base = base or (b + e)
        print(f"{label:24s} per iteration (cache off, {n} iterations): build {b:.3f} ms + execute {e:.3f} ms "
              f"= {b + e:.3f} ms ({(b + e) / base:.1f}x the TP-only closed form)")
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
