"""Policy comparison tables for the agent examples.

agents-coding-4x: vLLM default (FCFS + LRU), Continuum (program FCFS + TTL pin, fixed 2 s or from the
utility model), InferCept (min-waste + original-arrival order), Autellix (PLAS), KVFlow-style invocation
distance + prefetch. The papers' own setups are in configs/studies/ (bench/bench_agent_papers.py).
agents-multiagent-5k: LRU vs invocation-distance eviction + prefetch.
Usage: python bench/bench_agent_policies.py [--programs N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]

CODING = [
    ("vLLM (fcfs+lru)", {"scheduling": "fcfs", "retention": "lru"}),
    ("Continuum (program_fcfs+ttl_pin)", {"scheduling": "program_fcfs", "retention": "ttl_pin"}),
    ("Continuum (ttl from utility)", {"scheduling": "program_fcfs", "retention": "ttl_pin", "ttl_policy": "utility"}),
    # InferCept orders resumed requests by their original arrival ("original arrival time scheduling")
    ("InferCept (min_waste)", {"scheduling": "program_fcfs", "retention": "min_waste"}),
    ("Autellix (plas)", {"scheduling": "plas", "retention": "lru"}),
    ("KVFlow (inv.distance+prefetch)", {"retention": "invocation_distance", "prefetch": "invocation_distance"}),
]
MULTI = [
    ("LRU", {"retention": "lru"}),
    ("invocation distance + prefetch", {"retention": "invocation_distance", "prefetch": "invocation_distance"}),
]


def table(cfg: str, variants, overrides: dict) -> None:
    print(f"\n{cfg}")
    cfg = cfg.split(" ")[0]
    print(f"{'policy':34s} {'prog mean s':>11s} {'prog p99 s':>10s} {'turn TTFT ms':>12s} {'later TTFT':>10s} "
          f"{'x-turn hit':>10s} {'HBM hit':>8s} {'pins c/e/b':>12s} {'prefetch GB':>11s} {'wall s':>7s}")
    for name, pol in variants:
        run = load_and_resolve(REPO / "configs/examples" / cfg, {**overrides, "policy": pol})
        t0 = time.perf_counter()
        res, extra = simulate(run)
        wall = time.perf_counter() - t0
        s = summarize(res, extra)
        a = s["agents"]
        p = a.get("policy", {})
        hbm = s.get("kv_tiers", {}).get("hbm", {}).get("hit_rate", s["prefix_cache"]["hbm_hit_rate"])
        print(f"{name:34s} {a['completion_ms']['mean'] / 1e3:11.2f} {a['completion_ms']['p99'] / 1e3:10.2f} "
              f"{s['ttft_ms']['mean']:12.1f} {a['turn_ttft_ms'].get('later', {}).get('mean', 0):10.1f} "
              f"{a['cross_turn_hit_rate']:10.3f} {hbm:8.3f} "
              f"{p.get('pins_created', 0)}/{p.get('pins_expired', 0)}/{p.get('pins_broken', 0):>4} "
              f"{p.get('bytes_prefetched', 0) / 1e9:11.2f} {wall:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=None)
    ap.add_argument("--skip-multiagent", action="store_true")
    ap.add_argument("--rate", type=float, default=None, help="program arrival rate (default: the config's, 4/s)")
    a = ap.parse_args()
    wl: dict = {}
    if a.programs:
        wl["num_programs"] = a.programs
    if a.rate:
        wl["rate_per_s"] = a.rate
    ov = {"workload": wl} if wl else {}
    table("agents-coding-4x.yaml" + (f" at {a.rate} programs/s" if a.rate else ""), CODING, ov)
    if not a.skip_multiagent:
        table("agents-multiagent-5k.yaml", MULTI, {})


if __name__ == "__main__":
    main()
