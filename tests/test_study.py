"""Studies (issue 15 items 2-3): sweeps over dotted run-file paths, SLOs and goodput, capacity search."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import frontend.cli as cli
from frontend.errors import ConfigError, UserError
from frontend.study.capacity import find_capacity, knob_for, write_capacity_csv
from frontend.study.slo import SLO, good_requests, goodput, meets, parse_slo, parse_slos
from frontend.study.sweep import execute, load_sweep, make_tasks, point_id, run_sweep
from tests.conftest import small_run_dict

GRID = {"engine.max_num_seqs": [8, 32], "workload.arrival.rate_per_s": [20, 80]}


def _sweep(tmp_path: Path, grid=None, extra: str = "") -> Path:
    (tmp_path / "run.yaml").write_text(json.dumps(small_run_dict()))
    lines = ["base: run.yaml", "grid:"] + [f"  {k}: {json.dumps(v)}" for k, v in (grid or GRID).items()]
    f = tmp_path / "sweep.yaml"
    f.write_text("\n".join(lines) + "\n" + extra)
    return f


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _table_without_wall(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "wall_s"
    return [r[:-1] for r in rows]


def test_four_point_sweep_gives_one_row_per_point(tmp_path: Path):
    spec = load_sweep(_sweep(tmp_path, extra="slo: [ttft_p99_ms=200]\n"))
    res = run_sweep(spec, tmp_path / "out", workers=1)
    rows = _rows(res.path)
    assert len(rows) == 4 and res.ran == 4 and not res.failed
    got = sorted((int(r["engine.max_num_seqs"]), float(r["workload.arrival.rate_per_s"])) for r in rows)
    assert got == [(8, 20), (8, 80), (32, 20), (32, 80)]
    assert [r["point_id"] for r in rows] == sorted(r["point_id"] for r in rows)
    for r in rows:
        assert r["point_id"] == point_id({"engine.max_num_seqs": int(r["engine.max_num_seqs"]),
                                          "workload.arrival.rate_per_s": int(r["workload.arrival.rate_per_s"])},
                                         None)
        assert r["seed"] == "1" and r["completed"] == "40" and r["rejected"] == "0" and r["error"] == ""
        assert float(r["ttft_ms_p99"]) >= float(r["ttft_ms_p50"]) > 0
        assert float(r["tok_s_per_gpu"]) == pytest.approx(float(r["throughput_tok_s"]))
        assert r["slo_met"] == str(float(r["ttft_ms_p99"]) <= 200)
    assert list(rows[0])[-1] == "wall_s"
    # the parameters reached the runs: more load, higher throughput; fewer seats at the high rate, slower TTFT
    by = {(int(r["engine.max_num_seqs"]), int(r["workload.arrival.rate_per_s"])): r for r in rows}
    assert float(by[8, 80]["throughput_rps"]) > float(by[8, 20]["throughput_rps"])
    assert float(by[8, 80]["ttft_ms_p99"]) > float(by[32, 80]["ttft_ms_p99"])
    assert (res.parquet is None) == (res.path.with_suffix(".parquet").exists() is False)


def _same_cell(text: str, v) -> bool:
    """A parquet value equals the CSV cell it came from (typed: 40 == '40', 7.59495 == '7.59495', True == 'True')."""
    if v is None:
        return text == ""
    if isinstance(v, bool | str):
        return text == str(v)
    if isinstance(v, int):
        return int(text) == v
    return float(text) == v or (v != v and text.lower() == "nan")


def _parquet_equals_csv(pq_path: Path, csv_path: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(pq_path)
    with csv_path.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert table.column_names == header and table.num_rows == len(rows)
    for rec, got in zip(rows, table.to_pylist(), strict=True):
        bad = {c: (t, got[c]) for c, t in zip(header, rec, strict=True) if not _same_cell(t, got[c])}
        assert not bad, bad


def test_parquet_round_trips_equal_to_results_csv(tmp_path: Path):
    pytest.importorskip("pyarrow")
    from frontend.study.sweep import write_parquet

    spec = load_sweep(_sweep(tmp_path, grid={"engine.max_num_seqs": [8, 32]}, extra="slo: [ttft_p99_ms=200]\n"))
    res = run_sweep(spec, tmp_path / "out", workers=1)
    assert res.parquet == tmp_path / "out" / "results.parquet" and res.parquet.stat().st_size > 0
    _parquet_equals_csv(res.parquet, res.path)
    # ids that look like numbers stay text, an error message is text, only an empty cell is null ('nan' is a float)
    t = tmp_path / "t.csv"
    t.write_text("point_id,engine.max_num_seqs,ttft_ms_p99,slo_met,error,wall_s\n"
                 "123456789012,8,nan,True,,0.1\n1234e5678901,,1.5,False,ValueError: x,0.25\n")
    out = write_parquet(t)
    assert out is not None
    _parquet_equals_csv(out, t)
    import pyarrow.parquet as pq

    types = {f.name: str(f.type) for f in pq.read_table(out).schema}
    assert types["point_id"] == types["error"] == "string" and types["ttft_ms_p99"] == "double"


def test_resume_skips_done_points_and_retries_cut_rows(tmp_path: Path):
    spec = load_sweep(_sweep(tmp_path))
    out = tmp_path / "out"
    run_sweep(spec, out, workers=1)
    path = out / "results.csv"
    before = _table_without_wall(path)
    # drop one row and cut another short (an interrupted sweep): exactly those two run again
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[2], lines[3][:20]]) + "\n")
    seen: list[str] = []
    res = run_sweep(spec, out, workers=1, on_row=lambda r: seen.append(r["point_id"]))
    assert res.skipped == 2 and res.ran == 2 and len(seen) == 2
    assert _table_without_wall(path) == before
    res = run_sweep(spec, out, workers=1)
    assert res.ran == 0 and res.skipped == 4


def test_a_different_sweep_into_the_same_dir_is_refused(tmp_path: Path):
    run_sweep(load_sweep(_sweep(tmp_path)), tmp_path / "out", workers=1)
    other = load_sweep(_sweep(tmp_path, {"engine.max_num_seqs": [8]}))
    with pytest.raises(Exception, match="different sweep"):
        run_sweep(other, tmp_path / "out", workers=1)


def test_one_and_two_workers_write_the_same_table(tmp_path: Path):
    spec = load_sweep(_sweep(tmp_path))
    a = run_sweep(spec, tmp_path / "w1", workers=1)
    b = run_sweep(spec, tmp_path / "w2", workers=2)
    assert _table_without_wall(a.path) == _table_without_wall(b.path)


def test_seeds_samples_and_list_indices(tmp_path: Path):
    f = _sweep(tmp_path, {"instances.0.hardware": ["H100-SXM"]},
               "seeds: [1, 2]\nsamples: {n: 3, seed: 7, space: {engine.max_num_seqs: [8, 16, 32, 64]}}\n"
               "overrides: {workload: {num_requests: 10}}\n")
    spec = load_sweep(f)
    assert spec.params == ["instances.0.hardware", "engine.max_num_seqs"]
    assert 2 <= len(spec.points) <= 6 and {p.seed for p in spec.points} == {1, 2}
    assert load_sweep(f).points == spec.points  # seeded samples: the same points every time
    rows = execute(make_tasks(spec, spec.points[:2]), workers=1)
    assert all(r["error"] == "" and r["completed"] == 10 for r in rows)
    assert {r["seed"] for r in rows} <= {1, 2}


@pytest.mark.parametrize("grid,extra,msg", [
    ({"engine.max_num_seq": [1]}, "", "engine.max_num_seq: unknown key"),
    ({"engine.max_num_seqs": [0]}, "", "engine.max_num_seqs"),
    ({"engine.max_num_seqs": []}, "", "non-empty list"),
    ({"instances.3.tp": [2]}, "", "index 3 out of range"),
    ({"engine.max_num_seqs": [8]}, "seeds: [x]\n", "seeds"),
    ({"engine.max_num_seqs": [8]}, "slo: [ttft_p99=5]\n", "METRIC_QUANTILE_ms"),
    ({"engine.max_num_seqs": [8]}, "gird: {}\n", "gird: unknown key"),
])
def test_bad_sweep_files_name_the_field(tmp_path: Path, grid, extra, msg):
    with pytest.raises(ConfigError, match=msg):
        load_sweep(_sweep(tmp_path, grid, extra))


def test_slo_parsing():
    assert parse_slo("ttft_p99_ms=2000") == SLO("ttft", "p99", 2000.0)
    assert str(parse_slo(" tpot_p50_ms = 50 ")) == "tpot_p50_ms=50"
    assert parse_slo("e2e_mean_ms=1.5e3").target_ms == 1500
    for bad, msg in [("ttft_p99=2000", "METRIC_QUANTILE_ms=TARGET"), ("itl_p99_ms=5", "unknown metric 'itl'"),
                     ("ttft_p95_ms=5", "unknown quantile 'p95'"), ("ttft_p99_ms=fast", "not a number"),
                     ("ttft_p99_ms=-1", "positive"), ("ttft_p99_ms=inf", "positive"), ("", "expected")]:
        with pytest.raises(ConfigError, match=msg):
            parse_slo(bad)
    with pytest.raises(ConfigError, match="given twice"):
        parse_slos(["ttft_p99_ms=1", "ttft_p99_ms=2"])


def test_meets_and_goodput():
    from types import SimpleNamespace as R

    s = {"rejected": 0, "ttft_ms": {"p99": 150.0}, "tpot_ms": {"p50": 20.0}, "e2e_ms": {"p90": None}}
    assert meets(s, parse_slos(["ttft_p99_ms=200", "tpot_p50_ms=20"]))
    assert not meets(s, parse_slos(["ttft_p99_ms=100"]))
    assert not meets(s, parse_slos(["e2e_p90_ms=100"]))  # no samples: not met
    assert not meets({**s, "rejected": 1}, parse_slos(["ttft_p99_ms=200"]))
    ms = 1_000_000
    reqs = [R(status="finished", arrival_ns=0, first_token_ns=100 * ms, finish_ns=300 * ms, output_tokens=11),
            R(status="finished", arrival_ns=0, first_token_ns=300 * ms, finish_ns=400 * ms, output_tokens=11),
            R(status="finished", arrival_ns=0, first_token_ns=100 * ms, finish_ns=900 * ms, output_tokens=11),
            R(status="finished", arrival_ns=0, first_token_ns=100 * ms, finish_ns=100 * ms, output_tokens=1),
            R(status="rejected", arrival_ns=0, first_token_ns=-1, finish_ns=-1, output_tokens=0)]
    slos = parse_slos(["ttft_p99_ms=200", "tpot_p50_ms=50"])
    assert good_requests(reqs, slos) == 2  # too slow first token; TPOT 80 ms; the rejected one never counts
    g = goodput(2, 4.0, 2, usd_per_gpu_hour=3.6)
    assert g == {"good_requests": 2, "goodput_rps": 0.5, "goodput_rps_per_gpu": 0.25, "goodput_per_usd": 250.0}


def test_capacity_finds_the_rate_a_direct_sweep_confirms(tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(small_run_dict()))
    slos = parse_slos(["ttft_p99_ms=200"])
    res = find_capacity(cfg, slos, {}, rate_lo=25, rate_hi=400, tolerance=0.1, workers=2)
    lo, hi = res.bracket
    assert res.converged and res.rate == lo and lo < hi and hi - lo <= 0.1 * lo
    assert lo <= res.rate <= hi
    # a direct sweep of rates in and around the bracket agrees with the search
    rates = [lo / 2, lo, hi, hi * 2]
    sweep = tmp_path / "rates.yaml"
    sweep.write_text(f"base: run.yaml\ngrid: {{workload.arrival.rate_per_s: {rates}}}\nslo: [ttft_p99_ms=200]\n")
    rows = {float(r["workload.arrival.rate_per_s"]): r["slo_met"]
            for r in _rows(run_sweep(load_sweep(sweep), tmp_path / "direct", workers=2).path)}
    assert rows == {lo / 2: "True", lo: "True", hi: "False", hi * 2: "False"}
    write_capacity_csv(res, tmp_path / "cap" / "capacity.csv")
    cap = _rows(tmp_path / "cap" / "capacity.csv")
    assert len(cap) == len(res.rows) and {float(r["rate_per_s"]) for r in cap} >= {lo, hi}


def test_capacity_refuses_agent_workloads_and_bad_flags(tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(small_run_dict()))
    with pytest.raises(ConfigError, match="at least one --slo"):
        find_capacity(cfg, [], {})
    with pytest.raises(ConfigError, match="--tolerance"):
        find_capacity(cfg, parse_slos(["ttft_p99_ms=1"]), {}, tolerance=2)
    with pytest.raises(ConfigError, match="below --rate-hi"):
        find_capacity(cfg, parse_slos(["ttft_p99_ms=1"]), {}, rate_lo=5, rate_hi=4)
    agents = tmp_path / "agents.yaml"
    agents.write_text(json.dumps(small_run_dict(workload={"kind": "agents", "num_programs": 2})))
    with pytest.raises(Exception, match="no arrival rate to search"):
        find_capacity(agents, parse_slos(["ttft_p99_ms=1"]), {})


def _azure_csv(path: Path, gaps_s: list[float], seed: int = 3) -> Path:
    """An Azure-format trace: one row per gap (arrival = running sum of the gaps), seeded token counts."""
    import random
    from datetime import datetime, timedelta

    rng = random.Random(seed)
    t0 = datetime(2023, 11, 16, 18, 15, 46)
    t, lines = 0.0, ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for g in gaps_s:
        t += g
        stamp = (t0 + timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        lines.append(f"{stamp},{min(2000, int(rng.lognormvariate(5.5, 0.8)) + 1)},"
                     f"{min(200, int(rng.lognormvariate(3.6, 0.5)) + 1)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _trace_run(tmp_path: Path, **wl) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(small_run_dict(workload={"kind": "trace", "path": "azure.csv", **wl})))
    return cfg


def test_capacity_over_an_azure_trace_matches_a_direct_time_scale_sweep(tmp_path: Path):
    import random

    rng = random.Random(7)
    _azure_csv(tmp_path / "azure.csv", [rng.expovariate(50.0) for _ in range(40)])
    cfg = _trace_run(tmp_path, time_scale=2.0)
    knob = knob_for(cfg, {})
    assert knob.path == "workload.time_scale" and knob.base_rate == pytest.approx(knob.natural_rate / 2)
    slos = parse_slos(["ttft_p99_ms=200"])
    res = find_capacity(cfg, slos, {}, rate_lo=25, rate_hi=400, tolerance=0.1, workers=2)
    lo, hi = res.bracket
    assert res.knob == "workload.time_scale"
    assert res.converged and res.rate == lo and lo < hi and hi - lo <= 0.1 * lo and 25 < lo < hi < 400
    for row in res.rows:  # every evaluated rate was run as natural rate / time_scale
        assert row["workload.time_scale"] == pytest.approx(knob.natural_rate / row["rate_per_s"])
    # a direct sweep over time_scale at rates in and around the bracket agrees with the search
    rates = [lo / 2, lo, hi, hi * 2]
    scales = [knob.natural_rate / r for r in rates]
    sweep = tmp_path / "scales.yaml"
    sweep.write_text(f"base: run.yaml\ngrid: {{workload.time_scale: {scales}}}\nslo: [ttft_p99_ms=200]\n")
    rows = {float(r["workload.time_scale"]): r["slo_met"]
            for r in _rows(run_sweep(load_sweep(sweep), tmp_path / "direct", workers=2).path)}
    met = {r: rows[min(rows, key=lambda s, r=r: abs(s - knob.natural_rate / r))] for r in rates}
    assert met == {lo / 2: "True", lo: "True", hi: "False", hi * 2: "False"}
    write_capacity_csv(res, tmp_path / "cap" / "capacity.csv")
    cap = _rows(tmp_path / "cap" / "capacity.csv")
    assert len(cap) == len(res.rows) and "workload.time_scale" in cap[0]


def test_capacity_trace_rate_is_measured_after_window_sample_and_limit(tmp_path: Path):
    from frontend.workload.trace import read_trace

    # a BurstGPT trace (its clock is the Timestamp column, in s): 20 rows 10 ms apart (100 req/s) from 0,
    # then 20 rows 40 ms apart (25 req/s)
    times = [i * 0.01 for i in range(20)] + [0.19 + (i + 1) * 0.04 for i in range(20)]
    (tmp_path / "b.csv").write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "".join(
        f"{t:.2f},ChatGPT,300,40,340,Conversation log\n" for t in times))

    def knob(over=None, **wl):
        return knob_for(_trace_run(tmp_path, path="b.csv", **wl), over or {})

    def rate(reqs):
        arr = sorted(r.arrival_ns for r in reqs)
        return (len(arr) - 1) / ((arr[-1] - arr[0]) / 1e9)

    assert knob().natural_rate == pytest.approx(39 / 0.99, rel=1e-6)
    assert knob(num_requests=10).natural_rate == pytest.approx(100, rel=1e-6)
    windowed = knob(start_s=0.2, time_scale=0.5)
    assert windowed.natural_rate == pytest.approx(25, rel=1e-6) and windowed.base_rate == pytest.approx(50, rel=1e-6)
    assert knob(end_s=0.195).natural_rate == pytest.approx(100, rel=1e-6)
    # a sample is drawn with the run's seed (small_run_dict's 1, or an override), as in the runs themselves
    assert knob(sample=0.5).natural_rate == pytest.approx(rate(read_trace(tmp_path / "b.csv", sample=0.5, seed=1)[0]))
    assert knob({"seed": 9}, sample=0.5).natural_rate == \
        pytest.approx(rate(read_trace(tmp_path / "b.csv", sample=0.5, seed=9)[0]))
    with pytest.raises(UserError, match="two distinct arrival times"):
        knob(num_requests=1)


def test_capacity_refuses_agent_program_traces(tmp_path: Path):
    (tmp_path / "trajs").mkdir()
    (tmp_path / "t.traj.json").write_text("{}\n")
    slos = parse_slos(["ttft_p99_ms=1"])
    for wl in ({"kind": "trace", "path": "trajs"}, {"kind": "trace", "format": "swe_traj", "path": "t.traj.json"}):
        cfg = tmp_path / "run.yaml"
        cfg.write_text(json.dumps(small_run_dict(workload=wl)))
        with pytest.raises(UserError, match="swe_traj trace replays as agent programs.*not by one arrival rate"):
            find_capacity(cfg, slos, {})


def test_cli_sweep_and_capacity(tmp_path: Path):
    f = _sweep(tmp_path, {"engine.max_num_seqs": [8, 32]})
    r = CliRunner().invoke(cli.app, ["sweep", str(f), "--out", str(tmp_path / "o"), "--workers", "1",
                                     "--slo", "ttft_p99_ms=500"])
    assert r.exit_code == 0, r.output
    assert "2 points run" in r.output and len(_rows(tmp_path / "o" / "results.csv")) == 2
    r = CliRunner().invoke(cli.app, ["sweep", str(f), "--out", str(tmp_path / "o"), "--slo", "ttft_p99_ms=500"])
    assert r.exit_code == 0 and "0 points run, 2 skipped" in r.output
    r = CliRunner().invoke(cli.app, ["sweep", str(f), "--out", str(tmp_path / "o2"), "--slo", "ttft_p99_mx=5"])
    assert r.exit_code == 2 and "METRIC_QUANTILE_ms" in r.output
    r = CliRunner().invoke(cli.app, ["capacity", str(tmp_path / "run.yaml"), "--slo", "ttft_p99_ms=200",
                                     "--num-requests", "30", "--rate-lo", "50", "--rate-hi", "400",
                                     "--tolerance", "0.2", "--workers", "1", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "req/s meets ttft_p99_ms=200; bracket [" in r.output and (tmp_path / "c" / "capacity.csv").is_file()


def test_ray_missing_is_a_clear_error(tmp_path: Path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    spec = load_sweep(_sweep(tmp_path))
    with pytest.raises(Exception, match=r"ray package is not installed.*\[ray\]"):
        run_sweep(spec, tmp_path / "out", ray_address="")


@pytest.mark.slow
def test_ray_gives_the_same_table_as_local_processes(tmp_path: Path):
    ray = pytest.importorskip("ray")
    spec = load_sweep(_sweep(tmp_path))
    local = run_sweep(spec, tmp_path / "local", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_sweep(spec, tmp_path / "ray", ray_address="")
    finally:
        ray.shutdown()
    assert on_ray.ran == 4
    assert _table_without_wall(local.path) == _table_without_wall(on_ray.path)
