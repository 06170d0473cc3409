"""Simulation speed of the end-to-end loop, and the RTX4090 run next to real vLLM.

Prints wall seconds and simulated iterations per second for
  * the quickstart (1000 synthetic requests, Llama-3.1-8B on H100), and
  * the 300-request ShareGPT replay on RTX4090 with the engine settings of the
    reference vLLM run's meta.json,
each with decode run-ahead on and off (min of --rounds paired runs in this process), then the latter's
TTFT/TPOT/E2E next to the real vLLM numbers with signed errors.
With --examples: every config in configs/examples (agent ones at --programs programs), run-ahead on
vs off, min / median of --rounds paired in-process runs, the speed-up, how many steps were timed in
closed form, and a check that both modes wrote the same requests.csv / iterations.csv.
Usage: python bench/bench_loop.py [--shared ../shared] [--profile] [--rounds 3]
       python bench/bench_loop.py --examples [--rounds 3] [--programs 300] [--out bench/results/runahead.txt]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate
from frontend.validation.reference import engine_from_meta, load_vllm_requests

REPO = Path(__file__).resolve().parents[1]


def timed(run, run_ahead: bool = True, stream_dir: Path | None = None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result, extra = simulate(run, run_ahead=run_ahead, stream_dir=stream_dir)
    wall = time.perf_counter() - t0
    s = summarize(result, extra)
    s["closed_form"] = result.backend_stats.get("closed_form", 0)
    return wall, s


def paired(run, rounds: int, stream: Path | None = None) -> tuple[dict[bool, list[float]], dict]:
    """Wall seconds of `rounds` runs with run-ahead on and off, alternating; the summary of the last 'on' run."""
    walls: dict[bool, list[float]] = {True: [], False: []}
    s: dict = {}
    for i in range(rounds):
        for on in (True, False):
            d = None
            if stream is not None and i == 0:
                d = stream / ("on" if on else "off")
                d.mkdir(parents=True)
            w, summ = timed(run, on, d)
            walls[on].append(w)
            if on:
                s = summ
    return walls, s


def examples(a: argparse.Namespace) -> None:
    lines = [f"# python bench/bench_loop.py --examples --rounds {a.rounds} --programs {a.programs} (in-process, "
             "run-ahead on/off alternating; agent examples at --programs programs, the rest as configured)",
             f"{'example':38s} {'iters':>8s} {'closed':>7s} {'on_min':>7s} {'on_med':>7s} {'off_min':>7s} "
             f"{'off_med':>7s} {'speedup':>7s} {'same':>4s}"]
    print(lines[0])
    print(lines[1])
    for cfg in sorted((REPO / "configs/examples").glob("*.yaml")):
        ov = {"workload": {"num_requests": a.programs}} if cfg.stem.startswith("agents-") else None
        try:
            run = load_and_resolve(cfg, ov)
        except Exception as e:  # noqa: BLE001 - a validation set without ../shared: say so and go on
            print(f"{cfg.stem:38s} skipped: {e}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            walls, s = paired(run, a.rounds, Path(tmp))
            same = all((Path(tmp) / "on" / f).read_bytes() == (Path(tmp) / "off" / f).read_bytes()
                       for f in ("requests.csv", "iterations.csv"))
        on, off = walls[True], walls[False]
        line = (f"{cfg.stem:38s} {s['iterations']:8d} {s['closed_form']:7d} {min(on):7.3f} {statistics.median(on):7.3f} "
                f"{min(off):7.3f} {statistics.median(off):7.3f} {min(off) / min(on):6.2f}x {'yes' if same else 'NO':>4s}")
        print(line, flush=True)
        lines.append(line)
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--profile", action="store_true", help="use the RTX4090 profile bundle instead of roofline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--examples", action="store_true", help="run-ahead on/off on every example config")
    ap.add_argument("--programs", type=int, default=300, help="--examples: programs of the agent examples")
    ap.add_argument("--out", type=Path, default=None, help="--examples: also write the table here")
    a = ap.parse_args()
    if a.examples:
        examples(a)
        return
    lss = a.shared / "data" / "llmservingsim"
    print(f"{'run':42s} {'requests':>8s} {'iters':>7s} {'on_min_s':>8s} {'off_min_s':>9s} {'iters/s':>9s}")
    q = load_and_resolve(REPO / "configs/examples/quickstart.yaml")
    walls, s = paired(q, a.rounds)
    wall = min(walls[True])
    print(f"{'quickstart (H100, 1000 synthetic)':42s} {s['requests']:8d} {s['iterations']:7d} {wall:8.3f} "
          f"{min(walls[False]):9.3f} {s['iterations'] / wall:9.0f}")
    ref_dir = lss / "validation/RTX4090-Llama-3.1-8B/vllm"
    ov = {"workload": {"kind": "jsonl", "path": str(lss / "workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl")},
          "engine": engine_from_meta(ref_dir / "meta.json")}
    label = "rtx4090 sharegpt-300 (roofline)"
    if a.profile:
        ov["compute"] = {"kind": "profile", "profile": str(lss / "profiles/RTX4090/meta-llama/Llama-3.1-8B")}
        label = "rtx4090 sharegpt-300 (profile)"
    r = load_and_resolve(REPO / "configs/examples/rtx4090-llama3.1-8b.yaml", ov)
    walls, s = paired(r, a.rounds)
    wall = min(walls[True])
    print(f"{label:42s} {s['requests']:8d} {s['iterations']:7d} {wall:8.3f} {min(walls[False]):9.3f} "
          f"{s['iterations'] / wall:9.0f}")
    ref = load_vllm_requests(ref_dir)
    print(f"\n{'metric':10s} {'stat':5s} {'vLLM':>10s} {'sim':>10s} {'error':>8s}")
    for key, arr in (("ttft_ms", ref.ttft), ("tpot_ms", ref.tpot), ("e2e_ms", ref.e2e)):
        ms = arr * 1e3
        for stat, val in (("mean", ms.mean()), ("p50", np.percentile(ms, 50)), ("p99", np.percentile(ms, 99))):
            sim = s[key][stat]
            print(f"{key:10s} {stat:5s} {val:10.1f} {sim:10.1f} {100 * (sim - val) / val:+7.1f}%")


if __name__ == "__main__":
    main()
