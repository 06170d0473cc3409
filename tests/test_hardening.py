"""Issue 11, item by item: bad input ends in one line naming where (exit 2), bugs are reported as bugs
(exit 3), outputs are checked first, staged and never mixed, JSON is strict, memory is flat."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from frontend.config.loader import ConfigError, parse_config, resolve
from tests.conftest import BUNDLE, SHAREGPT, VLLM_REF, need_shared, small_run_dict
from tests.fuzz_harness import check_exit, check_run_outputs, error_line, invoke


def _resolve(d: dict):
    return resolve(parse_config(d, "x.yaml"), "x.yaml")


def _cfg(tmp: Path, d: dict, name: str = "c.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(d))
    return p


def _run(tmp: Path, d: dict, *extra: str, out: Path | None = None):
    out = out or tmp / "out"
    r = invoke(["run", _cfg(tmp, d), "--quiet", "--out", out, *extra])
    return r, out


def _fails(r, needle: str) -> str:
    assert check_exit(r) == 2, r.output
    line = error_line(r.output)
    assert needle in line, line
    return line


# 1. replica names
def test_replica_names_may_not_collide():
    d = small_run_dict(instances=[{"name": "a", "hardware": "H100-SXM", "replicas": 2},
                                  {"name": "a1", "hardware": "H100-SXM"}])
    with pytest.raises(ConfigError, match=r"instances\[1\].name: instance name 'a1'"):
        _resolve(d)


# 3. outputs checked first, staged, never mixed
def test_out_is_checked_before_the_run(tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    big = small_run_dict()
    big["workload"]["num_requests"] = 100000  # would take minutes: the check must come first
    r, _ = _run(tmp_path, big, out=f)
    _fails(r, "--out")
    r = invoke(["run", _cfg(tmp_path, big), "-q", "--out", f / "sub"])
    _fails(r, "not a directory")
    r = invoke(["run", _cfg(tmp_path, big), "-q", "--out", tmp_path / "o", "--dump-chakra", f])
    _fails(r, "--dump-chakra")
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r, _ = _run(tmp_path, small_run_dict(), out=ro / "o")
    _fails(r, "not writable")


def test_stale_outputs_are_replaced_and_failures_leave_nothing(tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "programs.csv").write_text("stale from an agent run\n")
    (out / "notes.txt").write_text("mine\n")
    r, _ = _run(tmp_path, small_run_dict(), out=out)
    assert check_exit(r) == 0
    check_run_outputs(out)
    assert not (out / "programs.csv").exists()  # a previous run's output under a run's name is gone
    assert (out / "notes.txt").read_text() == "mine\n"  # the user's own file is left alone
    # a run failing mid-way leaves the previous outputs untouched and no staging directory
    before = (out / "summary.json").read_bytes()
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.delenv("ASTRA_SIM_BIN", raising=False)
    d = small_run_dict(backend={"kind": "astra-sim", "astra_sim": {"binary": str(fake)}})
    r, _ = _run(tmp_path, d, out=out)
    _fails(r, str(fake))
    assert (out / "summary.json").read_bytes() == before
    assert not list(tmp_path.glob(".*partial*"))
    r, _ = _run(tmp_path, d, out=tmp_path / "new")
    assert check_exit(r) == 2 and not (tmp_path / "new").exists()


def test_run_info_records_what_ran(tmp_path: Path):
    r, out = _run(tmp_path, small_run_dict(), "--seed", "5")
    assert check_exit(r) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 5 and info["config"]["seed"] == 5 and info["backend"] == "embedded"
    assert info["compute"] == [{"instance": "g", "configured": "roofline", "used": "roofline"}]
    assert info["config"]["engine"]["max_num_seqs"] == 32


# 4. all rejected: valid JSON, reason printed, not silent
def test_all_rejected_is_valid_json_and_not_silent(tmp_path: Path):
    d = small_run_dict()
    d["engine"]["max_model_len"] = 20
    r, out = _run(tmp_path, d)
    line = _fails(r, "all 40 requests were rejected")
    assert "exceeds_max_model_len" in line
    s = check_run_outputs(out)
    assert s["completed"] == 0 and s["ttft_ms"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert s["rejections"]["exceeds_max_model_len"]["count"] == 40


# 5. bounded integers
def test_arrival_times_and_lengths_stay_in_int64(tmp_path: Path):
    d = small_run_dict()
    d["workload"]["arrival"]["rate_per_s"] = 1e-12
    r, _ = _run(tmp_path, d)
    _fails(r, "workload.arrival.rate_per_s")
    d = small_run_dict()
    d["workload"]["prompt_tokens"] = {"dist": "lognormal", "mean": 1e12, "sigma": 3.0, "max": 10_000_000}
    d["engine"]["max_model_len"] = 20_000_000
    r, out = _run(tmp_path, d)
    assert check_exit(r) in (0, 2)
    if r.exit_code == 0:
        check_run_outputs(out)
    for bad in ({"mean": 1e300, "sigma": 1.0}, {"mean": 10, "sigma": 1.0, "max": 10**19}):
        d = small_run_dict()
        d["workload"]["prompt_tokens"] = {"dist": "lognormal", **bad}
        r, _ = _run(tmp_path, d)
        _fails(r, "workload.prompt_tokens")


# 6. plain mistakes after the schema
def _mk(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("case", [
    "seed", "uniform", "empirical", "turns", "dims_order", "inf", "no_vocab", "zero_heads", "hw_yaml", "hw_peak",
    "preset_no_dims", "num_agents", "huge_count", "blocks"])
def test_plain_mistakes_name_their_place(tmp_path: Path, case: str):
    d = small_run_dict()
    wl = d["workload"]
    expect = {
        "seed": "seed", "uniform": "low (9) exceeds high", "empirical": "workload.prompt_tokens.values",
        "turns": "turns_min (9) exceeds turns_max", "dims_order": "list the TP dimensions first",
        "inf": "workload.arrival.rate_per_s", "no_vocab": "vocab_size", "zero_heads": "num_attention_heads",
        "hw_yaml": "hw.yaml: not valid YAML: line", "hw_peak": "peak_tflops", "preset_no_dims": "needs 'dims'",
        "num_agents": "workload.num_agents", "huge_count": "workload.num_requests", "blocks": "KV blocks",
    }[case]
    if case == "seed":
        d["seed"] = -1
    elif case == "uniform":
        wl["prompt_tokens"] = {"dist": "uniform", "low": 9, "high": 3}
    elif case == "empirical":
        wl["prompt_tokens"] = {"dist": "empirical", "values": []}
    elif case == "turns":
        d["workload"] = {"kind": "agents", "turns_min": 9, "turns_max": 3}
    elif case == "dims_order":
        d["model"] = "Llama-3.1-70B"
        d["instances"] = [{"name": "g", "hardware": "H100-SXM", "tp": 4, "pp": 2, "network": {"dims": [
            {"topology": "Ring", "npus": 2, "bw_gbps": 100, "latency_ns": 500},
            {"topology": "Switch", "npus": 4, "bw_gbps": 100, "latency_ns": 500}]}}]
    elif case == "inf":
        wl["arrival"]["rate_per_s"] = float("inf")
    elif case in ("no_vocab", "zero_heads"):
        cfg = {"hidden_size": 64, "num_attention_heads": 0 if case == "zero_heads" else 4, "num_hidden_layers": 2,
               "intermediate_size": 128}
        if case == "zero_heads":
            cfg["vocab_size"] = 100
        d["model"] = _mk(tmp_path, "m.json", json.dumps(cfg))
    elif case == "hw_yaml":
        d["instances"][0]["hardware"] = _mk(tmp_path, "hw.yaml", "name: x\npeak_tflops: {bf16: [\n")
    elif case == "hw_peak":
        d["instances"][0]["hardware"] = _mk(tmp_path, "hw.yaml", yaml.safe_dump(
            {"name": "x", "peak_tflops": {"bf16": 0}, "hbm_capacity_gib": 80, "hbm_bw_gbps": 3000, "tdp_w": 700}))
    elif case == "preset_no_dims":
        d["instances"][0].update(tp=2, network={"preset": _mk(tmp_path, "net.yaml", "name: n\n")})
    elif case == "num_agents":
        d["workload"] = {"kind": "agents", "generator": "multiagent", "num_agents": 1}
    elif case == "huge_count":
        wl["num_requests"] = 10**12
    elif case == "blocks":
        d["engine"]["num_gpu_blocks_override"] = 50_000_000
    r, _ = _run(tmp_path, d)
    _fails(r, expect)


@pytest.mark.parametrize("line, where", [
    (b'{"input_toks": NaN, "output_toks": 2, "arrival_time_ns": 0}', "w.jsonl:2"),
    (b'{"input_toks": 5, "output_toks": Infinity, "arrival_time_ns": 0}', "w.jsonl:2"),
    (b'{"input_toks": 5, "output_toks": 2, "arrival_time_ns": 1e30}', "w.jsonl:2"),
    (b'\xff\xfe{"input_toks": 5}', "w.jsonl:2: not UTF-8"),
    (b'{"input_toks": 5, "output_toks": 2, "arrival_time_ns": 0, "input_tok_ids": [1, true, 3]}', "w.jsonl:2"),
])
def test_jsonl_bad_numbers_and_bytes(tmp_path: Path, line: bytes, where: str):
    w = tmp_path / "w.jsonl"
    w.write_bytes(b'{"input_toks": 5, "output_toks": 2, "arrival_time_ns": 0}\n' + line + b"\n")
    r, _ = _run(tmp_path, small_run_dict(), "--workload", str(w))
    _fails(r, where)


# 7. validate on imperfect references and mismatched runs
def _ref_pair(tmp: Path, n: int = 6, one_token: bool = False) -> tuple[Path, Path]:
    def outs(i: int) -> int:
        return 1 if one_token else 2 + i % 3

    w = tmp / "w.jsonl"
    w.write_text("".join(json.dumps({"input_toks": 30 + i, "output_toks": outs(i), "arrival_time_ns": i * 10**6})
                         + "\n" for i in range(n)))
    r, out = _run(tmp, small_run_dict(), "--workload", str(w))
    assert check_exit(r) == 0
    ref = tmp / "set" / "vllm"
    ref.mkdir(parents=True)
    (ref / "requests.jsonl").write_text("".join(json.dumps(
        {"input_toks": 30 + i, "output_toks": outs(i), "queued_ts": 10.0 + i / 1000, "first_token_ts": 10.05 + i / 1000,
         "last_token_ts": 10.2 + i / 1000}) + "\n" for i in range(n)))
    (ref / "timeseries.csv").write_text("t,gen_throughput,kv_cache_pct\n1.0,5.0,2.0\n")
    return out, tmp / "set"


def _validate(run: Path, ref: Path, *extra: str):
    return invoke(["validate", "--run", run, "--reference", ref, "--no-plots", *extra])


def test_validate_accepts_a_reference_set_dir_and_the_vllm_dir(tmp_path: Path):
    run, ref_set = _ref_pair(tmp_path)
    for ref in (ref_set, ref_set / "vllm"):
        r = _validate(run, ref)
        assert check_exit(r) == 0, r.output
        res = json.loads((run / "validate.json").read_text())
        assert res["requests"] == {"sim": 6, "real": 6}


def test_validate_skips_a_timeseries_the_reference_did_not_record(tmp_path: Path):
    run, ref_set = _ref_pair(tmp_path)
    (ref_set / "vllm" / "timeseries.csv").write_text("t,gen_throughput,kv_cache_pct\n1.0,5.0,0.0\n2.0,4.0,0.0\n")
    assert check_exit(_validate(run, ref_set)) == 0
    res = json.loads((run / "validate.json").read_text())
    assert "timeseries_kv_cache_pct" not in res and "timeseries_gen_throughput" in res
    assert any("'kv_cache_pct' is zero throughout" in n for n in res["notes"])


def test_validate_real_reference_set_dir(tmp_path: Path, repo: Path):
    need_shared()
    r = invoke(["run", repo / "configs/examples/rtx4090-llama3.1-8b.yaml", "-q", "--out", tmp_path / "r",
                "--workload", SHAREGPT,
                "--num-requests", "20"])
    assert check_exit(r) == 0
    r = _validate(tmp_path / "r", VLLM_REF.parent, "--partial")
    assert check_exit(r) == 0, r.output
    assert json.loads((tmp_path / "r" / "validate.json").read_text())["requests"]["real"] == 20


@pytest.mark.parametrize("mutate, expect", [
    ("zero_duration", 0), ("one_token", 0), ("string_ts", "requests.jsonl:1: field 'queued_ts'"),
    ("no_time_column", 0), ("truncated_run", "summary.json counts 6"), ("other_workload", "another workload"),
    ("fewer_requests", "6 requests but the reference"), ("nan_ts", "requests.jsonl:1"),
])
def test_validate_imperfect_inputs(tmp_path: Path, mutate: str, expect):
    run, ref_set = _ref_pair(tmp_path, one_token=mutate == "one_token")
    req = ref_set / "vllm" / "requests.jsonl"
    rows = [json.loads(x) for x in req.read_text().splitlines()]
    if mutate == "zero_duration":
        for x in rows:
            x["queued_ts"] = x["first_token_ts"] = x["last_token_ts"] = 3.0
    elif mutate == "string_ts":
        rows[0]["queued_ts"] = "10.0"
    elif mutate == "nan_ts":
        req.write_text(req.read_text().replace('"queued_ts": 10.0', '"queued_ts": NaN', 1))
        rows = None
    elif mutate == "no_time_column":
        (ref_set / "vllm" / "timeseries.csv").write_text("gen_throughput,kv_cache_pct\n5.0,2.0\n")
    elif mutate == "truncated_run":
        lines = (run / "requests.csv").read_text().splitlines()
        (run / "requests.csv").write_text("\n".join(lines[:-2]) + "\n")
    elif mutate == "other_workload":
        for x in rows:
            x["input_toks"] += 1000
    elif mutate == "fewer_requests":
        rows = rows[:5]
    if rows is not None:
        req.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = _validate(run, ref_set)
    if expect == 0:
        assert check_exit(r) == 0, r.output
        res = json.loads((run / "validate.json").read_text(), parse_constant=lambda c: pytest.fail(c))
        assert res["notes"]
    else:
        _fails(r, expect)


# 8. profile bundles
def _bundle_copy(tmp: Path) -> Path:
    need_shared()
    b = tmp / "bundle"
    for f in ("bf16/meta.yaml", "bf16/tp1/dense.csv", "bf16/tp1/per_sequence.csv", "bf16/tp1/attention.csv"):
        (b / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLE / f, b / f)
    return b


def test_corrupt_bundle_names_file_and_line(tmp_path: Path):
    b = _bundle_copy(tmp_path)
    p = b / "bf16/tp1/dense.csv"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",nan"
    p.write_text("\n".join(lines) + "\n")
    d = small_run_dict(instances=[{"name": "g", "hardware": "RTX4090"}])
    r, _ = _run(tmp_path, d, "--profile", str(b))
    _fails(r, "dense.csv:4: column 'time_us' is not finite")
    (b / "bf16/meta.yaml").write_text("gpu: [unclosed\n")
    r, _ = _run(tmp_path, d, "--profile", str(b))
    _fails(r, "meta.yaml: not valid YAML")


def test_bundle_of_another_device_warns(tmp_path: Path):
    b = _bundle_copy(tmp_path)
    d = small_run_dict()  # H100-SXM
    d["workload"]["num_requests"] = 4
    r, out = _run(tmp_path, d, "--profile", str(b))
    assert check_exit(r) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert any("measured on RTX4090" in w and "H100-SXM" in w for w in info["warnings"])
    assert info["compute"][0]["bundle"]["hardware"] == "RTX4090"


def test_profile_command_checks_flags_and_out_first(tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    _fails(invoke(["profile", "--model", "Llama-3.1-8B", "--out", tmp_path / "b", "--max-tokens", "0"]),
           "--max-tokens")
    _fails(invoke(["profile", "--model", "Llama-3.1-8B", "--out", f, "--device", "cpu"]), "--out")


# 10. options accepted and ignored -> rejected
@pytest.mark.parametrize("how, expect", [
    ("timeline", "output.timeline"), ("plots", "output.plots"), ("retention", "--retention"),
    ("engine_meta_empty", "holds none of vLLM's engine settings"),
])
def test_ignored_options_are_rejected(tmp_path: Path, how: str, expect: str):
    d = small_run_dict()
    extra: list[str] = []
    if how in ("timeline", "plots"):
        d["output"] = {how: True}
    elif how == "retention":
        extra = ["--retention", "ttl_pin"]
    else:
        extra = ["--engine-meta", _mk(tmp_path, "meta.json", "{}")]
    r, _ = _run(tmp_path, d, *extra)
    _fails(r, expect)


# issue 10 CLI item: --compute
def test_compute_flag(tmp_path: Path):
    need_shared()
    d = small_run_dict(instances=[{"name": "g", "hardware": "RTX4090"}], compute={"kind": "profile",
                                                                                 "profile": str(BUNDLE)})
    d["workload"]["num_requests"] = 4
    r, out = _run(tmp_path, d, "--compute", "roofline")
    assert check_exit(r) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["compute"][0]["used"] == "roofline" and "bundle" not in info["compute"][0]
    r, _ = _run(tmp_path, small_run_dict(), "--compute", "profile")
    _fails(r, "--compute profile: no profile bundle")
    r, _ = _run(tmp_path, small_run_dict(), "--compute", "fast")
    _fails(r, "--compute")


# the bug path
def test_internal_error_is_reported_as_a_bug(tmp_path: Path, monkeypatch):
    import frontend.session as session

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(session, "build_instances", broken)
    r, out = _run(tmp_path, small_run_dict())
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert "bug in AstraServe" in r.output and "issue tracker" in r.output
    assert not out.exists()


# 11. streaming and progress
def test_progress_lines_off_a_tty(tmp_path: Path, monkeypatch):
    import frontend.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 0.0)
    r = invoke(["run", _cfg(tmp_path, small_run_dict()), "--out", tmp_path / "o"])
    assert check_exit(r) == 0
    lines = [x for x in r.output.splitlines() if x.startswith("progress: ")]
    assert lines and "requests done, simulated" in lines[-1]


def test_streamed_run_keeps_no_request_records(tmp_path: Path):
    from frontend.config.loader import load_and_resolve
    from frontend.metrics.report import summarize, write_outputs
    from frontend.session import simulate

    cfg = _cfg(tmp_path, small_run_dict())
    res, extra = simulate(load_and_resolve(cfg), stream_dir=tmp_path)
    assert res.requests == [] and res.iterations.rows == [] and len(res.request_log.ttft_ns) == 0
    streamed = summarize(res, extra)
    mem, extra2 = simulate(load_and_resolve(cfg))
    assert len(mem.requests) == 40
    in_memory = summarize(mem, extra2)
    drop = ("wall_s",)
    assert {k: v for k, v in streamed.items() if k not in drop} == {k: v for k, v in in_memory.items() if k not in drop}
    write_outputs(mem, tmp_path / "mem")
    assert (tmp_path / "mem" / "requests.csv").read_bytes() == (tmp_path / "requests.csv").read_bytes()
    assert (tmp_path / "mem" / "iterations.csv").read_bytes() == (tmp_path / "iterations.csv").read_bytes()


# a workload path that is empty or missing names its field (CI found '' ended as "error: .: no such workload file")
@pytest.mark.parametrize("path", ["", "missing.jsonl"])
def test_missing_workload_file_names_its_field(tmp_path: Path, path: str):
    d = small_run_dict()
    d["workload"] = {"kind": "jsonl", "path": path, "num_requests": 6}
    r, _ = _run(tmp_path, d)
    _fails(r, "workload.path")
    d["workload"] = {"kind": "agents", "trace": path or "x/", "num_programs": 2}
    r, _ = _run(tmp_path, d)
    _fails(r, "workload.trace")


# --dump-chakra is staged like --out: a new dump replaces an old one's iterations, a failed run leaves no partial dump
def test_dump_chakra_is_staged(tmp_path: Path):
    dump = tmp_path / "dump"
    r, _ = _run(tmp_path, small_run_dict(), "--dump-chakra", str(dump), "--dump-iterations", "0-2")
    assert check_exit(r) == 0, r.output
    assert sorted(p.name for p in dump.iterdir()) == ["iter0", "iter1", "iter2"]
    r, _ = _run(tmp_path, small_run_dict(), "--dump-chakra", str(dump), "--dump-iterations", "1")
    assert check_exit(r) == 0, r.output
    assert sorted(p.name for p in dump.iterdir()) == ["iter1"]
    bad = small_run_dict()
    bad["workload"] = {"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")}
    r, _ = _run(tmp_path, bad, "--dump-chakra", str(tmp_path / "dump2"), "--dump-iterations", "0")
    assert check_exit(r) == 2
    assert not (tmp_path / "dump2").exists() and not list(tmp_path.glob(".dump2.partial-*"))
