"""Prefill/decode disaggregation against colocated serving, Llama-3.1-70B on H100 nodes (frontend/pd.py).

Deployments (TP4 instances, each on its own node; KV over 400 Gb/s InfiniBand per GPU):
  colocated 2x: two mixed TP4 instances (8 GPUs), requests round robin;
  1P1D: one prefill + one decode TP4 instance (8 GPUs);
  2P1D: two prefill + one decode TP4 instance (12 GPUs).
Workloads (Poisson arrivals, lognormal lengths): prefill-heavy (prompts ~4000, outputs ~120 tokens) and
decode-heavy (prompts ~500, outputs ~700 tokens). Printed: TTFT and TPOT p50/p99, output tokens/s per GPU,
output tokens per GPU-hour and per dollar (summary.json `cost`: the H100-SXM catalog entry's rental price,
$2.95 per GPU-hour, the May 2026 median of 37 providers, aimultiple.com/gpu-index), and the
simulation's wall time against the colocated run with the same GPU count (min of --repeats).
DistServe (arXiv 2401.09670) and Splitwise (arXiv 2311.18677) report that disaggregation removes the
prefill-decode interference that inflates TPOT in colocated serving, at the cost of the KV transfer in TTFT.
Second table (cluster network, issue 14): the same prefill-heavy load over a cluster network of 4-GPU
nodes (`cluster:`, frontend/network/: each GPU's NIC into one leaf switch, links that queue when shared)
against the per-instance-pair FIFO links, with the KV pulled after the prefill or streamed layer by layer
while it runs, at 50 GB/s (400 Gb/s NDR InfiniBand per GPU) and 12.5 GB/s (100 Gb/s Ethernet per GPU).
Usage: python bench/bench_pd.py [--requests N] [--repeats R]
"""

from __future__ import annotations

import argparse
import time

from frontend.config.loader import parse_config, resolve
from frontend.metrics.report import summarize
from frontend.session import simulate

NVL4 = {"preset": "h100-nvlink-4"}


def _inst(name: str, role: str, node: int) -> dict:
    return {"name": name, "hardware": "H100-SXM", "tp": 4, "role": role, "node": node, "network": NVL4}


DEPLOYMENTS = {
    "colocated 2x TP4": [_inst("m0", "mixed", 0), _inst("m1", "mixed", 1)],
    "1P1D TP4": [_inst("p0", "prefill", 0), _inst("d0", "decode", 1)],
    "2P1D TP4": [_inst("p0", "prefill", 0), _inst("p1", "prefill", 1), _inst("d0", "decode", 2)],
}
WORKLOADS = {
    "prefill-heavy": ({"dist": "lognormal", "mean": 4000, "sigma": 0.6, "min": 64, "max": 16384},
                      {"dist": "lognormal", "mean": 120, "sigma": 0.6, "min": 1, "max": 1024}, 2.0),
    "decode-heavy": ({"dist": "lognormal", "mean": 500, "sigma": 0.6, "min": 16, "max": 4096},
                     {"dist": "lognormal", "mean": 700, "sigma": 0.6, "min": 1, "max": 4096}, 3.0),
}


def _raw(insts: list[dict], prompt: dict, output: dict, rate: float, n: int) -> dict:
    return {"name": "pd-bench", "seed": 42, "model": "Llama-3.1-70B", "instances": insts,
            "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "block_size": 16},
            "router": {"policy": "round_robin"},
            "pd": {"decode_router": "least_loaded", "scale_out": {"bw_gbps": 50, "latency_ns": 2000}},
            "workload": {"kind": "synthetic", "num_requests": n, "arrival": {"process": "poisson", "rate_per_s": rate},
                         "prompt_tokens": prompt, "output_tokens": output},
            "backend": {"kind": "embedded", "system": {"preferred_dataset_splits": 4}}}


def _network_table(n: int, repeats: int) -> None:
    prompt, output, rate = WORKLOADS["prefill-heavy"]
    print(f"== cluster network: prefill-heavy, {n} requests at {rate}/s; KV transfer modes and NIC speeds")
    print(f"{'deployment':10s} {'NIC GB/s':>8s} {'transfer':24s} {'TTFT p50':>9s} {'TTFT p99':>9s} "
          f"{'xfer ms mean':>12s} {'xfer p99':>9s} {'TPOT p50':>9s} {'wall s':>7s}")
    for dep in ("1P1D TP4", "2P1D TP4"):
        for bw in (50.0, 12.5):
            for mode in ("per-pair FIFO links", "cluster, after prefill", "cluster, layer-wise"):
                raw = _raw(DEPLOYMENTS[dep], prompt, output, rate, n)
                if mode == "per-pair FIFO links":
                    raw["pd"]["scale_out"] = {"bw_gbps": bw, "latency_ns": 2000}
                else:
                    del raw["pd"]["scale_out"]
                    raw["cluster"] = {"npus_per_node": 4, "scale_out": {"bw_gbps": bw, "latency_ns": 2000}}
                    raw["pd"]["kv_transfer"] = "layerwise" if "layer" in mode else "after_prefill"
                run = resolve(parse_config(raw, "bench"))
                walls = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    res, extra = simulate(run)
                    walls.append(time.perf_counter() - t0)
                s = summarize(res, extra)
                x = s["pd"]["transfer_ms"]
                print(f"{dep:10s} {bw:8.1f} {mode:24s} {s['ttft_ms']['p50']:9.1f} {s['ttft_ms']['p99']:9.1f} "
                      f"{x['mean']:12.2f} {x['p99']:9.2f} {s['tpot_ms']['p50']:9.2f} {min(walls):7.3f}")
    print("(transfer: first byte on the wire to the last byte in the decode GPUs; a streamed transfer starts with the")
    print(" prefill's first layer, so its duration spans the prefill and TTFT is what to compare)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    for wl, (prompt, output, rate) in WORKLOADS.items():
        print(f"== {wl}: {a.requests} requests at {rate}/s, Llama-3.1-70B, H100 TP4 instances")
        print(f"{'deployment':18s} {'GPUs':>4s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'TPOT p50':>9s} {'TPOT p99':>9s} "
              f"{'tok/s/GPU':>10s} {'Mtok/GPU-h':>10s} {'tok/$':>9s} {'KV GB':>7s} {'wall s':>7s}")
        base_wall = None
        for name, insts in DEPLOYMENTS.items():
            run = resolve(parse_config(_raw(insts, prompt, output, rate, a.requests), "bench"))
            walls = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                res, extra = simulate(run)
                walls.append(time.perf_counter() - t0)
            s = summarize(res, extra)
            gpus = sum(i["tp"] for i in insts)
            tps = s["throughput"]["output_tokens_per_s"] / gpus
            per_h = tps * 3600
            kv = (s.get("pd") or {}).get("kv_transfer_bytes", 0) / 1e9
            wall = min(walls)
            base_wall = base_wall or wall
            print(f"{name:18s} {gpus:4d} {s['ttft_ms']['p50']:9.1f} {s['ttft_ms']['p99']:9.1f} "
                  f"{s['tpot_ms']['p50']:9.2f} {s['tpot_ms']['p99']:9.2f} {tps:10.1f} {per_h / 1e6:10.3f} "
                  f"{s['cost']['output_tokens_per_usd']:9.0f} {kv:7.1f} {wall:7.3f}"
                  + (f" ({wall / base_wall:.2f}x colocated)" if name != "colocated 2x TP4" else ""))
        print()
    _network_table(a.requests, a.repeats)


if __name__ == "__main__":
    main()
