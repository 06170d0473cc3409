"""Speculative decoding: TPOT and throughput of Llama-3.1-70B on 4 H100s (TP4) against the number of draft
tokens K and the per-position acceptance a: EAGLE drafter (a one-layer head run K times on the GPU), a
Llama-3.2-1B draft model (K full forward passes, its weights and KV resident beside the target) and an
n-gram drafter (CPU, no accelerator cost); K = 0 is plain decoding. Same workload and seed for every point.
Usage: python bench/bench_specdec.py [--requests N]
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
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    cfg = REPO / "configs/examples/specdec-llama3.1-70b-eagle.yaml"
    print(f"Llama-3.1-70B TP4 H100, {a.requests} requests at 3/s (configs/examples/specdec-llama3.1-70b-eagle.yaml)")
    print(f"{'method':11s} {'K':>2s} {'accept':>6s} {'TPOT mean':>9s} {'TPOT p90':>8s} {'tok/s':>8s} {'tok/pass':>8s} "
          f"{'expected':>8s}")
    points = [("off", 0, 0.7)] + [(m, k, acc) for m in ("eagle", "draft_model", "ngram") for k in (2, 4, 8)
                                  for acc in (0.3, 0.6, 0.8)]
    for method, k, acc in points:
        eng = {"speculative_tokens": k, "speculative_acceptance": acc}
        if method != "off":
            eng["speculative_method"] = method
        if method == "draft_model":
            eng["speculative_draft_model"] = "Llama-3.2-1B"
        run = load_and_resolve(cfg, {"engine": eng, "workload": {"num_requests": a.requests}})
        res, extra = simulate(run)
        s = summarize(res, extra)
        sp = s.get("speculative") or {}
        print(f"{method:11s} {k:2d} {acc if k else 0:6.1f} {s['tpot_ms']['mean']:9.2f} {s['tpot_ms']['p90']:8.2f} "
              f"{s['throughput']['output_tokens_per_s']:8.1f} {sp.get('tokens_per_pass', 1.0):8.3f} "
              f"{sp.get('expected_tokens_per_pass', 1.0):8.3f}")


if __name__ == "__main__":
    main()
