"""Differential test of the cluster network (frontend/network/) against ASTRA-sim's congestion-aware binary.

Seeded sets of timed point-to-point messages (fan-in onto one NPU, one NPU sending to many, random mixes
of sizes from 1 KB to 1 GB and issue times, with and without link latency) on the topologies the binary at
f66c1da simulates congestion-aware (1-D only): a Switch of N NPUs, as the cluster topology builds it for
one leaf of single-NPU nodes (the NICs) or one node (its scale-up switch). Each set runs through the
binary (astra_bridge/network_messages.py writes it as Chakra SEND/RECV graphs) and through the cluster
network; the table gives the worst per-NPU difference. `--json` writes the binary's figures as the
reference the CI test (tests/test_cluster_network.py) replays without the binary.

    ASTRA_SIM_BIN_AWARE=/path/to/AstraSim_Analytical_Congestion_Aware python bench/differential_network.py \
        [--out bench/results/differential_network.txt] [--json tests/astra_sim_network_reference.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astra_bridge.astrasim import AstraSimBackend  # noqa: E402
from astra_bridge.backend import InstanceSystem  # noqa: E402
from astra_bridge.embedded.network import Dimension  # noqa: E402
from astra_bridge.network_messages import TimedMessage, message_graphs, model_finish  # noqa: E402
from frontend.network.topology import ClusterTopology  # noqa: E402


def topology(kind: str, n: int, bw_gbps: float, lat_ns: float) -> ClusterTopology:
    if kind == "nics":  # one leaf switch, n single-NPU nodes: every route NPU -> leaf -> NPU over NIC links
        return ClusterTopology(num_nodes=n, npus_per_node=1, scale_up_bw_gbps=1.0, scale_up_latency_ns=0.0,
                               scale_out_bw_gbps=bw_gbps, scale_out_latency_ns=lat_ns)
    return ClusterTopology(num_nodes=1, npus_per_node=n, scale_up_bw_gbps=bw_gbps, scale_up_latency_ns=lat_ns,
                           scale_out_bw_gbps=1.0, scale_out_latency_ns=0.0)


def cases(seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []

    def add(name, kind, n, bw, lat, msgs):
        out.append({"name": name, "kind": kind, "npus": n, "bw_gbps": bw, "latency_ns": lat,
                    "messages": [[m.t_ns, m.src, m.dst, m.size] for m in msgs]})

    add("one message", "nics", 2, 50.0, 2000.0, [TimedMessage(0, 0, 1, 64 << 20)])
    add("fan-in 3 -> 1 at once", "nics", 4, 50.0, 2000.0, [TimedMessage(0, s, 3, 32 << 20) for s in range(3)])
    add("fan-in staggered", "nics", 4, 25.0, 5000.0,
        [TimedMessage(t, s, 0, 16 << 20) for t, s in ((0, 1), (200_000, 2), (350_000, 3), (360_000, 1))])
    add("one NPU to many", "node", 8, 450.0, 1000.0, [TimedMessage(0, 0, d, 8 << 20) for d in range(1, 8)])
    add("no latency", "nics", 4, 12.5, 0.0, [TimedMessage(t, s, d, 1 << 20) for t, s, d in
                                             ((0, 0, 1), (10, 2, 1), (20, 3, 1), (30, 0, 2))])
    add("layer-wise TP4 -> TP4 (80 layers)", "nics", 8, 50.0, 2000.0,
        [TimedMessage(layer * 1_900_000, j, 4 + j, 2_621_440) for layer in range(80) for j in range(4)])
    add("layer-wise fan-in TP4 -> TP2", "nics", 6, 50.0, 2000.0,
        [TimedMessage(layer * 900_000, j, 4 + j // 2, 1_310_720) for layer in range(40) for j in range(4)])
    add("two prefill instances into one decoder", "nics", 8, 50.0, 2000.0,
        [TimedMessage(layer * 1_000_000 + off, base + j, 6 + j % 2, 3_000_000)
         for layer in range(20) for j in range(2) for base, off in ((0, 0), (2, 333_333), (4, 777_777))])
    for i in range(16):
        n = rng.choice([3, 4, 8, 16, 32])
        kind = rng.choice(["nics", "node"])
        bw = rng.choice([12.5, 25.0, 50.0, 100.0, 450.0])
        lat = rng.choice([0.0, 500.0, 2000.0, 10_000.0])
        msgs = []
        for _ in range(rng.randint(5, 60)):
            s, d = rng.sample(range(n), 2)
            size = int(10 ** rng.uniform(3, 9))
            msgs.append(TimedMessage(rng.randrange(0, 5_000_000, 7), s, d, size))
        add(f"random mix {i}", kind, n, bw, lat, msgs)
    return out


def run_model(c: dict) -> list[int]:
    topo = topology(c["kind"], c["npus"], c["bw_gbps"], c["latency_ns"])
    msgs = [TimedMessage(*m) for m in c["messages"]]
    return model_finish(topo.build(), topo.route, c["npus"], msgs)


def run_binary(c: dict, backend: AstraSimBackend) -> list[int]:
    msgs = [TimedMessage(*m) for m in c["messages"]]
    dim = Dimension("Switch", c["npus"], c["bw_gbps"] * 1e9 / 2**30, float(c["latency_ns"]), "ring")
    system = InstanceSystem(name=c["name"], num_npus=c["npus"], dims=(dim,))
    return list(backend.run(system, message_graphs(c["npus"], msgs)).per_rank_finish_ns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path, help="write the binary's per-NPU finish times as the CI reference")
    a = ap.parse_args()
    binary = os.environ.get("ASTRA_SIM_BIN_AWARE")
    if not binary:
        raise SystemExit("set ASTRA_SIM_BIN_AWARE to an AstraSim_Analytical_Congestion_Aware binary")
    backend = AstraSimBackend(binary=Path(binary), cache=False)
    lines = [f"# bench/differential_network.py --seed {a.seed}: cluster network vs {Path(binary).name}, "
             f"{time.strftime('%Y-%m-%d')}",
             f"{'case':42s} {'NPUs':>4s} {'msgs':>5s} {'binary max ns':>14s} {'worst diff':>11s}"]
    ref = []
    worst_all = 0.0
    for c in cases(a.seed):
        b = run_binary(c, backend)
        m = run_model(c)
        worst = max(abs(x - y) / max(1, y) for x, y in zip(m, b, strict=True))
        worst_all = max(worst_all, worst)
        lines.append(f"{c['name']:42s} {c['npus']:4d} {len(c['messages']):5d} {max(b):14d} {100 * worst:10.4f}%")
        ref.append({**c, "binary_finish_ns": b})
    lines.append(f"# {len(ref)} cases, worst per-NPU difference {100 * worst_all:.4f}%")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps({"source": f"{Path(binary).name} (ASTRA-sim f66c1da)", "seed": a.seed,
                                      "cases": ref}, indent=1) + "\n")
    return 0 if worst_all == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
