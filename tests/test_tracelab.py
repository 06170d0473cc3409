"""TraceLab coding-agent sessions (real Claude Code / Codex use; https://github.com/uw-syfi/TraceLab, README "Data
format") replayed as programs with measured tool gaps (frontend/workload/tracelab.py). The rounds are written here
in the dataset's schema, plain and gzipped as the release ships them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from frontend.cli import app
from frontend.config.loader import parse_config, resolve
from frontend.metrics.report import summarize
from frontend.session import load_workload, simulate
from frontend.workload.jsonl import WorkloadError, read_jsonl
from frontend.workload.sources import detect_format
from frontend.workload.tracelab import read_sessions
from tests.conftest import small_run_dict

runner = CliRunner()
MS = 1_000_000


def _ts(s: float) -> str:
    """An ISO 8601 UTC timestamp s seconds after 2026-06-01T05:40:00Z (ms precision, as the dataset writes)."""
    ms = round(s * 1000)
    return f"2026-06-01T05:{40 + ms // 60_000:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}Z"


def _ev(kind: str, s: float, **kw) -> dict:
    return {"event_type": kind, "timestamp": _ts(s), "source": "x", **kw}


def _tool(name: str, emitted: float, wall_ms: int) -> dict:
    return {"tool_index": 0, "tool_name": name, "tool_call_id": f"call_{name}_{emitted}", "emitted_at": _ts(emitted),
            "result_at": _ts(emitted + wall_ms / 1000), "input_chars": 10, "result_chars": 20,
            "tool_wall_latency_ms": wall_ms, "tool_internal_latency_ms": None, "is_error": False}


def _round(provider: str, sid: str, k: int, inp: int | None, out: int | None, events: list[dict],
           tools: list[dict]) -> dict:
    return {"provider": provider, "project": "project_1", "session_id": sid, "round_index": k,
            "round_id": f"{sid}:{k}", "model": "claude-opus-4-8" if provider == "claude" else "gpt-5.4",
            "input_tokens_total": inp, "prefix_tokens": 0 if inp is None else inp // 2,
            "newly_append_tokens": None if inp is None else inp - inp // 2, "output_tokens": out,
            "reasoning_output_tokens": None, "timing_events": events, "tools": tools, "store": "." + provider,
            "trace_key": f"{provider}:{sid}:{k}"}


def rounds() -> list[dict]:
    """Claude session A: round 0 runs Bash (0.86 s) and WebSearch (19.3 s) in one batch, round 1 answers from their
    results 18.5 s after round 0's last output, round 2 is the user's next message 60 s later. Codex session B,
    10 s later: a batch of three exec_command calls, then a round 0.2 s later; its round 2 has no token counts.
    Rows are interleaved and out of round order, as a merged file may hold them."""
    a, b = "claude:aaaa", "codex:bbbb"
    return [
        _round("claude", a, 1, 35740, 1016, [_ev("tool_result", 7.0), _ev("tool_result", 25.0), _ev("text", 30.0)], []),
        _round("claude", a, 0, 32272, 931, [_ev("user_message", 0.0, content_chars=146), _ev("reasoning", 5.0),
                                            _ev("tool_call", 6.0, tool_name="Bash"),
                                            _ev("tool_call", 6.5, tool_name="WebSearch")],
               [_tool("Bash", 6.0, 860), _tool("WebSearch", 6.5, 19291)]),
        _round("codex", b, 0, 9324, 444, [_ev("user_message", 10.0), _ev("usage_report", 12.0)],
               [_tool("exec_command", 11.0, 67), _tool("exec_command", 11.1, 79), _tool("exec_command", 11.2, 100)]),
        _round("codex", b, 1, 9900, 20, [_ev("tool_result", 12.2), _ev("text", 13.0)], []),
        _round("codex", b, 2, None, None, [_ev("text", 14.0)], []),
        _round("claude", a, 2, 36000, 50, [_ev("user_message", 90.0), _ev("text", 95.0)], []),
    ]


def _write(p: Path, rows: list[dict], gz: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if gz:
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    return p


def _load(path: Path, seed: int = 1, **kw):
    run = resolve(parse_config(small_run_dict(workload={"kind": "trace", "path": str(path), **kw})))
    return load_workload(run, seed)


def _shape(progs):
    return [(q.program_id, q.arrival_ns, [(t.full_input_tokens, t.output_tokens, t.new_tokens, t.context_parent,
                                            [(e.tool, e.gap_ns) for e in t.parents]) for t in q.turns]) for q in progs]


def test_sessions_rounds_batches_and_gaps(tmp_path: Path):
    p = _write(tmp_path / "syfi_coding_trace.jsonl", rounds())
    assert detect_format(p) == "tracelab"
    reqs, progs, tools, notes = _load(p)
    assert reqs == [] and tools == {}
    assert [(q.program_id, q.arrival_ns, len(q.turns)) for q in progs] == [
        ("claude:aaaa", 0, 3), ("codex:bbbb", 10_000 * MS, 2)]
    a = progs[0].turns
    assert [(t.full_input_tokens, t.output_tokens) for t in a] == [(32272, 931), (35740, 1016), (36000, 50)]
    assert a[1].context_parent == a[0].turn_id and a[1].new_tokens == 35740 - 33203
    assert a[2].context_parent is None  # 36000 < 35740 + 1016: the context was compacted, no shared prefix
    assert [(e.tool, e.gap_ns) for t in a[1:] for e in t.parents] == [("WebSearch", 18_500 * MS), ("user", 60_000 * MS)]
    [e] = progs[1].turns[1].parents
    assert (e.tool, e.gap_ns) == ("exec_command", 200 * MS)
    read = read_sessions(p)
    assert read.rows == 6 and read.skipped == 1 and read.tool_calls == 5 and dict(read.batches) == {2: 1, 3: 1}
    assert any("2 of 2 sessions" in n and "5 LLM rounds" in n and "1 rounds without token counts" in n for n in notes)
    assert any("3 of 3 measured" in n and "5 tool calls in 2 batches (2 of several tools, largest 3)" in n
               for n in notes)


def test_gzipped_release_file_reads_the_same(tmp_path: Path):
    plain = _write(tmp_path / "t.jsonl", rounds())
    gz = _write(tmp_path / "syfi_coding_trace.jsonl.gz", rounds(), gz=True)
    assert detect_format(gz) == "tracelab"
    assert _shape(_load(gz)[1]) == _shape(_load(plain)[1])


def test_window_sample_limit_scale_and_tool_override(tmp_path: Path):
    p = _write(tmp_path / "t.jsonl", rounds())
    assert [q.arrival_ns for q in _load(p, time_scale=0.5)[1]] == [0, 5_000 * MS]
    assert [(q.program_id, q.arrival_ns) for q in _load(p, start_s=5)[1]] == [("codex:bbbb", 5_000 * MS)]
    assert [q.program_id for q in _load(p, num_requests=1)[1]] == ["claude:aaaa"]
    s = [q.program_id for q in _load(p, sample=0.5)[1]]
    assert s == [q.program_id for q in _load(p, sample=0.5)[1]]
    _, _, tools, notes = _load(p, tools={"WebSearch": {"dist": "constant", "mean_ms": 5}})
    assert tools["WebSearch"].mean_ms == 5 and any("WebSearch replaced" in n for n in notes)


def test_tiny_simulation_replays_measured_gaps(tmp_path: Path):
    p = _write(tmp_path / "t.jsonl", rounds())
    run = resolve(parse_config(small_run_dict(workload={"kind": "trace", "path": str(p)})))
    res, extra = simulate(run)
    s = summarize(res, extra)
    reqs = {r.request_id: r for r in res.requests}
    assert len(reqs) == 5 and all(r.status == "finished" for r in reqs.values()) and s["agents"]["completed"] == 2
    assert reqs["claude:aaaa.t1"].arrival_ns == reqs["claude:aaaa.t0"].finish_ns + 18_500 * MS
    assert reqs["codex:bbbb.t1"].arrival_ns == reqs["codex:bbbb.t0"].finish_ns + 200 * MS
    assert reqs["claude:aaaa.t1"].cached_tokens > 0


def test_cli_run_and_convert(tmp_path: Path):
    p = _write(tmp_path / "t.jsonl.gz", rounds(), gz=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_run_dict()))
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["agents"]["completed"] == 2
    out = tmp_path / "flat.jsonl"
    r = runner.invoke(app, ["convert", str(p), str(out), "--format", "tracelab"])
    assert r.exit_code == 0, r.output
    reqs, _ = read_jsonl(out, None, 1.0)  # each round one request at its input-ready time
    assert [(q.arrival_ns // MS, q.input_tokens) for q in reqs] == [
        (0, 32272), (10_000, 9324), (12_200, 9900), (25_000, 35740), (90_000, 36000)]


@pytest.mark.parametrize("mutate, where", [
    (lambda r: r[1].__setitem__("input_tokens_total", -3), ":2: field 'input_tokens_total': expected a token count"),
    (lambda r: r[1]["timing_events"][0].__setitem__("timestamp", "yesterday"),
     ":2: timing_events[0].timestamp: not an ISO 8601 timestamp"),
    (lambda r: r[1].__setitem__("tools", {"a": 1}), ":2: field 'tools': expected a list"),
    (lambda r: r[1]["tools"][0].__setitem__("tool_wall_latency_ms", "slow"), ":2: tools[0].tool_wall_latency_ms"),
    (lambda r: r[1].__setitem__("round_index", "0"), ":2: field 'round_index'"),
    (lambda r: r.append(dict(r[1])), ":7: round 0 of session claude:aaaa already read at line 2"),
    (lambda r: r[0].pop("session_id"), ":1: field 'session_id' missing"),
])
def test_bad_rounds_name_file_line_and_field(tmp_path: Path, mutate, where):
    rows = rounds()
    mutate(rows)
    p = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(WorkloadError) as e:
        _load(p, format="tracelab")
    assert f"{p}{where}" in str(e.value), str(e.value)
