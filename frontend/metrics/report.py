"""Write a run's outputs: requests.csv, iterations.csv, summary.json (and run_info.json: wall time)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from frontend.engine import RunResult

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
    tiers = result.iterations.tier_names
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQ_COLUMNS + ([f"cached_tokens_{t}" for t in ["hbm", *tiers]] if tiers else []))
        for r in result.requests:
            row = [r.request_id, r.arrival_ns, r.first_token_ns, r.finish_ns, r.input_tokens, r.output_tokens,
                   r.cached_tokens, r.preemptions, r.instance, r.status]
            if tiers:
                row += [r.cached_tokens_by_tier.get(t, 0) for t in ["hbm", *tiers]]
            w.writerow(row)


def write_iterations_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(result.iterations.columns)
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

    if result.iterations.tier_names:
        s["kv_tiers"] = tier_summary(result)
    if result.orchestrator is not None:
        s["agents"] = program_summary(result)
    if len(result.instances) > 1:
        s["per_instance"] = instance_summary(result)

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


def tier_summary(result: RunResult) -> dict[str, Any]:
    """Hit rate per tier = prompt tokens served from that tier / prompt tokens looked up."""
    looked_up = sum(r.input_tokens for r in result.requests if r.status == "finished")
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name in ["hbm", *result.iterations.tier_names]:
        hit = sum(r.cached_tokens_by_tier.get(name, 0) for r in result.requests)
        entry: dict[str, Any] = {"hit_tokens": hit, "hit_rate": round(hit / looked_up, 6) if looked_up else 0.0}
        for inst in result.instances:
            for t in inst.lower_tiers:
                if t.name == name and id(t) not in seen:
                    seen.add(id(t))
                    st = t.stats
                    for k in ("loaded_blocks", "stored_blocks", "loaded_bytes", "stored_bytes", "evictions"):
                        entry[k] = entry.get(k, 0) + getattr(st, k)
                    entry["capacity_gib"] = t.cfg.capacity_gib
                    entry["final_occupancy_blocks"] = entry.get("final_occupancy_blocks", 0) + t.occupancy_blocks()
        out[name] = entry
    return out


PROGRAM_COLUMNS = ["program_id", "arrival_ns", "completion_ns", "turns", "tool_ns", "queue_ns", "input_tokens",
                   "cached_tokens", "instances"]


def program_rows(result: RunResult) -> list[list]:
    orch = result.orchestrator
    if orch is None:
        return []
    by_prog: dict[str, list] = {}
    for r in result.requests:
        if r.program_id:
            by_prog.setdefault(r.program_id, []).append(r)
    rows = []
    for pid, st in orch.programs.items():
        turns = by_prog.get(pid, [])
        queue = sum(max(0, r.scheduled_ns - r.arrival_ns) for r in turns if r.scheduled_ns >= 0)
        rows.append([pid, st.arrival_ns, st.completion_ns, len(turns), st.tool_ns, queue,
                     sum(r.input_tokens for r in turns), sum(r.cached_tokens for r in turns),
                     "|".join(sorted(st.instances))])
    return rows


def program_summary(result: RunResult) -> dict[str, Any]:
    rows = program_rows(result)
    done = [r for r in rows if r[2] >= 0]
    later = [r for r in result.requests if r.program_id and r.turn_index > 0 and r.status == "finished"]
    ttft_by_turn: dict[str, list[float]] = {}
    for r in result.requests:
        if r.program_id and r.status == "finished":
            k = "first" if r.turn_index == 0 else "later"
            ttft_by_turn.setdefault(k, []).append(r.first_token_ns - r.arrival_ns)
    s: dict[str, Any] = {
        "programs": len(rows), "completed": len(done),
        "completion_ms": dist_ms([r[2] - r[1] for r in done]),
        "turn_ttft_ms": {k: dist_ms(v) for k, v in sorted(ttft_by_turn.items())},
        "cross_turn_hit_rate": round(sum(r.cached_tokens for r in later) / max(1, sum(r.input_tokens for r in later)), 6),
        "tool_time_s": round(sum(r[4] for r in rows) / 1e9, 3),
        "queue_time_s": round(sum(r[5] for r in rows) / 1e9, 3),
    }
    ret = result.retention
    if ret is not None:
        st = ret.stats
        s["policy"] = {"pins_created": st.pins_created, "pins_expired": st.pins_expired, "pins_broken": st.pins_broken,
                       "pins_used": st.pins_used, "decisions": dict(sorted(st.decisions.items())),
                       "prefetches": st.prefetches, "bytes_prefetched": st.bytes_prefetched}
    if result.router is not None:
        s["router"] = {"affinity_hits": result.router.affinity_hits, "affinity_breaks": result.router.affinity_breaks}
    return s


def instance_summary(result: RunResult) -> list[dict[str, Any]]:
    out = []
    for inst in result.instances:
        reqs = [r for r in result.requests if r.instance == inst.name and r.status == "finished"]
        rows = [r for r in result.iterations.rows if r[0] == inst.name]
        busy = sum(r[2] - r[1] for r in rows)
        out.append({"name": inst.name, "requests": len(reqs), "iterations": len(rows),
                    "busy_share": round(busy / result.sim_end_ns, 6) if result.sim_end_ns else 0.0,
                    "ttft_ms": dist_ms([r.first_token_ns - r.arrival_ns for r in reqs]),
                    "preemptions": sum(r.preemptions for r in reqs), "kv_blocks": inst.pool.num_blocks})
    return out


def write_outputs(result: RunResult, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_requests_csv(result, out_dir / "requests.csv")
    if result.orchestrator is not None:
        with (out_dir / "programs.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(PROGRAM_COLUMNS)
            w.writerows(program_rows(result))
    write_iterations_csv(result, out_dir / "iterations.csv")
    summary = summarize(result, extra)
    # wall time is the only output that differs between identical runs: it goes to its own file so that
    # every other output is byte-identical for the same config and seed
    deterministic = {k: v for k, v in summary.items() if k != "wall_s"}
    (out_dir / "summary.json").write_text(json.dumps(deterministic, indent=2, sort_keys=False) + "\n")
    (out_dir / "run_info.json").write_text(json.dumps({"wall_s": summary["wall_s"]}, indent=2) + "\n")
    return summary
