"""Sweep throughput: a 100-point sweep of 1000-request quickstart runs (Llama-3.1-8B on one H100), on local
processes and, when ray is importable, on a local Ray with as many CPUs; checks both give the same table.

    python bench/bench_sweep.py [--workers N] [--no-ray] [--out DIR]

Grid: engine.max_num_seqs (5) x workload.arrival.rate_per_s (5) x seeds (4) = 100 points. Writes the
figures to bench/results/sweep.txt.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SWEEP = """\
base: {base}
grid:
  engine.max_num_seqs: [32, 64, 128, 256, 512]
  workload.arrival.rate_per_s: [5, 10, 20, 40, 80]
seeds: [1, 2, 3, 4]
overrides: {{workload: {{num_requests: 1000}}}}
slo: [ttft_p99_ms=2000, tpot_p50_ms=50]
"""


def _table(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return [r[:-1] for r in csv.reader(f)]  # without wall_s


def main() -> None:
    from frontend.study.sweep import load_sweep, run_sweep

    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    f = work / "sweep.yaml"
    f.write_text(SWEEP.format(base=REPO / "configs" / "examples" / "quickstart.yaml"))
    spec = load_sweep(f)
    assert len(spec.points) == 100, len(spec.points)
    lines = [f"bench_sweep: {len(spec.points)} points x 1000 requests (quickstart: Llama-3.1-8B, 1x H100-SXM), "
             f"grid max_num_seqs x rate_per_s x 4 seeds; {platform.machine()}, {os.cpu_count()} CPUs, "
             f"python {platform.python_version()}"]

    local_dir = work / "local"
    shutil.rmtree(local_dir, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_sweep(spec, local_dir, workers=args.workers)
    wall = time.perf_counter() - t0
    assert res.ran == 100 and not res.failed, res.failed[:1]
    with res.path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    point_s = sum(float(r["wall_s"]) for r in rows)
    lines.append(f"local processes ({args.workers} workers): {wall:.1f} s wall, {point_s:.1f} s of point runs "
                 f"({point_s / len(rows):.2f} s each), {len(rows) / wall:.2f} points/s")
    met = sum(r["slo_met"] == "True" for r in rows)
    lines.append(f"  {met} of {len(rows)} points meet ttft_p99_ms=2000 tpot_p50_ms=50")

    try:
        import ray
    except ImportError:
        ray = None
    if ray is None or args.no_ray:
        lines.append("ray: not run (" + ("--no-ray" if args.no_ray else "ray not installed") + ")")
    else:
        ray_dir = work / "ray"
        shutil.rmtree(ray_dir, ignore_errors=True)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t0
        try:
            rres = run_sweep(spec, ray_dir, ray_address="")
        finally:
            ray.shutdown()
        rwall = time.perf_counter() - t0
        assert rres.ran == 100 and not rres.failed, rres.failed[:1]
        same = _table(res.path) == _table(rres.path)
        lines.append(f"local Ray {ray.__version__} ({args.workers} CPUs): {rwall:.1f} s wall incl. {t_init:.1f} s "
                     f"ray.init; table identical to local processes (without wall_s): {same}")
        assert same
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = REPO / "bench" / "results" / "sweep.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
