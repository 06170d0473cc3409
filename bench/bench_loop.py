"""Simulation speed of the end-to-end loop, and the RTX4090 run next to real vLLM.

Prints wall seconds and simulated iterations per second for
  * the quickstart (1000 synthetic requests, Llama-3.1-8B on H100), and
  * the 300-request ShareGPT replay on RTX4090 with the engine settings of the
    reference vLLM run's meta.json,
then the latter's TTFT/TPOT/E2E next to the real vLLM numbers with signed errors.
Usage: python bench/bench_loop.py [--shared ../shared] [--profile]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate
from frontend.validation.reference import engine_from_meta, load_vllm_requests

REPO = Path(__file__).resolve().parents[1]


def timed(run) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result, extra = simulate(run)
    wall = time.perf_counter() - t0
    return wall, summarize(result, extra)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--profile", action="store_true", help="use the RTX4090 profile bundle instead of roofline")
    a = ap.parse_args()
    lss = a.shared / "data" / "llmservingsim"
    print(f"{'run':42s} {'requests':>8s} {'iters':>7s} {'wall_s':>8s} {'iters/s':>9s}")
    q = load_and_resolve(REPO / "configs/examples/quickstart.yaml")
    wall, s = timed(q)
    print(f"{'quickstart (H100, 1000 synthetic)':42s} {s['requests']:8d} {s['iterations']:7d} {wall:8.3f} "
          f"{s['iterations'] / wall:9.0f}")
    ref_dir = lss / "validation/RTX4090-Llama-3.1-8B/vllm"
    ov = {"workload": {"kind": "jsonl", "path": str(lss / "workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl")},
          "engine": engine_from_meta(ref_dir / "meta.json")}
    label = "rtx4090 sharegpt-300 (roofline)"
    if a.profile:
        ov["compute"] = {"kind": "profile", "profile": str(lss / "profiles/RTX4090/meta-llama/Llama-3.1-8B")}
        label = "rtx4090 sharegpt-300 (profile)"
    r = load_and_resolve(REPO / "configs/examples/rtx4090-llama3.1-8b.yaml", ov)
    wall, s = timed(r)
    print(f"{label:42s} {s['requests']:8d} {s['iterations']:7d} {wall:8.3f} {s['iterations'] / wall:9.0f}")
    ref = load_vllm_requests(ref_dir)
    print(f"\n{'metric':10s} {'stat':5s} {'vLLM':>10s} {'sim':>10s} {'error':>8s}")
    for key, arr in (("ttft_ms", ref.ttft), ("tpot_ms", ref.tpot), ("e2e_ms", ref.e2e)):
        ms = arr * 1e3
        for stat, val in (("mean", ms.mean()), ("p50", np.percentile(ms, 50)), ("p99", np.percentile(ms, 99))):
            sim = s[key][stat]
            print(f"{key:10s} {stat:5s} {val:10.1f} {sim:10.1f} {100 * (sim - val) / val:+7.1f}%")


if __name__ == "__main__":
    main()
