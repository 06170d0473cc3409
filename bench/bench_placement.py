"""Weight placement: Llama-3.1-70B TP2 on H100 with a fraction of every layer's weights in a CXL expander
(configs/examples/offload-weights-cxl-llama3.1-70b.yaml): KV blocks gained, TPOT, throughput and energy per
output token against the offloaded fraction (0 = all weights in HBM).
Usage: python bench/bench_placement.py [--requests N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100)
    a = ap.parse_args()
    cfg = REPO / "configs/examples/offload-weights-cxl-llama3.1-70b.yaml"
    print(f"Llama-3.1-70B TP2 H100 + CXL 45 GB/s per GPU, {a.requests} requests at 1/s")
    print(f"{'offloaded':>9s} {'KV blocks':>9s} {'TPOT mean':>9s} {'TPOT p90':>8s} {'tok/s':>7s} {'J/token':>8s} "
          f"{'mem share':>9s}")
    for f in (0.0, 0.05, 0.1, 0.2, 0.3):
        over = {"workload": {"num_requests": a.requests},
                "placement": {"weights_tier": "cxl" if f else None, "weights_fraction": f}}
        run = load_and_resolve(cfg, over)
        res, extra = simulate(run)
        s = summarize(res, extra)
        print(f"{f:9.2f} {s['instances'][0]['kv_blocks']:9d} {s['tpot_ms']['mean']:9.2f} {s['tpot_ms']['p90']:8.2f} "
              f"{s['throughput']['output_tokens_per_s']:7.1f} {s['energy']['j_per_output_token']:8.3f} "
              f"{s['exposed_mem_share']:9.3f}")


if __name__ == "__main__":
    main()
