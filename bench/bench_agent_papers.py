"""Each agent-serving paper's headline effect beside the simulated one: same metric, same baseline.

One study per paper under configs/studies/ mirrors the paper's evaluation setup as far as its text allows
(every parameter cites its source in the YAML). For each study this runs the paper's baseline and the
paper's policy on the same workload and prints the paper's reported effect next to the simulated one.
Why they differ where they do is in bench/results/agent_papers.txt (the closing note).

Usage: python bench/bench_agent_papers.py [--study NAME ...] [--programs N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import summarize
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "configs" / "studies"


def mean_completion_s(res, s) -> float:
    """Mean program (job / workflow) completion time, arrival to last token."""
    return s["agents"]["completion_ms"]["mean"] / 1e3


def makespan_s(res, s) -> float:
    """Time from the first program's arrival to the last program's last token (a simulation's wall time)."""
    progs = res.orchestrator.programs.values()
    return (max(p.completion_ns for p in progs) - min(p.arrival_ns for p in progs)) / 1e9


def normalized_latency_s_per_token(res, s) -> float:
    """InferCept's and vLLM's serving metric: each request's end-to-end latency over its output tokens
    (a request is a program: the LLM call with all its interceptions), averaged. The interceptions' own
    durations are taken out: they are the same under every policy and are not the serving system's."""
    vals = []
    for p in res.orchestrator.programs.values():
        out = sum(t.output_tokens for t in p.spec.turns)
        if p.completion_ns >= 0 and out:
            vals.append((p.completion_ns - p.arrival_ns - p.tool_ns) / 1e9 / out)
    return sum(vals) / max(1, len(vals))


@dataclass
class Study:
    name: str
    config: str
    paper: str  # the paper's headline, quoted
    paper_effect: str  # the number(s) in the paper's metric
    metric: Callable
    metric_name: str
    baseline: tuple[str, dict]
    policies: list[tuple[str, dict]]
    rates: list[float] = field(default_factory=list)  # extra arrival rates (overrides workload.rate_per_s)
    overrides: dict = field(default_factory=dict)
    # "load at the same latency": sweep these rates and report, per variant, the rate at which the metric
    # reaches twice the baseline's value at the lowest rate (the knee), interpolated between grid points
    load_grid: list[float] = field(default_factory=list)
    decompose: bool = False  # load studies: also print each point's latency split (latency_parts_s)


VLLM = ("vLLM (fcfs + lru)", {"policy": {"scheduling": "fcfs", "retention": "lru", "prefetch": "none"}})
CONTINUUM = ("Continuum (program_fcfs + ttl_pin utility)",
             {"policy": {"scheduling": "program_fcfs", "retention": "ttl_pin", "ttl_policy": "utility"}})
CONTINUUM_FIXED = ("Continuum preview (program_fcfs + 2 s ttl_pin)",
                   {"policy": {"scheduling": "program_fcfs", "retention": "ttl_pin", "ttl_policy": "fixed",
                               "ttl_ms": 2000}})
INFERCEPT = ("InferCept (program_fcfs + min_waste)", {"policy": {"scheduling": "program_fcfs",
                                                                 "retention": "min_waste"}})
AUTELLIX = ("Autellix (plas)", {"policy": {"scheduling": "plas", "retention": "lru"}})
# Autellix preempts by swapping to host memory ("memory-swap optimizations", sciencestack.ai summary)
HOST_SWAP = {"kv": {"preemption": "swap", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 256,
                                                     "bw_gbps": 25, "latency_ns": 2000, "scope": "instance"}]}}
AUTELLIX_SWAP = ("Autellix (plas, swap preemption)", {**HOST_SWAP, **AUTELLIX[1]})
KVFLOW = ("KVFlow (inv. distance evict + prefetch)",
          {"policy": {"retention": "invocation_distance", "prefetch": "invocation_distance"}})
KVFLOW_EVICT = ("KVFlow eviction only", {"policy": {"retention": "invocation_distance", "prefetch": "none"}})
NO_TIER = {"kv": {"offload": "none", "tiers": []}}
# ScaleSim: KVFlow's KV prefetch/eviction plus the adapters of the agents due next (prefetch/invocation_distance_lora)
SCALESIM = ("ScaleSim (inv. distance KV + adapters)",
            {"policy": {"retention": "invocation_distance", "prefetch": "invocation_distance_lora"}})
NO_LORA = {"lora": {"adapters": 0}, "workload": {"lora_per_program": False}}
SLOW_LORA = {"lora": {"host_bw_gbps": 6}}
# the baseline with the whole H100 KV pool (no eviction at all): what no eviction/prefetch policy can beat
MEMORY_IDEAL = ("memory-ideal bound (lru, 27000 blocks)", {"engine": {"num_gpu_blocks_override": 27000}})

STUDY_LIST = [
    Study("continuum", "continuum-swebench-llama8b.yaml",
          "Continuum improves average job completion time over vLLM on SWE-bench/BFCL agents, Llama-3.1-8B/70B",
          "1.12x-3.66x lower mean JCT than vLLM (v2 summary)", mean_completion_s, "mean JCT s",
          VLLM, [CONTINUUM, CONTINUUM_FIXED, INFERCEPT, AUTELLIX], rates=[2.0, 3.0]),
    Study("continuum-70b", "continuum-swebench-llama70b.yaml",
          "Continuum vs vLLM, Llama-3.1-70B (tensor parallel 4)", "1.12x-3.66x lower mean JCT than vLLM",
          mean_completion_s, "mean JCT s", VLLM, [CONTINUUM, INFERCEPT], rates=[1.0, 2.0]),
    Study("continuum-dram", "continuum-swebench-llama8b.yaml",
          "Continuum vs vLLM, both with CPU-DRAM offloading (LMCache-style write-through host tier)",
          "remains better with DRAM offloading (abstract v1: 'remains performant across ... DRAM offloading "
          "schemes')", mean_completion_s, "mean JCT s", VLLM, [CONTINUUM, INFERCEPT], rates=[3.0],
          overrides={"kv": {"offload": "write_through", "tiers": [
              {"name": "dram", "kind": "dram", "capacity_gib": 128, "bw_gbps": 25, "latency_ns": 2000,
               "scope": "instance"}]}}),
    Study("kvflow-single", "kvflow-workflow-llama8b.yaml",
          "KVFlow vs SGLang hierarchical radix cache, one workflow with large prompts",
          "up to 1.83x speed-up", makespan_s, "workflow s", ("SGLang HiCache (lru + DRAM tier)", {}),
          [KVFLOW, KVFLOW_EVICT, MEMORY_IDEAL]),
    Study("kvflow-single-gpu-only", "kvflow-workflow-llama8b.yaml",
          "KVFlow vs SGLang GPU-only radix cache (no host tier: a miss recomputes the prompt)",
          "(paper's second baseline; the headline is vs HiCache)", makespan_s, "workflow s",
          ("SGLang (lru, no tier)", NO_TIER), [("KVFlow eviction (no tier)", {**NO_TIER, **KVFLOW_EVICT[1]})]),
    Study("kvflow-concurrent", "kvflow-concurrent-llama8b.yaml",
          "KVFlow vs SGLang hierarchical radix cache, many concurrent workflows",
          "up to 2.19x speed-up", makespan_s, "all workflows s", ("SGLang HiCache (lru + DRAM tier)", {}),
          [KVFLOW, KVFLOW_EVICT, MEMORY_IDEAL]),
    Study("scalesim", "scalesim-genagents-llama8b.yaml",
          "ScaleSim vs SGLang on multi-agent simulation benchmarks (per-agent rank-64 LoRA adapters, 100 slots)",
          "up to 1.74x speed-up", makespan_s, "simulation s", ("SGLang HiCache (lru KV + lru adapters)", {}),
          [SCALESIM, KVFLOW, ("adapter loads free (bound: host link 1e6 GB/s)", {"lora": {"host_bw_gbps": 1e6}}),
           ("ScaleSim, adapter loads free", {"lora": {"host_bw_gbps": 1e6}, **SCALESIM[1]}),
           ("SGLang default 8 adapters per batch (lru)", {"lora": {"max_loras": 8}}),
           ("ScaleSim, 8 adapters per batch", {"lora": {"max_loras": 8}, **SCALESIM[1]})]),
    Study("scalesim-slow-link", "scalesim-genagents-llama8b.yaml",
          "ScaleSim vs SGLang with adapters loading at an effective 6 GB/s (sensitivity: the rate is not in the text)",
          "up to 1.74x speed-up", makespan_s, "simulation s", ("SGLang HiCache (lru KV + lru adapters)", SLOW_LORA),
          [(SCALESIM[0], {**SLOW_LORA, **SCALESIM[1]})]),
    Study("scalesim-no-lora", "scalesim-genagents-llama8b.yaml",
          "ScaleSim vs SGLang, the same study without adapters (KV only: the earlier study)",
          "up to 1.74x speed-up", makespan_s, "simulation s", ("SGLang HiCache (lru + DRAM tier)", NO_LORA),
          [(KVFLOW[0], {**NO_LORA, **KVFLOW[1]}), (KVFLOW_EVICT[0], {**NO_LORA, **KVFLOW_EVICT[1]})]),
    Study("scalesim-gpu-only", "scalesim-genagents-llama8b.yaml",
          "ScaleSim eviction vs SGLang GPU-only radix cache, no adapters (no host tier: a miss recomputes)",
          "(the text we read does not say whether the SGLang baseline had a host tier)", makespan_s,
          "simulation s", ("SGLang (lru, no tier)", {**NO_TIER, **NO_LORA}),
          [("ScaleSim eviction (no tier)", {**NO_TIER, **NO_LORA, **KVFLOW_EVICT[1]})]),
    Study("infercept", "infercept-mixed-gptj6b.yaml",
          "InferCept sustains 1.6-2x higher serving load than vLLM at similar latency per token",
          "1.6x-2x load at equal normalized latency", normalized_latency_s_per_token, "norm. latency s/token",
          ("vLLM 0.2 (discard + recompute, no prefix cache)",
           {"engine": {"enable_prefix_caching": False}, "policy": {"scheduling": "fcfs", "retention": "lru"}}),
          [INFERCEPT, ("vLLM v1 (prefix cache, LRU)", VLLM[1])], load_grid=[1, 2, 3, 4, 6, 8, 12]),
    Study("autellix", "autellix-plas-llama8b.yaml",
          "Autellix PLAS vs vLLM FCFS on single-threaded agent programs",
          "4x-15x program throughput at the same latency", mean_completion_s, "mean program latency s",
          VLLM, [AUTELLIX, AUTELLIX_SWAP, ("vLLM (fcfs, swap preemption)", {**HOST_SWAP, **VLLM[1]})],
          load_grid=[0.25, 0.5, 0.75, 1, 2, 4, 8, 16], decompose=True),
    Study("autellix-uniform", "autellix-plas-llama8b.yaml",
          "Autellix PLAS vs vLLM FCFS, the same study with the earlier uniform 1..40 calls per program (same mean)",
          "(sensitivity: how much of the effect is the heavy tail)", mean_completion_s, "mean program latency s",
          VLLM, [AUTELLIX], overrides={"workload": {"turns": None, "turns_min": 1, "turns_max": 40}},
          load_grid=[0.25, 0.5, 0.75, 1, 2, 4, 8, 16], decompose=True),
]


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def latency_parts_s(res) -> dict[str, float]:
    """Mean program latency split into its parts (s): tools (the same under every order), queue (a call
    waiting for admission: the only part a waiting-queue order such as PLAS can shorten) and execution
    (prefill + decode while admitted: what batch slow-down stretches, shared by every order); plus the
    mean latency of the shorter half of the programs (by calls), which least-attained-service favours."""
    from frontend.metrics.report import program_rows

    rows = [r for r in program_rows(res) if r[2] >= 0]
    n = max(1, len(rows))
    lat = [(r[2] - r[1]) / 1e9 for r in rows]
    tool = sum(r[4] for r in rows) / 1e9 / n
    queue = sum(r[5] for r in rows) / 1e9 / n
    calls = sorted(r[3] for r in rows)
    med = calls[len(calls) // 2] if calls else 0
    short = [(r[2] - r[1]) / 1e9 for r in rows if r[3] <= med]
    return {"mean": sum(lat) / n, "tool": tool, "queue": queue, "exec": sum(lat) / n - tool - queue,
            "short_mean": sum(short) / max(1, len(short)), "median_calls": med}


def run_point(study: Study, overrides: dict, rate: float | None, programs: int | None,
              keep: list | None = None) -> tuple[float, dict, float]:
    ov = _merge(study.overrides, overrides)
    wl: dict = {}
    if rate is not None:
        wl["rate_per_s"] = rate
    if programs is not None:
        wl["num_programs"] = programs
    if wl:
        ov = _merge(ov, {"workload": wl})
    run = load_and_resolve(STUDIES / study.config, ov)
    t0 = time.perf_counter()
    res, extra = simulate(run)
    wall = time.perf_counter() - t0
    s = summarize(res, extra)
    if keep is not None:
        parts = latency_parts_s(res)
        parts.update(tpot_ms=s["tpot_ms"]["mean"], hit=s["agents"]["cross_turn_hit_rate"], preempt=s["preemptions"])
        keep.append(parts)
    return study.metric(res, s), s, wall


def knee_rate(rates: list[float], values: list[float], limit: float) -> float | None:
    """The arrival rate at which `values` first reach `limit`, linear between grid points (None: never)."""
    prev = None
    for r, v in zip(rates, values, strict=True):
        if v >= limit:
            if prev is None:
                return r
            r0, v0 = prev
            return r0 + (r - r0) * (limit - v0) / (v - v0)
        prev = (r, v)
    return None


def run_load_study(study: Study, programs: int | None) -> None:
    grid = study.load_grid
    print(f"   {'variant':48s} " + " ".join(f"{r:>8g}/s" for r in grid) + f" {'knee rate':>10s} {'vs baseline':>11s}")
    curves = []
    parts: dict[str, list[dict]] = {}
    for name, ov in [study.baseline, *study.policies]:
        keep: list[dict] = []
        vals = [run_point(study, ov, r, programs, keep if study.decompose else None)[0] for r in grid]
        curves.append((name, vals))
        parts[name] = keep
    limit = 2 * curves[0][1][0]
    base_knee = knee_rate(grid, curves[0][1], limit)
    for name, vals in curves:
        k = knee_rate(grid, vals, limit)
        ks = f">{grid[-1]:g}" if k is None else f"{k:.2f}"
        ratio = "-" if base_knee is None else (f">{grid[-1] / base_knee:.2f}x" if k is None else f"{k / base_knee:.2f}x")
        print(f"   {name:48s} " + " ".join(f"{v:10.4f}" for v in vals) + f" {ks:>10s} {ratio:>11s}", flush=True)
    print(f"   ({study.metric_name}; knee = the rate where it reaches 2x the baseline's value at {grid[0]:g}/s "
          f"= {limit:.4f})")
    # throughput at the same latency at every level the baseline reaches: the rate at which each variant
    # reaches the baseline's value at rate r, over r (linear between grid points; '>' past the grid)
    print("   throughput at the same latency, vs the baseline at each of its rates (variant's rate at the baseline's "
          "value there / that rate):")
    print(f"   {'variant':48s} " + " ".join(f"{r:>8g}/s" for r in grid[1:]))
    for name, vals in curves[1:]:
        cells = []
        for r, level in zip(grid[1:], curves[0][1][1:], strict=True):
            k = knee_rate(grid, vals, level)
            cells.append(f">{grid[-1] / r:.2f}x" if k is None else f"{k / r:.2f}x")
        print(f"   {name:48s} " + " ".join(f"{c:>10s}" for c in cells))
    if study.decompose:
        print("   mean program latency = tools + queue (waiting for admission) + execution (admitted: prefill + "
              "decode, stretched by batch slow-down), s; 'short' = mean latency of the programs with at most the "
              "median number of calls")
        print(f"   {'variant':48s} {'rate/s':>7s} {'mean':>8s} {'tools':>8s} {'queue':>8s} {'exec':>8s} "
              f"{'queue %':>8s} {'short':>8s} {'TPOT ms':>8s} {'x-turn hit':>10s} {'preempt':>8s}")
        for name, _ in curves:
            for r, p in zip(grid, parts[name], strict=True):
                print(f"   {name:48s} {r:7g} {p['mean']:8.2f} {p['tool']:8.2f} {p['queue']:8.2f} {p['exec']:8.2f} "
                      f"{100 * p['queue'] / max(1e-9, p['mean']):7.1f}% {p['short_mean']:8.2f} {p['tpot_ms']:8.2f} "
                      f"{p['hit']:10.3f} {p['preempt']:8d}")


def run_study(study: Study, programs: int | None = None) -> None:
    print(f"\n== {study.name}: {study.config}")
    print(f"   paper: {study.paper}")
    print(f"   paper's effect: {study.paper_effect}")
    if study.load_grid:
        run_load_study(study, programs)
        return
    base_rate = load_and_resolve(STUDIES / study.config).config.workload.rate_per_s
    for rate in [None, *study.rates]:
        r = base_rate if rate is None else rate
        print(f"   -- arrival rate {r:g}/s" if study.config.startswith(("continuum", "infercept", "autellix"))
              else "   --")
        print(f"   {'variant':48s} {study.metric_name:>22s} {'effect vs baseline':>18s} {'x-turn hit':>10s} "
              f"{'pins c/e/b':>14s} {'prefetch GB':>11s} {'wall s':>7s}")
        base_v = None
        for name, ov in [study.baseline, *study.policies]:
            v, s, wall = run_point(study, ov, rate, programs)
            a = s["agents"]
            p = a.get("policy", {})
            if base_v is None:
                base_v = v
                eff = "baseline"
            else:
                eff = f"{base_v / v:.2f}x" if v > 0 else "-"
            pins = f"{p.get('pins_created', 0)}/{p.get('pins_expired', 0)}/{p.get('pins_broken', 0)}"
            lo = s.get("lora")
            adapters = "" if lo is None else (f"   adapters: {lo['loads']} cold loads ({lo['load_bytes'] / 1e9:.1f} GB), "
                                              f"{lo.get('prefetches', 0)} prefetched ({lo.get('prefetches_used', 0)} used)")
            print(f"   {name:48s} {v:22.4f} {eff:>18s} {a['cross_turn_hit_rate']:10.3f} {pins:>14s} "
                  f"{p.get('bytes_prefetched', 0) / 1e9:11.2f} {wall:7.1f}{adapters}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", action="append", help="study name (repeatable); default: all")
    ap.add_argument("--programs", type=int, default=None, help="override num_programs (quick looks)")
    a = ap.parse_args()
    names = set(a.study or [s.name for s in STUDY_LIST])
    for st in STUDY_LIST:
        if st.name in names:
            run_study(st, a.programs)


if __name__ == "__main__":
    main()
