"""Write an ASTRA-sim analytical input set for one instance (facts: ASTRA_SIM_INPUTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.memory import PER_NODE, PER_NPU, POOL
from chakra_gen.et_io import write_et
from chakra_gen.graph import Graph

ALGO_NAMES = {"ring": "ring", "direct": "direct", "halvingDoubling": "halvingDoubling",
              "doubleBinaryTree": "doubleBinaryTree"}


def network_yaml(system: InstanceSystem) -> str:
    dims = system.dims
    if not dims:
        # ASTRA-sim rejects npus_count 1: a single-NPU instance is written as two
        # independent copies of its rank on a 2-NPU network that carries no traffic
        return "topology: [FullyConnected]\nnpus_count: [2]\nbandwidth: [1.0]\nlatency: [0.0]\n"
    return ("topology: [" + ", ".join(d.topology for d in dims) + "]\n"
            "npus_count: [" + ", ".join(str(d.npus) for d in dims) + "]\n"
            "bandwidth: [" + ", ".join(repr(float(d.bw_gbps)) for d in dims) + "]\n"
            "latency: [" + ", ".join(repr(float(d.latency_ns)) for d in dims) + "]\n")


def system_json(system: InstanceSystem) -> dict:
    k = system.knobs
    algos = [ALGO_NAMES[d.algorithm] for d in system.dims] or ["ring"]
    # ASTRA-sim's all-to-all has no halvingDoubling; keep the per-dim list length
    a2a = [a if a in ("ring", "direct") else "ring" for a in algos]
    return {
        "scheduling-policy": "LIFO",
        "endpoint-delay": k.endpoint_delay_ns,
        "active-chunks-per-dimension": k.active_chunks_per_dimension,
        "preferred-dataset-splits": k.preferred_dataset_splits,
        "all-reduce-implementation": algos,
        "all-gather-implementation": algos,
        "reduce-scatter-implementation": algos,
        "all-to-all-implementation": a2a,
        "collective-optimization": "localBWAware",
        "local-mem-bw": k.local_mem_bw_gbps,
        "roofline-enabled": 0,
        "peak-perf": system.peak_tflops,
    }


def memory_json(system: InstanceSystem) -> dict:
    if not system.tiers:
        return {"memory-type": "NO_MEMORY_EXPANSION"}
    t = system.tiers[0]
    out: dict = {"memory-type": t.kind, "remote-mem-latency": t.latency_ns, "remote-mem-bw": t.bw_gbps}
    if t.kind == PER_NODE:
        npn = max(1, t.npus_per_node)
        out["num-nodes"] = max(1, system.num_npus // npn)
        out["num-npus-per-node"] = npn
    assert t.kind in (PER_NPU, PER_NODE, POOL)
    return out


def write_input_set(out_dir: Path, system: InstanceSystem, graphs: list[Graph], prefix: str = "workload",
                    metadata: dict | None = None) -> dict[str, Path]:
    """Write traces and config files; return the paths the binary's flags need."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for g in graphs:
        write_et(g, out_dir / f"{prefix}.{g.rank}.et", metadata)
    if not system.dims and len(graphs) == 1:
        write_et(graphs[0], out_dir / f"{prefix}.1.et", {**(metadata or {}), "replica_of_rank": 0})
    paths = {
        "workload": out_dir / prefix,
        "network": out_dir / "network.yml",
        "system": out_dir / "system.json",
        "memory": out_dir / "memory.json",
    }
    paths["network"].write_text(network_yaml(system))
    paths["system"].write_text(json.dumps(system_json(system), indent=2) + "\n")
    paths["memory"].write_text(json.dumps(memory_json(system), indent=2) + "\n")
    if system.comm_groups:
        paths["comm_groups"] = out_dir / "comm_groups.json"
        paths["comm_groups"].write_text(json.dumps({k: list(v) for k, v in system.comm_groups}, indent=2) + "\n")
    return paths
