"""GitHub Copilot agent sessions (issue 15 item 1) from Copilot Chat's OpenTelemetry export
(frontend/workload/copilot_otel.py), replayed as programs with measured tool gaps. The files are written here in
the documented schema (docs/monitoring/agent_monitoring.md of microsoft/vscode-copilot-chat): spans as the file
exporter writes them (HrTime [s, ns], attributes as an object) and the same spans as an OTLP/JSON export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from frontend.cli import app
from frontend.config.loader import parse_config, resolve
from frontend.metrics.report import summarize
from frontend.session import load_workload, simulate
from frontend.workload.copilot_otel import read_sessions
from frontend.workload.jsonl import WorkloadError, read_jsonl
from frontend.workload.sources import detect_format
from tests.conftest import small_run_dict

runner = CliRunner()
EPOCH_MS = 1_760_000_000_000  # a date in 2025, in ms
MS = 1_000_000


def _span(op: str, sid: str, parent: str | None, t0_ms: int, t1_ms: int, trace: str = "tr1", **attrs) -> dict:
    a = {"gen_ai.operation.name": op, "gen_ai.provider.name": "github", **attrs}
    label = {"invoke_agent": "copilot", "chat": attrs.get("gen_ai.request.model", ""),
             "execute_tool": attrs.get("gen_ai.tool.name", "")}[op]

    def hr(ms: int) -> list[int]:
        t = EPOCH_MS + ms
        return [t // 1000, (t % 1000) * MS]

    d = {"resource": {"attributes": {"service.name": "copilot-chat", "session.id": "win-1"}},
         "instrumentationScope": {"name": "copilot-chat", "version": "0.44.0"},
         "traceId": trace, "spanId": sid, "traceFlags": 1, "name": f"{op} {label}", "kind": 1 if op == "chat" else 0,
         "startTime": hr(t0_ms), "endTime": hr(t1_ms), "duration": [0, 0], "status": {"code": 0},
         "attributes": a, "links": [], "events": [], "ended": True}
    if parent is not None:
        d["parentSpanId"] = parent
    return d


def _chat(sid, parent, t0, t1, inp, out, trace="tr1", **kw):
    return _span("chat", sid, parent, t0, t1, trace, **{"gen_ai.request.model": "gpt-4o",
                                                          "gen_ai.conversation.id": "conv-1",
                                                          "gen_ai.usage.input_tokens": inp,
                                                          "gen_ai.usage.output_tokens": out, **kw})


def _tool(sid, parent, t0, t1, name, trace="tr1"):
    return _span("execute_tool", sid, parent, t0, t1, trace, **{"gen_ai.tool.name": name, "gen_ai.tool.type": "function"})


def session_spans() -> list[dict]:
    """One chat session (conv-1) of two agent-mode requests, a subagent and a title call, times in ms:
    request 1 (a1): call c1; readFile and runCommand in parallel (a batch of two, runCommand 2 s); call c2;
    runSubagent (its invocation s1 makes calls sc1, readFile, sc2); call c3.
    request 2 (a2, 19 s after c3 ends): a failed call (no usage), then call c4."""
    return [
        _span("invoke_agent", "a1", None, 0, 11_000, **{"gen_ai.conversation.id": "conv-1", "gen_ai.agent.name": "copilot",
                                                        "copilot_chat.turn_count": 3}),
        _chat("c1", "a1", 100, 2_000, 1500, 100),
        _tool("t1", "a1", 2_050, 2_100, "readFile"),
        _tool("t2", "a1", 2_050, 4_050, "runCommand"),
        _chat("c2", "a1", 4_200, 6_000, 1700, 80),
        _tool("t3", "a1", 6_100, 10_100, "runSubagent"),
        _span("invoke_agent", "s1", "t3", 6_200, 10_000, **{"gen_ai.conversation.id": "conv-1",
                                                            "gen_ai.agent.name": "Explore"}),
        _chat("sc1", "s1", 6_300, 7_000, 800, 30),
        _tool("st1", "s1", 7_050, 7_100, "readFile"),
        _chat("sc2", "s1", 7_200, 8_000, 900, 40),
        _chat("c3", "a1", 10_300, 11_000, 2000, 50),
        _span("invoke_agent", "a2", None, 29_900, 31_100, trace="tr2", **{"gen_ai.conversation.id": "conv-1"}),
        _span("chat", "f1", "a2", 29_950, 29_990, "tr2", **{"gen_ai.request.model": "gpt-4o",
                                                            "error.type": "TimeoutError"}),
        _chat("c4", "a2", 30_000, 31_000, 2100, 60, trace="tr2"),
        _chat("title", None, 0, 500, 300, 10, trace="tr3", **{"copilot_chat.debug_name": "title"}),
    ]


def _write(p: Path, spans: list[dict], other: bool = True) -> Path:
    lines = [json.dumps(s) for s in spans]
    if other:  # the same file receives log records and metric exports
        lines.insert(2, json.dumps({"hrTime": [1760000000, 0], "body": "", "attributes": {"event.name":
                                                                                         "copilot_chat.tool.call"}}))
        lines.append(json.dumps({"resource": {"attributes": {"service.name": "copilot-chat"}},
                                 "scopeMetrics": [{"metrics": [{"descriptor": {"name": "gen_ai.client.token.usage"}}]}]}))
    p.write_text("\n".join(lines) + "\n")
    return p


def _otlp(spans: list[dict]) -> dict:
    """The same spans as one OTLP/JSON export (what an OTel Collector's file exporter writes)."""
    def val(v):
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": str(v)}

    def ns(hr):
        return str(hr[0] * 10**9 + hr[1])

    out = []
    for s in spans:
        o = {"traceId": s["traceId"], "spanId": s["spanId"], "parentSpanId": s.get("parentSpanId", ""),
             "name": s["name"], "kind": s["kind"] + 1, "startTimeUnixNano": ns(s["startTime"]),
             "endTimeUnixNano": ns(s["endTime"]),
             "attributes": [{"key": k, "value": val(v)} for k, v in s["attributes"].items()]}
        out.append(o)
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                            "value": {"stringValue": "copilot-chat"}}]},
                               "scopeSpans": [{"scope": {"name": "copilot-chat"}, "spans": out}]}]}


def _wl(path: Path, **kw) -> dict:
    return {"kind": "trace", "path": str(path), **kw}


def _load(path: Path, seed: int = 1, **kw):
    run = resolve(parse_config(small_run_dict(workload=_wl(path, **kw))))
    return load_workload(run, seed)


def test_session_programs_tokens_batches_and_gaps(tmp_path: Path):
    p = _write(tmp_path / "copilot-otel.jsonl", session_spans())
    assert detect_format(p) == "copilot_otel"
    reqs, progs, tools, notes = _load(p)
    assert reqs == [] and tools == {}
    assert [(q.program_id, q.arrival_ns, len(q.turns)) for q in progs] == [
        ("chat-title", 0, 1), ("conv-1", 100 * MS, 4), ("conv-1/s1", 6_300 * MS, 2)]
    t = progs[1].turns
    assert [(x.full_input_tokens, x.output_tokens) for x in t] == [(1500, 100), (1700, 80), (2000, 50), (2100, 60)]
    # each prompt extends the previous call's context (prompt + output)
    assert t[1].context_parent == t[0].turn_id and t[1].new_tokens == 1700 - 1600
    assert t[2].new_tokens == 2000 - 1780 and t[3].new_tokens == 2100 - 2050
    # edges: the batch's longest tool, measured from call end to the next call's start; the user's next request
    assert [(e.tool, e.gap_ns) for x in t[1:] for e in x.parents] == [
        ("runCommand", 2_200 * MS), ("runSubagent", 4_300 * MS), ("user", 19_000 * MS)]
    [e] = progs[2].turns[1].parents
    assert (e.tool, e.gap_ns) == ("readFile", 200 * MS)
    read = read_sessions(p)
    assert read.skipped_calls == 1 and read.other_records == 2 and read.subagents == 1 and read.standalone == 1
    assert read.tool_calls == 4 and dict(read.batches) == {2: 1, 1: 2}
    assert any("3 of 3 sessions" in n and "7 LLM calls" in n and "1 chat spans without usage" in n for n in notes)
    assert any("4 tool spans in 3 batches (1 of several tools, largest 2)" in n
               and "runCommand 1" in n and "user 1" in n for n in notes)


def test_otlp_json_export_reads_the_same(tmp_path: Path):
    a = _write(tmp_path / "a.jsonl", session_spans())
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(_otlp(session_spans())) + "\n")
    assert detect_format(b) == "copilot_otel"
    pa, pb = _load(a)[1], _load(b)[1]
    assert [(q.program_id, q.arrival_ns) for q in pa] == [(q.program_id, q.arrival_ns) for q in pb]
    assert [[(x.full_input_tokens, x.output_tokens, [(e.tool, e.gap_ns) for e in x.parents]) for x in q.turns]
            for q in pa] == [[(x.full_input_tokens, x.output_tokens, [(e.tool, e.gap_ns) for e in x.parents])
                              for x in q.turns] for q in pb]


def test_window_sample_limit_and_scale(tmp_path: Path):
    spans = []
    for k, conv in enumerate(("s0", "s1", "s2")):  # three sessions 10 s apart
        t0 = k * 10_000
        spans += [_span("invoke_agent", f"a{k}", None, t0, t0 + 3_000, trace=conv, **{"gen_ai.conversation.id": conv}),
                  _chat(f"c{k}", f"a{k}", t0, t0 + 1_000, 500, 20, trace=conv),
                  _tool(f"t{k}", f"a{k}", t0 + 1_000, t0 + 1_500, "runCommand", trace=conv),
                  _chat(f"d{k}", f"a{k}", t0 + 1_600, t0 + 2_000, 600, 20, trace=conv)]
    p = _write(tmp_path / "s.jsonl", spans, other=False)
    assert [q.arrival_ns for q in _load(p)[1]] == [0, 10_000 * MS, 20_000 * MS]
    assert [q.arrival_ns for q in _load(p, time_scale=0.5)[1]] == [0, 5_000 * MS, 10_000 * MS]
    assert [q.program_id for q in _load(p, start_s=5, end_s=15)[1]] == ["s1"]
    assert [q.arrival_ns for q in _load(p, start_s=5, end_s=15)[1]] == [5_000 * MS]  # from the window's start
    assert [q.program_id for q in _load(p, num_requests=2)[1]] == ["s0", "s1"]
    sampled = [q.program_id for q in _load(p, sample=0.5)[1]]
    assert sampled == [q.program_id for q in _load(p, sample=0.5)[1]] and set(sampled) <= {"s0", "s1", "s2"}
    # a configured distribution replaces that tool's measured gaps
    _, progs, tools, notes = _load(p, tools={"runCommand": {"dist": "constant", "mean_ms": 70}})
    assert tools["runCommand"].dist == "constant" and any("runCommand replaced" in n for n in notes)


def test_tiny_simulation_replays_measured_gaps(tmp_path: Path):
    p = _write(tmp_path / "x.jsonl", session_spans())
    run = resolve(parse_config(small_run_dict(workload=_wl(p))))
    res, extra = simulate(run)
    s = summarize(res, extra)
    reqs = {r.request_id: r for r in res.requests}
    assert len(reqs) == 7 and all(r.status == "finished" for r in reqs.values())
    assert s["agents"]["completed"] == 3
    assert reqs["conv-1.t1"].arrival_ns == reqs["conv-1.t0"].finish_ns + 2_200 * MS
    assert reqs["conv-1.t3"].arrival_ns == reqs["conv-1.t2"].finish_ns + 19_000 * MS
    assert reqs["conv-1.t1"].cached_tokens > 0  # the prefix of call 0's context


def test_cli_run_detects_and_convert_writes_calls(tmp_path: Path):
    p = _write(tmp_path / "x.jsonl", session_spans())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_run_dict()))
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["agents"]["completed"] == 3
    out = tmp_path / "flat.jsonl"
    r = runner.invoke(app, ["convert", str(p), str(out)])
    assert r.exit_code == 0, r.output
    reqs, _ = read_jsonl(out, None, 1.0)  # each call one flat request at its start
    assert [(q.input_tokens, q.output_tokens) for q in reqs] == [
        (300, 10), (1500, 100), (1700, 80), (800, 30), (900, 40), (2000, 50), (2100, 60)]
    assert [q.arrival_ns // MS for q in reqs] == [0, 100, 4_200, 6_300, 7_200, 10_300, 30_000]


@pytest.mark.parametrize("mutate, where", [
    (lambda s: s[1]["attributes"].__setitem__("gen_ai.usage.input_tokens", "many"),
     ":2: attributes.gen_ai.usage.input_tokens: expected a token count"),
    (lambda s: s[1].__setitem__("endTime", [1, 0]), ":2: the span ends before it starts"),
    (lambda s: s[1].__setitem__("startTime", [1760000000, 2_000_000_000]), ":2.startTime: expected an OTel time"),
    (lambda s: s[1].pop("spanId") and s[1].__setitem__("spanId", 7), ":2: field 'spanId' missing or not text"),
    (lambda s: s.append(dict(s[1])), "span c1 of trace tr1 already read at"),
])
def test_bad_spans_name_file_line_and_field(tmp_path: Path, mutate, where):
    spans = session_spans()
    mutate(spans)
    p = _write(tmp_path / "bad.jsonl", spans, other=False)
    with pytest.raises(WorkloadError, match=None) as e:
        _load(p)
    assert str(p) in str(e.value) and where in str(e.value), str(e.value)


def test_bad_otlp_and_json_lines(tmp_path: Path):
    exp = _otlp(session_spans()[:2])
    exp["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"][2]["value"] = {"intValue": "x"}
    p = tmp_path / "o.jsonl"
    p.write_text(json.dumps(exp) + "\n")
    with pytest.raises(WorkloadError, match=r"o\.jsonl:1: resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[1\]"
                                            r"\.attributes\[2\]\.value\.intValue: expected an integer"):
        _load(p)
    q = tmp_path / "j.jsonl"
    q.write_text(json.dumps(session_spans()[0]) + "\n{not json\n")
    with pytest.raises(WorkloadError, match=r"j\.jsonl:2: not valid JSON"):
        _load(q)
    r = tmp_path / "none.jsonl"
    r.write_text(json.dumps(session_spans()[0]) + "\n")
    with pytest.raises(WorkloadError, match="no Copilot LLM calls"):
        _load(r)
