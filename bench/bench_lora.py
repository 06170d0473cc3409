"""Multi-LoRA serving: TPOT, TTFT, throughput and cold loads of Llama-3.1-8B on one H100 against the number of
adapters requests spread over (Zipf(1.0) popularity), with 8 resident slots (vLLM --max-loras 8) and rank 16
on every projection; 0 adapters is the base model. Same workload and seed for every point.
Usage: python bench/bench_lora.py [--requests N]
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
    ap.add_argument("--requests", type=int, default=600)
    a = ap.parse_args()
    cfg = REPO / "configs/examples/lora-llama3.1-8b-32-adapters.yaml"
    print(f"Llama-3.1-8B, 1x H100, {a.requests} requests at 12/s, rank 16, max_loras 8, Zipf(1.0) adapter popularity")
    print(f"{'adapters':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'TPOT mean':>9s} {'TPOT p90':>8s} {'tok/s':>8s} "
          f"{'loads':>6s} {'load GB':>7s} {'KV blocks':>9s}")
    for n in (0, 1, 8, 32, 128):
        over = {"workload": {"num_requests": a.requests}, "lora": {"adapters": n}}
        run = load_and_resolve(cfg, over)
        res, extra = simulate(run)
        s = summarize(res, extra)
        lo = s.get("lora") or {"loads": 0, "load_bytes": 0}
        print(f"{n:8d} {s['ttft_ms']['p50']:9.1f} {s['ttft_ms']['p99']:9.1f} {s['tpot_ms']['mean']:9.2f} "
              f"{s['tpot_ms']['p90']:8.2f} {s['throughput']['output_tokens_per_s']:8.1f} {lo['loads']:6d} "
              f"{lo['load_bytes'] / 1e9:7.2f} {s['instances'][0]['kv_blocks']:9d}")


if __name__ == "__main__":
    main()
