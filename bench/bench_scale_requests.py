"""Peak memory and wall time of `astraserve run` against the number of synthetic requests.

Each size runs in its own process (`astraserve run ... --num-requests N --quiet`) on one H100 with
Llama-3.1-8B at a load it sustains (so the waiting queue does not grow with N); the peak resident set
comes from getrusage of that child. Requests and iterations are streamed to CSV, so peak memory should
stay flat in N and wall time linear.

    python bench/bench_scale_requests.py [N ...]        (default: 100000 1000000)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "name": "scale-requests",
    "seed": 42,
    "model": "Llama-3.1-8B",
    "instances": [{"name": "h100", "hardware": "H100-SXM"}],
    "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 2048},
    "workload": {"kind": "synthetic", "num_requests": 1000,
                 "arrival": {"process": "poisson", "rate_per_s": 40},
                 "prompt_tokens": {"dist": "lognormal", "mean": 256, "sigma": 0.8, "max": 4096},
                 "output_tokens": {"dist": "lognormal", "mean": 24, "sigma": 0.6, "max": 256}},
}


def run_one(n: int, work: Path) -> tuple[float, float, int, int]:
    """(wall s, peak RSS MB, requests.csv rows, iterations.csv rows) of one run of n requests."""
    cfg = work / "scale.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = work / f"out-{n}"
    code = ("import resource, sys, time\n"
            "from frontend.cli import app\n"
            "t0 = time.perf_counter()\n"
            "try:\n"
            "    app(sys.argv[1:])\n"
            "except SystemExit as e:\n"
            "    rc = e.code or 0\n"
            "print('WALL', time.perf_counter() - t0, file=sys.stderr)\n"
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, "run", str(cfg), "--num-requests", str(n), "--out", str(out),
                        "--quiet"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"run of {n} requests failed ({p.returncode}): {p.stderr[-2000:]}")
    vals = dict(line.split(" ", 1) for line in p.stderr.splitlines() if line.startswith(("WALL ", "RSS ")))
    rss_mb = int(vals["RSS"]) / 1024  # ru_maxrss is KiB on Linux
    with (out / "requests.csv").open() as f:
        nreq = sum(1 for _ in f) - 1
    with (out / "iterations.csv").open() as f:
        nit = sum(1 for _ in f) - 1
    return float(vals.get("WALL", wall)), rss_mb, nreq, nit


def main() -> None:
    sizes = [int(x) for x in sys.argv[1:]] or [100_000, 1_000_000]
    print(f"# bench_scale_requests: one H100 / Llama-3.1-8B, Poisson 40 req/s, prompt ~256, output ~24 tokens; "
          f"{os.cpu_count()} CPUs; peak RSS of the run's process (getrusage)")
    print(f"{'requests':>10} {'iterations':>11} {'wall_s':>9} {'us/request':>11} {'peak_rss_MB':>12}")
    base = None
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            wall, rss, nreq, nit = run_one(n, Path(d))
            assert nreq == n, (nreq, n)
            base = base or (n, wall, rss)
            print(f"{n:>10} {nit:>11} {wall:>9.1f} {wall / n * 1e6:>11.1f} {rss:>12.1f}", flush=True)
            for f in (Path(d) / f"out-{n}").iterdir():
                f.unlink()
    if base and len(sizes) > 1:
        print(f"# peak memory ratio {sizes[-1]} / {base[0]}: {rss / base[2]:.3f}; "
              f"wall ratio {wall / base[1]:.2f} for {sizes[-1] / base[0]:.0f}x requests")
    _ = resource  # the children measure themselves


if __name__ == "__main__":
    main()
