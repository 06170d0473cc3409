"""GitHub Copilot agent sessions from Copilot Chat's OpenTelemetry export, replayed as agent programs.

No public dataset of Copilot sessions was found (searched December 2026: Hugging Face datasets and papers for
Copilot / coding-agent traces, GitHub issues of github/copilot-cli and microsoft/vscode-copilot-chat, agent-trace
collections; the public coding-agent session datasets found hold Claude Code, Codex, OpenCode or SWE-agent runs,
the largest with serving timings being TraceLab, read by frontend/workload/tracelab.py; the one set naming Copilot,
huggingface.co/datasets/davidkling/hf-coding-tools-traces, holds single benchmark answers with latency and token
counts, no agent loop or tool calls; Copilot CLI's own
~/.copilot/session-state/*/events.jsonl is undocumented and changes across versions). What is public is the
*schema* Copilot Chat (VS Code agent mode) writes when a user turns its OpenTelemetry export on, documented at
https://github.com/microsoft/vscode-copilot-chat/blob/main/docs/monitoring/agent_monitoring.md
(also https://code.visualstudio.com/docs/copilot/guides/monitoring-agents). A user records their own sessions with
`COPILOT_OTEL_ENABLED=true COPILOT_OTEL_FILE_EXPORTER_PATH=FILE.jsonl` (or `github.copilot.chat.otel.outfile`) and
replays the file here. The spans follow the OTel GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/), so other agents exporting the same spans read the same way.

The file (read from the documentation and the exporter's tests, nothing copied): JSON lines, one record per line.
* A span, as Copilot's file exporter writes it: `{"traceId", "spanId", "parentSpanId"?, "name", "kind",
  "startTime": [s, ns], "endTime": [s, ns], "attributes": {...}, "resource": {"attributes": {...}}, ...}` (OTel JS
  HrTime pairs).
* An OTLP/JSON export (`{"resourceSpans": [{"resource", "scopeSpans": [{"scope", "spans": [...]}]}]}`, as the OTel
  Collector's file exporter writes): spans with `startTimeUnixNano` / `endTimeUnixNano` and attributes as a list
  of `{"key", "value": {"stringValue" | "intValue" | "doubleValue" | "boolValue" | "arrayValue"}}`.
* Anything else (the log records and metric exports the same file receives) is skipped and counted.

The spans used, by `gen_ai.operation.name` (else the span name's first word):
* `invoke_agent`: one agent invocation (one user request in agent mode), `gen_ai.conversation.id` naming the chat
  session; a subagent's `invoke_agent` is nested under the calling `execute_tool runSubagent` span.
* `chat`: one LLM call, `gen_ai.usage.input_tokens` / `gen_ai.usage.output_tokens`, `gen_ai.request.model`.
* `execute_tool`: one tool run, `gen_ai.tool.name`.

Programs: a top-level invocation's chat session (its `gen_ai.conversation.id`, else its trace id) is one program
holding the calls of every invocation of that session in start order; a subagent invocation is a program of its
own (its LLM calls load the server while the caller's `runSubagent` tool runs); a `chat` span outside any
invocation is a one-call program. Each call is one turn:
* prompt `gen_ai.usage.input_tokens`, output `gen_ai.usage.output_tokens` (at least 1); a call without both
  (a failed or cancelled request) is skipped and counted;
* turn k+1 extends turn k's context (context parent) when its prompt is at least turn k's prompt + output;
* the edge k -> k+1 is measured: call k+1's start minus call k's end (overlapping calls give 0 and are counted).
  Its tool is the batch of `execute_tool` spans the agent started after call k (call k's tool calls, run one after
  another or in parallel): the longest-running tool of the batch names the edge; an edge with no tool span is
  `user` between two invocations (the user's next request) and `agent` inside one. A distribution named in
  `workload.tools` replaces the measured gaps of that name (frontend/agents/tools.py);
* arrival: the program's first call's start relative to the earliest program read, x time_scale.

The `trace` options apply per program as for swe_traj: the time window (`start_s`/`end_s`, seconds from the
earliest program's start), seeded `sample`, `num_requests` (at most that many programs) and `time_scale`.
`astraserve convert` writes each call as a flat request arriving at its start.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from frontend.workload.jsonl import MAX_TOKENS, WorkloadError, numbered_lines, object_lines
from frontend.workload.program_window import select_sessions, sessions_to_programs
from frontend.workload.sources import TraceRow, register_trace_format

NS_PER_S = 1_000_000_000
MAX_EPOCH_S = 10**11  # HrTime seconds beyond this are not a date
OPS = ("invoke_agent", "chat", "execute_tool")
USER_GAP = "user"  # the edge between two invocations of a session with no tool span
AGENT_GAP = "agent"  # the edge between two calls of one invocation with no tool span
MAX_DEPTH = 10_000  # parent chains longer than this are a cycle


@dataclass(slots=True)
class Span:
    line: int
    where: str  # file:line and, for OTLP records, the span's path in the record
    trace_id: str
    span_id: str
    parent_id: str | None
    op: str | None  # invoke_agent | chat | execute_tool | None (another span)
    name: str
    start_ns: int
    end_ns: int
    attrs: dict


@dataclass(slots=True)
class Call:
    """One LLM call of a session."""

    line: int
    start_ns: int
    end_ns: int
    prompt_tokens: int
    output_tokens: int
    agent: str | None  # span id of its invocation
    model: str | None
    tool: str | None = None  # the longest tool of the batch the agent ran after this call
    batch: int = 0  # tool spans in that batch


@dataclass
class Session:
    name: str
    calls: list[Call] = field(default_factory=list)

    @property
    def start_ns(self) -> int:
        return self.calls[0].start_ns

    def gap_ns(self, k: int) -> int:
        """Measured time between call k-1's end and call k's start (0 when they overlap)."""
        return max(0, self.calls[k].start_ns - self.calls[k - 1].end_ns)

    def edge_tool(self, k: int) -> str:
        prev = self.calls[k - 1]
        if prev.tool is not None:
            return prev.tool
        return AGENT_GAP if prev.agent == self.calls[k].agent else USER_GAP


@dataclass
class Read:
    """What a file holds: sessions with at least one counted call, and counts for the notes."""

    sessions: list[Session]
    spans: int = 0
    other_records: int = 0  # log records, metric exports, lines of no span
    skipped_calls: int = 0  # chat spans without usage counts
    tool_calls: int = 0
    batches: Counter[int] = field(default_factory=Counter)  # tools per batch -> batches
    subagents: int = 0
    standalone: int = 0  # one-call programs of chat spans outside any invocation


# ---- parsing ----

def _hr_time(v, where: str) -> int:
    """OTel JS HrTime [seconds, nanoseconds] as integer ns."""
    if (isinstance(v, list) and len(v) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x == int(x)
                    for x in v)):
        s, ns = int(v[0]), int(v[1])
        if 0 <= s <= MAX_EPOCH_S and 0 <= ns < NS_PER_S:
            return s * NS_PER_S + ns
    raise WorkloadError(f"{where}: expected an OTel time [seconds, nanoseconds] (0 <= ns < 1e9), got {v!r}")


def _unix_nano(v, where: str) -> int:
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_EPOCH_S * NS_PER_S:
        return v
    raise WorkloadError(f"{where}: expected nanoseconds since the epoch (an integer or a string of digits), got {v!r}")


def _otlp_value(v, where: str):
    if not isinstance(v, dict) or len(v) > 1:
        raise WorkloadError(f"{where}: expected an OTLP AnyValue object with one field, got {v!r}")
    if not v:
        return None
    (kind, x), = v.items()
    if kind == "intValue":
        if isinstance(x, str) and x.lstrip("-").isdigit():
            return int(x)
        if isinstance(x, int) and not isinstance(x, bool):
            return x
        raise WorkloadError(f"{where}.intValue: expected an integer, got {x!r}")
    if kind == "arrayValue":
        vals = x.get("values", []) if isinstance(x, dict) else None
        if not isinstance(vals, list):
            raise WorkloadError(f"{where}.arrayValue: expected {{'values': [...]}}")
        return [_otlp_value(e, f"{where}.arrayValue.values[{i}]") for i, e in enumerate(vals)]
    if kind in ("stringValue", "boolValue", "doubleValue", "bytesValue", "kvlistValue"):
        return x
    raise WorkloadError(f"{where}: unknown OTLP value kind {kind!r}")


def _otlp_attrs(v, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, list):
        raise WorkloadError(f"{where}: expected a list of {{key, value}} objects")
    out = {}
    for i, kv in enumerate(v):
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise WorkloadError(f"{where}[{i}]: expected {{'key': text, 'value': {{...}}}}")
        out[kv["key"]] = _otlp_value(kv.get("value", {}), f"{where}[{i}].value")
    return out


def _op(attrs: dict, name: str) -> str | None:
    op = attrs.get("gen_ai.operation.name")
    if isinstance(op, str) and op in OPS:
        return op
    first = name.split(" ", 1)[0]
    return first if op is None and first in OPS else None


def _span(obj: dict, line: int, where: str, otlp: bool) -> Span:
    for k in ("traceId", "spanId", "name"):
        if not isinstance(obj.get(k), str) or not obj[k]:
            raise WorkloadError(f"{where}: field {k!r} missing or not text")
    attrs = _otlp_attrs(obj.get("attributes"), f"{where}.attributes") if otlp else obj.get("attributes", {})
    if not isinstance(attrs, dict):
        raise WorkloadError(f"{where}.attributes: expected an object")
    if otlp:
        t0 = _unix_nano(obj.get("startTimeUnixNano"), f"{where}.startTimeUnixNano")
        t1 = _unix_nano(obj.get("endTimeUnixNano"), f"{where}.endTimeUnixNano")
    else:
        t0 = _hr_time(obj.get("startTime"), f"{where}.startTime")
        t1 = _hr_time(obj.get("endTime"), f"{where}.endTime")
    if t1 < t0:
        raise WorkloadError(f"{where}: the span ends before it starts (end {t1} ns < start {t0} ns)")
    parent = obj.get("parentSpanId")
    if parent is not None and not isinstance(parent, str):
        raise WorkloadError(f"{where}.parentSpanId: expected text, got {parent!r}")
    return Span(line, where, obj["traceId"], obj["spanId"], parent or None, _op(attrs, obj["name"]), obj["name"],
                t0, t1, attrs)


def read_spans(path: Path) -> tuple[list[Span], int]:
    """Every span of a file (both record forms) and the number of other records."""
    spans: list[Span] = []
    other = 0
    for line, where, obj in object_lines(numbered_lines(path), path, " (a span or an OTLP export)"):
        if "resourceSpans" in obj:
            rs = obj["resourceSpans"]
            if not isinstance(rs, list):
                raise WorkloadError(f"{where}: resourceSpans: expected a list")
            for i, r in enumerate(rs):
                ss = r.get("scopeSpans", []) if isinstance(r, dict) else None
                if not isinstance(ss, list):
                    raise WorkloadError(f"{where}: resourceSpans[{i}].scopeSpans: expected a list")
                for j, s in enumerate(ss):
                    sp = s.get("spans", []) if isinstance(s, dict) else None
                    if not isinstance(sp, list):
                        raise WorkloadError(f"{where}: resourceSpans[{i}].scopeSpans[{j}].spans: expected a list")
                    for k, o in enumerate(sp):
                        w = f"{where}: resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                        if not isinstance(o, dict):
                            raise WorkloadError(f"{w}: expected an object")
                        spans.append(_span(o, line, w, otlp=True))
        elif "spanId" in obj:
            spans.append(_span(obj, line, where, otlp=False))
        else:
            other += 1
    return spans, other


def _count(attrs: dict, key: str, where: str) -> int | None:
    v = attrs.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TOKENS:
        raise WorkloadError(f"{where}: attributes.{key}: expected a token count in [0, {MAX_TOKENS}], got {v!r}")
    return v


def _text(attrs: dict, key: str) -> str | None:
    v = attrs.get(key)
    return v if isinstance(v, str) and v else None


def read_sessions(path: str | Path) -> Read:
    """The file's sessions (see the module docstring), sorted by their first call's start."""
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    spans, other = read_spans(p)
    out = Read([], spans=len(spans), other_records=other)
    by_id: dict[tuple[str, str], Span] = {}
    for s in spans:
        key = (s.trace_id, s.span_id)
        if key in by_id:
            raise WorkloadError(f"{s.where}: span {s.span_id} of trace {s.trace_id} already read at "
                                f"{by_id[key].where}")
        by_id[key] = s

    def agent_of(s: Span) -> Span | None:
        """The nearest enclosing invoke_agent span."""
        pid = s.parent_id
        for _ in range(MAX_DEPTH):
            if pid is None:
                return None
            par = by_id.get((s.trace_id, pid))
            if par is None:
                return None  # the parent is not in the file (a cut trace): treated as a root
            if par.op == "invoke_agent":
                return par
            pid = par.parent_id
        raise WorkloadError(f"{s.where}: parentSpanId chain does not end (a cycle)")

    # program of each invocation: a top-level one's session, a subagent's own
    program_of: dict[str, str] = {}
    for s in sorted((s for s in spans if s.op == "invoke_agent"), key=lambda s: (s.start_ns, s.line)):
        parent = agent_of(s)
        if parent is None:
            program_of[s.span_id] = _text(s.attrs, "gen_ai.conversation.id") or s.trace_id
        else:
            out.subagents += 1
            program_of[s.span_id] = f"{_text(s.attrs, 'gen_ai.conversation.id') or s.trace_id}/{s.span_id}"
    sessions: dict[str, Session] = {}
    tools: dict[str, list[Span]] = {}  # program -> its execute_tool spans
    for s in spans:
        if s.op == "execute_tool":
            a = agent_of(s)
            if a is not None:
                tools.setdefault(program_of[a.span_id], []).append(s)
            continue
        if s.op != "chat":
            continue
        a = agent_of(s)
        inp = _count(s.attrs, "gen_ai.usage.input_tokens", s.where)
        outp = _count(s.attrs, "gen_ai.usage.output_tokens", s.where)
        if inp is None or outp is None:
            out.skipped_calls += 1
            continue
        if a is None:
            out.standalone += 1
            prog = f"chat-{s.span_id}"
        else:
            prog = program_of[a.span_id]
        call = Call(s.line, s.start_ns, s.end_ns, max(1, inp), max(1, outp), None if a is None else a.span_id,
                    _text(s.attrs, "gen_ai.request.model"))
        sessions.setdefault(prog, Session(prog)).calls.append(call)
    for name, sess in sessions.items():
        sess.calls.sort(key=lambda c: (c.start_ns, c.end_ns, c.line))
        starts = [c.start_ns for c in sess.calls]
        batches: dict[int, list[Span]] = {}
        for t in tools.get(name, []):
            k = _last_le(starts, t.start_ns)
            if k is not None:  # a tool before the session's first call (none in agent mode) is not an edge
                batches.setdefault(k, []).append(t)
        for k, batch in batches.items():
            longest = max(batch, key=lambda t: (t.end_ns - t.start_ns, -t.start_ns))
            sess.calls[k].tool = _text(longest.attrs, "gen_ai.tool.name") or longest.name.split(" ", 1)[-1]
            sess.calls[k].batch = len(batch)
            out.tool_calls += len(batch)
            out.batches[len(batch)] += 1
    out.sessions = sorted(sessions.values(), key=lambda s: (s.start_ns, s.name))
    return out


def _last_le(sorted_vals: list[int], x: int) -> int | None:
    import bisect

    i = bisect.bisect_right(sorted_vals, x)
    return i - 1 if i else None


# ---- programs ----

def load_programs(path: str | Path, *, time_scale: float = 1.0, start_s: float | None = None,
                  end_s: float | None = None, sample: float = 1.0, seed: int = 0, num_programs: int | None = None,
                  tools: dict | None = None, **_ignored):
    """(programs, tool distributions, notes) of a Copilot OTel file."""
    read = read_sessions(path)
    if not read.sessions:
        raise WorkloadError(f"{path}: no Copilot LLM calls to replay ({read.spans} spans read, {read.skipped_calls} "
                            f"chat spans without usage counts, {read.other_records} other records)")
    sel = select_sessions(path, read.sessions, lambda s: s.start_ns, start_s=start_s, end_s=end_s, sample=sample,
                          seed=seed, limit=num_programs)
    kept: list[Session] = sel.kept
    progs = sessions_to_programs(kept, lambda s: s.calls, time_scale, sel.origin_ns)
    calls = sum(len(s.calls) for s in kept)
    overlaps = sum(1 for s in kept for k in range(1, len(s.calls)) if s.calls[k].start_ns < s.calls[k - 1].end_ns)
    edges = Counter(s.edge_tool(k) for s in kept for k in range(1, len(s.calls)))
    multi = sum(n for size, n in read.batches.items() if size > 1)
    notes = [f"copilot_otel {Path(path).name}: {len(progs)} of {len(read.sessions)} sessions replayed as programs, "
             f"{calls} LLM calls; {read.spans} spans read ({read.subagents} subagent invocations as programs of "
             f"their own, {read.standalone} chat spans outside an invocation as one-call programs)"
             + (f"; {read.skipped_calls} chat spans without usage counts skipped" if read.skipped_calls else "")
             + (f"; {read.other_records} records that are not spans skipped" if read.other_records else "")
             + sel.note(sample, seed),
             f"copilot_otel tool gaps: all {sum(edges.values())} measured between calls; {read.tool_calls} tool spans "
             f"in {sum(read.batches.values())} batches ({multi} of several tools, largest "
             f"{max(read.batches, default=0)}); edges by tool: "
             + ", ".join(f"{t} {n}" for t, n in sorted(edges.items()))
             + (f"; {overlaps} calls overlapping the previous one (gap 0)" if overlaps else "")]
    cfg = dict(tools or {})
    overridden = sorted(set(edges) & {n for n, d in cfg.items() if d.dist != "trace"})
    if overridden:
        notes.append(f"copilot_otel: measured gaps of {', '.join(overridden)} replaced by the configured distribution")
    return progs, cfg, notes


@register_trace_format("copilot_otel")
class CopilotOtelFormat:
    """Copilot Chat OpenTelemetry JSON lines; as flat rows (convert, plain trace replay) each LLM call is one request
    arriving at its start."""

    def detect(self, first_line: str) -> bool:
        s = first_line.strip()
        if not s.startswith("{"):
            return False
        return ('"resourceSpans"' in s or ('"spanId"' in s and '"gen_ai.' in s)
                or '"copilot-chat"' in s or '"copilot_chat.' in s)

    def rows(self, path: Path) -> Iterator[TraceRow]:
        calls = sorted((c for s in read_sessions(path).sessions for c in s.calls),
                       key=lambda c: (c.start_ns, c.line))
        for row, c in enumerate(calls):
            yield TraceRow(c.line, row, c.start_ns, c.prompt_tokens, c.output_tokens, model=c.model)

    def load_programs(self, path: Path, **kw):
        return load_programs(path, **kw)
