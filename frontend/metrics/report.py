"""Write a run's outputs: requests.csv, iterations.csv, summary.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from frontend.engine import RunResult
from frontend.metrics.collector import ITER_COLUMNS

REQ_COLUMNS = ["request_id", "arrival_ns", "first_token_ns", "finish_ns", "input_tokens", "output_tokens",
               "cached_tokens", "preemptions", "instance", "status"]


def dist_ms(values_ns: list[float]) -> dict[str, float]:
    if not values_ns:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    a = np.asarray(values_ns, dtype=float) / 1e6
    return {"mean": round(float(a.mean()), 4), "p50": round(float(np.percentile(a, 50)), 4),
            "p90": round(float(np.percentile(a, 90)), 4), "p99": round(float(np.percentile(a, 99)), 4)}


def latency_samples(result: RunResult) -> dict[str, list[float]]:
    ttft, tpot, e2e = [], [], []
    for r in result.requests:
        if r.status != "finished":
            continue
        ttft.append(r.first_token_ns - r.arrival_ns)
        e2e.append(r.finish_ns - r.arrival_ns)
        if r.output_tokens > 1:
            tpot.append((r.finish_ns - r.first_token_ns) / (r.output_tokens - 1))
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e}


def write_requests_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQ_COLUMNS)
        for r in result.requests:
            w.writerow([r.request_id, r.arrival_ns, r.first_token_ns, r.finish_ns, r.input_tokens, r.output_tokens,
                        r.cached_tokens, r.preemptions, r.instance, r.status])


def write_iterations_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ITER_COLUMNS)
        w.writerows(result.iterations.rows)


def summarize(result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    fin = [r for r in result.requests if r.status == "finished"]
    rej = [r for r in result.requests if r.status == "rejected"]
    dur_s = result.sim_end_ns / 1e9 if result.sim_end_ns else 0.0
    out_tokens = sum(r.output_tokens for r in fin)
    lat = latency_samples(result)
    rows = result.iterations.rows
    busy = sum(r[2] - r[1] for r in rows)
    exposed_comm = sum(r[10] for r in rows)
    exposed_mem = sum(r[12] for r in rows)
    s: dict[str, Any] = {
        "requests": len(result.requests),
        "completed": len(fin),
        "rejected": len(rej),
        "rejections": sorted({r.reject_reason for r in rej})[:5],
        "simulated_duration_s": round(dur_s, 6),
        "throughput": {"requests_per_s": round(len(fin) / dur_s, 4) if dur_s else 0.0,
                       "output_tokens_per_s": round(out_tokens / dur_s, 3) if dur_s else 0.0},
        "ttft_ms": dist_ms(lat["ttft"]),
        "tpot_ms": dist_ms(lat["tpot"]),
        "e2e_ms": dist_ms(lat["e2e"]),
        "iterations": len(rows),
        "preemptions": sum(r.preemptions for r in result.requests),
        "exposed_comm_share": round(exposed_comm / busy, 6) if busy else 0.0,
        "exposed_mem_share": round(exposed_mem / busy, 6) if busy else 0.0,
        "backend": result.backend_stats,
        "wall_s": round(result.wall_s, 3),
    }
    from frontend.metrics.power import EnergyBreakdown

    e = EnergyBreakdown()
    for inst in result.instances:
        e.add(inst.power.energy)
    s["energy"] = {
        "total_j": round(e.total_j, 3),
        "breakdown_j": {k: round(v, 3) for k, v in vars(e).items()},
        "average_power_w": round(e.total_j / dur_s, 3) if dur_s else 0.0,
        "energy_per_output_token_j": round(e.total_j / out_tokens, 6) if out_tokens else 0.0,
        "output_tokens_per_joule": round(out_tokens / e.total_j, 6) if e.total_j else 0.0,
    }
    if extra:
        s.update(extra)
    return s


def write_outputs(result: RunResult, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_requests_csv(result, out_dir / "requests.csv")
    write_iterations_csv(result, out_dir / "iterations.csv")
    summary = summarize(result, extra)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return summary
