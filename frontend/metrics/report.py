"""Write a run's outputs: requests.csv, iterations.csv, summary.json and run_info.json.

requests.csv and iterations.csv are streamed while the run goes (frontend/metrics/collector.py); the
summary is built from the running aggregates. Everything except run_info.json is byte-identical for the
same config and seed.
"""

from __future__ import annotations

import csv
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frontend.engine import RunResult
from frontend.metrics.collector import REQ_COLUMNS  # noqa: F401  (re-exported)
from frontend.metrics.output import write_json


def dist_ms(values_ns: Sequence[float], consume: bool = False) -> dict[str, float | None]:
    """mean/p50/p90/p99 in ms; all null (valid JSON, never NaN) when there are no samples. With `consume`
    (a float64 array('d') nobody needs afterwards) the work happens in place: no copy of the samples."""
    if len(values_ns) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    import numpy as np  # here, not at module import: a JSONL replay needs numpy only for its summary

    if consume and isinstance(values_ns, array) and values_ns.typecode == "d":
        a = np.frombuffer(values_ns, dtype=float)
        a /= 1e6
    else:
        a = np.asarray(values_ns, dtype=float) / 1e6
    mean = round(float(a.mean()), 4)  # before the in-place partitioning below reorders the samples
    p50, p90, p99 = (round(float(x), 4) for x in np.percentile(a, [50, 90, 99], overwrite_input=True))
    return {"mean": mean, "p50": p50, "p90": p90, "p99": p99}


def latency_samples(result: RunResult) -> dict[str, Sequence[float]]:
    return {k: _samples(result, k) for k in ("ttft", "tpot", "e2e")}


def _samples(result: RunResult, metric: str, instance: str | None = None) -> Sequence[float]:
    """Latency samples: kept in memory, or (streamed runs) read back one metric at a time from requests.csv,
    so a summary of N requests needs 8N bytes at a time instead of holding every sample through the run."""
    from frontend.metrics.collector import csv_samples

    log = result.request_log
    if log.csv_path is not None:
        n = log.finished if instance is None else log.per_instance[instance].finished \
            if instance in log.per_instance else 0
        return csv_samples(log.csv_path, metric, instance, size=n)
    if instance is not None:
        st = log.per_instance.get(instance)
        return st.ttft_ns if st is not None else []
    return {"ttft": log.ttft_ns, "tpot": log.tpot_ns, "e2e": log.e2e_ns}[metric]


def write_requests_csv(result: RunResult, path: Path) -> None:
    """requests.csv of a run whose requests were kept in memory (the streaming path writes it as it goes)."""
    from frontend.metrics.collector import RequestLog

    log = RequestLog(tier_names=result.request_log.tier_names, keep=False)
    with path.open("w", newline="") as f:
        log.attach(f)
        for r in result.requests:
            log.add(r)


def write_iterations_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(result.iterations.columns)
        w.writerows(result.iterations.rows)


def rejection_summary(result: RunResult) -> dict[str, Any]:
    log = result.request_log
    return {code: {"count": n, "example": log.reason_example[code]} for code, n in sorted(log.reasons.items())}


def speculative_summary(result: RunResult) -> dict[str, Any]:
    """Speculative decoding: verify passes of decode sequences, tokens they emitted, the expected tokens per
    pass, 1 + sum_i prod_{j<=i} a_j ((1 - a^(K+1)) / (1 - a) for one rate; the output-length cap lowers the mean),
    and the draft overhead share: the drafter's operator time over the speculating instances' busy time."""
    scheds = [i.scheduler for i in result.instances if i.scheduler.spec_k]
    if not scheds:
        return {}
    eng = result.instances[0].inst.engine
    k = eng.speculative_tokens
    rates = scheds[0].spec_accept
    steps = sum(s.spec_steps for s in scheds)
    toks = sum(s.spec_tokens for s in scheds)
    expect, reach = 1.0, 1.0  # E[tokens] = 1 + sum over positions of P(all drafts up to it accepted)
    for r in rates:
        reach *= r
        expect += reach
    # the drafter's share of the speculative instances' busy time (its `spec_draft` operator in their steps;
    # 0 for n-gram lookup, which runs on the CPU)
    spec_insts = [i for i in result.instances if i.scheduler.spec_k]
    draft = sum(i.draft_ns for i in spec_insts)
    per = result.iterations.per_instance
    busy = sum(per[i.name].busy_ns for i in spec_insts if i.name in per)
    out = {"method": eng.speculative_method, "draft_tokens": k, "acceptance": eng.speculative_acceptance,
           "verify_passes": steps, "tokens_emitted": toks, "tokens_per_pass": round(toks / steps, 6) if steps else 0.0,
           "expected_tokens_per_pass": round(expect, 6),
           "draft_ms": round(draft / 1e6, 6), "draft_overhead_share": round(draft / busy, 6) if busy else 0.0}
    if eng.speculative_acceptance_trace:
        out["expected_tokens_per_pass_note"] = "for the configured rates; traced requests use their own"
    return out


def cost_summary(result: RunResult, output_tokens: int, duration_s: float) -> dict[str, Any]:
    """GPU-hours of the run (every instance's GPUs for the simulated duration) at its hardware entries' rental
    prices (`cost_per_hour_usd`, each with its source); empty unless every instance's hardware has a price."""
    prices = [(i.inst.num_npus, i.inst.hardware.cost_per_hour_usd) for i in result.instances]
    if not prices or any(p is None for _, p in prices) or duration_s <= 0:
        return {}
    gpus = sum(n for n, _ in prices)
    usd = sum(n * p for n, p in prices) * duration_s / 3600.0
    return {"gpus": gpus, "gpu_hours": round(gpus * duration_s / 3600.0, 6), "usd": round(usd, 6),
            "output_tokens_per_usd": round(output_tokens / usd, 3) if usd else 0.0}


def moe_summary(result: RunResult) -> dict[str, Any]:
    """DP groups in lockstep (steps, dummy batches, padding, EP straggler imbalance) and the routing used."""
    groups = {}
    for inst in result.instances:
        stats = getattr(inst.unit, "stats", None)
        if stats is not None and inst.unit.name not in groups:
            g = inst.unit
            groups[g.name] = {"members": [m.name for m in g.members], "dispatch": g.dispatch, **stats.as_dict()}
    if not groups:
        return {}
    moe = (result.info.get("config") or {}).get("moe") or {}
    return {"routing": moe.get("routing"), "groups": list(groups.values())}


def summarize(result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    log = result.request_log
    it = result.iterations
    dur_s = result.sim_end_ns / 1e9 if result.sim_end_ns else 0.0
    out_tokens = log.output_tokens
    busy = it.busy_ns
    streamed = log.csv_path is not None
    s: dict[str, Any] = {
        "requests": log.total,
        "completed": log.finished,
        "rejected": log.rejected,
        "rejections": rejection_summary(result),
        "simulated_duration_s": round(dur_s, 6),
        "throughput": {"requests_per_s": round(log.finished / dur_s, 4) if dur_s else 0.0,
                       "output_tokens_per_s": round(out_tokens / dur_s, 3) if dur_s else 0.0},
        "ttft_ms": dist_ms(_samples(result, "ttft"), consume=streamed),
        "tpot_ms": dist_ms(_samples(result, "tpot"), consume=streamed),
        "e2e_ms": dist_ms(_samples(result, "e2e"), consume=streamed),
        "iterations": it.count,
        "preemptions": log.preemptions,
        "exposed_comm_share": round(it.exposed_comm_ns / busy, 6) if busy else 0.0,
        "exposed_mem_share": round(it.exposed_mem_ns / busy, 6) if busy else 0.0,
        "backend": result.backend_stats,
        "wall_s": round(result.wall_s, 3),
    }
    if it.tier_names:
        s["kv_tiers"] = tier_summary(result)
    moe = moe_summary(result)
    if moe:
        s["moe"] = moe
    if result.pd is not None:
        s["pd"] = result.pd.stats.summary()
        if result.pd.network is not None:
            s["pd"]["kv_transfer"] = result.pd.cfg.kv_transfer
            s["pd"]["network_links"] = result.pd.network.link_stats()
    lora = [i.compute for i in result.instances if hasattr(i.compute, "resident")]
    if lora:
        cfg = lora[0].cfg
        s["lora"] = {"adapters": cfg.adapters, "rank": cfg.rank, "max_loras": cfg.max_loras,
                     "loads": sum(c.loads for c in lora), "load_bytes": sum(c.load_bytes for c in lora),
                     "adapter_bytes_per_npu": lora[0].adapter_bytes}
        if any(c.prefetches for c in lora):  # a policy copied adapters ahead of need (prefetch/*_lora.py)
            s["lora"].update(prefetches=sum(c.prefetches for c in lora),
                             prefetch_bytes=sum(c.prefetch_bytes for c in lora),
                             prefetches_used=sum(c.prefetch_used for c in lora),
                             prefetch_wait_bytes=sum(c.stalled_bytes for c in lora))
    spec = speculative_summary(result)
    if spec:
        s["speculative"] = spec
    cost = cost_summary(result, out_tokens, dur_s)
    if cost:
        s["cost"] = cost
    if result.orchestrator is not None:
        s["agents"] = program_summary(result)
    if len(result.instances) > 1:
        s["per_instance"] = instance_summary(result)

    s["energy"] = energy_summary(result, out_tokens, dur_s)
    if extra:
        s.update(extra)
    return s


def _finished_by_instance(result: RunResult) -> dict[str, list[int]]:
    """[completed requests, output tokens] per instance a request finished on (requests.csv when streamed)."""
    out: dict[str, list[int]] = {}
    log = result.request_log
    if log.csv_path is None:
        for r in result.requests:
            if r.status == "finished":
                c = out.setdefault(r.instance, [0, 0])
                c[0] += 1
                c[1] += r.output_tokens
        return out
    with log.csv_path.open(newline="") as f:
        rows = csv.reader(f)
        ix = {c: i for i, c in enumerate(next(rows))}
        st, inst, outt = ix["status"], ix["instance"], ix["output_tokens"]
        for row in rows:
            if row[st] == "finished":
                c = out.setdefault(row[inst], [0, 0])
                c[0] += 1
                c[1] += int(row[outt])
    return out


def energy_summary(result: RunResult, out_tokens: int, dur_s: float) -> dict[str, Any]:
    """summary.json `energy`: totals, the component breakdown, J per output token and per completed request, and
    (several instances) the same per instance. With power states configured (hardware idle_to_deep_idle_ms) the
    breakdown gains deep_idle_j / wake_j, and `wakeups` / `wake_latency_total_ms` count the wake-ups from deep idle
    and the delay they add: reported only, or applied to the waking iterations with the hardware's
    wake_latency_applied."""
    from frontend.metrics.power import EnergyBreakdown

    def block(e: EnergyBreakdown, tokens: int, done: int, states: bool, wakeups: int, wake_ns: int) -> dict:
        total = e.total_j
        bd = {k: round(v, 3) for k, v in vars(e).items()
              if (states or k not in ("deep_idle_j", "wake_j")) and (k != "pim_j" or v)}
        d: dict[str, Any] = {"total_j": round(total, 3), "breakdown_j": bd}
        if states:
            d["wakeups"] = wakeups
            d["wake_latency_total_ms"] = round(wake_ns / 1e6, 6)
        d["j_per_output_token"] = round(total / tokens, 6) if tokens else 0.0
        d["j_per_request"] = round(total / done, 6) if done else 0.0
        return d

    e = EnergyBreakdown()
    states = False
    wakeups = wake_ns = 0
    for inst in result.instances:
        p = inst.power
        e.add(p.energy)
        states = states or p.has_states
        wakeups += p.wakeups
        wake_ns += p.wake_latency_ns
    s = block(e, out_tokens, result.request_log.finished, states, wakeups, wake_ns)
    s.update({
        "average_power_w": round(e.total_j / dur_s, 3) if dur_s else 0.0,
        "energy_per_output_token_j": round(e.total_j / out_tokens, 6) if out_tokens else 0.0,
        "output_tokens_per_joule": round(out_tokens / e.total_j, 6) if e.total_j else 0.0,
    })
    if len(result.instances) > 1:
        # a request counts on the instance it finished on (under P/D the decode instance): prefill-only
        # instances then show their energy with no completed requests or tokens of their own
        fin = _finished_by_instance(result)
        rows = []
        for i in result.instances:
            done, tokens = fin.get(i.name) or (0, 0)
            rows.append({"name": i.name, **block(i.power.energy, tokens, done, states, i.power.wakeups,
                                                 i.power.wake_latency_ns)})
        s["per_instance"] = rows
    return s


def tier_summary(result: RunResult) -> dict[str, Any]:
    """Hit rate per tier = prompt tokens served from that tier / prompt tokens looked up."""
    looked_up = result.request_log.looked_up_tokens
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name in ["hbm", *result.iterations.tier_names]:
        hit = result.request_log.tier_hit_tokens.get(name, 0)
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
    from frontend.metrics.collector import ProgramTurns

    rows = []
    empty = ProgramTurns()
    for pid, st in orch.programs.items():
        t = result.request_log.programs.get(pid, empty)
        rows.append([pid, st.arrival_ns, st.completion_ns, t.turns, st.tool_ns, t.queue_ns, t.input_tokens,
                     t.cached_tokens, "|".join(sorted(st.instances))])
    return rows


def program_summary(result: RunResult) -> dict[str, Any]:
    rows = program_rows(result)
    done = [r for r in rows if r[2] >= 0]
    log = result.request_log
    ttft_by_turn = log.turn_ttft_ns
    s: dict[str, Any] = {
        "programs": len(rows), "completed": len(done),
        "completion_ms": dist_ms([r[2] - r[1] for r in done]),
        "turn_ttft_ms": {k: dist_ms(v) for k, v in sorted(ttft_by_turn.items())},
        "cross_turn_hit_rate": round(log.later_cached / max(1, log.later_input), 6),
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
    from frontend.metrics.collector import InstanceIterStats, InstanceReqStats

    out = []
    for inst in result.instances:
        rq = result.request_log.per_instance.get(inst.name) or InstanceReqStats()
        it = result.iterations.per_instance.get(inst.name) or InstanceIterStats()
        out.append({"name": inst.name, "requests": rq.finished, "iterations": it.iterations,
                    "busy_share": round(it.busy_ns / result.sim_end_ns, 6) if result.sim_end_ns else 0.0,
                    "ttft_ms": dist_ms(_samples(result, "ttft", inst.name),
                                       consume=result.request_log.csv_path is not None),
                    "preemptions": rq.preemptions, "kv_blocks": inst.pool.num_blocks})
    return out


def write_program_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PROGRAM_COLUMNS)
        w.writerows(program_rows(result))


def write_summary(result: RunResult, out_dir: Path, extra: dict[str, Any] | None = None,
                  run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json (+ programs.csv for agent runs) and run_info.json; the CSVs were streamed already."""
    if result.orchestrator is not None:
        write_program_csv(result, out_dir / "programs.csv")
    summary = summarize(result, extra)
    # wall time is the only output that differs between identical runs: it goes to its own file so that
    # every other output is byte-identical for the same config and seed
    deterministic = {k: v for k, v in summary.items() if k != "wall_s"}
    write_json(out_dir / "summary.json", deterministic)
    write_json(out_dir / "run_info.json", {"wall_s": summary["wall_s"], **(run_info or {})})
    return summary


def write_outputs(result: RunResult, out_dir: Path, extra: dict[str, Any] | None = None,
                  run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """All outputs of a run whose rows were kept in memory (benches, tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_requests_csv(result, out_dir / "requests.csv")
    write_iterations_csv(result, out_dir / "iterations.csv")
    return write_summary(result, out_dir, extra, run_info)
