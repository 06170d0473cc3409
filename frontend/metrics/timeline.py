"""A run as a Chrome Trace Event Format timeline (`astraserve run CONFIG --timeline FILE.json`).

The file loads in Perfetto (ui.perfetto.dev) and chrome://tracing: {"traceEvents": [...], "displayTimeUnit": "ns"},
timestamps in microseconds (floats, so nanoseconds survive as decimals).

- one process (pid) per instance, named after it; a thread (tid) per NPU rank of the instance (tp x pp ranks).
  Every row of iterations.csv is one complete event ("ph": "X", cat "iteration") on rank 0's track, its args the
  batch (sequences, prefill/decode tokens, KV blocks) and timing (compute / comm / exposed comm / memory ns).
  With pp > 1 each later stage's first rank also gets the step as a "stage" slice (the rows carry no per-stage
  split: a stage's slice spans the whole step). Iterations of one instance never overlap; should two ever do,
  the later one goes to an "iterations (overlap)" track so that slices on every track nest.
- requests as async slices (cat "request", id = request id) on the instance that served them: "request" from
  arrival to finish holding "queue+prefill" (arrival to first token) and "decode" (first token to finish).
- agent tool gaps (cat "tool") on an "agents" process: from the (last) parent turn's finish to the child turn's
  arrival, named after the tool on that edge.
- prefill/decode KV transfers as flows (cat "kv_transfer": prefill instance's rank 0 -> the transfer's slice on
  the "kv links" process, one track per src->dst link (more lanes where transfers overlap) -> the decode
  instance's next iteration).
- counters ("ph": "C") per instance: KV blocks used (and per lower tier occupancy), queue length (requests
  arrived and not yet scheduled), batch size, average power of each iteration and cumulative energy; with power
  states or a PIM device (iterations.csv power columns) also the power of each idle gap, at idle then in deep
  idle, and the cumulative energy then includes the gaps and wake-ups.

The rows come from a RunResult that kept them (simulate without stream_dir), or, for a streamed run, from the
iterations.csv / requests.csv of its output directory (`run_dir`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from frontend.errors import UserError

MAX_RANK_TRACKS = 64  # named rank tracks per instance (a 64+ GPU instance still gets its iteration track)
OVERLAP_TID = 100_000  # first tid of the overflow lanes for overlapping iterations
AGENTS_PID_NAME = "agents (tool calls)"
LINKS_PID_NAME = "kv links"


class TimelineError(UserError):
    """A timeline that cannot be written from what the run kept."""


def _us(ns: float) -> float:
    return ns / 1000.0


def _num(v: Any) -> Any:
    """A CSV cell as int or float (blank stays '')."""
    if not isinstance(v, str):
        return v
    if v == "":
        return ""
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _iteration_rows(result, run_dir: Path | None) -> tuple[list[str], list[tuple]]:
    it = result.iterations
    if it.rows or it.count == 0:
        return list(it.columns), list(it.rows)
    path = Path(run_dir) / "iterations.csv" if run_dir is not None else None
    if path is None or not path.is_file():
        raise TimelineError("timeline: this run was streamed to iterations.csv without keeping its iteration rows "
                            "in memory; build the timeline with run_dir= the directory holding that iterations.csv, "
                            "or simulate without stream_dir")
    with path.open(newline="") as f:
        rd = csv.reader(f)
        cols = next(rd, [])
        rows = [tuple(_num(c) if i else c for i, c in enumerate(r)) for r in rd]
    if len(rows) != it.count:
        raise TimelineError(f"timeline: {path} has {len(rows)} iteration rows, the run logged {it.count} "
                            "(truncated or from another run?)")
    return cols, rows


class _Req:
    __slots__ = ("request_id", "arrival_ns", "first_token_ns", "finish_ns", "instance", "status", "queued_ns",
                 "scheduled_ns", "input_tokens", "output_tokens", "cached_tokens", "program_id", "turn_index")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _requests(result, run_dir: Path | None) -> list:
    log = result.request_log
    if result.requests or log.total == 0:
        return list(result.requests)
    path = Path(run_dir) / "requests.csv" if run_dir is not None else None
    if path is None or not path.is_file():
        raise TimelineError("timeline: this run was streamed to requests.csv without keeping its requests in memory; "
                            "build the timeline with run_dir= the directory holding that requests.csv, or simulate "
                            "without stream_dir")
    out = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            out.append(_Req(request_id=r["request_id"], arrival_ns=int(r["arrival_ns"]),
                            first_token_ns=int(r["first_token_ns"]), finish_ns=int(r["finish_ns"]),
                            instance=r["instance"], status=r["status"], queued_ns=int(r.get("queued_ns") or -1),
                            scheduled_ns=-1, input_tokens=int(r["input_tokens"]),
                            output_tokens=int(r["output_tokens"]), cached_tokens=int(r["cached_tokens"])))
    return out


class _Lanes:
    """Greedy interval partitioning: the first lane whose last slice ended by `start` (slices arrive by start)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def put(self, start: float, end: float) -> int:
        for i, e in enumerate(self.ends):
            if e <= start:
                self.ends[i] = end
                return i
        self.ends.append(end)
        return len(self.ends) - 1


def build_timeline(result, run_dir: Path | str | None = None) -> dict[str, Any]:
    """The trace as a dict ready for json.dump (see the module docstring)."""
    run_dir = Path(run_dir) if run_dir is not None else None
    cols, rows = _iteration_rows(result, run_dir)
    requests = _requests(result, run_dir)
    meta: list[dict] = []
    ev: list[dict] = []
    pids: dict[str, int] = {}
    shape: dict[str, tuple[int, int]] = {}

    def process(name: str, sort: int) -> int:
        pid = pids.get(name)
        if pid is None:
            pid = pids[name] = len(pids) + 1
            meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
            meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": sort}})
        return pid

    def thread(pid: int, tid: int, name: str) -> None:
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})

    def add_instance(name: str, tp: int, pp: int) -> int:
        pid = process(f"instance {name}", len(pids))
        shape[name] = (tp, pp)
        for rank in range(min(tp * pp, MAX_RANK_TRACKS)):
            stage, tpr = divmod(rank, tp)
            label = f"rank {rank}" + (f" (stage {stage}, tp {tpr})" if pp > 1 else f" (tp {tpr})" if tp > 1 else "")
            thread(pid, rank, label + (": iterations" if rank == 0 else ""))
        return pid

    for inst in result.instances:
        add_instance(inst.name, inst.inst.tp, inst.inst.pp)
    ix = {c: i for i, c in enumerate(cols)}
    tiers = [c.removesuffix("_occupancy_blocks") for c in cols if c.endswith("_occupancy_blocks")]
    by_inst: dict[str, list[tuple]] = {}
    for row in rows:
        by_inst.setdefault(row[0], []).append(row)
    iter_spans: dict[str, list[tuple[int, int]]] = {}
    overlap_tracks: set[tuple[int, int]] = set()
    for name, irows in by_inst.items():
        if name not in shape:
            add_instance(name, 1, 1)
        pid = pids[f"instance {name}"]
        tp, pp = shape[name]
        irows.sort(key=lambda r: (r[ix["start_ns"]], r[ix["end_ns"]]))
        lanes = _Lanes()
        spans = iter_spans[name] = []
        energy = 0.0
        for row in irows:
            s, e = row[ix["start_ns"]], row[ix["end_ns"]]
            lane = lanes.put(s, e)
            tid = 0 if lane == 0 else OVERLAP_TID + lane - 1
            if lane and (pid, tid) not in overlap_tracks:
                overlap_tracks.add((pid, tid))
                thread(pid, tid, f"iterations (overlap {lane})")
            args = {"num_seqs": row[ix["num_seqs"]], "prefill_tokens": row[ix["prefill_tokens"]],
                    "decode_tokens": row[ix["decode_tokens"]], "kv_blocks_used": row[ix["kv_blocks_used"]],
                    "kv_blocks_total": row[ix["kv_blocks_total"]], "compute_ns": row[ix["compute_ns"]],
                    "comm_ns": row[ix["comm_ns"]], "exposed_comm_ns": row[ix["exposed_comm_ns"]],
                    "mem_ns": row[ix["mem_ns"]], "preempted": row[ix["preempted"]], "energy_j": row[ix["energy_j"]]}
            dur = _us(e - s)
            ev.append({"ph": "X", "cat": "iteration", "name": _iter_name(args), "pid": pid, "tid": tid, "ts": _us(s),
                       "dur": dur, "args": args})
            if lane == 0:
                spans.append((s, e))
                for stage in range(1, pp):
                    if stage * tp < MAX_RANK_TRACKS:
                        ev.append({"ph": "X", "cat": "stage", "name": f"stage {stage}", "pid": pid,
                                   "tid": stage * tp, "ts": _us(s), "dur": dur})
            ts_end = _us(e)
            ev.append({"ph": "C", "name": "kv_blocks", "pid": pid, "ts": ts_end,
                       "args": {"used": row[ix["kv_blocks_used"]]}})
            for t in tiers:
                occ = row[ix[f"{t}_occupancy_blocks"]]
                if occ != "":
                    ev.append({"ph": "C", "name": f"kv_{t}_blocks", "pid": pid, "ts": ts_end, "args": {"used": occ}})
            ev.append({"ph": "C", "name": "batch_size", "pid": pid, "ts": _us(s),
                       "args": {"seqs": row[ix["num_seqs"]]}})
            ej = float(row[ix["energy_j"]] or 0.0)
            energy += ej
            if "idle_ns" in ix:  # power states / PIM: the gap before the iteration at idle, then in deep idle
                idle_ns, deep_ns = int(row[ix["idle_ns"]]), int(row[ix["deep_idle_ns"]])
                g0 = s - idle_ns - deep_ns
                gap_j = float(row[ix["idle_j"]]) + float(row[ix["deep_idle_j"]]) + float(row[ix["wake_j"]])
                if idle_ns:
                    ev.append({"ph": "C", "name": "power_w", "pid": pid, "ts": _us(g0),
                               "args": {"W": round(float(row[ix["idle_j"]]) / (idle_ns / 1e9), 3)}})
                if deep_ns:
                    ev.append({"ph": "C", "name": "power_w", "pid": pid, "ts": _us(g0 + idle_ns),
                               "args": {"W": round(float(row[ix["deep_idle_j"]]) / (deep_ns / 1e9), 3)}})
                energy += gap_j
            ev.append({"ph": "C", "name": "power_w", "pid": pid, "ts": _us(s),
                       "args": {"W": round(ej / ((e - s) / 1e9), 3) if e > s else 0.0}})
            ev.append({"ph": "C", "name": "energy_j", "pid": pid, "ts": ts_end, "args": {"J": round(energy, 6)}})

    _request_events(requests, pids, ev)
    _tool_events(result, process, thread, ev)
    _transfer_events(result, pids, iter_spans, process, thread, ev)
    ev.sort(key=lambda x: x["ts"])  # stable: b/e of one request keep their order at equal timestamps
    return {"traceEvents": meta + ev, "displayTimeUnit": "ns",
            "otherData": {"source": "AstraServe", "iterations": len(rows), "requests": len(requests)}}


def _iter_name(args: dict) -> str:
    p, d = args["prefill_tokens"], args["decode_tokens"]
    kind = "mixed" if p and d else "prefill" if p else "decode" if d else "idle"
    return f"{kind} x{args['num_seqs']}"


def _request_events(requests: list, pids: dict[str, int], ev: list[dict]) -> None:
    queue: dict[int, list[tuple[int, int]]] = {}
    for r in requests:
        pid = pids.get(f"instance {r.instance}")
        if pid is None:
            continue
        rid = str(r.request_id)
        if r.status != "finished":
            ev.append({"ph": "i", "s": "p", "cat": "request", "name": f"{r.status} {rid}", "pid": pid, "tid": 0,
                       "ts": _us(r.arrival_ns)})
            continue
        a, f, e = r.arrival_ns, r.first_token_ns, r.finish_ns
        args = {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "cached_tokens": r.cached_tokens}
        if getattr(r, "program_id", None):
            args["program_id"] = r.program_id
            args["turn_index"] = r.turn_index
        base = {"cat": "request", "id": rid, "pid": pid, "tid": 0}
        ev.append({**base, "ph": "b", "name": "request", "ts": _us(a), "args": args})
        ev.append({**base, "ph": "b", "name": "queue+prefill", "ts": _us(a)})
        ev.append({**base, "ph": "e", "name": "queue+prefill", "ts": _us(f)})
        ev.append({**base, "ph": "b", "name": "decode", "ts": _us(f)})
        ev.append({**base, "ph": "e", "name": "decode", "ts": _us(e)})
        ev.append({**base, "ph": "e", "name": "request", "ts": _us(e)})
        q0 = r.queued_ns if r.queued_ns is not None and r.queued_ns >= 0 else a
        q1 = r.scheduled_ns if r.scheduled_ns is not None and r.scheduled_ns >= 0 else f
        queue.setdefault(pid, []).extend(((q0, 1), (max(q0, q1), -1)))
    for pid, deltas in queue.items():
        deltas.sort()
        n = 0
        for t, d in deltas:
            n += d
            ev.append({"ph": "C", "name": "queue", "pid": pid, "ts": _us(t), "args": {"waiting": n}})


def _tool_events(result, process, thread, ev: list[dict]) -> None:
    orch = result.orchestrator
    if orch is None:
        return
    pid = None
    for tid_, st in orch.turns.items():
        req = st.request
        if req is None or not st.spec.parents:
            continue
        parents = [(orch.turns[e.parent].request, e) for e in st.spec.parents]
        done = [(p.finish_ns, e) for p, e in parents if p is not None and p.finish_ns >= 0]
        if not done:
            continue
        start, edge = max(done, key=lambda x: x[0])
        if req.arrival_ns <= start:
            continue
        if pid is None:
            pid = process(AGENTS_PID_NAME, 10_000)
            thread(pid, 0, "tool calls")
        base = {"cat": "tool", "id": f"tool:{tid_}", "pid": pid, "tid": 0}
        name = str(edge.tool or "tool")
        ev.append({**base, "ph": "b", "name": name, "ts": _us(start),
                   "args": {"program_id": st.spec.program_id, "after": edge.parent, "before": tid_}})
        ev.append({**base, "ph": "e", "name": name, "ts": _us(req.arrival_ns)})


def _transfer_events(result, pids: dict[str, int], iter_spans: dict[str, list[tuple[int, int]]], process, thread,
                     ev: list[dict]) -> None:
    pd = result.pd
    transfers = list(pd.stats.transfers) if pd is not None else []
    if not transfers:
        return
    import bisect

    link_pid = process(LINKS_PID_NAME, 10_001)
    lanes: dict[tuple[str, str], _Lanes] = {}
    tids: dict[tuple[str, str, int], int] = {}
    starts = {k: [s for s, _ in v] for k, v in iter_spans.items()}
    for n, t in enumerate(sorted(transfers, key=lambda x: (x.start_ns, x.end_ns, x.request_id)), 1):
        key = (t.src, t.dst)
        lane = lanes.setdefault(key, _Lanes()).put(t.start_ns, t.end_ns)
        tid = tids.get((*key, lane))
        if tid is None:
            tid = tids[(*key, lane)] = len(tids)
            thread(link_pid, tid, f"{t.src} -> {t.dst}" + (f" (lane {lane})" if lane else ""))
        ev.append({"ph": "X", "cat": "kv_transfer", "name": f"kv {t.request_id}", "pid": link_pid, "tid": tid,
                   "ts": _us(t.start_ns), "dur": _us(t.end_ns - t.start_ns),
                   "args": {"request_id": t.request_id, "bytes": t.bytes, "handoff_ns": t.handoff_ns,
                            "admitted_ns": t.admitted_ns}})
        flow = {"cat": "kv_transfer", "name": "kv_transfer", "id": n}
        src_pid = pids.get(f"instance {t.src}")
        dst_pid = pids.get(f"instance {t.dst}")
        if src_pid is None or dst_pid is None:
            continue
        # the flow starts inside the prefill iteration that ended at the hand-off (a slice encloses it)
        s_ts = t.handoff_ns
        spans = iter_spans.get(t.src, [])
        k = bisect.bisect_right(starts.get(t.src, []), t.handoff_ns) - 1
        if k >= 0:
            a, b = spans[k]
            s_ts = (a + b) / 2 if b == a or t.handoff_ns >= b else max(a, t.handoff_ns)
        ev.append({**flow, "ph": "s", "pid": src_pid, "tid": 0, "ts": _us(s_ts)})
        ev.append({**flow, "ph": "t", "pid": link_pid, "tid": tid, "ts": _us((t.start_ns + t.end_ns) / 2)})
        ev.append({**flow, "ph": "f", "pid": dst_pid, "tid": 0, "ts": _us(t.end_ns)})  # binds to the next slice


def write_timeline(result, path: Path | str, run_dir: Path | str | None = None) -> Path:
    """Write the timeline of `result` to `path` (JSON); `run_dir` holds the CSVs of a streamed run."""
    trace = build_timeline(result, run_dir)
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w") as f:
        json.dump(trace, f, separators=(",", ":"))
    tmp.replace(path)
    return path
