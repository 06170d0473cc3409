"""PNG plots of a run directory or a sweep directory (`astraserve plot DIR`), drawn from their own tables.

A run directory (requests.csv, iterations.csv):
- latency_cdf.png: CDFs of TTFT, TPOT and E2E over the finished requests (from arrival, as summary.json);
- throughput.png: decode tokens per second over time, per instance and in total (binned);
- batch_size.png: running sequences of each iteration over time, per instance;
- kv_usage.png: KV blocks used as % of the instance's blocks over time, per instance.

A sweep directory (results.csv, one row per point: parameters and summary metrics):
- sweep_vs_<x>.png: each metric against one parameter (mean over seeds; one line per combination of the other
  swept parameters);
- sweep_pareto.png: throughput per GPU against latency for every point, with the Pareto front (no other point
  both faster and higher throughput) drawn and labelled.

matplotlib (Agg) is imported only when a plot is drawn; figures are saved with validate's helper.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from frontend.errors import UserError
from frontend.metrics.output import RUN_PLOTS  # noqa: F401 - the names a run owns, listed with its outputs

MAX_LINES = 16  # instances (or parameter combinations) drawn as separate lines; more are left out
DEFAULT_Y = ("ttft_ms_p99", "tpot_ms_p50", "output_tokens_per_s_per_gpu", "tok_s_per_gpu")
DEFAULT_LATENCY = ("ttft_ms_p99", "e2e_ms_p99", "tpot_ms_p99", "ttft_ms_p50")
# `astraserve sweep` (frontend/study/sweep.py) names it tok_s_per_gpu
DEFAULT_THROUGHPUT = ("output_tokens_per_s_per_gpu", "tok_s_per_gpu", "output_tokens_per_s", "throughput_tok_s",
                      "goodput_rps_per_gpu")
# columns of results.csv that are not swept parameters
NOT_PARAMS = ("seed", "point", "point_id", "index", "status", "error", "run_dir", "out", "wall_s")
METRIC_HINTS = ("_ms", "_per_s", "ttft", "tpot", "e2e", "throughput", "goodput", "energy", "latency", "completed",
                "rejected", "requests", "iterations", "preemptions", "share", "hit_rate", "duration", "power", "_j",
                "tok_s", "rps", "gpus", "simulated", "slo", "good")


class PlotError(UserError):
    """A directory or column that cannot be plotted; names what is there."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, axes, path: Path) -> Path:
    from frontend.validation.compare import _save as save

    if not axes[0].get_legend_handles_labels()[0]:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    return save(plt, fig, axes, path)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="") as f:
            rd = csv.DictReader(f)
            rows = list(rd)
            return list(rd.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as e:
        raise PlotError(f"{path}: not a readable CSV ({e})") from None


def plot(directory: Path | str, x: str | None = None, y: list[str] | None = None, latency: str | None = None,
         throughput: str | None = None) -> list[Path]:
    """A sweep directory (results.csv) or a run directory (iterations.csv + requests.csv)."""
    d = Path(directory)
    if (d / "results.csv").is_file():
        return plot_sweep(d, x, y, latency, throughput)
    if (d / "iterations.csv").is_file() or (d / "requests.csv").is_file():
        if x or y or latency or throughput:
            raise PlotError(f"{d}: --x/--y/--latency/--throughput are for a sweep directory (results.csv); this is a "
                            "run directory")
        return plot_run(d)
    raise PlotError(f"{d}: neither a run directory (requests.csv, iterations.csv) nor a sweep directory (results.csv)")


# ---- a run ----

def plot_run(run_dir: Path | str) -> list[Path]:
    import numpy as np

    d = Path(run_dir)
    for name in ("requests.csv", "iterations.csv"):
        if not (d / name).is_file():
            raise PlotError(f"{d}: no {name} (expected an `astraserve run` output directory)")
    _, reqs = _read_csv(d / "requests.csv")
    icols, iters = _read_csv(d / "iterations.csv")
    need = ("instance", "start_ns", "end_ns", "num_seqs", "decode_tokens", "kv_blocks_used", "kv_blocks_total")
    missing = [c for c in need if c not in icols]
    if missing:
        raise PlotError(f"{d / 'iterations.csv'}: missing column(s) {missing}")
    plt = _pyplot()
    paths = []

    ttft, tpot, e2e = [], [], []
    try:
        for r in reqs:
            if r["status"] != "finished":
                continue
            a, f, e, o = int(r["arrival_ns"]), int(r["first_token_ns"]), int(r["finish_ns"]), int(r["output_tokens"])
            ttft.append((f - a) / 1e6)
            e2e.append((e - a) / 1e9)
            if o > 1:
                tpot.append((e - f) / (o - 1) / 1e6)
    except (KeyError, TypeError, ValueError) as e:
        raise PlotError(f"{d / 'requests.csv'}: unreadable request row ({e})") from None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, data, label in zip(axes, (ttft, tpot, e2e), ("TTFT (ms)", "TPOT (ms)", "E2E (s)"), strict=True):
        if data:
            xs = np.sort(np.asarray(data))
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{len(xs)} requests")
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{d.name}: latency CDFs")
    paths.append(_save(plt, fig, axes, d / "latency_cdf.png"))

    per: dict[str, list[tuple[int, int, int, int, int, int]]] = {}
    try:
        for r in iters:
            per.setdefault(r["instance"], []).append(
                (int(r["start_ns"]), int(r["end_ns"]), int(r["num_seqs"]), int(r["decode_tokens"]),
                 int(r["kv_blocks_used"]), int(r["kv_blocks_total"])))
    except (TypeError, ValueError) as e:
        raise PlotError(f"{d / 'iterations.csv'}: a cell is not an integer ({e})") from None
    names = sorted(per)[:MAX_LINES]
    legend = len(names) <= 8
    t_end = max((r[1] for v in per.values() for r in v), default=0)
    nbins = 100
    width = max(t_end / nbins, 1.0)

    fig, axes = plt.subplots(1, 1, figsize=(10, 3.6), squeeze=False)
    ax = axes[0][0]
    total = np.zeros(nbins + 1)
    for name in sorted(per):
        rows = per[name]
        k = np.minimum((np.asarray([r[1] for r in rows]) / width).astype(int), nbins)
        tok = np.bincount(k, weights=[r[3] for r in rows], minlength=nbins + 1)
        total += tok
        if name in names and len(per) > 1:
            ax.plot((np.arange(nbins + 1) + 0.5) * width / 1e9, tok / (width / 1e9), label=name, lw=1)
    ax.plot((np.arange(nbins + 1) + 0.5) * width / 1e9, total / (width / 1e9), label="total", color="black", lw=1.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"output throughput ({width / 1e9:.3g} s bins)")
    ax.grid(alpha=0.3)
    if not legend:
        ax.legend([ax.lines[-1]], ["total"])
    paths.append(_save(plt, fig, [ax] if legend else [_NoLegend(ax)], d / "throughput.png"))

    for fname, ylabel, val in (("batch_size.png", "running sequences", lambda r: r[2]),
                               ("kv_usage.png", "KV blocks used (%)", lambda r: 100.0 * r[4] / max(1, r[5]))):
        fig, axes = plt.subplots(1, 1, figsize=(10, 3.6), squeeze=False)
        ax = axes[0][0]
        for name in names:
            rows = per[name]
            ax.step([r[0] / 1e9 for r in rows], [val(r) for r in rows], where="post", label=name, lw=1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} per instance" + (f" (first {len(names)} of {len(per)})" if len(per) > len(names)
                                                 else ""))
        ax.grid(alpha=0.3)
        paths.append(_save(plt, fig, [ax] if legend else [_NoLegend(ax)], d / fname))
    return paths


class _NoLegend:
    """An axes stand-in for _save when the lines are too many to name (validate's helper draws a legend)."""

    def __init__(self, ax) -> None:
        self.ax = ax

    def get_legend_handles_labels(self):
        return [], []

    def legend(self) -> None:
        pass


# ---- a sweep ----

def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _is_metric(col: str) -> bool:
    c = col.lower()
    return any(h in c for h in METRIC_HINTS) and "." not in c


def plot_sweep(sweep_dir: Path | str, x: str | None = None, y: list[str] | None = None, latency: str | None = None,
               throughput: str | None = None) -> list[Path]:
    d = Path(sweep_dir)
    path = d / "results.csv"
    if not path.is_file():
        raise PlotError(f"{d}: no results.csv (expected an `astraserve sweep` output directory)")
    cols, rows = _read_csv(path)
    if not rows:
        raise PlotError(f"{path}: no rows")
    avail = f"available columns: {', '.join(cols)}"

    def check(c: str, flag: str, numeric: bool = True) -> str:
        if c not in cols:
            raise PlotError(f"{flag} {c!r}: no such column in {path}; {avail}")
        if numeric and not any(_float(r[c]) is not None for r in rows):
            raise PlotError(f"{flag} {c!r}: no numeric values in {path}; {avail}")
        return c

    params = [c for c in cols if not _is_metric(c) and c.lower() not in NOT_PARAMS
              and len({r[c] for r in rows}) > 1]
    if x is None:
        if not params:
            raise PlotError(f"{path}: no swept parameter found (a column with several values that is not a metric); "
                            f"give --x; {avail}")
        x = params[0]
    check(x, "--x", numeric=False)
    if y:
        ys = [check(c, "--y") for c in y]
    else:
        ys = [c for c in DEFAULT_Y if c in cols and any(_float(r[c]) is not None for r in rows)]
        if not ys:
            ys = [c for c in cols if _is_metric(c) and c != x and any(_float(r[c]) is not None for r in rows)][:4]
        if not ys:
            raise PlotError(f"{path}: no metric column found; give --y; {avail}")
    lat = latency or next((c for c in DEFAULT_LATENCY if c in cols), None)
    thr = throughput or next((c for c in DEFAULT_THROUGHPUT if c in cols), None)
    if lat is None or thr is None:
        raise PlotError(f"{path}: no {'latency' if lat is None else 'throughput'} column for the Pareto plot; give "
                        f"{'--latency' if lat is None else '--throughput'}; {avail}")
    check(lat, "--latency")
    check(thr, "--throughput")

    plt = _pyplot()
    paths = [_metric_vs_param(plt, d, rows, x, ys, [p for p in params if p != x])]
    paths.append(_pareto(plt, d, rows, lat, thr, params))
    return paths


def _metric_vs_param(plt, d: Path, rows: list[dict[str, str]], x: str, ys: list[str], others: list[str]) -> Path:
    numeric_x = all(_float(r[x]) is not None for r in rows)
    xkeys = sorted({r[x] for r in rows}, key=lambda v: (_float(v) if numeric_x else 0.0, v))
    pos = {v: (_float(v) if numeric_x else i) for i, v in enumerate(xkeys)}
    groups: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        g = groups.setdefault(tuple(r[o] for o in others), {})
        for c in ys:
            v = _float(r[c])
            if v is not None:
                g.setdefault(c, {}).setdefault(r[x], []).append(v)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.6), squeeze=False)
    axes = list(axes[0])
    keys = sorted(groups)[:MAX_LINES]
    for ax, c in zip(axes, ys, strict=True):
        for key in keys:
            pts = sorted((pos[xv], sum(v) / len(v)) for xv, v in groups[key].get(c, {}).items())
            if not pts:
                continue
            label = ", ".join(f"{o}={k}" for o, k in zip(others, key, strict=True)) or c
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, lw=1)
        if not numeric_x:
            ax.set_xticks(range(len(xkeys)), xkeys, rotation=30)
        ax.set_xlabel(x)
        ax.set_ylabel(c)
        ax.grid(alpha=0.3)
    fig.suptitle(f"metrics vs {x}" + (" (mean over seeds)" if "seed" in rows[0] else ""))
    target = axes if len(keys) <= 8 else [_NoLegend(axes[0])]
    return _save(plt, fig, target, d / f"sweep_vs_{_safe(x)}.png")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _pareto(plt, d: Path, rows: list[dict[str, str]], lat: str, thr: str, params: list[str]) -> Path:
    pts = []
    for r in rows:
        a, b = _float(r[lat]), _float(r[thr])
        if a is not None and b is not None:
            pts.append((a, b, r))
    front = []
    best = float("-inf")
    for a, b, r in sorted(pts, key=lambda p: (p[0], -p[1])):  # by latency; keep each new throughput maximum
        if b > best:
            front.append((a, b, r))
            best = b
    fig, axes = plt.subplots(1, 1, figsize=(7.5, 5), squeeze=False)
    ax = axes[0][0]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color="tab:gray", alpha=0.6, label="points")
    ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", color="tab:red", label="Pareto front")
    for a, b, r in front[:20]:
        ax.annotate(", ".join(f"{p.split('.')[-1]}={r[p]}" for p in params[:3]), (a, b), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(lat)
    ax.set_ylabel(thr)
    ax.set_title("throughput per GPU vs latency")
    ax.grid(alpha=0.3)
    return _save(plt, fig, [ax], d / "sweep_pareto.png")
