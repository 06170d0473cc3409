"""Speculative decoding: TPOT and throughput of Llama-3.1-70B on 4 H100s (TP4) against the number of draft
tokens K and the per-position acceptance a: EAGLE drafter (fc + a one-layer head + the LM head, run K times on
the GPU, its weights and KV resident), a Llama-3.2-1B draft model (K full forward passes, its weights and KV
resident beside the target) and an n-gram drafter (CPU, no accelerator cost); K = 0 is plain decoding. Then
DeepSeek-V3 on 8 H200s (TP8, FP8) with its own MTP module (arXiv 2412.19437 sec. 2.2; one module, so K = 1,
and K = 2, 3 reusing it as vLLM allows, at assumed lower rates for the reused positions). Same workload and
seed for every point of a model. `draft` is the drafter's share of the busy time.
Usage: python bench/bench_specdec.py [--requests N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]
HEADER = (f"{'method':11s} {'K':>2s} {'accept':>14s} {'TPOT mean':>9s} {'TPOT p90':>8s} {'tok/s':>8s} "
          f"{'tok/pass':>8s} {'expected':>8s} {'draft':>6s} {'KV blocks':>9s}")


def row(cfg: Path, method: str, k: int, acc, requests: int, **extra) -> str:
    eng = {"speculative_tokens": k, "speculative_acceptance": acc, **extra}
    if method != "off":
        eng["speculative_method"] = method
    if method == "draft_model":
        eng["speculative_draft_model"] = "Llama-3.2-1B"
    run = load_and_resolve(cfg, {"engine": eng, "workload": {"num_requests": requests}})
    res, ex = simulate(run)
    s = summarize(res, ex)
    sp = s.get("speculative") or {}
    a = "-" if not k else (f"{acc:.2f}" if isinstance(acc, float) else "/".join(f"{x:.2f}" for x in acc))
    return (f"{method:11s} {k:2d} {a:>14s} {s['tpot_ms']['mean']:9.2f} {s['tpot_ms']['p90']:8.2f} "
            f"{s['throughput']['output_tokens_per_s']:8.1f} {sp.get('tokens_per_pass', 1.0):8.3f} "
            f"{sp.get('expected_tokens_per_pass', 1.0):8.3f} {sp.get('draft_overhead_share', 0.0):6.3f} "
            f"{run.instances[0].num_gpu_blocks:9d}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    cfg = REPO / "configs/examples/specdec-llama3.1-70b-eagle.yaml"
    print(f"Llama-3.1-70B TP4 H100, {a.requests} requests at 3/s (configs/examples/specdec-llama3.1-70b-eagle.yaml)")
    print(HEADER)
    points = [("off", 0, 0.7)] + [(m, k, acc) for m in ("eagle", "draft_model", "ngram") for k in (2, 4, 8)
                                  for acc in (0.3, 0.6, 0.8)]
    for method, k, acc in points:
        print(row(cfg, method, k, acc, a.requests))
    cfg = REPO / "configs/examples/specdec-deepseek-v3-mtp.yaml"
    print(f"\nDeepSeek-V3 TP8 H200 FP8, {a.requests} requests at 3/s (configs/examples/specdec-deepseek-v3-mtp.yaml)")
    print(HEADER)
    for method, k, acc in [("off", 0, 0.85), ("mtp", 1, 0.6), ("mtp", 1, 0.85), ("mtp", 1, 0.9),
                           ("mtp", 2, [0.85, 0.6]), ("mtp", 3, [0.85, 0.6, 0.5])]:
        print(row(cfg, method, k, acc, a.requests, speculative_mtp_reuse=k > 1))


if __name__ == "__main__":
    main()
