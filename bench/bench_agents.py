"""Scale of agent simulation: programs on 16 instances.

Two points, each program count in a fresh process so peak memory (RSS, MB) is per run:
  light      configs/examples/agents-scale-16x.yaml as it is: 5-15 turns, short contexts (about 10 turns,
             ~100k turns per 10k programs). Target: 10k programs < 60 s and < 2 GB, linear in programs.
  realistic  the same cluster with long coding sessions whose context grows turn by turn: 5-20 turns,
             1.5k-token system prompt, tool outputs lognormal (mean 1000 tokens) and answers lognormal
             (mean 250), so late turns carry ~20-25k tokens of context; tool gaps lognormal (read_file
             0.2 s, grep 0.5 s, edit 0.1 s, run_tests 8 s); programs arrive at 20/s. Decode-dominated:
             this is where decode run-ahead counts. Target: 10k programs <= 30 s and <= 1 GB.
Each row gives wall seconds with decode run-ahead on (and, with --compare, off) and what was simulated.
Usage: python bench/bench_agents.py [--point light|realistic|both] [--programs 1000 10000] [--compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

REALISTIC = {
    "turns_min": 5, "turns_max": 20, "system_prompt_tokens": 1500, "rate_per_s": 20,
    "tool_output_tokens": {"dist": "lognormal", "mean": 1000, "sigma": 0.8, "max": 6000},
    "output_tokens": {"dist": "lognormal", "mean": 250, "sigma": 0.7, "max": 2048},
    "tools": {"read_file": {"dist": "lognormal", "mean_ms": 200, "sigma": 0.8},
              "grep": {"dist": "lognormal", "mean_ms": 500, "sigma": 0.9},
              "edit": {"dist": "lognormal", "mean_ms": 100, "sigma": 0.5},
              "run_tests": {"dist": "lognormal", "mean_ms": 8000, "sigma": 1.0}},
}

CHILD = """
import json, resource, sys, time
from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate
run = load_and_resolve(sys.argv[1], {"workload": {"num_programs": int(sys.argv[2]), **json.loads(sys.argv[3])}})
t0 = time.perf_counter()
res, extra = simulate(run, run_ahead=sys.argv[4] == "on")
wall = time.perf_counter() - t0
s = summarize(res, extra)
print(json.dumps({"wall_s": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "turns": len(res.requests), "iterations": s["iterations"], "programs": s["agents"]["programs"],
                  "completed": s["agents"]["completed"], "sim_s": s["simulated_duration_s"],
                  "completion_ms": s["agents"]["completion_ms"]["mean"],
                  "max_input": max((r.input_tokens for r in res.requests), default=0),
                  "closed_form": res.backend_stats.get("closed_form", 0)}))
"""


def child(cfg: Path, n: int, point: str, mode: str) -> dict:
    extra = json.dumps(REALISTIC if point == "realistic" else {})
    out = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(n), extra, mode], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--point", choices=["light", "realistic", "both"], default="both")
    ap.add_argument("--programs", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--compare", action="store_true", help="also run each point with run-ahead off")
    a = ap.parse_args()
    cfg = REPO / "configs/examples/agents-scale-16x.yaml"
    print(f"{'point':9s} {'programs':>8s} {'turns':>7s} {'max ctx':>7s} {'iterations':>10s} {'closed':>9s} "
          f"{'wall s':>8s} {'off s':>8s} {'peak MB':>8s} {'sim s':>8s} {'completion mean s':>17s}", flush=True)
    for point in (["light", "realistic"] if a.point == "both" else [a.point]):
        for n in a.programs:
            r = child(cfg, n, point, "on")
            off = f"{child(cfg, n, point, 'off')['wall_s']:8.1f}" if a.compare else f"{'-':>8s}"
            print(f"{point:9s} {r['programs']:8d} {r['turns']:7d} {r['max_input']:7d} {r['iterations']:10d} "
                  f"{r['closed_form']:9d} {r['wall_s']:8.1f} {off} {r['rss_mb']:8.0f} {r['sim_s']:8.1f} "
                  f"{r['completion_ms'] / 1e3:17.1f}", flush=True)


if __name__ == "__main__":
    main()
