"""Workload sources as plug-ins (issue 15 item 1): Azure, BurstGPT and Mooncake traces from small files written
here, format detection, windows / samples / time scaling, `astraserve convert`, errors naming file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from frontend.cli import app
from frontend.config.loader import parse_config, resolve
from frontend.session import load_workload, simulate
from frontend.workload.jsonl import WorkloadError, read_jsonl
from frontend.workload.sources import detect_format, get_source, register_source
from frontend.workload.trace import convert_to_jsonl, read_trace
from tests.conftest import small_run_dict

runner = CliRunner()

AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:15:46.6805900,374,44\n"
         "2023-11-16 18:15:46.9951690,396,109\n"
         "2023-11-16 18:15:47.1000000,879,20\n"
         "2023-11-16 18:15:48.0000001,91,16\n")
BURSTGPT = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n"
            "5.5,GPT-4,1087,0,1087,Conversation log\n"
            "6,ChatGPT,417,76,493,API log\n"
            "7.25,GPT-4,300,0,300,API log\n"
            "8,GPT-4,210,40,250,Conversation log\n")


def _mooncake_line(t_ms, inp, out, ids) -> str:
    return json.dumps({"timestamp": t_ms, "input_length": inp, "output_length": out, "hash_ids": ids})


MOONCAKE = "\n".join([_mooncake_line(0, 1200, 12, [1, 2, 3]), _mooncake_line(500, 1100, 10, [1, 2, 4]),
                      _mooncake_line(900, 700, 8, [7, 8])]) + "\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _sim(wl: dict):
    res, _ = simulate(resolve(parse_config(small_run_dict(workload=wl))))
    return res


@pytest.mark.parametrize("name,text,fmt,n", [("a.csv", AZURE, "azure", 4), ("b.csv", BURSTGPT, "burstgpt", 3),
                                             ("m.jsonl", MOONCAKE, "mooncake", 3)])
def test_each_format_replays_and_is_detected(tmp_path: Path, name, text, fmt, n):
    p = _write(tmp_path, name, text)
    assert detect_format(p) == fmt
    for given in (fmt, None):  # named, or detected from the header / first line
        res = _sim({"kind": "trace", "path": str(p), **({"format": given} if given else {})})
        assert len(res.requests) == n
        assert all(r.status == "finished" for r in res.requests)
        assert any(fmt in note and f"{n} of" in note for note in res.notes)


def test_azure_arrivals_are_ns_offsets_from_the_first_row(tmp_path: Path):
    reqs, _ = read_trace(_write(tmp_path, "a.csv", AZURE))
    assert [r.arrival_ns for r in reqs] == [0, 314_579_000, 419_410_000, 1_319_410_100]
    assert [(r.input_tokens, r.output_tokens) for r in reqs] == [(374, 44), (396, 109), (879, 20), (91, 16)]
    assert [r.request_id for r in reqs] == ["req-0", "req-1", "req-2", "req-3"]


def test_project_jsonl_is_not_a_trace(tmp_path: Path):
    p = _write(tmp_path, "w.jsonl", '{"input_toks": 5, "output_toks": 2, "arrival_time_ns": 0}\n')
    assert detect_format(p) is None
    with pytest.raises(WorkloadError, match=r"w.jsonl:1: cannot tell the trace format"):
        read_trace(p)


def test_burstgpt_failed_rows_skipped_and_counted(tmp_path: Path):
    p = _write(tmp_path, "b.csv", BURSTGPT)
    reqs, notes = read_trace(p)
    assert [r.request_id for r in reqs] == ["req-0", "req-2", "req-4"]
    assert [r.arrival_ns for r in reqs] == [0, 1_000_000_000, 3_000_000_000]
    assert all(r.model is None for r in reqs)  # the Model column is kept only on request
    assert "2 skipped: failed (Response tokens 0)" in notes[0]
    reqs, _ = read_trace(p, use_trace_models=True)
    assert [r.model for r in reqs] == ["ChatGPT", "ChatGPT", "GPT-4"]
    res = _sim({"kind": "trace", "path": str(p)})
    assert any("2 skipped: failed" in n for n in res.notes)


def test_burstgpt_models_reach_the_schema(tmp_path: Path):
    p = _write(tmp_path, "b.csv", BURSTGPT)
    run = resolve(parse_config(small_run_dict(workload={"kind": "trace", "path": str(p), "use_trace_models": True})))
    reqs, progs, tools, notes = load_workload(run, 1)
    assert progs is None and tools == {} and [r.model for r in reqs] == ["ChatGPT", "ChatGPT", "GPT-4"]


def test_mooncake_shared_hash_ids_hit_the_prefix_cache(tmp_path: Path):
    p = _write(tmp_path, "m.jsonl", MOONCAKE)
    reqs, _ = read_trace(p)
    assert reqs[0].content.segments[:2] == reqs[1].content.segments[:2]  # ids 1, 2: identical leading segments
    assert reqs[0].content.segments[2] != reqs[1].content.segments[2]
    res = _sim({"kind": "trace", "path": str(p)})
    by = {r.request_id: r for r in res.requests}
    assert all(r.status == "finished" for r in res.requests)
    assert by["req-0"].cached_tokens == 0
    assert by["req-1"].cached_tokens == 1024  # two shared 512-token blocks
    assert by["req-2"].cached_tokens == 0  # no hash id in common


def test_mooncake_without_shared_ids_gets_no_hits(tmp_path: Path):
    p = _write(tmp_path, "m.jsonl", _mooncake_line(0, 1200, 12, [1, 2, 3]) + "\n"
               + _mooncake_line(500, 1100, 10, [5, 6, 7]) + "\n")
    res = _sim({"kind": "trace", "path": str(p)})
    assert all(r.cached_tokens == 0 for r in res.requests)


def test_time_window_sample_and_time_scale(tmp_path: Path):
    p = _write(tmp_path, "b.csv", BURSTGPT)
    reqs, notes = read_trace(p, start_s=0.5, end_s=3)  # from the first row (5 s): [5.5, 8) holds 6 (5.5, 7.25 failed)
    assert [(r.request_id, r.arrival_ns) for r in reqs] == [("req-2", 500_000_000)]
    assert "outside the time window" in notes[0]
    reqs, _ = read_trace(p, time_scale=0.5)
    assert [r.arrival_ns for r in reqs] == [0, 500_000_000, 1_500_000_000]
    reqs, _ = read_trace(p, num_requests=2)
    assert [r.request_id for r in reqs] == ["req-0", "req-2"]
    rows = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "".join(
        f"{i},M,{100 + i},{10 + i},0,API log\n" for i in range(400))
    big = _write(tmp_path, "big.csv", rows)
    a, notes = read_trace(big, sample=0.25, seed=3)
    b, _ = read_trace(big, sample=0.25, seed=3)
    c, _ = read_trace(big, sample=0.25, seed=4)
    assert [r.request_id for r in a] == [r.request_id for r in b] != [r.request_id for r in c]
    assert 60 < len(a) < 140 and "not sampled" in notes[0]
    run = resolve(parse_config(small_run_dict(seed=3, workload={"kind": "trace", "path": str(big), "sample": 0.25})))
    assert [r.request_id for r in load_workload(run, 3)[0]] == [r.request_id for r in a]


def test_schema_checks_the_window(tmp_path: Path):
    from frontend.errors import UserError

    with pytest.raises(UserError, match="start_s"):
        parse_config(small_run_dict(workload={"kind": "trace", "path": "x.csv", "start_s": 5, "end_s": 2}))
    with pytest.raises(UserError, match="format"):
        parse_config(small_run_dict(workload={"kind": "trace", "path": "x.csv", "format": "nope"}))


def test_convert_round_trip(tmp_path: Path):
    for name, text in (("a.csv", AZURE), ("b.csv", BURSTGPT), ("m.jsonl", MOONCAKE)):
        src = _write(tmp_path, name, text)
        dst = tmp_path / f"{name}.out.jsonl"
        r = runner.invoke(app, ["convert", str(src), str(dst)])
        assert r.exit_code == 0, r.output
        orig, _ = read_trace(src)
        back, sessions = read_jsonl(dst)
        assert not sessions
        key = [(q.request_id, q.arrival_ns, q.input_tokens, q.output_tokens) for q in orig]
        assert [(q.request_id, q.arrival_ns, q.input_tokens, q.output_tokens) for q in back] == key
        a = _sim({"kind": "trace", "path": str(src)})
        b = _sim({"kind": "jsonl", "path": str(dst)})
        assert [(q.request_id, q.cached_tokens, q.finish_ns) for q in a.requests] == \
               [(q.request_id, q.cached_tokens, q.finish_ns) for q in b.requests]
    n, _ = convert_to_jsonl(tmp_path / "b.csv", tmp_path / "two.jsonl", "burstgpt", num_requests=2)
    assert n == 2 and len((tmp_path / "two.jsonl").read_text().splitlines()) == 2


def test_cli_run_with_trace_workload(tmp_path: Path):
    cfg = _write(tmp_path, "c.yaml", yaml.safe_dump(small_run_dict()))
    src = _write(tmp_path, "m.jsonl", MOONCAKE)
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["completed"] == 3 and json.loads((tmp_path / "o" / "run_info.json").read_text())[
        "config"]["workload"]["kind"] == "trace"
    # the format named, a limit, and the project's JSONL still a jsonl workload
    src = _write(tmp_path, "b.txt", BURSTGPT)
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(src), "--workload-format", "burstgpt",
                            "--num-requests", "2", "--out", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["completed"] == 2
    w = _write(tmp_path, "w.jsonl", '{"input_toks": 5, "output_toks": 2, "arrival_time_ns": 0}\n')
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(w), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o3" / "run_info.json").read_text())["config"]["workload"]["kind"] == "jsonl"
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(w), "--workload-format", "parquet"])
    assert r.exit_code == 2 and "--workload-format" in r.output
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload-format", "azure"])
    assert r.exit_code == 2 and "--workload" in r.output


@pytest.mark.parametrize("name,text,where,field", [
    ("a.csv", AZURE.replace("396", "-3"), "a.csv:3", "ContextTokens"),
    ("a.csv", AZURE.replace("2023-11-16 18:15:47.1000000", "yesterday"), "a.csv:4", "TIMESTAMP"),
    ("a.csv", AZURE.replace(",20\n", ",2.5\n"), "a.csv:4", "GeneratedTokens"),
    ("a.csv", AZURE + "2023-11-16 18:15:49,5\n", "a.csv:6", "fields"),
    ("a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:49,5\n", "a.csv:1", "GeneratedTokens"),
    ("b.csv", BURSTGPT.replace("6,ChatGPT", "nan,ChatGPT"), "b.csv:4", "Timestamp"),
    ("b.csv", BURSTGPT.replace("417", "x"), "b.csv:4", "Request tokens"),
    ("b.csv", BURSTGPT.replace("8,GPT-4", "8,"), "b.csv:6", "Model"),
    ("m.jsonl", MOONCAKE.replace('"output_length": 10', '"output_length": "ten"'), "m.jsonl:2", "output_length"),
    ("m.jsonl", MOONCAKE.replace('[7, 8]', '[7, "8"]'), "m.jsonl:3", "hash_ids"),
    ("m.jsonl", MOONCAKE.replace('[7, 8]', '[7, 8, 9]'), "m.jsonl:3", "hash_ids"),
    ("m.jsonl", MOONCAKE.replace('"timestamp": 500', '"timestamp": -1'), "m.jsonl:2", "timestamp"),
    ("m.jsonl", MOONCAKE.replace('"timestamp": 900, ', ''), "m.jsonl:3", "timestamp"),
    ("m.jsonl", MOONCAKE + "{not json\n", "m.jsonl:4", "JSON"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, name, text, where, field):
    p = _write(tmp_path, name, text)
    fmt = {"a.csv": "azure", "b.csv": "burstgpt", "m.jsonl": "mooncake"}[name]
    with pytest.raises(WorkloadError) as e:
        read_trace(p, fmt)
    assert where in str(e.value) and field in str(e.value)
    cfg = _write(tmp_path, "c.yaml", yaml.safe_dump(small_run_dict()))
    r = runner.invoke(app, ["run", str(cfg), "-q", "--workload", str(p), "--workload-format", fmt,
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and where in r.output


def test_every_kind_is_a_registered_source():
    for kind in ("synthetic", "jsonl", "agents", "trace"):
        assert callable(get_source(kind).load)

    from frontend.workload import sources

    @register_source("test-constant")
    class Constant:
        def load(self, run, seed):
            return [], None, {}, ["constant"]

    try:
        assert get_source("test-constant").load(None, 0)[3] == ["constant"]
    finally:
        sources._SOURCES.pop("test-constant")


def test_a_window_on_dated_rows_counts_from_the_first_row(tmp_path: Path):
    """Azure rows carry dates: start_s / end_s are seconds from the trace's first row (18:15:46.68059)."""
    p = _write(tmp_path, "a.csv", AZURE)
    reqs, notes = read_trace(p, start_s=0.4, end_s=1.0)  # 18:15:47.08059 .. 18:15:47.68059: the 47.1 row only
    assert [(r.request_id, r.arrival_ns) for r in reqs] == [("req-2", 19_410_000)]
    assert "3 outside the time window" in notes[0]
