"""Differential test: the embedded engine against an upstream ASTRA-sim analytical binary.

A seeded grid of cases, each one or more iterations (per-NPU graph sets):

- collective cases: one collective between sub-µs compute on every NPU, over topologies x
  algorithms x collective types x preferred-dataset-splits (dividing the size or not) x 1-3
  dimensions (involved_dim subsets) x collective-optimization x scheduling-policy;
- point-to-point and comm-group cases (sends across two dimensions, groups spanning dimensions);
- serving runs: models x TP/PP x networks x memory tiers (instance / node / pool scope) x split
  modes, simulated with the embedded engine and their iterations captured as ASTRA-sim would read
  them (the CLI's --dump-chakra writes the same input sets).

Every iteration is written with astra_bridge.inputs.write_input_set, run through the binary
(ASTRA_SIM_BIN) and through the embedded executor on the same graphs; the table gives per case the
worst per-rank difference. A run the backend rejects (no finish line, missing/extra ranks, signal,
non-zero exit, implausible time) is flagged FAIL with the reason; a case the embedded engine
rejects up front is listed as REJECTED with its message.

    ASTRA_SIM_BIN=/path/to/AstraSim_Analytical_Congestion_Unaware python bench/differential.py \
        [--quick] [--out bench/results/differential.txt] [--csv tests/data/astra_reference.csv]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astra_bridge.astrasim import AstraSimBackend, AstraSimError  # noqa: E402
from astra_bridge.backend import InstanceSystem  # noqa: E402
from astra_bridge.embedded.backend import make_executor  # noqa: E402
from astra_bridge.embedded.memory import PER_NODE, PER_NPU, POOL, MemoryTierModel  # noqa: E402
from astra_bridge.embedded.network import Dimension, SystemKnobs  # noqa: E402
from chakra_gen.et_io import with_micro_durations  # noqa: E402
from chakra_gen.graph import COLL, COMP, MEM_LOAD, MEM_STORE, RECV, SEND, CollectiveType, Graph  # noqa: E402

CT = {"AR": int(CollectiveType.ALL_REDUCE), "AG": int(CollectiveType.ALL_GATHER),
      "RS": int(CollectiveType.REDUCE_SCATTER), "A2A": int(CollectiveType.ALL_TO_ALL)}


@dataclass
class Case:
    name: str
    row: str  # which issue-12 row / feature it exercises
    iterations: list[tuple[InstanceSystem, list[Graph]]] = field(default_factory=list)
    rejected: str = ""


def coll_graphs(n: int, ct: int, size: int, comp_ns: tuple[int, int], extra: dict | None = None) -> list[Graph]:
    gs = []
    for r in range(n):
        g = Graph(rank=r)
        a = g.add("pre", COMP, duration_ns=comp_ns[0])
        c = g.add("coll", COLL, deps=(a,), attrs={"comm_type": ct, "comm_size": size, **(extra or {})})
        g.add("post", COMP, duration_ns=comp_ns[1], deps=(c,))
        gs.append(g)
    return gs


def collective_cases(rng: random.Random, quick: bool) -> list[Case]:
    cases: list[Case] = []
    topos = ("Ring", "Switch", "FullyConnected")
    algos = ("ring", "direct", "halvingDoubling")
    # one-dimensional: every type x algorithm x topology at 4 and 8 NPUs
    for ct in ("AR", "AG", "RS", "A2A"):
        for algo in algos:
            for topo in topos:
                for n in ((8,) if quick else (4, 8)):
                    size = rng.choice((1 << 20, 3 << 20, 12 << 20, 5_000_000, 65536))
                    splits = rng.choice((1, 3, 4, 7))
                    d = (Dimension(topo, n, rng.choice((50.0, 100.0, 450.0)), rng.choice((500.0, 700.0)), algo),)
                    k = SystemKnobs(preferred_dataset_splits=splits)
                    sysm = InstanceSystem("c", n, d, k)
                    cases.append(Case(f"1D {ct} {algo} {topo}{n} {size}B /{splits}", "collective",
                                      [(sysm, coll_graphs(n, CT[ct], size, (1234, 567)))]))
    # multi-dimensional: 2-D and 3-D, involved subsets, algorithms per dim, both optimizations
    shapes = [((2, 4), ("Ring", "Switch")), ((4, 2), ("FullyConnected", "Ring")), ((2, 2, 2), ("Ring", "Switch", "Ring")),
              ((2, 4, 2), ("Switch", "FullyConnected", "Switch"))]
    for npus, tps in shapes:
        for ct in ("AR", "AG", "RS", "A2A"):
            for _ in range(1 if quick else 2):
                dims = tuple(Dimension(t, n, rng.choice((25.0, 100.0, 200.0)), rng.choice((300.0, 1000.0)),
                                       rng.choice(algos if ct != "A2A" else ("ring", "direct")))
                             for t, n in zip(tps, npus, strict=True))
                inv = [rng.random() < 0.75 for _ in dims]
                if not any(inv):
                    inv[0] = True
                opt = rng.choice(("localBWAware", "baseline"))
                pol = rng.choice(("LIFO", "FIFO"))
                splits = rng.choice((1, 2, 3, 4, 6))
                size = rng.choice((1 << 20, 6 << 20, 10_000_000))
                k = SystemKnobs(preferred_dataset_splits=splits, collective_optimization=opt, scheduling_policy=pol,
                                endpoint_delay_ns=rng.choice((10, 40)), local_mem_bw_gbps=rng.choice((1600.0, 700.0)),
                                active_chunks_per_dimension=rng.choice((1, 1, 2)))
                n = 1
                for x in npus:
                    n *= x
                sysm = InstanceSystem("c", n, dims, k)
                algo_s = "/".join(d.algorithm for d in dims)
                inv_s = "".join("1" if x else "0" for x in inv)
                cases.append(Case(f"{len(dims)}D {ct} {algo_s} {'x'.join(map(str, npus))} inv{inv_s} {opt} {pol} "
                                  f"ep{k.endpoint_delay_ns} lmem{k.local_mem_bw_gbps:g} active{k.active_chunks_per_dimension} "
                                  f"{size}B /{splits}", "multi-dim",
                                  [(sysm, coll_graphs(n, CT[ct], size, (2500, 999), {"involved_dim": inv}))]))
    return cases


def skew_and_auto_cases(rng: random.Random) -> list[Case]:
    """Collectives whose members issue them at different times (what a node / pool memory tier shared
    by TP ranks produces), and split_mode "auto"."""
    cases: list[Case] = []
    for topo, n, algo in (("Switch", 4, "ring"), ("Ring", 8, "ring"), ("FullyConnected", 2, "direct"),
                          ("Switch", 4, "direct"), ("FullyConnected", 8, "direct"), ("Ring", 4, "halvingDoubling"),
                          ("Switch", 8, "halvingDoubling")):
        for ct in ("AR", "RS", "AG"):
            splits = rng.choice((1, 3, 4))
            size = rng.choice((1 << 20, 3 << 20))
            starts = [rng.choice((0, 0, 1500, 7000, 40000)) + 1 for _ in range(n)]
            gs = coll_graphs(n, CT[ct], size, (1, 321))
            for g, st in zip(gs, starts, strict=True):
                g.durations_ns[0] = st
            sysm = InstanceSystem("s", n, (Dimension(topo, n, 50.0, 500.0, algo),),
                                  SystemKnobs(preferred_dataset_splits=splits))
            cases.append(Case(f"skewed issue {ct} {algo} {topo}{n} {size}B /{splits}", "skewed collective",
                              [(sysm, gs)]))
    for size in (4096, 300_000, 1 << 20, 5 << 20, 40 << 20):
        k = SystemKnobs(preferred_dataset_splits=8, split_mode="auto", min_chunk_bytes=1 << 20)
        sysm = InstanceSystem("a", 8, (Dimension("Switch", 8, 450.0, 500.0, "ring"),), k)
        cases.append(Case(f"auto splits AR {size}B (min chunk 1 MiB, max 8)", "auto splits",
                          [(sysm, coll_graphs(8, CT["AR"], size, (777, 55)))]))
    return cases


def p2p_and_group_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    dims = (Dimension("Ring", 4, 100.0, 500.0), Dimension("Switch", 2, 50.0, 1000.0))
    # sends between NPUs differing in one and in two dimensions
    for src, dst in ((0, 1), (0, 4), (1, 6), (3, 4), (0, 2)):
        gs = []
        for r in range(8):
            g = Graph(rank=r)
            c = g.add("c", COMP, duration_ns=1500 + r)
            if r == src:
                g.add("send", SEND, deps=(c,), attrs={"comm_dst": dst, "comm_tag": 7, "comm_size": 3 << 20})
            if r == dst:
                rv = g.add("recv", RECV, attrs={"comm_src": src, "comm_tag": 7, "comm_size": 3 << 20})
                g.add("after", COMP, duration_ns=333, deps=(rv,))
            gs.append(g)
        cases.append(Case(f"p2p {src}->{dst} on Ring4 x Switch2", "p2p", [(InstanceSystem("p", 8, dims), gs)]))
    # comm groups: within a dimension, spanning two dimensions, and the whole system
    dims3 = (Dimension("Ring", 2, 100.0, 500.0), Dimension("Switch", 2, 50.0, 1000.0),
             Dimension("FullyConnected", 2, 25.0, 800.0))
    for label, groups in (("group in dim 0", [(0, 1), (2, 3), (4, 5), (6, 7)]),
                          ("group spans dims 0-1", [(0, 1, 2, 3), (4, 5, 6, 7)]),
                          ("group spans dims 0,2", [(0, 1, 4, 5), (2, 3, 6, 7)]),
                          ("group of all", [tuple(range(8))])):
        for ct in ("AR", "AG", "RS"):
            size = rng.choice((1 << 20, 5 << 20))
            cg = tuple((str(i + 1), m) for i, m in enumerate(groups))
            gs = []
            for r in range(8):
                pg = next(name for name, m in cg if r in m)
                g = Graph(rank=r)
                a = g.add("pre", COMP, duration_ns=800)
                c = g.add("coll", COLL, deps=(a,), attrs={"comm_type": CT[ct], "comm_size": size, "pg_name": pg})
                g.add("post", COMP, duration_ns=123, deps=(c,))
                gs.append(g)
            cases.append(Case(f"comm group {label} {ct} {size}B", "comm-group",
                              [(InstanceSystem("g", 8, dims3, comm_groups=cg), gs)]))
    return cases


def memory_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for kind in (PER_NPU, PER_NODE, POOL):
        tier = MemoryTierModel("t", kind, 25.0, 2000, npus_per_node=2 if kind == PER_NODE else 1)
        for n in (1, 4):
            dims = () if n == 1 else (Dimension("Switch", 4, 450.0, 500.0),)
            gs = []
            for r in range(n):
                g = Graph(rank=r)
                l0 = g.add("load0", MEM_LOAD, tensor_bytes=3 << 20, attrs={"tier": "t"})
                l1 = g.add("load1", MEM_LOAD, deps=(l0,), tensor_bytes=3 << 20, attrs={"tier": "t"})
                g.add("store0", MEM_STORE, tensor_bytes=1 << 20, attrs={"tier": "t"})
                a = g.add("a", COMP, duration_ns=4321)
                b = g.add("attn", COMP, duration_ns=777, deps=(a, l0))
                if n > 1:
                    b = g.add("ar", COLL, deps=(b,), attrs={"comm_type": 0, "comm_size": 1 << 20})
                c = g.add("attn2", COMP, duration_ns=555, deps=(b, l1))
                if n > 1:
                    g.add("ar2", COLL, deps=(c,), attrs={"comm_type": 0, "comm_size": 1 << 20})
                gs.append(g)
            cases.append(Case(f"memory {kind} {n} NPU(s)", "memory",
                              [(InstanceSystem("m", n, dims, tiers=(tier,)), gs)]))
    return cases


def ep_chain_cases() -> list[Case]:
    """Expert-parallel lockstep chains as chakra_gen.builder writes them (frontend/cluster.py): per layer a TP
    all-reduce on the TP dimensions, the EP dispatch all-gather and combine reduce-scatter on the DP ones,
    the TP all-reduce after the experts; several networks and chunkings. Deterministic (no rng), so adding
    them leaves the other cases as they were."""
    from chakra_gen.builder import BuildSpec, MicroBatchCost, build_graphs
    from frontend.compute.batch import OpCost

    def op(name: str, us: float) -> OpCost:
        return OpCost(name, int(us * 1000), 1000, 1000)

    layer = [op("layernorm", 3.0), op("qkv_proj", 7.6), op("attention", 11.4), op("o_proj", 6.6), op("layernorm", 3.0),
             op("moe_gate", 3.0), op("moe", 111.7)]
    cases = []
    for tp, dp, dims, splits, tokens in (
            (1, 2, (Dimension("FullyConnected", 2, 14.9, 14000.0, "ring"),), 1, 96),
            (1, 8, (Dimension("Switch", 8, 450.0, 500.0, "direct"),), 1, 512),
            (2, 2, (Dimension("FullyConnected", 2, 300.0, 500.0, "ring"), Dimension("Switch", 2, 50.0, 2000.0, "ring")),
             4, 189),
            (2, 4, (Dimension("Ring", 2, 200.0, 500.0, "ring"), Dimension("Ring", 4, 100.0, 700.0, "halvingDoubling")),
             3, 1024),
            (1, 4, (Dimension("Ring", 4, 100.0, 700.0, "ring"),), 4, 33)):
        spec = BuildSpec(num_layers=6, tp=tp, pp=1, hidden_size=2048, act_dtype_bytes=2, dp=dp,
                         tp_involved_dims=tuple(i < (1 if tp > 1 else 0) for i in range(len(dims))) if tp > 1 else None,
                         dp_involved_dims=tuple(not (tp > 1 and i == 0) for i in range(len(dims))),
                         moe_dispatch_bytes=tokens * (2048 + 128) * 2, moe_combine_bytes=dp * tokens * 2048 * 2)
        mb = MicroBatchCost([op("embedding", 3.0)], layer, [op("final_layernorm", 3.0), op("lm_head", 113.9)], tokens)
        graphs = build_graphs(spec, [mb])
        name = f"EP chain tp{tp} dp{dp} {'x'.join(d.topology for d in dims)} {tokens} tokens /{splits}"
        system = InstanceSystem("ep", tp * dp, dims, knobs=SystemKnobs(preferred_dataset_splits=splits))
        cases.append(Case(name, "EP chain", [(system, graphs)]))
    return cases


def synthetic_cases(rng: random.Random, quick: bool = False) -> list[Case]:
    """Every case built from graphs directly (the reference table's cases; same rng, same cases)."""
    return collective_cases(rng, quick) + skew_and_auto_cases(rng) + p2p_and_group_cases(rng) + memory_cases(rng) + \
        ep_chain_cases()


# ---------------- serving runs ----------------

def _run_config(raw: dict, iterations: set[int], name: str) -> list[tuple[InstanceSystem, list[Graph]]]:
    from frontend.config.loader import parse_config, resolve
    from frontend.session import IterationHook, simulate

    jobs: list[tuple[InstanceSystem, list[Graph]]] = []

    class Capture(IterationHook):
        def take(self, k, inst, out, start_ns):  # noqa: ANN001
            jobs.append((inst.timing_system, list(out.graphs)))

        def transfer(self, k, req, system, graphs, start_ns, finish_ns=None):  # noqa: ANN001
            jobs.append((system, list(graphs)))  # a prefill/decode KV transfer (frontend/pd.py)

    run = resolve(parse_config(raw, name, REPO / "configs" / "examples"), name)
    run.config.backend.kind = "embedded"
    simulate(run, dump=Capture(iterations))
    return jobs


def serving_configs(rng: random.Random, quick: bool) -> list[tuple[str, str, dict]]:
    """(name, row, raw config) for the serving grid."""
    base_engine = {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "block_size": 16,
                   "gpu_memory_utilization": 0.9, "enable_prefix_caching": True}
    out: list[tuple[str, str, dict]] = []

    def add(name: str, row: str, model: str, inst: dict, system: dict | None = None, kv: dict | None = None,
            n_req: int = 24, hw: str = "H100-SXM", workload: dict | None = None) -> None:
        raw = {"name": name, "seed": 7, "model": model,
               "instances": [{"name": "i0", "hardware": hw, **inst}],
               "engine": dict(base_engine),
               "workload": workload or {"kind": "synthetic", "num_requests": n_req,
                                        "arrival": {"process": "poisson", "rate_per_s": 20},
                                        "prompt_tokens": {"dist": "lognormal", "mean": 400, "sigma": 0.8,
                                                          "min": 4, "max": 2048},
                                        "output_tokens": {"dist": "lognormal", "mean": 40, "sigma": 0.6,
                                                          "min": 1, "max": 256}}}
        if system:
            raw["backend"] = {"system": system}
        if kv:
            # a small HBM and a shared system prompt: evictions demote blocks and later requests
            # reload them from the tier, so the captured iterations hold MEM_LOAD / MEM_STORE nodes
            raw["kv"] = kv
            raw["engine"]["num_gpu_blocks_override"] = 160
            raw["workload"]["shared_prefix_tokens"] = 768
            raw["workload"]["arrival"]["rate_per_s"] = 6
        out.append((name, row, raw))

    def dims(*spec: tuple[str, int, float, float, str]) -> dict:
        return {"dims": [{"topology": t, "npus": n, "bw_gbps": bw, "latency_ns": lat, "algorithm": a}
                         for t, n, bw, lat, a in spec]}

    add("tp8 nvswitch llama70b", "serving TP", "Llama-3.1-70B", {"tp": 8, "network": {"preset": "h100-nvlink-8"}})
    add("tp4pp2 ib llama70b", "serving TP+PP", "Llama-3.1-70B",
        {"tp": 4, "pp": 2, "network": {"preset": "h100-2x4-ib"}})
    add("tp4 2-D pp1 llama8b", "involved_dim pp=1", "Llama-3.1-8B",
        {"tp": 4, "network": dims(("Ring", 2, 200.0, 500.0, "ring"), ("Switch", 2, 50.0, 1000.0, "ring"))})
    add("tp8 3-D pp1 llama70b", "involved_dim pp=1", "Llama-3.1-70B",
        {"tp": 8, "network": dims(("Ring", 2, 200.0, 500.0, "ring"), ("Switch", 2, 100.0, 800.0, "direct"),
                                  ("FullyConnected", 2, 50.0, 1000.0, "ring"))})
    add("tp8 2-D hd-first llama70b", "multi-dim hd", "Llama-3.1-70B",
        {"tp": 8, "network": dims(("Ring", 4, 200.0, 500.0, "halvingDoubling"), ("Switch", 2, 50.0, 1000.0, "ring"))})
    add("tp2pp2 2-D llama8b", "serving TP+PP", "Llama-3.1-8B",
        {"tp": 2, "pp": 2, "network": dims(("FullyConnected", 2, 300.0, 500.0, "ring"),
                                           ("Switch", 2, 50.0, 2000.0, "ring"))})
    add("pp4 ring llama8b", "serving PP", "Llama-3.1-8B",
        {"tp": 1, "pp": 4, "network": dims(("Ring", 4, 100.0, 700.0, "ring"))})
    add("tp4 splits3 llama8b", "splits remainder", "Llama-3.1-8B",
        {"tp": 4, "network": {"preset": "h100-nvlink-4"}}, system={"preferred_dataset_splits": 3})
    add("tp4 splits7 direct llama8b", "splits remainder", "Llama-3.1-8B",
        {"tp": 4, "network": dims(("FullyConnected", 4, 300.0, 600.0, "direct"))}, system={"preferred_dataset_splits": 7})
    add("tp8 auto splits llama70b", "auto splits", "Llama-3.1-70B", {"tp": 8, "network": {"preset": "h100-nvlink-8"}},
        system={"preferred_dataset_splits": "auto", "max_dataset_splits": 8, "min_chunk_bytes": 262144})
    add("tp4 baseline FIFO 2-D", "system knobs", "Llama-3.1-8B",
        {"tp": 4, "network": dims(("Ring", 2, 200.0, 500.0, "ring"), ("Switch", 2, 50.0, 1000.0, "ring"))},
        system={"scheduling_policy": "FIFO", "collective_optimization": "baseline"})
    add("tp4 qwen3-32b nvlink", "serving TP", "Qwen3-32B", {"tp": 4, "network": {"preset": "h100-nvlink-4"}})
    add("1 npu dram node", "single NPU + DRAM", "Llama-3.1-8B", {},
        kv={"offload": "write_through", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 64,
                                                    "bw_gbps": 25, "latency_ns": 2000, "scope": "node"}]},
        hw="RTX4090", n_req=60)
    add("1 npu cxl pool", "single NPU + CXL pool", "Llama-3.1-8B", {},
        kv={"offload": "write_through", "tiers": [{"name": "cxl", "kind": "cxl", "capacity_gib": 128,
                                                    "bw_gbps": 30, "latency_ns": 3000, "scope": "pool"}]},
        hw="RTX4090", n_req=60)
    add("tp4 dram instance", "TP + memory tier", "Llama-3.1-8B", {"tp": 4, "network": {"preset": "h100-nvlink-4"}},
        kv={"offload": "write_through", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 64,
                                                    "bw_gbps": 25, "latency_ns": 2000, "scope": "instance"}]},
        n_req=60)
    add("tp4 dram node", "TP + shared memory tier", "Llama-3.1-8B", {"tp": 4, "network": {"preset": "h100-nvlink-4"}},
        kv={"offload": "write_through", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 64,
                                                    "bw_gbps": 25, "latency_ns": 2000, "scope": "node"}]},
        n_req=60)
    add("tp2 cxl pool", "TP + shared memory tier", "Llama-3.1-8B", {"tp": 2, "network": {"preset": "pcie4-rtx-2"}},
        kv={"offload": "write_back", "tiers": [{"name": "cxl", "kind": "cxl", "capacity_gib": 128,
                                                "bw_gbps": 30, "latency_ns": 3000, "scope": "pool"}]},
        hw="RTX4090", n_req=60)
    add("tp2pp2 dram node", "TP+PP + memory tier", "Llama-3.1-8B",
        {"tp": 2, "pp": 2, "network": dims(("FullyConnected", 2, 300.0, 500.0, "ring"),
                                           ("Switch", 2, 50.0, 2000.0, "ring"))},
        kv={"offload": "write_back", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 64,
                                                 "bw_gbps": 25, "latency_ns": 2000, "scope": "node"}]},
        n_req=60)
    # expert parallelism over DP groups in lockstep (frontend/cluster.py): all-gather / reduce-scatter of the
    # MoE dispatch and combine on the DP dimensions, TP all-reduces on the TP ones
    ep = {"enable_expert_parallel": True}
    add("dp2 ep2 pcie qwen3-30b", "serving EP", "Qwen3-30B-A3B",
        {"dp": 2, **ep, "network": {"preset": "pcie5-rtxpro6000-2"}}, system={"preferred_dataset_splits": 1},
        hw="RTXPRO6000")
    add("dp8 ep8 nvswitch qwen3-30b", "serving EP", "Qwen3-30B-A3B",
        {"dp": 8, **ep, "network": {"preset": "h100-nvlink-8"}}, n_req=48)
    add("tp2 dp2 ep4 2-D qwen3-30b", "serving TP+EP", "Qwen3-30B-A3B",
        {"tp": 2, "dp": 2, **ep, "network": dims(("FullyConnected", 2, 300.0, 500.0, "ring"),
                                                 ("Switch", 2, 50.0, 2000.0, "ring"))})
    add("dp4 ep4 ring splits4 qwen3-30b", "serving EP", "Qwen3-30B-A3B",
        {"dp": 4, **ep, "network": dims(("Ring", 4, 100.0, 700.0, "ring"))}, system={"preferred_dataset_splits": 4})
    add("tp4 ep4 dp1 nvlink qwen3-30b", "serving TP+EP", "Qwen3-30B-A3B",
        {"tp": 4, **ep, "network": {"preset": "h100-nvlink-4"}})
    add("dp4 ep4 all-to-all 2-D qwen3-30b", "serving EP all-to-all", "Qwen3-30B-A3B",
        {"dp": 4, **ep, "network": dims(("Switch", 2, 450.0, 500.0, "direct"), ("Switch", 2, 50.0, 2000.0, "ring"))})
    out[-1][2]["moe"] = {"routing": "random", "dispatch": "all_to_all"}
    # weights partly in a CXL tier (placement): each layer's share streamed every iteration
    add("tp2 weights 30% cxl llama70b", "weight placement", "Llama-3.1-70B",
        {"tp": 2, "network": dims(("Switch", 2, 450.0, 500.0, "direct"))})
    out[-1][2]["kv"] = {"tiers": [{"name": "cxl", "kind": "cxl", "capacity_gib": 256, "bw_gbps": 45,
                                   "latency_ns": 250, "scope": "instance"}]}
    out[-1][2]["placement"] = {"weights_tier": "cxl", "weights_fraction": 0.3}
    # prefill/decode disaggregation: the iterations of both instances and the KV transfers between them
    add("pd 1p1d tp4 ib llama70b", "serving PD", "Llama-3.1-70B",
        {"tp": 4, "role": "prefill", "node": 0, "network": {"preset": "h100-nvlink-4"}})
    out[-1][2]["instances"].append({"name": "i1", "hardware": "H100-SXM", "tp": 4, "role": "decode", "node": 1,
                                    "network": {"preset": "h100-nvlink-4"}})
    add("pd 2p1d tp2->tp4 llama8b", "serving PD fan-in", "Llama-3.1-8B",
        {"tp": 2, "role": "prefill", "node": 0, "network": dims(("Switch", 2, 450.0, 500.0, "direct"))})
    out[-1][2]["instances"] += [
        {"name": "i1", "hardware": "H100-SXM", "tp": 2, "role": "prefill", "node": 1,
         "network": dims(("Switch", 2, 450.0, 500.0, "direct"))},
        {"name": "i2", "hardware": "H100-SXM", "tp": 4, "role": "decode", "node": 0, "network": {"preset": "h100-nvlink-4"}}]
    # DeepSeek-V3 (MLA, shared expert, 3 dense layers in the prologue): the wide-EP example over two nodes,
    # and TP2 x DP4 on H200 so the dense layers' TP all-reduces run too
    import yaml

    ds = yaml.safe_load((REPO / "configs/examples/h100-2x8-deepseek-v3-ep16.yaml").read_text())
    add("dp16 ep16 2-node deepseek-v3", "serving EP wide", "DeepSeek-V3", ds["instances"][0],
        system=ds["backend"]["system"], n_req=32)
    out[-1][2]["engine"] = ds["engine"]
    add("tp2 dp4 ep8 h200 deepseek-v3", "serving TP+EP dense prefix", "DeepSeek-V3",
        {"tp": 2, "dp": 4, **ep, "network": dims(("Switch", 2, 450.0, 500.0, "direct"), ("Switch", 4, 450.0, 500.0, "ring"))},
        hw="H200", n_req=24)
    out[-1][2]["engine"]["dtype"] = "fp8"
    # decode attention on a PIM device (rank 1, SEND/RECV of q/k/v and outputs, PIM compute nodes), with and
    # without NeuPIMs sub-batch interleaving
    for inter in (False, True):
        add(f"pim hbm-pim x5{' interleave' if inter else ''} llama8b", "PIM attention", "Llama-3.1-8B", {})
        out[-1][2]["placement"] = {"pim": {"device": "hbm-pim-aquabolt-xl", "devices": 5, "interleave": inter}}
    # per-layer KV placement: every 4th layer's KV in a CXL tier, streamed ahead of its attention, written back
    add("tp2 kv layers 0-31/4 cxl llama8b", "KV layer placement", "Llama-3.1-8B",
        {"tp": 2, "network": dims(("Switch", 2, 450.0, 500.0, "direct"))})
    out[-1][2]["kv"] = {"tiers": [{"name": "cxl", "kind": "cxl", "capacity_gib": 256, "bw_gbps": 45,
                                   "latency_ns": 250, "scope": "instance"}]}
    out[-1][2]["placement"] = {"kv_layers": [{"layers": "0-31/4", "tier": "cxl"}]}
    return out


def serving_cases(rng: random.Random, quick: bool, per_config: int) -> list[Case]:
    cases = []
    for name, row, raw in serving_configs(rng, quick):
        its = set(sorted(rng.sample(range(0, 150), per_config)))
        try:
            if "kv" in raw:
                # memory traffic is sparse: keep the iterations that hold memory nodes first
                every = _run_config(raw, set(range(400)), name)
                mem = [j for j in every if any(t in (MEM_LOAD, MEM_STORE) for t in j[1][0].types)]
                rest = [j for j in every if j not in mem]
                jobs = mem[:per_config] + rng.sample(rest, max(0, min(len(rest), per_config - len(mem))))
            else:
                jobs = _run_config(raw, its, name)
            cases.append(Case(f"serving {name}", row, jobs))
        except Exception as e:  # a configuration the project rejects up front
            cases.append(Case(f"serving {name}", row, [], rejected=f"{type(e).__name__}: {e}"[:160]))
    return cases


# ---------------- running ----------------

@dataclass
class Outcome:
    case: Case
    iterations: int = 0
    worst_pct: float = 0.0
    worst_abs_ns: int = 0
    status: str = "ok"
    detail: str = ""
    features: set[str] = field(default_factory=set)
    samples: list[tuple[int, list[int], list[int]]] = field(default_factory=list)  # (iter, binary, embedded)


def run_case(case: Case, backend: AstraSimBackend) -> Outcome:
    o = Outcome(case)
    if case.rejected:
        o.status, o.detail = "REJECTED", case.rejected
        return o
    for k, (system, graphs) in enumerate(case.iterations):
        seen = [with_micro_durations(g, backend.compute_time) for g in graphs]
        try:
            emb = make_executor(system).run(seen).per_rank_finish_ns
        except (ValueError, RuntimeError) as e:
            o.status, o.detail = "REJECTED", f"embedded: {e}"[:160]
            return o
        try:
            res = backend.run(system, graphs)
        except (AstraSimError, ValueError) as e:
            o.status, o.detail = "FAIL", str(e).splitlines()[0][:160]
            return o
        binr = res.per_rank_finish_ns
        o.iterations += 1
        types = set().union(*(set(g.types) for g in graphs))
        o.features |= {name for name, t in (("coll", COLL), ("p2p", SEND), ("mem", MEM_LOAD), ("mem", MEM_STORE))
                       if t in types}
        o.samples.append((k, binr, emb))
        for b, e in zip(binr, emb, strict=True):
            pct = 100.0 * (e - b) / b if b else 0.0
            if abs(pct) > abs(o.worst_pct) or (pct == o.worst_pct and abs(e - b) > abs(o.worst_abs_ns)):
                o.worst_pct, o.worst_abs_ns = pct, e - b
    if abs(o.worst_pct) > 0.1:
        o.status = "DIFF"
    return o


def live_runs(binary: str, n_req: int) -> list[str]:
    """End-to-end: the same run with --backend astra-sim and --backend embedded; worst per-iteration
    difference of the iteration durations in iterations.csv (the clock each backend advanced)."""
    import csv
    import subprocess

    import yaml

    lines = []
    tp4 = {"name": "live-qwen3-32b-tp4", "seed": 3, "model": "Qwen3-32B",
           "instances": [{"name": "tp4", "hardware": "H100-SXM", "tp": 4, "network": {"preset": "h100-nvlink-4"}}],
           "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "block_size": 16,
                      "gpu_memory_utilization": 0.9},
           "workload": {"kind": "synthetic", "num_requests": n_req, "arrival": {"process": "poisson", "rate_per_s": 8},
                        "prompt_tokens": {"dist": "lognormal", "mean": 300, "sigma": 0.8, "min": 4, "max": 2048},
                        "output_tokens": {"dist": "lognormal", "mean": 30, "sigma": 0.5, "min": 1, "max": 128}}}
    tp4pp2 = yaml.safe_load((REPO / "configs/examples/h100-2x4-llama3.1-70b-tp4pp2.yaml").read_text())
    tp4pp2["workload"]["num_requests"] = n_req
    ep8 = yaml.safe_load((REPO / "configs/examples/h100x8-qwen3-30b-a3b-ep8.yaml").read_text())
    ep8["workload"]["num_requests"] = n_req
    tmp = Path(tempfile.mkdtemp(prefix="astraserve-live-"))
    extra = []
    for name in ("pd-1p1d-h100-llama3.1-70b", "pd-hetero-h100-l40s", "multi-model-2x", "pim-llama3.1-8b-hbm-pim"):
        raw = yaml.safe_load((REPO / f"configs/examples/{name}.yaml").read_text())
        raw["workload"]["num_requests"] = n_req
        extra.append(raw)
    for raw in (tp4, tp4pp2, ep8, *extra):
        cfg = tmp / f"{raw['name']}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        rows = {}
        for kind in ("astra-sim", "embedded"):
            out = tmp / f"{raw['name']}-{kind}"
            env = {**os.environ, "ASTRA_SIM_BIN": binary}
            p = subprocess.run([sys.executable, "-m", "frontend.cli", "run", str(cfg), "--backend", kind, "--out",
                                str(out), "--quiet"], cwd=REPO, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                lines.append(f"FAIL     live {raw['name']} --backend {kind}: {(p.stdout + p.stderr).strip()[-160:]}")
                break
            with (out / "iterations.csv").open() as f:
                rows[kind] = [int(r["end_ns"]) - int(r["start_ns"]) for r in csv.DictReader(f)]
        if len(rows) != 2:
            continue
        a, e = rows["astra-sim"], rows["embedded"]
        if len(a) != len(e):
            lines.append(f"DIFF     live {raw['name']}: {len(a)} vs {len(e)} iterations")
            continue
        worst = max((100.0 * (y - x) / x for x, y in zip(a, e, strict=True) if x), key=abs, default=0.0)
        status = "ok" if abs(worst) <= 0.1 else "DIFF"
        lines.append(f"{status:8} {len(a):5d} {worst:+9.4f} {'':9} {'live run':13}  live --backend astra-sim vs "
                     f"embedded: {raw['name']} ({n_req} requests) [live]")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    ap.add_argument("--per-config", type=int, default=12, help="iterations captured per serving config")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--csv", type=Path, default=None, help="write the reference rows (binary figures) here")
    ap.add_argument("--live-requests", type=int, default=16,
                    help="requests of the two end-to-end runs (TP4 Qwen3-32B, TP4xPP2); 0 skips them")
    ap.add_argument("--only", default="", help="run only cases whose name matches this regular expression")
    args = ap.parse_args()
    binary = os.environ.get("ASTRA_SIM_BIN")
    if not binary:
        print("ASTRA_SIM_BIN is not set: nothing to compare against (the differential test needs the binary)")
        return 0
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    cases = synthetic_cases(rng, args.quick)
    cases += serving_cases(rng, args.quick, args.per_config)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    work = Path(tempfile.mkdtemp(prefix="astraserve-differential-"))

    class Cfg:
        binary = None
        timeout_s = 300.0
        workers = 1
        work_dir = str(work)

    backend = AstraSimBackend(Cfg(), cache=False, binary=Path(binary))
    outcomes = [run_case(c, backend) for c in cases]
    wall = time.perf_counter() - t0
    lines = [f"differential: embedded vs {Path(binary).name}, seed {args.seed}, {len(cases)} cases, "
             f"{sum(o.iterations for o in outcomes)} iterations compared, wall {wall:.0f} s",
             f"{'status':8} {'iters':>5} {'worst %':>9} {'worst ns':>9} {'holds':13}  case [row]"]
    for o in outcomes:
        feats = ",".join(sorted(o.features)) or "-"
        lines.append(f"{o.status:8} {o.iterations:5d} {o.worst_pct:+9.4f} {o.worst_abs_ns:+9d} {feats:13}  {o.case.name} "
                     f"[{o.case.row}]" + (f"  -- {o.detail}" if o.detail else ""))
    live = live_runs(binary, args.live_requests) if args.live_requests else []
    lines += live
    bad = [o for o in outcomes if o.status in ("DIFF", "FAIL")] + [x for x in live if not x.startswith("ok")]
    worst = max(outcomes, key=lambda o: abs(o.worst_pct)) if outcomes else Outcome(Case("none", ""))
    lines.append(f"summary: {len(bad)} case(s) over 0.1% or failing; "
                 f"{sum(o.status == 'REJECTED' for o in outcomes)} rejected up front; "
                 f"worst {worst.worst_pct:+.4f}% ({worst.case.name})")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.csv:
        write_reference(args.csv, outcomes)
    return 1 if bad else 0


def write_reference(path: Path, outcomes: list[Outcome]) -> None:
    """The binary's figures for the collective / p2p / group / memory cases, as rows the ordinary test
    suite rebuilds and checks against the embedded engine (no binary needed)."""
    import json

    rows = []
    for o in outcomes:
        if o.status != "ok" or o.case.name.startswith("serving") or o.case.name.startswith("live"):
            continue
        for k, binr, _ in o.samples:
            rows.append({"case": o.case.name, "row": o.case.row, "iteration": k, "binary_per_rank_ns": binr})
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"source": "bench/differential.py --seed 12 (synthetic cases), binary AstraSim_Analytical_Congestion_Unaware "
                      "of astra-sim f66c1da", "seed": 12, "rows": rows}
    body = ",\n".join("  " + json.dumps(r) for r in rows)
    path.write_text(f'{{"source": {json.dumps(head["source"])},\n "seed": 12,\n "rows": [\n{body}\n]}}\n')


if __name__ == "__main__":
    sys.exit(main())
