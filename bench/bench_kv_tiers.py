"""KV hierarchy figures.

1. HBM only vs HBM + host DRAM vs HBM + CXL pool on the 300-request ShareGPT
   workload (RTX4090, reference engine settings): TTFT, hit rate per tier, bytes.
2. Simulation speed with tiers vs without (same run).
3. Host-tier bandwidth sweep on a multi-turn (agentic coding) workload with HBM
   under pressure: later-turn TTFT against link bandwidth; writes a PNG.
Usage: python bench/bench_kv_tiers.py [--shared ../shared] [--out bench/results]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]


def run(cfg: Path, ov: dict) -> tuple[dict, float]:
    r = load_and_resolve(cfg, ov)
    t0 = time.perf_counter()
    res, extra = simulate(r)
    return summarize(res, extra), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    sharegpt = a.shared / "data/llmservingsim/workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl"
    wl = {"workload": {"kind": "jsonl", "path": str(sharegpt)}}
    print("1) ShareGPT 300 on RTX4090, prefix caching on")
    print(f"{'config':14s} {'TTFT mean ms':>12s} {'TTFT p50':>9s} {'E2E mean':>9s} {'preempt':>7s} {'hit hbm':>8s} "
          f"{'hit tier':>8s} {'loaded GB':>9s} {'stored GB':>9s} {'exp.mem %':>9s} {'wall s':>7s}")
    walls: dict[str, float] = {}
    for name in ("kv-hbm", "kv-dram", "kv-cxl-pool"):
        best = None
        for _ in range(a.repeat):
            s, wall = run(REPO / f"configs/examples/{name}.yaml", wl)
            best = wall if best is None else min(best, wall)
        walls[name] = best
        kt = s.get("kv_tiers", {})
        tier = next((k for k in kt if k != "hbm"), None)
        hbm_hit = kt.get("hbm", {}).get("hit_rate", s["prefix_cache"]["hbm_hit_rate"])
        t = kt.get(tier, {}) if tier else {}
        print(f"{name:14s} {s['ttft_ms']['mean']:12.1f} {s['ttft_ms']['p50']:9.1f} {s['e2e_ms']['mean']:9.1f} "
              f"{s['preemptions']:7d} {hbm_hit:8.4f} {t.get('hit_rate', 0.0):8.4f} "
              f"{t.get('loaded_bytes', 0) / 1e9:9.2f} {t.get('stored_bytes', 0) / 1e9:9.2f} "
              f"{100 * s['exposed_mem_share']:9.4f} {best:7.3f}")
    print(f"\n2) simulation speed: with DRAM tier {walls['kv-dram'] / walls['kv-hbm']:.2f}x, with CXL pool "
          f"{walls['kv-cxl-pool'] / walls['kv-hbm']:.2f}x the HBM-only wall time (best of {a.repeat})")

    print("\n3) host-tier bandwidth sweep, agentic coding on one H100 (HBM capped at 1500 blocks, DRAM tier)")
    bws = [2, 4, 8, 16, 32, 64, 128]
    rows = []
    for bw in bws:
        ov = {"instances": [{"name": "h100", "hardware": "H100-SXM"}],
              "engine": {"num_gpu_blocks_override": 1500, "max_num_seqs": 64, "max_num_batched_tokens": 4096},
              "kv": {"offload": "write_through", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 64,
                                                           "bw_gbps": bw, "latency_ns": 2000, "scope": "node"}]},
              "workload": {"num_programs": 40, "rate_per_s": 1.0, "turns_min": 8, "turns_max": 16}}
        s, _ = run(REPO / "configs/examples/agents-coding-4x.yaml", ov)
        later = s["agents"]["turn_ttft_ms"]["later"]
        rows.append((bw, later["mean"], later["p50"], s["kv_tiers"]["dram"]["loaded_bytes"] / 1e9,
                     100 * s["exposed_mem_share"]))
        print(f"  {bw:4d} GB/s: later-turn TTFT mean {later['mean']:8.1f} ms, p50 {later['p50']:7.1f} ms, "
              f"reloaded {rows[-1][3]:6.1f} GB, exposed memory {rows[-1][4]:.2f}% of busy time")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label="mean")
    ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="s", label="p50")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("host tier link bandwidth (GB/s)")
    ax.set_ylabel("later-turn TTFT (ms)")
    ax.set_title("Agentic coding, Llama-3.1-8B / H100, KV reloads from DRAM")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = a.out / "kv_bandwidth_sweep.png"
    fig.savefig(p, dpi=120)
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
