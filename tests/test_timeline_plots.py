"""Timelines (frontend/metrics/timeline.py) and plots (frontend/metrics/plots.py): a TP, an agent, a
prefill/decode and a lockstep DP run give valid Trace Event JSON whose slices nest on every track and hold every
iteration once; the run and sweep plots are written as non-empty PNGs."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from frontend.config.loader import load_and_resolve
from frontend.metrics.report import write_outputs
from frontend.metrics.timeline import TimelineError, build_timeline, write_timeline
from frontend.session import simulate

EX = Path(__file__).resolve().parents[1] / "configs" / "examples"
RUNS = {
    "tp": ("h100x8-llama3.1-70b-tp8.yaml", {"workload": {"num_requests": 12}}),
    "agents": ("agents-coding-4x.yaml", {"workload": {"num_programs": 3}}),
    "pd": ("pd-1p1d-h100-llama3.1-70b.yaml", {"workload": {"num_requests": 12}}),
    "lockstep": ("h100x8-qwen3-30b-a3b-ep8.yaml", {"workload": {"num_requests": 8}}),
    "pp": ("h100-2x4-llama3.1-70b-tp4pp2.yaml", {"workload": {"num_requests": 6}}),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results():
    return {k: simulate(load_and_resolve(EX / cfg, ov)) for k, (cfg, ov) in RUNS.items()}


def _loaded(result, tmp_path: Path) -> list[dict]:
    path = write_timeline(result, tmp_path / "timeline.json")
    trace = json.loads(path.read_text())
    assert trace["displayTimeUnit"] == "ns"
    assert isinstance(trace["traceEvents"], list)
    return trace["traceEvents"]


def _check_nesting(events: list[dict]) -> None:
    """On every (pid, tid), complete slices sorted by start either follow the open ones or lie inside them."""
    tracks: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            assert e["dur"] >= 0
            tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    eps = 1e-6
    for key, spans in tracks.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for s, e in spans:
            while stack and stack[-1] <= s + eps:
                stack.pop()
            assert not stack or e <= stack[-1] + eps, f"partial overlap on {key} at {s}"
            stack.append(e)


def _check_async(events: list[dict], cat: str) -> int:
    """Async begin/end events of `cat` pair up per id, in order, each end at or after its begin."""
    open_: dict[str, list[tuple[str, float]]] = defaultdict(list)
    n = 0
    for e in events:
        if e.get("cat") != cat or e["ph"] not in ("b", "e"):
            continue
        if e["ph"] == "b":
            open_[e["id"]].append((e["name"], e["ts"]))
            n += 1
        else:
            name, ts = open_[e["id"]].pop()
            assert name == e["name"] and e["ts"] >= ts
    assert all(not v for v in open_.values())
    return n


def _check_iterations(result, events: list[dict]) -> None:
    rows = result.iterations.rows
    cols = result.iterations.columns
    pid_of = {e["args"]["name"].removeprefix("instance "): e["pid"] for e in events
              if e["ph"] == "M" and e["name"] == "process_name"}
    got = Counter((e["pid"], round(e["ts"] * 1000), round(e["dur"] * 1000), e["args"]["num_seqs"])
                  for e in events if e["ph"] == "X" and e["cat"] == "iteration")
    want = Counter((pid_of[r[0]], r[1], r[2] - r[1], r[cols.index("num_seqs")]) for r in rows)
    assert len(rows) > 0 and got == want


def test_tp_timeline_holds_every_iteration_once_and_nests(results, tmp_path):
    res, _ = results["tp"]
    ev = _loaded(res, tmp_path)
    _check_iterations(res, ev)
    _check_nesting(ev)
    assert _check_async(ev, "request") == 3 * res.request_log.finished
    names = {e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    assert {f"rank {r} (tp {r})" for r in range(1, 8)} <= names  # a track per NPU rank of the TP8 instance
    counters = {e["name"] for e in ev if e["ph"] == "C"}
    assert {"kv_blocks", "queue", "batch_size", "power_w", "energy_j"} <= counters


def test_agent_timeline_has_tool_gaps(results, tmp_path):
    res, _ = results["agents"]
    ev = _loaded(res, tmp_path)
    _check_iterations(res, ev)
    _check_nesting(ev)
    assert _check_async(ev, "tool") > 0
    assert _check_async(ev, "request") == 3 * res.request_log.finished
    assert any(e["ph"] == "C" and e["name"] == "kv_dram_blocks" for e in ev)  # the lower tier's occupancy


def test_pd_timeline_has_paired_kv_transfer_flows(results, tmp_path):
    res, _ = results["pd"]
    ev = _loaded(res, tmp_path)
    _check_iterations(res, ev)
    _check_nesting(ev)
    transfers = res.pd.stats.transfers
    assert transfers
    flows: dict[int, list[str]] = defaultdict(list)
    for e in ev:
        if e.get("cat") == "kv_transfer" and e["ph"] in "stf":
            flows[e["id"]].append(e["ph"])
    assert len(flows) == len(transfers) and all(sorted(v) == ["f", "s", "t"] for v in flows.values())
    assert sum(1 for e in ev if e["ph"] == "X" and e["cat"] == "kv_transfer") == len(transfers)
    pid_of = {e["args"]["name"]: e["pid"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    by_ph = {e["ph"]: e["pid"] for e in ev if e.get("cat") == "kv_transfer" and e.get("id") == 1}
    assert by_ph["s"] == pid_of["instance prefill"] and by_ph["f"] == pid_of["instance decode"]


def test_lockstep_and_pipeline_timelines_nest(results, tmp_path):
    for key in ("lockstep", "pp"):
        res, _ = results[key]
        ev = _loaded(res, tmp_path)
        _check_iterations(res, ev)
        _check_nesting(ev)
    assert any(e["ph"] == "X" and e["cat"] == "stage" for e in ev)  # pp=2: the second stage's track


def test_streamed_run_needs_its_csvs(tmp_path):
    run = load_and_resolve(EX / RUNS["tp"][0], RUNS["tp"][1])
    res, _ = simulate(run, stream_dir=tmp_path)
    with pytest.raises(TimelineError, match="streamed"):
        build_timeline(res)
    kept, _ = simulate(run)
    ev = build_timeline(res, run_dir=tmp_path)["traceEvents"]
    _check_iterations(kept, ev)
    _check_nesting(ev)


def _png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_run_plots_are_written(results, tmp_path):
    from frontend.metrics.plots import RUN_PLOTS, plot_run

    res, extra = results["pd"]
    write_outputs(res, tmp_path, extra)
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == sorted(RUN_PLOTS)
    for p in paths:
        _png(p)


def _sweep_dir(tmp_path: Path, thr: str = "output_tokens_per_s_per_gpu") -> Path:
    """A results.csv laid out as `astraserve sweep` writes it: point id, parameters, seed, metrics, wall_s."""
    d = tmp_path / "sweep"
    d.mkdir(exist_ok=True)
    with (d / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["point_id", "engine.max_num_seqs", "workload.arrival.rate_per_s", "seed", "completed",
                    "ttft_ms_p99", "tpot_ms_p50", thr, "gpus", "error", "wall_s"])
        for mns in (16, 64, 256):
            for rate in (2, 4, 8):
                for seed in (1, 2):
                    w.writerow([f"p{mns}-{rate}-{seed}", mns, rate, seed, 10, 50 * rate + 1000 / mns + seed,
                                10 + mns / 32, rate * 100 + mns, 8, "", 0.1 * seed])
    return d


def test_sweep_plots_are_written(tmp_path):
    from frontend.metrics.plots import plot_sweep

    d = _sweep_dir(tmp_path)
    paths = plot_sweep(d)
    assert {p.name for p in paths} == {"sweep_vs_engine.max_num_seqs.png", "sweep_pareto.png"}
    for p in paths:
        _png(p)
    paths = plot_sweep(d, x="workload.arrival.rate_per_s", y=["tpot_ms_p50"])
    assert "sweep_vs_workload.arrival.rate_per_s.png" in {p.name for p in paths}
    d = _sweep_dir(tmp_path, thr="tok_s_per_gpu")  # the sweep command's own column name
    for p in plot_sweep(d):
        _png(p)


def test_sweep_plot_names_the_available_columns(tmp_path):
    from frontend.metrics.plots import PlotError, plot_sweep

    d = _sweep_dir(tmp_path)
    with pytest.raises(PlotError, match="available columns: .*ttft_ms_p99"):
        plot_sweep(d, y=["goodput"])
    with pytest.raises(PlotError, match="no results.csv"):
        plot_sweep(tmp_path)
