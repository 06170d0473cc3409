"""`astraserve validate`: a simulated run against a real vLLM benchmark run."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from frontend.metrics.output import write_json
from frontend.validation.reference import (
    LatencySet,
    ReferenceError_,
    load_sim_run,
    load_timeseries,
    load_vllm_reference,
)

STATS = ("mean", "p50", "p90", "p95", "p99")
# a run of another workload: fewer than this share of (input, output) token pairs in common with the reference
MIN_MATCHED_SHARE = 0.95
TS_KEYS = ("kv_cache_pct", "gen_throughput")


def _stats_ms(a: np.ndarray) -> dict[str, float | None]:
    if len(a) == 0:
        return dict.fromkeys(STATS)
    ms = np.asarray(a, dtype=float) * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))}


def sim_timeseries(run_dir: Path, tick_s: float = 1.0) -> list[dict[str, float]]:
    """Per-second generation throughput, running count and KV usage from iterations.csv."""
    path = Path(run_dir) / "iterations.csv"
    if not path.is_file():
        raise ReferenceError_(f"{run_dir}: no iterations.csv (expected an `astraserve run` output directory)")
    cols = ("start_ns", "end_ns", "decode_tokens", "prefill_tokens", "kv_blocks_used", "kv_blocks_total", "num_seqs")
    rows: list[tuple[int, ...]] = []
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in cols if c not in (reader.fieldnames or [])]
            if missing:
                raise ReferenceError_(f"{path}: missing column(s) {missing}")
            for lineno, r in enumerate(reader, 2):
                try:
                    rows.append(tuple(int(r[c]) for c in cols))
                except (TypeError, ValueError):
                    raise ReferenceError_(f"{path}:{lineno}: a cell is not an integer (truncated or edited file?)") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReferenceError_(f"{path}: not a readable CSV ({e})") from None
    if not rows:
        return []
    t0 = min(r[0] for r in rows)
    end = max(r[1] for r in rows)
    if end < t0 or (end - t0) / 1e9 / tick_s > 10_000_000:
        raise ReferenceError_(f"{path}: iteration times span {(end - t0) / 1e9:.3g} s, not a plausible run")
    n = int((end - t0) / 1e9 / tick_s) + 1
    gen = np.zeros(n)
    prompt = np.zeros(n)
    kv = np.zeros(n)
    running = np.zeros(n)
    for _start, stop, dec, pre, used, tot, seqs in rows:
        k = int((stop - t0) / 1e9 / tick_s)
        if k < 0:
            raise ReferenceError_(f"{path}: an iteration ends before the first one starts")
        gen[k] += dec
        prompt[k] += pre
        kv[k] = 100.0 * used / max(1, tot)
        running[k] = seqs
    return [{"t": (i + 1) * tick_s, "gen_throughput": gen[i] / tick_s, "prompt_throughput": prompt[i] / tick_s,
             "kv_cache_pct": kv[i], "running": running[i]} for i in range(n)]


def _err(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real == 0:
        return None
    return round(100.0 * (sim - real) / real, 3)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def check_same_workload(sim_tokens: list[tuple[int, int]], ref_tokens: list[tuple[int, int]], run_dir: Path,
                        ref_dir: Path, notes: list[str]) -> None:
    """The run must replay the reference's requests: same count and (input, output) token pairs."""
    if len(sim_tokens) != len(ref_tokens):
        raise ReferenceError_(f"--run {run_dir}: {len(sim_tokens)} requests but the reference {ref_dir} has "
                              f"{len(ref_tokens)}: a truncated run or another workload (replay the reference's "
                              "requests with --workload; --partial compares a run of its first N requests)")
    if all(i < 0 for i, _ in ref_tokens):
        notes.append("the reference gives no input_toks; request token counts were not cross-checked")
        return
    from collections import Counter

    common = sum((Counter(sim_tokens) & Counter(ref_tokens)).values())
    share = common / len(ref_tokens)
    if share < MIN_MATCHED_SHARE:
        raise ReferenceError_(f"--run {run_dir}: only {share:.0%} of its requests have the (input, output) token "
                              f"counts of a reference request: a run of another workload than {ref_dir}")
    if common < len(ref_tokens):
        notes.append(f"{len(ref_tokens) - common} of {len(ref_tokens)} requests differ from the reference in "
                     "input/output token counts")


def compare(run_dir: Path, ref_dir: Path, partial: bool = False) -> dict[str, Any]:
    """Simulated vs real latency, throughput and time series. The run must have replayed the reference's
    requests; with `partial`, a run of the reference's first N requests is compared with those N."""
    notes: list[str] = []
    sim_run = load_sim_run(run_dir)
    ref_run = load_vllm_reference(ref_dir, sim_run.total if partial else None)
    if partial:
        notes.append(f"--partial: compared with the reference's first {len(ref_run.tokens)} requests only (the real "
                     "run may have served more concurrent load than the simulated one)")
    check_same_workload(sim_run.tokens, ref_run.tokens, run_dir, ref_dir, notes)
    sim, ref = sim_run.latency, ref_run.latency
    table: dict[str, Any] = {}
    for key in ("ttft", "tpot", "e2e"):
        s = _stats_ms(getattr(sim, key))
        r = _stats_ms(getattr(ref, key))
        if s["mean"] is None or r["mean"] is None:
            notes.append(f"{key}: no samples on the {'simulated' if s['mean'] is None else 'real'} side "
                         "(every request has one output token?)")
        table[key] = {st: {"sim_ms": _r(s[st]), "real_ms": _r(r[st]), "error_pct": _err(s[st], r[st])}
                      for st in STATS}
    sim_ts = sim_timeseries(run_dir)
    ref_ts = load_timeseries(ref_dir, notes)
    out: dict[str, Any] = {"requests": {"sim": int(len(sim.e2e)), "real": int(len(ref.e2e))}, "latency": table}
    sim_dur = float(sim.finish_s.max())
    ref_dur = float(ref.finish_s.max())
    thr_sim = round(float(sim.output_tokens.sum()) / sim_dur, 3) if sim_dur > 0 else None
    thr_ref = round(float(ref.output_tokens.sum()) / ref_dur, 3) if ref_dur > 0 else None
    if thr_sim is None or thr_ref is None:
        notes.append("throughput: a run with zero duration has no throughput")
    out["throughput"] = {"sim_output_tok_s": thr_sim, "real_output_tok_s": thr_ref,
                         "error_pct": None if thr_sim is None or thr_ref is None or not thr_ref
                         else round(100 * (thr_sim / thr_ref - 1), 3)}
    if ref_ts and sim_ts:
        n = min(len(ref_ts), len(sim_ts))
        for key in TS_KEYS:
            if key not in ref_ts[0]:
                notes.append(f"{ref_dir}/timeseries.csv has no {key!r} column; not compared")
                continue
            a = np.array([sim_ts[i][key] for i in range(n)])
            b = np.array([float(ref_ts[i][key]) for i in range(n)])
            ok = np.isfinite(b)
            if not ok.any():
                notes.append(f"{ref_dir}/timeseries.csv: column {key!r} holds no numbers; not compared")
                continue
            a, b, n = a[ok], b[ok], int(ok.sum())
            if not (b != 0).any() and (a != 0).any():
                # A serving run under load never has all-zero KV usage or throughput: an all-zero column is
                # a metric the reference did not record (the RTX PRO 6000 sets' kv_cache_pct), not a value.
                notes.append(f"{ref_dir}/timeseries.csv: column {key!r} is zero throughout (not recorded); "
                             "not compared")
                continue
            out[f"timeseries_{key}"] = {"mae": round(float(np.abs(a - b).mean()), 3),
                                        "real_mean": round(float(b.mean()), 3), "sim_mean": round(float(a.mean()), 3),
                                        "seconds_compared": n}
    out["notes"] = notes
    return out


def write_plots(run_dir: Path, ref_dir: Path, out_dir: Path, partial: bool = False) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim_run = load_sim_run(run_dir)
    sim: LatencySet = sim_run.latency
    ref: LatencySet = load_vllm_reference(ref_dir, sim_run.total if partial else None).latency
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("ttft", "tpot", "e2e"), ("TTFT (s)", "TPOT (ms)", "E2E (s)"), strict=True):
        scale = 1e3 if key == "tpot" else 1.0
        for data, name in ((getattr(ref, key), "vLLM (real)"), (getattr(sim, key), "AstraServe")):
            if len(data) == 0:
                continue
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
            if key not in ref_ts[0]:
                continue
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
    return write_json(out_dir / "validate.json", result)
