"""Mixture-of-experts serving: cost of an expert-parallel step in the loop, and TPOT against EP degree and
routing skew.

1. Per-iteration cost (plan + build + execute, embedded backend with its cache off, run-ahead off so every
   step takes the general path) of Qwen3-30B-A3B on 8 H100s as attention DP8 + EP8 (one lockstep group of
   eight engines: a step plans eight batches and times one chain for the group) against TP8 (one engine).
   Costs are per simulated step of the unit; also per engine-step (the EP8 group runs eight engines' steps).
2. TPOT, TTFT and throughput of Qwen3-30B-A3B on H100 NVSwitch for EP = 1, 2, 4, 8 (attention DP = EP,
   tp 1; EP 1 is one GPU), at the same load per GPU, with balanced routing and Zipf-skewed routing
   (s = 0.6, 1.0, 1.4; linear placement, so the hot experts share a rank). "imbalance" is the straggler EP
   rank's assignments over the mean, averaged over the group's steps (summary.json moe.groups).
Usage: python bench/bench_moe.py [--requests-per-gpu N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from frontend.config.loader import parse_config, resolve
from frontend.instance.runtime import InstanceRuntime
from frontend.metrics.report import summarize
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]


def _raw(dp: int, tp: int, ep: bool, n_req: int, rate: float, routing: dict | None = None) -> dict:
    inst = {"name": "g", "hardware": "H100-SXM", "tp": tp, "dp": dp, "enable_expert_parallel": ep}
    n = tp * dp
    if n > 1:
        inst["network"] = {"preset": f"h100-nvlink-{n}"} if n in (4, 8) else \
            {"dims": [{"topology": "Switch", "npus": n, "bw_gbps": 450, "latency_ns": 500, "algorithm": "direct"}]}
    return {"name": "moe-bench", "seed": 42, "model": "Qwen3-30B-A3B", "instances": [inst],
            "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "block_size": 16},
            "moe": routing or {"routing": "balanced"},
            "workload": {"kind": "synthetic", "num_requests": n_req, "arrival": {"process": "poisson", "rate_per_s": rate},
                         "prompt_tokens": {"dist": "lognormal", "mean": 700, "sigma": 1.0, "min": 4, "max": 8192},
                         "output_tokens": {"dist": "lognormal", "mean": 250, "sigma": 0.9, "min": 1, "max": 2048}},
            "backend": {"kind": "embedded", "cache": False, "system": {"preferred_dataset_splits": 1}}}


def step_cost(raw: dict) -> tuple[float, float, float, float, int, int]:
    """ms per unit step over 5 repeats of the run (min, median), the same without the engines' planning
    (build + execute: min, median), steps per run, engines per unit."""
    from frontend import cluster

    run = resolve(parse_config(raw, "bench"))
    per_run = []
    steps = 0
    width = 1
    for _ in range(5):
        timed = [0.0, 0]
        originals = {cls: cls.step for cls in (cluster.SoloUnit, cluster.LockstepGroup)}
        plan_orig = InstanceRuntime.plan_step

        planning = [0.0]

        def timed_plan(self, now, plan_orig=plan_orig, planning=planning):
            t0 = time.perf_counter()
            out = plan_orig(self, now)
            planning[0] += time.perf_counter() - t0
            return out

        InstanceRuntime.plan_step = timed_plan

        def timed_step(f, timed=timed):
            def step(self, now):
                t0 = time.perf_counter()
                out = f(self, now)
                if out is not None:
                    timed[0] += time.perf_counter() - t0
                    timed[1] += 1
                return out
            return step

        for cls, f in originals.items():
            cls.step = timed_step(f)
        try:
            res, _ = simulate(run, run_ahead=False)
        finally:
            for cls, f in originals.items():
                cls.step = f
            InstanceRuntime.plan_step = plan_orig
        per_run.append((1e3 * timed[0] / timed[1], 1e3 * (timed[0] - planning[0]) / timed[1]))
        steps = timed[1]
        width = len(res.instances) if res.instances[0].inst.dp_group else 1
    total = [x[0] for x in per_run]
    build = [x[1] for x in per_run]
    return min(total), statistics.median(total), min(build), statistics.median(build), steps, width


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests-per-gpu", type=int, default=60)
    args = ap.parse_args()
    print("== per-iteration cost, Qwen3-30B-A3B on 8 x H100 (plan + build + execute, cache off, run-ahead off)")
    base = None
    for label, raw in (("TP8 (one engine, TP-sharded experts)", _raw(1, 8, False, 200, 20.0)),
                       ("DP8 + EP8 (lockstep group of 8 engines)", _raw(8, 1, True, 200, 20.0))):
        lo, med, blo, bmed, n, width = step_cost(raw)
        base = base or (med, bmed)
        print(f"{label:42s} {n:6d} steps: plan+build+execute min {lo:.3f} / median {med:.3f} ms per step "
              f"({med / base[0]:.2f}x TP8; {med / width:.3f} ms per engine-step); build+execute min {blo:.3f} / "
              f"median {bmed:.3f} ms ({bmed / base[1]:.2f}x TP8)")
    print()
    print("== TPOT vs EP degree and routing skew, Qwen3-30B-A3B on H100 NVSwitch, "
          f"{args.requests_per_gpu} requests and 4 req/s per GPU")
    print(f"{'EP':>3} {'routing':>14} {'TPOT mean':>10} {'TPOT p90':>9} {'TTFT p50':>9} {'tok/s/GPU':>10} "
          f"{'imbalance':>10}")
    for ep in (1, 2, 4, 8):
        for routing in ({"routing": "balanced"}, {"routing": "skewed", "zipf_s": 0.6},
                        {"routing": "skewed", "zipf_s": 1.0}, {"routing": "skewed", "zipf_s": 1.4})[:1 if ep == 1 else 4]:
            raw = _raw(ep, 1, ep > 1, args.requests_per_gpu * ep, 4.0 * ep, routing)
            run = resolve(parse_config(raw, "bench"))
            res, extra = simulate(run)
            s = summarize(res, extra)
            groups = (s.get("moe") or {}).get("groups") or [{}]
            imb = groups[0].get("mean_straggler_imbalance", 1.0)
            label = routing["routing"] + (f" s={routing['zipf_s']}" if "zipf_s" in routing else "")
            print(f"{ep:3d} {label:>14} {s['tpot_ms']['mean']:10.2f} {s['tpot_ms']['p90']:9.2f} "
                  f"{s['ttft_ms']['p50']:9.1f} {s['throughput']['output_tokens_per_s'] / ep:10.1f} "
                  f"{imb:10.2f}")


if __name__ == "__main__":
    main()
