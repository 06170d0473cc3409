"""Capacity search: the highest arrival rate at which a run still meets its SLOs.

The knob is workload.arrival.rate_per_s for a synthetic workload; a JSONL trace or a flat-request production
trace (`kind: trace`: Azure, BurstGPT, Mooncake) is replayed faster or slower through workload.time_scale
(rate = the trace's own rate / time_scale, its own rate measured on the requests the run replays, after the
trace's window, sample and limit); agent workloads, agentic JSONL session traces and agent-program traces
(swe_traj, copilot_otel, tracelab) are refused (their load is set by programs and tool times, not by one arrival rate). Every
evaluation keeps the run's seed, so all rates see the same request sizes and the same arrival pattern
stretched in time.

Search: each round runs several rates in parallel through the sweep runner. Until a passing and a failing
rate are known the rates spread geometrically (first over [rate_lo, rate_hi], then outward by factors of 4);
then each round splits the bracket [highest passing, lowest failing] into equal parts. It stops when
(failing - passing) <= tolerance x passing. The answer is the highest passing rate below the lowest failing
one; a passing rate above a failing one (the SLO is not monotone in load there) is noted, not used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontend.errors import ConfigError, UserError
from frontend.study.slo import SLO
from frontend.study.sweep import Task, cell, execute

MAX_ROUNDS = 40
EXPAND = 4.0
MIN_RATE = 1e-6
MAX_RATE = 1e9


@dataclass
class Knob:
    path: str  # workload.arrival.rate_per_s | workload.time_scale
    base_rate: float  # the run file's own rate (req/s)
    natural_rate: float = 0.0  # jsonl / trace: the trace's rate at time_scale 1

    def value(self, rate: float) -> float:
        return rate if self.path == "workload.arrival.rate_per_s" else self.natural_rate / rate


@dataclass
class CapacityResult:
    rate: float | None  # highest passing rate below the lowest failing one
    bracket: tuple[float | None, float | None]  # (last passing, first failing)
    rounds: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # every evaluated rate, sorted by rate
    notes: list[str] = field(default_factory=list)
    knob: str = ""
    converged: bool = False


def knob_for(config: Path, overrides: dict[str, Any]) -> Knob:
    from frontend.config.loader import load_and_resolve

    resolved = load_and_resolve(config, overrides)
    wl = resolved.config.workload
    if wl.kind == "synthetic":
        return Knob("workload.arrival.rate_per_s", wl.arrival.rate_per_s)
    if wl.kind == "jsonl":
        from frontend.session import _first_line, _resolve_path
        from frontend.workload.jsonl import read_jsonl

        path = _resolve_path(resolved, wl.path, "workload.path")
        if '"sub_requests"' in _first_line(path):
            raise UserError(f"capacity: {path}: an agentic session trace; its load is set by its sessions, not by "
                            "one arrival rate")
        reqs, _ = read_jsonl(path, wl.num_requests, 1.0)
        natural = _natural_rate(path, [r.arrival_ns for r in reqs])
        return Knob("workload.time_scale", natural / wl.time_scale, natural)
    if wl.kind == "trace":
        natural = _trace_rate(resolved)
        return Knob("workload.time_scale", natural / wl.time_scale, natural)
    raise UserError(f"capacity: workload kind {wl.kind!r} has no arrival rate to search over (synthetic workloads "
                    "use workload.arrival.rate_per_s, JSONL and flat-request traces workload.time_scale)")


def _natural_rate(where: Any, arrivals_ns: Sequence[int]) -> float:
    """Requests per second of a trace at time_scale 1: (requests - 1) / span of its arrival times."""
    arrivals = sorted(arrivals_ns)
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        raise UserError(f"capacity: {where}: the trace needs at least two distinct arrival times to define a rate")
    return (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9)


def _trace_rate(resolved: Any) -> float:
    """The own rate of a `kind: trace` workload: loaded once at time_scale 1 with the run's seed, so the window,
    sample and num_requests limit apply exactly as in the runs the search makes."""
    import dataclasses

    from frontend.workload.agent_traces import is_agent_format, resolve_trace_path
    from frontend.workload.sources import detect_format, load_workload

    wl = resolved.config.workload
    path = resolve_trace_path(resolved, wl.path)
    fmt = wl.format
    if fmt is None:
        fmt = "swe_traj" if path.is_dir() else detect_format(path)
    if is_agent_format(fmt):
        raise UserError(f"capacity: {path}: a {fmt} trace replays as agent programs; its load is set by its "
                        "programs and tool times, not by one arrival rate")
    unscaled = resolved.config.model_copy(update={"workload": wl.model_copy(update={"time_scale": 1.0})})
    reqs, programs, _, _ = load_workload(dataclasses.replace(resolved, config=unscaled), resolved.config.seed)
    if programs is not None:
        raise UserError(f"capacity: {path}: the trace replays as agent programs; its load is set by its programs "
                        "and tool times, not by one arrival rate")
    return _natural_rate(path, [r.arrival_ns for r in reqs])


def _set(tree: dict[str, Any], dotted: str, v: Any) -> dict[str, Any]:
    from frontend.config.loader import deep_merge

    parts = dotted.split(".")
    node: dict[str, Any] = {}
    leaf = node
    for p in parts[:-1]:
        leaf[p] = {}
        leaf = leaf[p]
    leaf[parts[-1]] = v
    return deep_merge(tree, node)


def _geometric(lo: float, hi: float, k: int) -> list[float]:
    if k == 1 or hi <= lo:
        return [hi]
    return [lo * (hi / lo) ** (i / (k - 1)) for i in range(k)]


def _round_rate(r: float) -> float:
    return float(f"{r:.6g}")


def find_capacity(config: Path, slos: Sequence[SLO], overrides: dict[str, Any] | None = None,
                  rate_lo: float | None = None, rate_hi: float | None = None, tolerance: float = 0.05,
                  workers: int | None = None, per_round: int | None = None, ray_address: str | None = None,
                  usd_per_gpu_hour: float | None = None,
                  on_round: Callable[[int, list[dict[str, Any]]], None] | None = None) -> CapacityResult:
    if not slos:
        raise ConfigError("capacity: give at least one --slo (e.g. --slo ttft_p99_ms=2000)")
    if not 0 < tolerance < 1:
        raise ConfigError(f"--tolerance: expected a fraction in (0, 1), got {tolerance}")
    for flag, v in (("--rate-lo", rate_lo), ("--rate-hi", rate_hi)):
        if v is not None and not MIN_RATE <= v <= MAX_RATE:
            raise ConfigError(f"{flag}: expected a rate in [{MIN_RATE:g}, {MAX_RATE:g}] req/s, got {v}")
    overrides = dict(overrides or {})
    knob = knob_for(config, overrides)
    lo = rate_lo if rate_lo is not None else knob.base_rate / 2
    hi = rate_hi if rate_hi is not None else knob.base_rate * 2
    if hi <= lo:
        raise ConfigError(f"--rate-lo {lo:g} must be below --rate-hi {hi:g}")
    import os

    k = per_round or max(2, workers or os.cpu_count() or 2)
    specs = [str(s) for s in slos]
    res = CapacityResult(None, (None, None), 0, knob=knob.path)
    seen: dict[float, dict[str, Any]] = {}
    candidates = [_round_rate(r) for r in _geometric(lo, hi, k)]
    for rnd in range(1, MAX_ROUNDS + 1):
        candidates = sorted({c for c in candidates if c not in seen})
        if not candidates:
            break
        tasks = [Task(str(config), _set(overrides, knob.path, knob.value(r)), {"rate_per_s": r}, None, specs,
                      usd_per_gpu_hour) for r in candidates]
        rows = execute(tasks, workers, ray_address)
        for r, row in zip(candidates, sorted(rows, key=lambda x: x["rate_per_s"]), strict=True):
            if row.get("error"):
                raise UserError(f"capacity: the run at {r:g} req/s failed: {row['error']}")
            row["round"] = rnd
            row[knob.path] = knob.value(r)
            seen[r] = row
        res.rounds = rnd
        if on_round is not None:
            on_round(rnd, [seen[c] for c in candidates])
        fails = [r for r, row in seen.items() if not row["slo_met"]]
        first_fail = min(fails) if fails else None
        passes = [r for r, row in seen.items() if row["slo_met"] and (first_fail is None or r < first_fail)]
        last_pass = max(passes) if passes else None
        res.bracket = (last_pass, first_fail)
        res.rate = last_pass
        if last_pass is None:
            low = min(seen)
            if low <= MIN_RATE * EXPAND:
                break
            candidates = [_round_rate(max(MIN_RATE, low / EXPAND ** i)) for i in range(1, k + 1)]
        elif first_fail is None:
            high = max(seen)
            if high >= MAX_RATE / EXPAND:
                break
            candidates = [_round_rate(min(MAX_RATE, high * EXPAND ** i)) for i in range(1, k + 1)]
        elif first_fail - last_pass <= tolerance * last_pass:
            res.converged = True
            break
        else:
            step = (first_fail - last_pass) / (k + 1)
            candidates = [_round_rate(last_pass + step * i) for i in range(1, k + 1)]
            candidates = [c for c in candidates if last_pass < c < first_fail]
            if not candidates:  # the bracket is below the rates' printed precision
                res.converged = True
                break
    res.rows = [seen[r] for r in sorted(seen)]
    ff = res.bracket[1]
    odd = sorted(r for r, row in seen.items() if row["slo_met"] and ff is not None and r > ff)
    if odd:
        res.notes.append(f"the SLOs are not monotone in load: {', '.join(f'{r:g}' for r in odd)} req/s passed "
                         f"above the first failing rate {ff:g}")
    if res.rate is None:
        res.notes.append(f"no rate tried (down to {min(seen):g} req/s) meets the SLOs")
    elif res.bracket[1] is None:
        res.notes.append(f"every rate tried (up to {max(seen):g} req/s) meets the SLOs")
    return res


CAPACITY_EXTRA = ["round", "rate_per_s"]


def write_capacity_csv(res: CapacityResult, path: Path) -> None:
    import csv

    from frontend.study.sweep import table_columns

    usd = bool(res.rows) and "goodput_per_usd" in res.rows[0]
    cols = [c for c in table_columns(["rate_per_s"], True, usd) if c != "point_id"]
    cols = ["round", *cols[:2], res.knob, *cols[2:]] if res.knob != "workload.arrival.rate_per_s" \
        else ["round", *cols]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in res.rows:
            w.writerow([cell(row.get(c)) for c in cols])
