"""Agent traces with real tool timings (issue 15 item 1): SWE-bench trajectories of mini-swe-agent
(`.traj.json`, frontend/workload/swe_traj.py) replayed as programs with tool gaps, from small files written here in
the format's schema (v1: {role, content} messages only; v2: `extra.timestamp` and `extra.response.usage`)."""

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
from frontend.workload.jsonl import WorkloadError, read_jsonl
from frontend.workload.sources import detect_format, get_source
from frontend.workload.swe_traj import read_trajectories
from tests.conftest import small_run_dict

runner = CliRunner()


def _asst(text: str, ts: float | None = None, usage: tuple[int, int] | None = None, tool: str | None = None) -> dict:
    m: dict = {"role": "assistant", "content": text}
    if tool is not None:
        m["tool_calls"] = [{"id": "c1", "type": "function", "function": {"name": tool, "arguments": '{"command":"ls"}'}}]
    extra: dict = {}
    if ts is not None:
        extra["timestamp"] = ts
    if usage is not None:
        extra["response"] = {"usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
    if extra:
        m["extra"] = extra
    return m


def _obs(text: str, ts: float | None = None, role: str = "user") -> dict:
    m: dict = {"role": role, "content": text}
    if ts is not None:
        m["extra"] = {"timestamp": ts, "returncode": 0}
    return m


def v2_traj(t0: float = 1000.0) -> dict:
    """Three calls with usage counts; tools run 1.5 s and 0.25 s between them."""
    return {"info": {"model_stats": {"instance_cost": 0.01, "api_calls": 3}, "exit_status": "Submitted",
                     "mini_version": "2.0.0"},
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "Fix the bug.", "extra": {"timestamp": t0}},
                         _asst("THOUGHT: look", t0 + 2.0, (1000, 50), tool="bash"),
                         _obs("<returncode>0</returncode>", t0 + 3.5, role="tool"),
                         _asst("THOUGHT: edit", t0 + 4.0, (1200, 60), tool="bash"),
                         _obs("<returncode>0</returncode>", t0 + 4.25, role="tool"),
                         _asst("submit", t0 + 5.0, (1400, 10), tool="bash"),
                         {"role": "exit", "content": "", "extra": {"exit_status": "Submitted"}}],
            "trajectory_format": "mini-swe-agent-1.1"}


def v1_traj() -> dict:
    """No timestamps, no usage: tokens from characters (4 per token)."""
    return {"info": {"model_stats": {"instance_cost": 0.0, "api_calls": 2}, "exit_status": "Submitted"},
            "messages": [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 801},
                         {"role": "assistant", "content": "z" * 40}, {"role": "user", "content": "w" * 80},
                         {"role": "assistant", "content": "q" * 4}],
            "trajectory_format": "mini-swe-agent-1"}


def _write(p: Path, obj) -> Path:
    p.write_text(json.dumps(obj, indent=2))  # pretty-printed, as mini-swe-agent saves a trajectory
    return p


def _wl(path: Path, **kw) -> dict:
    return {"kind": "trace", "path": str(path), **kw}


def _run(wl: dict):
    run = resolve(parse_config(small_run_dict(workload=wl)))
    res, extra = simulate(run)
    return res, summarize(res, extra)


def test_v2_trajectory_turns_tokens_and_gaps_from_timestamps(tmp_path: Path):
    p = _write(tmp_path / "django__django-1.traj.json", v2_traj())
    assert detect_format(p) == "swe_traj"
    run = resolve(parse_config(small_run_dict(workload=_wl(p))))
    reqs, progs, tools, notes = load_workload(run, 1)
    assert reqs == [] and len(progs) == 1
    prog = progs[0]
    assert prog.program_id == "django__django-1" and prog.arrival_ns == 0 and len(prog.turns) == 3
    t0, t1, t2 = prog.turns
    assert (t0.new_tokens, t0.output_tokens) == (1000, 50)
    # turn 1's prompt (1200) extends turn 0's context (1000 + 50): 150 new tokens
    assert t1.context_parent == t0.turn_id and t1.new_tokens == 150 and t1.full_input_tokens == 1200
    assert t2.context_parent == t1.turn_id and t2.new_tokens == 1400 - 1260
    assert [(e.tool, e.gap_ns) for e in t1.parents] == [("bash", 1_500_000_000)]
    assert [(e.tool, e.gap_ns) for e in t2.parents] == [("bash", 250_000_000)]
    assert tools == {}  # every gap measured: the tool simulator replays them
    assert any("3 calls from usage counts, 0 estimated" in n for n in notes)
    assert any("2 of 2 from timestamps" in n for n in notes)


def test_v1_tokens_estimated_from_characters(tmp_path: Path):
    p = _write(tmp_path / "a.traj.json", v1_traj())
    [traj] = read_trajectories(p)
    c0, c1 = traj.calls
    assert (c0.prompt_tokens, c0.output_tokens) == (100 + 201, 10)  # ceil(400/4) + ceil(801/4); 40/4
    assert (c1.prompt_tokens, c1.output_tokens) == (301 + 10 + 20, 1)
    assert not c0.counted and traj.gap_ns(1) is None
    [half] = read_trajectories(p, chars_per_token=2)
    assert (half.calls[0].prompt_tokens, half.calls[0].output_tokens) == (200 + 401, 20)
    run = resolve(parse_config(small_run_dict(workload=_wl(p, chars_per_token=2))))
    _, progs, tools, notes = load_workload(run, 1)
    assert progs[0].turns[1].context_parent == progs[0].turns[0].turn_id and progs[0].turns[1].new_tokens == 40
    assert tools["bash"].dist == "lognormal" and tools["bash"].mean_ms == 2000  # documented default
    assert any("2 estimated at 2 characters per token" in n for n in notes)
    assert any("0 of 1 from timestamps" in n for n in notes)


def test_directory_jsonl_and_array_count_programs(tmp_path: Path):
    d = tmp_path / "trajs"
    (d / "b").mkdir(parents=True)
    _write(d / "a.traj.json", v2_traj())
    _write(d / "b" / "b.traj.json", v1_traj())
    (d / "notes.txt").write_text("not a trajectory")
    empty = {"messages": [{"role": "system", "content": "hi"}], "info": {}}
    run = resolve(parse_config(small_run_dict(workload=_wl(d, format="swe_traj"))))
    _, progs, _, _ = load_workload(run, 1)
    assert [p.program_id for p in progs] == ["a", "b"] and [len(p.turns) for p in progs] == [3, 2]
    assert type(get_source("trace")).__name__ == "TraceOrAgentSource"
    # one trajectory per line (JSONL), detected from the first line; one without model calls is skipped
    lines = tmp_path / "many.jsonl"
    lines.write_text("\n".join(json.dumps(x) for x in (v2_traj(), empty, v1_traj(), v2_traj())) + "\n")
    assert detect_format(lines) == "swe_traj"
    run = resolve(parse_config(small_run_dict(workload=_wl(lines))))
    _, progs, _, notes = load_workload(run, 1)
    assert [p.program_id for p in progs] == ["many-0", "many-2", "many-3"]
    assert any("3 of 4 trajectories" in n and "1 without model calls" in n for n in notes)
    arr = _write(tmp_path / "arr.json", [v1_traj(), v1_traj()])
    assert len(read_trajectories(arr)) == 2
    # the project's own JSONL is still not a trace
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"request_id": "r", "arrival_time_ns": 0, "input_toks": 5, "output_toks": 2}) + "\n")
    assert detect_format(own) is None


def test_arrivals_window_sample_and_limit(tmp_path: Path):
    lines = tmp_path / "t.jsonl"
    lines.write_text("\n".join(json.dumps(v2_traj(t0)) for t0 in (1000.0, 1010.0, 1030.0)) + "\n")
    def progs(**kw):
        run = resolve(parse_config(small_run_dict(workload=_wl(lines, **kw))))
        return load_workload(run, 3)[1]
    assert [p.arrival_ns for p in progs()] == [0, 10 * 10**9, 30 * 10**9]
    assert [p.arrival_ns for p in progs(time_scale=0.5)] == [0, 5 * 10**9, 15 * 10**9]
    assert [p.arrival_ns for p in progs(start_s=5, end_s=20)] == [5 * 10**9]  # from the window's start
    assert [p.program_id for p in progs(num_requests=2)] == ["t-0", "t-1"]
    sampled = [p.program_id for p in progs(sample=0.5)]
    assert sampled == [p.program_id for p in progs(sample=0.5)]  # seeded with the run seed
    assert set(sampled) < {"t-0", "t-1", "t-2"}


def test_tiny_simulation_replays_tool_gaps_and_reuses_prefix(tmp_path: Path):
    p = _write(tmp_path / "x.traj.json", v2_traj())
    res, s = _run(_wl(p))
    reqs = {r.request_id: r for r in res.requests}
    assert len(reqs) == 3 and all(r.status == "finished" for r in reqs.values())
    assert s["agents"]["completed"] == 1
    assert reqs["x.t1"].arrival_ns == reqs["x.t0"].finish_ns + 1_500_000_000
    assert reqs["x.t2"].arrival_ns == reqs["x.t1"].finish_ns + 250_000_000
    assert reqs["x.t1"].input_tokens == 1200 and reqs["x.t1"].cached_tokens > 0  # prefix of turn 0's context
    # no timestamps: the configured tool distribution gives the gaps
    v1 = _write(tmp_path / "y.traj.json", v1_traj())
    res, s = _run(_wl(v1, tools={"bash": {"dist": "constant", "mean_ms": 70}}))
    reqs = {r.request_id: r for r in res.requests}
    assert all(r.status == "finished" for r in reqs.values()) and len(reqs) == 2
    assert reqs["y.t1"].arrival_ns == reqs["y.t0"].finish_ns + 70_000_000
    res, s = _run(_wl(v1))  # the documented default distribution
    assert s["agents"]["completed"] == 1


def test_cli_run_detects_trajectories_and_convert_writes_calls(tmp_path: Path):
    p = _write(tmp_path / "x.traj.json", v2_traj())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_run_dict()))
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["agents"]["completed"] == 1
    out = tmp_path / "flat.jsonl"
    r = runner.invoke(app, ["convert", str(p), str(out), "--format", "swe_traj"])
    assert r.exit_code == 0, r.output
    reqs, _ = read_jsonl(out, None, 1.0)  # each call one flat request, issued when its observation arrived
    assert [(q.input_tokens, q.output_tokens) for q in reqs] == [(1000, 50), (1200, 60), (1400, 10)]
    assert [q.arrival_ns for q in reqs] == [0, 3_500_000_000, 4_250_000_000]


def _bad(name: str, mutate) -> tuple[str, dict]:
    t = v2_traj()
    mutate(t)
    return name, t


BAD = [
    _bad("no_messages", lambda t: t.pop("messages")),
    _bad("role", lambda t: t["messages"][1].pop("role")),
    _bad("ts", lambda t: t["messages"][2]["extra"].update(timestamp="soon")),
    _bad("usage", lambda t: t["messages"][4]["extra"]["response"]["usage"].update(prompt_tokens=-3)),
    _bad("content", lambda t: t["messages"][3].update(content=7)),
    _bad("order", lambda t: t["messages"][3]["extra"].update(timestamp=900.0)),
]
WHERE = {"no_messages": "'messages'", "role": "messages[1].role", "ts": "messages[2].extra.timestamp",
         "usage": "messages[4].extra.response.usage.prompt_tokens", "content": "messages[3].content",
         "order": "messages[4]"}


@pytest.mark.parametrize("name,obj", BAD, ids=[b[0] for b in BAD])
def test_errors_name_file_and_field(tmp_path: Path, name, obj):
    p = _write(tmp_path / f"{name}.traj.json", obj)
    run = resolve(parse_config(small_run_dict(workload=_wl(p, format="swe_traj"))))
    with pytest.raises(WorkloadError) as e:
        load_workload(run, 1)
    assert p.name in str(e.value) and WHERE[name] in str(e.value), str(e.value)


def test_broken_json_names_file_and_line(tmp_path: Path):
    p = tmp_path / "b.traj.json"
    p.write_text(json.dumps(v2_traj(), indent=2)[:-40])
    with pytest.raises(WorkloadError, match=r"b\.traj\.json:\d+: not valid JSON"):
        read_trajectories(p)
    bad = tmp_path / "lines.jsonl"
    bad.write_text(json.dumps(v1_traj()) + "\n{\"messages\": [\n")
    with pytest.raises(WorkloadError, match=r"lines\.jsonl:2: not valid JSON"):
        read_trajectories(bad)
    (tmp_path / "none").mkdir()
    with pytest.raises(WorkloadError, match="none: no trajectory files"):
        read_trajectories(tmp_path / "none")
