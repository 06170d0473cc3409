"""Fidelity against real vLLM on the RTX4090 reference: profile-driven and roofline-only runs.

Prints the `astraserve validate` table (TTFT/TPOT/E2E mean/p50/p90/p95/p99 with signed errors)
for both compute models, then a per-operator comparison of the roofline model against the
measured profile on the same batches (where the physics refinements matter).
Usage: python bench/fidelity.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from frontend.compute.batch import BatchShape
from frontend.compute.profile import ProfileModel
from frontend.config.loader import load_and_resolve
from frontend.metrics.report import write_outputs
from frontend.session import simulate
from frontend.validation.compare import STATS, compare
from frontend.validation.reference import engine_from_meta

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    a = ap.parse_args()
    lss = a.shared / "data/llmservingsim"
    ref = lss / "validation/RTX4090-Llama-3.1-8B/vllm"
    bundle = lss / "profiles/RTX4090/meta-llama/Llama-3.1-8B"
    base = {"workload": {"kind": "jsonl", "path": str(lss / "workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl")},
            "engine": engine_from_meta(ref / "meta.json")}
    tables = {}
    rt = None
    for label, extra in (("profile", {"compute": {"kind": "profile", "profile": str(bundle)}}), ("roofline", {})):
        run = load_and_resolve(REPO / "configs/examples/rtx4090-llama3.1-8b.yaml", {**base, **extra})
        res, ex = simulate(run)
        with tempfile.TemporaryDirectory() as d:
            write_outputs(res, Path(d), ex)
            tables[label] = compare(Path(d), ref)
        if label == "roofline":
            rt = res.instances[0]
    print(f"{'metric':6s} {'stat':5s} {'vLLM ms':>11s} {'profile ms':>11s} {'error':>8s} {'roofline ms':>12s} {'error':>8s}")
    for key in ("ttft", "tpot", "e2e"):
        for st in STATS:
            p = tables["profile"]["latency"][key][st]
            r = tables["roofline"]["latency"][key][st]
            print(f"{key.upper():6s} {st:5s} {p['real_ms']:11.2f} {p['sim_ms']:11.2f} {p['error_pct']:+7.2f}% "
                  f"{r['sim_ms']:12.2f} {r['error_pct']:+7.2f}%")
    for label in ("profile", "roofline"):
        t = tables[label]["throughput"]
        print(f"{label}: output throughput {t['sim_output_tok_s']:.1f} tok/s vs {t['real_output_tok_s']:.1f} "
              f"({t['error_pct']:+.2f}%)")
    # per-operator: roofline against measured tables, one layer
    pm = ProfileModel(bundle, "bf16", 1, rt.compute)
    print("\nper-iteration compute time, roofline vs profile (32 layers + head), same batch:")
    print(f"{'batch':34s} {'profile ms':>10s} {'roofline ms':>11s} {'error':>8s}")
    shapes = [("decode 1 x ctx 512", BatchShape([1], [511], 1)), ("decode 32 x ctx 1024", BatchShape([1] * 32, [1023] * 32, 32)),
              ("decode 128 x ctx 1024", BatchShape([1] * 128, [1023] * 128, 128)),
              ("prefill 512", BatchShape([512], [0], 1)), ("prefill 2048", BatchShape([2048], [0], 1)),
              ("mixed 1536 prefill + 32 decode", BatchShape([1536] + [1] * 32, [0] + [800] * 32, 33))]
    for name, sh in shapes:
        def total(m, sh=sh):
            return (sum(o.duration_ns for o in m.prologue_ops(sh) + m.epilogue_ops(sh))
                    + 32 * sum(o.duration_ns for o in m.layer_ops(sh))) / 1e6
        p, r = total(pm), total(rt.compute)
        print(f"{name:34s} {p:10.3f} {r:11.3f} {100 * (r - p) / p:+7.1f}%")


if __name__ == "__main__":
    main()
