"""Scale of agent simulation: programs (about 10 turns each) on 16 instances.

Prints wall seconds, peak memory (RSS, MB) and simulated iterations for 1k, 10k
and 50k programs of configs/examples/agents-scale-16x.yaml, each in a fresh
process so peak memory is per run. Target: 10k programs (~100k turns) < 60 s and
< 2 GB; wall time linear in the number of programs.
Usage: python bench/bench_agents.py [--programs 1000 10000 50000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate
run = load_and_resolve(sys.argv[1], {"workload": {"num_programs": int(sys.argv[2])}})
t0 = time.perf_counter()
res, extra = simulate(run)
wall = time.perf_counter() - t0
s = summarize(res, extra)
print(json.dumps({"wall_s": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "turns": len(res.requests), "iterations": s["iterations"], "programs": s["agents"]["programs"],
                  "completed": s["agents"]["completed"], "sim_s": s["simulated_duration_s"],
                  "completion_ms": s["agents"]["completion_ms"]["mean"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, nargs="+", default=[1000, 10000, 50000])
    a = ap.parse_args()
    cfg = REPO / "configs/examples/agents-scale-16x.yaml"
    print(f"{'programs':>8s} {'turns':>7s} {'iterations':>10s} {'wall s':>8s} {'s/1k prog':>9s} {'peak MB':>8s} "
          f"{'sim s':>8s} {'completion mean s':>17s}")
    for n in a.programs:
        out = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(n)], capture_output=True, text=True,
                             check=True, cwd=REPO)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['programs']:8d} {r['turns']:7d} {r['iterations']:10d} {r['wall_s']:8.1f} "
              f"{1000 * r['wall_s'] / r['programs']:9.2f} {r['rss_mb']:8.0f} {r['sim_s']:8.1f} "
              f"{r['completion_ms'] / 1e3:17.1f}")


if __name__ == "__main__":
    main()
