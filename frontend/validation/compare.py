"""`astraserve validate`: a simulated run against a real vLLM benchmark run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from frontend.validation.reference import LatencySet, load_sim_requests, load_timeseries, load_vllm_requests

STATS = ("mean", "p50", "p90", "p95", "p99")


def _stats_ms(a: np.ndarray) -> dict[str, float]:
    ms = np.asarray(a, dtype=float) * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))}


def sim_timeseries(run_dir: Path, tick_s: float = 1.0) -> list[dict[str, float]]:
    """Per-second generation throughput, running count and KV usage from iterations.csv."""
    rows = list(csv.DictReader((Path(run_dir) / "iterations.csv").open()))
    if not rows:
        return []
    t0 = min(int(r["start_ns"]) for r in rows)
    end = max(int(r["end_ns"]) for r in rows)
    n = int((end - t0) / 1e9 / tick_s) + 1
    gen = np.zeros(n)
    prompt = np.zeros(n)
    kv = np.zeros(n)
    running = np.zeros(n)
    for r in rows:
        k = int((int(r["end_ns"]) - t0) / 1e9 / tick_s)
        gen[k] += int(r["decode_tokens"])
        prompt[k] += int(r["prefill_tokens"])
        kv[k] = 100.0 * int(r["kv_blocks_used"]) / max(1, int(r["kv_blocks_total"]))
        running[k] = int(r["num_seqs"])
    return [{"t": (i + 1) * tick_s, "gen_throughput": gen[i] / tick_s, "prompt_throughput": prompt[i] / tick_s,
             "kv_cache_pct": kv[i], "running": running[i]} for i in range(n)]


def compare(run_dir: Path, ref_dir: Path) -> dict[str, Any]:
    sim = load_sim_requests(run_dir)
    ref = load_vllm_requests(ref_dir)
    table: dict[str, Any] = {}
    for key in ("ttft", "tpot", "e2e"):
        s = _stats_ms(getattr(sim, key))
        r = _stats_ms(getattr(ref, key))
        table[key] = {st: {"sim_ms": round(s[st], 3), "real_ms": round(r[st], 3),
                           "error_pct": round(100.0 * (s[st] - r[st]) / r[st], 3) if r[st] else 0.0} for st in STATS}
    sim_ts = sim_timeseries(run_dir)
    ref_ts = load_timeseries(ref_dir)
    out: dict[str, Any] = {"requests": {"sim": int(len(sim.e2e)), "real": int(len(ref.e2e))}, "latency": table}
    sim_dur = float(sim.finish_s.max())
    ref_dur = float(ref.finish_s.max())
    out["throughput"] = {
        "sim_output_tok_s": round(float(sim.output_tokens.sum()) / sim_dur, 3),
        "real_output_tok_s": round(float(ref.output_tokens.sum()) / ref_dur, 3),
    }
    out["throughput"]["error_pct"] = round(100 * (out["throughput"]["sim_output_tok_s"] /
                                                  out["throughput"]["real_output_tok_s"] - 1), 3)
    if ref_ts and sim_ts:
        n = min(len(ref_ts), len(sim_ts))
        for key in ("kv_cache_pct", "gen_throughput"):
            a = np.array([sim_ts[i][key] for i in range(n)])
            b = np.array([float(ref_ts[i][key]) for i in range(n)])
            out[f"timeseries_{key}"] = {"mae": round(float(np.abs(a - b).mean()), 3),
                                        "real_mean": round(float(b.mean()), 3), "sim_mean": round(float(a.mean()), 3),
                                        "seconds_compared": n}
    return out


def write_plots(run_dir: Path, ref_dir: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim: LatencySet = load_sim_requests(run_dir)
    ref: LatencySet = load_vllm_requests(ref_dir)
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("ttft", "tpot", "e2e"), ("TTFT (s)", "TPOT (ms)", "E2E (s)"), strict=True):
        scale = 1e3 if key == "tpot" else 1.0
        for data, name in ((getattr(ref, key), "vLLM (real)"), (getattr(sim, key), "AstraServe")):
            x = np.sort(np.asarray(data) * scale)
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    paths.append(_save(plt, fig, axes, out_dir / "validate_cdf.png"))
    ref_ts = load_timeseries(ref_dir)
    sim_ts = sim_timeseries(run_dir)
    if ref_ts:
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
        for ax, key, label in zip(axes, ("gen_throughput", "kv_cache_pct"), ("generation tok/s", "KV usage %"),
                                  strict=True):
            ax.plot([float(r["t"]) for r in ref_ts], [float(r[key]) for r in ref_ts], label="vLLM (real)")
            ax.plot([r["t"] for r in sim_ts], [r[key] for r in sim_ts], label="AstraServe")
            ax.set_xlabel("time (s)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        paths.append(_save(plt, fig, axes, out_dir / "validate_timeseries.png"))
    return paths


def _save(plt, fig, axes, path: Path) -> Path:
    """Legend on the first panel, tight layout, write, release the figure."""
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(result: dict[str, Any], out_dir: Path) -> Path:
    p = out_dir / "validate.json"
    p.write_text(json.dumps(result, indent=2) + "\n")
    return p
