"""TraceLab coding-agent sessions (real Claude Code and Codex use) replayed as agent programs with measured tool
gaps.

The public dataset: "TraceLab: Characterizing Coding Agent Workloads for LLM Serving" (UW SyFI lab,
arXiv:2606.30560), https://github.com/uw-syfi/TraceLab, release v0.0.1 asset `syfi_coding_trace.jsonl.gz`
(357,161 LLM rounds of about 4,300 sessions, CC BY 4.0). The schema (read from its README "Data format" section
and example_sessions/sanitized/README.md; nothing copied): JSON lines (the file may be gzipped), one LLM
invocation ("round") per line:
`{"provider": "claude" | "codex", "session_id", "round_index", "model", "input_tokens_total", "prefix_tokens",
"newly_append_tokens", "output_tokens", "reasoning_output_tokens", "timing_events": [{"event_type", "timestamp",
...}], "tools": [{"tool_name", "tool_call_id", "emitted_at", "result_at", "tool_wall_latency_ms",
"tool_internal_latency_ms", "is_error", ...}], ...}`; timestamps are ISO 8601 UTC ("2026-06-01T05:40:20.151Z");
`timing_events[].event_type` is one of user_message, tool_result (the round's inputs), reasoning, text,
tool_call, usage_report (its outputs).

Each session (`session_id`) is one program; each round, in `round_index` order, one turn:
* prompt `input_tokens_total`, output `output_tokens` (at least 1; Codex counts reasoning inside it); a round
  whose counts are null is skipped and counted;
* turn k+1 extends turn k's context (context parent) when its prompt is at least turn k's prompt + output (a Codex
  round whose reasoning tokens left the context, or a compacted context, shares no prefix here; the trace's own
  `prefix_tokens`, the provider's cache hits, are not used);
* the edge k -> k+1 is measured: round k+1's input-ready time (its latest user_message / tool_result event) minus
  round k's last event (its last output); 0 when they overlap, unmeasured (workload.tools) when either round has
  no timed event. Its tool is the batch of round k's `tools` (tool calls run one after another or in parallel):
  the one with the longest `tool_wall_latency_ms` (else result_at - emitted_at) names the edge; a round without
  tools is followed by the user's next message, edge `user`. A distribution named in `workload.tools` replaces
  the measured gaps of that name (frontend/agents/tools.py);
* arrival: the session's first round's input-ready time relative to the earliest session, x time_scale.

The `trace` options apply per session (frontend/workload/program_window.py). `astraserve convert` writes each
round as a flat request at its input-ready time.
"""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from frontend.workload.jsonl import MAX_TOKENS, WorkloadError, object_lines
from frontend.workload.program_window import select_sessions, sessions_to_programs
from frontend.workload.sources import GZIP_MAGIC, TraceRow, register_trace_format

INPUT_EVENTS = ("user_message", "tool_result")
USER_GAP = "user"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SESSION_ROUNDS = 1_000_000


@dataclass(slots=True)
class Round:
    line: int
    index: int
    prompt_tokens: int
    output_tokens: int
    ready_ns: int | None  # latest input event: when the call could be issued
    done_ns: int | None  # latest event of the round: its last output
    tool: str | None  # the batch's longest tool
    batch: int
    model: str | None


@dataclass
class Session:
    name: str
    rounds: list[Round] = field(default_factory=list)

    @property
    def start_ns(self) -> int:
        r = self.rounds[0]
        return r.ready_ns if r.ready_ns is not None else r.done_ns if r.done_ns is not None else 0

    def gap_ns(self, k: int) -> int | None:
        a, b = self.rounds[k - 1].done_ns, self.rounds[k].ready_ns
        return None if a is None or b is None else max(0, b - a)

    def edge_tool(self, k: int) -> str:
        return self.rounds[k - 1].tool or USER_GAP


@dataclass
class Read:
    sessions: list[Session]
    rows: int = 0
    skipped: int = 0  # rounds without token counts
    tool_calls: int = 0
    batches: Counter[int] = field(default_factory=Counter)


def iso_ns(v, where: str) -> int:
    """An ISO 8601 timestamp as integer ns since the epoch (UTC when it names no zone)."""
    if not isinstance(v, str):
        raise WorkloadError(f"{where}: expected an ISO 8601 timestamp, got {v!r}")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise WorkloadError(f"{where}: not an ISO 8601 timestamp: {v!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - EPOCH
    ns = (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000
    if ns < 0:  # a date's size is checked where it becomes simulated time (arrivals relative to the first session)
        raise WorkloadError(f"{where}: {v!r} is before 1970")
    return ns


def _count(obj: dict, key: str, where: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TOKENS:
        raise WorkloadError(f"{where}: field {key!r}: expected a token count in [0, {MAX_TOKENS}], got {v!r}")
    return v


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        f = gzip.open(path, "rb") if gz else path.open("rb")
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror})") from None
    try:
        with f:
            yield from enumerate(f, 1)
    except (OSError, EOFError, zlib.error) as e:
        raise WorkloadError(f"{path}: cannot read the gzip stream ({e})") from None


def _tools(tools, where: str) -> tuple[str | None, int]:
    """(the longest tool's name, tools in the batch)."""
    if tools is None:
        return None, 0
    if not isinstance(tools, list):
        raise WorkloadError(f"{where}: field 'tools': expected a list")
    best: tuple[float, str] | None = None
    for i, t in enumerate(tools):
        w = f"{where}: tools[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("tool_name"), str) or not t["tool_name"]:
            raise WorkloadError(f"{w}: expected an object with a 'tool_name'")
        lat = t.get("tool_wall_latency_ms")
        if lat is None and t.get("emitted_at") is not None and t.get("result_at") is not None:
            lat = (iso_ns(t["result_at"], f"{w}.result_at") - iso_ns(t["emitted_at"], f"{w}.emitted_at")) / 1e6
        if lat is not None and (isinstance(lat, bool) or not isinstance(lat, int | float) or not 0 <= lat <= 1e12):
            raise WorkloadError(f"{w}.tool_wall_latency_ms: expected milliseconds >= 0, got {lat!r}")
        key = (float(lat or 0.0), t["tool_name"])
        if best is None or key[0] > best[0]:
            best = key
    return (best[1] if best else None), len(tools)


def _times(events, where: str) -> tuple[int | None, int | None]:
    """(latest input event, latest event) of a round."""
    if events is None:
        return None, None
    if not isinstance(events, list):
        raise WorkloadError(f"{where}: field 'timing_events': expected a list")
    ready = done = None
    for i, e in enumerate(events):
        w = f"{where}: timing_events[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("event_type"), str):
            raise WorkloadError(f"{w}: expected an object with an 'event_type'")
        if e.get("timestamp") is None:
            continue
        t = iso_ns(e["timestamp"], f"{w}.timestamp")
        done = t if done is None else max(done, t)
        if e["event_type"] in INPUT_EVENTS:
            ready = t if ready is None else max(ready, t)
    return ready, done


def read_sessions(path: str | Path) -> Read:
    """The file's sessions, each with its rounds in round_index order, sessions sorted by start."""
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    out = Read([])
    sessions: dict[str, Session] = {}
    seen: dict[tuple[str, int], int] = {}
    for line, where, obj in object_lines(_lines(p), p, " (one TraceLab round)"):
        out.rows += 1
        sid = obj.get("session_id")
        if not isinstance(sid, str) or not sid:
            raise WorkloadError(f"{where}: field 'session_id' missing or not text")
        idx = obj.get("round_index")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= MAX_SESSION_ROUNDS:
            raise WorkloadError(f"{where}: field 'round_index': expected an integer in [0, {MAX_SESSION_ROUNDS}], "
                                f"got {idx!r}")
        if (sid, idx) in seen:
            raise WorkloadError(f"{where}: round {idx} of session {sid} already read at line {seen[sid, idx]}")
        seen[sid, idx] = line
        inp = _count(obj, "input_tokens_total", where)
        outp = _count(obj, "output_tokens", where)
        tool, batch = _tools(obj.get("tools"), where)
        ready, done = _times(obj.get("timing_events"), where)
        if inp is None or outp is None:
            out.skipped += 1
            continue
        if batch:
            out.tool_calls += batch
            out.batches[batch] += 1
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        sessions.setdefault(sid, Session(sid)).rounds.append(
            Round(line, idx, max(1, inp), max(1, outp), ready, done, tool, batch, model))
    for s in sessions.values():
        s.rounds.sort(key=lambda r: r.index)
    out.sessions = sorted(sessions.values(), key=lambda s: (s.start_ns, s.name))
    return out


def load_programs(path: str | Path, *, time_scale: float = 1.0, start_s: float | None = None,
                  end_s: float | None = None, sample: float = 1.0, seed: int = 0, num_programs: int | None = None,
                  tools: dict | None = None, **_ignored):
    """(programs, tool distributions, notes) of a TraceLab round trace."""
    read = read_sessions(path)
    if not read.sessions:
        raise WorkloadError(f"{path}: no TraceLab rounds to replay ({read.rows} rows, {read.skipped} without token "
                            "counts)")
    sel = select_sessions(path, read.sessions, lambda s: s.start_ns, start_s=start_s, end_s=end_s, sample=sample,
                          seed=seed, limit=num_programs)
    kept: list[Session] = sel.kept
    progs = sessions_to_programs(kept, lambda s: s.rounds, time_scale, sel.origin_ns)
    rounds = sum(len(s.rounds) for s in kept)
    gaps = [(s.edge_tool(k), s.gap_ns(k)) for s in kept for k in range(1, len(s.rounds))]
    unmeasured = sorted({t for t, g in gaps if g is None})
    edges = Counter(t for t, _ in gaps)
    multi = sum(n for size, n in read.batches.items() if size > 1)
    notes = [f"tracelab {Path(path).name}: {len(progs)} of {len(read.sessions)} sessions replayed as programs, "
             f"{rounds} LLM rounds"
             + (f"; {read.skipped} rounds without token counts skipped" if read.skipped else "")
             + sel.note(sample, seed),
             f"tracelab tool gaps: {sum(1 for _, g in gaps if g is not None)} of {len(gaps)} measured from timing "
             f"events; {read.tool_calls} tool calls in {sum(read.batches.values())} batches ({multi} of several "
             f"tools, largest {max(read.batches, default=0)}); edges by tool: "
             + ", ".join(f"{t} {n}" for t, n in sorted(edges.items()))
             + (f"; unmeasured gaps ({', '.join(unmeasured)}) from workload.tools" if unmeasured else "")]
    cfg = dict(tools or {})
    overridden = sorted({t for t, g in gaps if g is not None} & {n for n, d in cfg.items() if d.dist != "trace"})
    if overridden:
        notes.append(f"tracelab: measured gaps of {', '.join(overridden)} replaced by the configured distribution")
    return progs, cfg, notes


@register_trace_format("tracelab")
class TraceLabFormat:
    """TraceLab round JSONL (optionally gzipped); as flat rows each round is one request at its input-ready time."""

    def detect(self, first_line: str) -> bool:
        s = first_line.strip()
        return s.startswith("{") and '"round_index"' in s and '"input_tokens_total"' in s

    def rows(self, path: Path) -> Iterator[TraceRow]:
        rounds = sorted(((s.start_ns if r.ready_ns is None else r.ready_ns, r) for s in read_sessions(path).sessions
                         for r in s.rounds), key=lambda x: (x[0], x[1].line))
        for row, (t, r) in enumerate(rounds):
            yield TraceRow(r.line, row, t, r.prompt_tokens, r.output_tokens, model=r.model)

    def load_programs(self, path: Path, **kw):
        return load_programs(path, **kw)
