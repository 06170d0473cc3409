"""Write an ASTRA-sim analytical input set for one instance (facts: ASTRA_SIM_INPUTS.md).

Choices that make the binary time exactly what the embedded engine times:

- compute durations in ns, without Chakra's whole-µs rounding: `roofline-enabled` with
  peak-perf EXACT_PEAK_TFLOPS and num_ops written per node (see chakra_gen/et_io.py).
- every collective without a comm group carries `involved_dim` with one entry per dimension
  (the binary's default is a 1-element list that it reads past on a multi-dimensional network).
- a single-NPU instance runs on a 2-NPU network (ASTRA-sim rejects 1 NPU) whose second rank is an
  independent dummy: one 1-ns compute node, no memory traffic, no communication; it can neither
  contend for a memory pool nor name a memory node that does not exist.
- preferred-dataset-splits is the value in force for this iteration (split_mode "auto" resolves
  it from the iteration's largest collective; see SystemKnobs).
- scheduling-policy and collective-optimization are the instance's knobs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.executor import max_collective_bytes
from astra_bridge.embedded.memory import PER_NODE, PER_NPU, POOL
from chakra_gen.et_io import DEFAULT_COMPUTE_TIME, EXACT_PEAK_TFLOPS, write_et
from chakra_gen.graph import COMP, MEM_LOAD, MEM_STORE, Graph

ALGO_NAMES = {"ring": "ring", "direct": "direct", "halvingDoubling": "halvingDoubling",
              "doubleBinaryTree": "doubleBinaryTree"}


def network_npus(system: InstanceSystem) -> int:
    """NPUs of the network the binary simulates (2 for a single-NPU instance)."""
    return math.prod(d.npus for d in system.dims) if system.dims else 2


def network_yaml(system: InstanceSystem) -> str:
    dims = system.dims
    if not dims:
        # ASTRA-sim rejects npus_count 1: a single-NPU instance runs on a 2-NPU network whose
        # second rank is an independent dummy (see dummy_rank)
        return "topology: [FullyConnected]\nnpus_count: [2]\nbandwidth: [1.0]\nlatency: [0.0]\n"
    return ("topology: [" + ", ".join(d.topology for d in dims) + "]\n"
            "npus_count: [" + ", ".join(str(d.npus) for d in dims) + "]\n"
            "bandwidth: [" + ", ".join(repr(float(d.bw_gbps)) for d in dims) + "]\n"
            "latency: [" + ", ".join(repr(float(d.latency_ns)) for d in dims) + "]\n")


def system_json(system: InstanceSystem, graphs: list[Graph] | None = None,
                compute_time: str = DEFAULT_COMPUTE_TIME) -> dict:
    k = system.knobs
    if k.p2p_route != "lowest_dim":
        raise ValueError(f"p2p_route {k.p2p_route!r} has no ASTRA-sim equivalent (its unaware network charges a "
                         "send on the lowest differing dimension only); use the embedded backend for it")
    splits = k.splits_for(max_collective_bytes(graphs)) if graphs else k.preferred_dataset_splits
    algos = [ALGO_NAMES[d.algorithm] for d in system.dims] or ["ring"]
    # ASTRA-sim's all-to-all has no halvingDoubling; keep the per-dim list length
    a2a = [a if a in ("ring", "direct") else "ring" for a in algos]
    out = {
        "scheduling-policy": k.scheduling_policy,
        "endpoint-delay": k.endpoint_delay_ns,
        "active-chunks-per-dimension": k.active_chunks_per_dimension,
        "preferred-dataset-splits": splits,
        "all-reduce-implementation": algos,
        "all-gather-implementation": algos,
        "reduce-scatter-implementation": algos,
        "all-to-all-implementation": a2a,
        "collective-optimization": k.collective_optimization,
        "local-mem-bw": k.local_mem_bw_gbps,
        "roofline-enabled": 0,
        "peak-perf": system.peak_tflops,
    }
    if compute_time == "exact":
        out["roofline-enabled"] = 1
        out["peak-perf"] = EXACT_PEAK_TFLOPS
    return out


def memory_json(system: InstanceSystem, graphs: list[Graph] | None = None) -> dict:
    if not system.tiers:
        return {"memory-type": "NO_MEMORY_EXPANSION"}
    used = set()
    for g in graphs or ():
        for t, a in zip(g.types, g.attrs, strict=True):
            if t in (MEM_LOAD, MEM_STORE):
                used.add((a or {}).get("tier") or system.tiers[0].name)
    if len(used) > 1:
        raise ValueError(f"ASTRA-sim's analytical binary models one remote memory; this iteration uses tiers "
                         f"{sorted(used)} of instance {system.name}")
    t = next((x for x in system.tiers if x.name in used), system.tiers[0])
    out: dict = {"memory-type": t.kind, "remote-mem-latency": t.latency_ns, "remote-mem-bw": t.bw_gbps}
    if t.kind == PER_NODE:
        npn = max(1, t.npus_per_node)
        out["num-nodes"] = -(-network_npus(system) // npn)
        out["num-npus-per-node"] = npn
    assert t.kind in (PER_NPU, PER_NODE, POOL)
    return out


def dummy_rank(rank: int) -> Graph:
    """An independent rank that only idles 1 ns (the second NPU of a single-NPU instance)."""
    g = Graph(rank=rank)
    g.add("idle", COMP, duration_ns=1)
    return g


def write_input_set(out_dir: Path, system: InstanceSystem, graphs: list[Graph], prefix: str = "workload",
                    metadata: dict | None = None, compute_time: str = DEFAULT_COMPUTE_TIME) -> dict[str, Path]:
    """Write traces and config files; return the paths the binary's flags need."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = network_npus(system)
    ranks = sorted(g.rank for g in graphs)
    single = not system.dims and len(graphs) == 1
    if not single and ranks != list(range(n)):
        raise ValueError(f"instance {system.name}: graphs for ranks {ranks[:8]}... but the network has {n} NPUs")
    coll_dims = len(system.dims) if len(system.dims) > 1 else 0
    for g in graphs:
        write_et(g, out_dir / f"{prefix}.{g.rank}.et", metadata, compute_time, coll_dims)
    if single:
        write_et(dummy_rank(1), out_dir / f"{prefix}.1.et", {**(metadata or {}), "dummy_rank": True}, compute_time)
    paths = {
        "workload": out_dir / prefix,
        "network": out_dir / "network.yml",
        "system": out_dir / "system.json",
        "memory": out_dir / "memory.json",
    }
    paths["network"].write_text(network_yaml(system))
    paths["system"].write_text(json.dumps(system_json(system, graphs, compute_time), indent=2) + "\n")
    paths["memory"].write_text(json.dumps(memory_json(system, graphs), indent=2) + "\n")
    if system.comm_groups:
        paths["comm_groups"] = out_dir / "comm_groups.json"
        paths["comm_groups"].write_text(json.dumps({k: list(v) for k, v in system.comm_groups}, indent=2) + "\n")
    return paths
