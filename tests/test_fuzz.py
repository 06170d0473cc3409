"""Property-based fuzzing of every input the CLI reads (hypothesis).

Mutations of every example config, of workloads in each supported format (flat JSONL, session JSONL,
DAG JSONL, tool files), of reference sets and run directories given to `validate`, of profile bundles,
and fake ASTRA-sim binaries. The invariant (tests/fuzz_harness.py): exit 0 with valid, consistent
outputs, or exit 2 with one line naming where; never a traceback, never a hang. Work per input is
bounded (few requests, short token lengths). The default example counts keep this file to seconds;
ASTRASERVE_FUZZ_EXAMPLES=N (with the `slow` marker's tests) runs N examples per property.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BUNDLE, REPO, need_shared
from tests.fuzz_harness import check_exit, check_run_outputs, invoke

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))
SLOW_N = int(os.environ.get("ASTRASERVE_FUZZ_EXAMPLES", "0"))
slow = pytest.mark.skipif(not SLOW_N, reason="set ASTRASERVE_FUZZ_EXAMPLES=N for the long fuzz runs")


def fast(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def long():
    return settings(max_examples=max(1, SLOW_N), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---------------------------------------------------------------- run files

BAD_VALUES = [-1, 0, 1, 2, 3, 0.5, -0.5, 10**9, 2**63, 2**70, 1e308, float("inf"), float("nan"), "x", "", None,
              True, False, [], {}, [1], {"a": 1}, "Ring", "H100-SXM", "no/such/file.json", "poisson"]
values = st.one_of(st.sampled_from(BAD_VALUES), st.integers(-3, 5000), st.floats(allow_nan=True),
                   st.text(max_size=5))


def _absolutize(d: dict, base: Path) -> None:
    """Paths in an example are relative to its file; the mutated copy lives elsewhere."""
    for holder, key in ((d.get("workload"), "path"), (d.get("workload"), "trace"), (d.get("compute"), "profile"),
                        (d, "engine_meta")):
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and not Path(holder[key]).is_absolute():
            holder[key] = str((base / holder[key]).resolve())


def small_example(path: Path) -> dict:
    """The example with its work bounded: a handful of requests / programs, short outputs."""
    d = yaml.safe_load(path.read_text())
    _absolutize(d, path.parent)
    wl = d.setdefault("workload", {})
    kind = wl.get("kind", "synthetic")
    if kind == "agents":
        wl.update(num_programs=3, turns_min=2, turns_max=3, fanout=2, num_agents=12, steps=2)
    else:
        # pipeline-parallel instances build a graph per micro-batch and stage: fewer requests keep them quick
        wl["num_requests"] = 2 if any(i.get("pp", 1) > 1 for i in d.get("instances", [])) else 6
    for key, cap in (("output_tokens", 12), ("prompt_tokens", 600), ("tool_output_tokens", 300)):
        if isinstance(wl.get(key), dict):
            wl[key]["max"] = cap
            wl[key]["min"] = min(wl[key].get("min", 1), cap)
    for inst in d.get("instances", []):
        inst["replicas"] = min(inst.get("replicas", 1), 2)
    return d


BASES = {p.name: small_example(p) for p in EXAMPLES}
CAPS = {"num_requests": 8, "num_programs": 4, "num_agents": 16, "steps": 2, "turns_max": 4, "turns_min": 4,
        "fanout": 3, "replicas": 3, "max": 600, "value": 600, "mean": 600, "system_prompt_tokens": 4096,
        "shared_prefix_tokens": 4096, "tp": 16, "pp": 8, "high": 512, "low": 512, "min": 512}


def _bound_work(node, key=None):
    """Keep any mutated count small: the fuzz checks answers, not throughput."""
    if isinstance(node, dict):
        for k, v in list(node.items()):
            if k in CAPS and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v > CAPS[k]:
                node[k] = CAPS[k]
            else:
                _bound_work(v, k)
    elif isinstance(node, list):
        for v in node:
            _bound_work(v, key)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated_config(draw):
    name = draw(st.sampled_from(sorted(BASES)))
    d = copy.deepcopy(BASES[name])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = draw(st.sampled_from(paths))
        parent = _get(d, path[:-1])
        op = draw(st.sampled_from(["set", "set", "set", "delete", "unknown_key"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "unknown_key" and isinstance(parent, dict):
            key = draw(st.sampled_from(["bogus", "max_num_seq", "tp ", "Replicas"]))
            parent[key] = copy.deepcopy(draw(values))  # never the shared BAD_VALUES object itself
        else:
            parent[path[-1]] = copy.deepcopy(draw(values))  # never the shared BAD_VALUES object itself
    _bound_work(d)
    return name, d


def _run_config(tmp: Path, d, extra: tuple[str, ...] = ()) -> tuple[int, Path]:
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(d, allow_unicode=True) if not isinstance(d, str) else d)
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    r = invoke(["run", cfg, "--quiet", "--out", out, *extra])
    code = check_exit(r, f"run {cfg.read_text()[:400]}")
    if code == 0:
        check_run_outputs(out, cfg.read_text()[:400])
    return code, out


@fast(25)
@given(case=mutated_config())
def test_fuzz_example_configs(tmp_path_factory, case):
    name, d = case
    _run_config(tmp_path_factory.mktemp("cfg"), d)


@slow
@long()
@given(case=mutated_config())
def test_fuzz_example_configs_long(tmp_path_factory, case):
    _run_config(tmp_path_factory.mktemp("cfg"), case[1])


def test_every_example_runs_small(tmp_path: Path):
    """The unmutated (bounded) examples all succeed: the mutations start from working inputs."""
    for name, d in BASES.items():
        if "validate-" in name:
            need_shared()
        (tmp_path / name).mkdir()
        code, _ = _run_config(tmp_path / name, d)
        assert code == 0, name


# ---------------------------------------------------------------- catalog entries (hardware, model configs)

CATALOG = {"hardware": REPO / "configs" / "hardware" / "H100-SXM.yaml",
           "models": REPO / "configs" / "models" / "Llama-3.1-8B.json"}


@st.composite
def mutated_catalog(draw):
    kind = draw(st.sampled_from(sorted(CATALOG)))
    src = CATALOG[kind]
    d = yaml.safe_load(src.read_text()) if kind == "hardware" else json.loads(src.read_text())
    if draw(st.integers(0, 7)) == 0:
        return kind, draw(st.sampled_from(["", "[", "{a: [1,", "- 1\n- 2\n", "\xff", "null", "42"]))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = draw(st.sampled_from(paths))
        parent = _get(d, path[:-1])
        if draw(st.integers(0, 3)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(values))  # never the shared BAD_VALUES object itself
    text = yaml.safe_dump(d) if kind == "hardware" else json.dumps(d)
    return kind, text


def _catalog_case(tmp: Path, case) -> int:
    kind, text = case
    f = tmp / ("hw.yaml" if kind == "hardware" else "model.json")
    f.write_text(text)
    d = _small_cfg()
    if kind == "hardware":
        d["instances"][0]["hardware"] = str(f)
    else:
        d["model"] = str(f)
    code, _ = _run_config(tmp, d)
    return code


@fast(20)
@given(case=mutated_catalog())
def test_fuzz_catalog_entries(tmp_path_factory, case):
    _catalog_case(tmp_path_factory.mktemp("cat"), case)


@slow
@long()
@given(case=mutated_catalog())
def test_fuzz_catalog_entries_long(tmp_path_factory, case):
    _catalog_case(tmp_path_factory.mktemp("cat"), case)


# ---------------------------------------------------------------- command-line flags

FLAG_VALUES = {
    "--num-requests": ["0", "-5", "3", "1e3", "x", "99999999999"],
    "--seed": ["-1", "0", "7", "x", str(2**64)],
    "--backend": ["embedded", "astra-sim", "gpu", ""],
    "--compute": ["roofline", "profile", "fast"],
    "--dump-iterations": ["0", "5-2", "a", "-1", "0-99999999", ",", "1,2"],
    "--dump-chakra": ["DIR", "FILE"],
    "--workload": ["MISSING", "FILE", "DIR"],
    "--profile": ["MISSING", "FILE", "DIR"],
    "--engine-meta": ["MISSING", "FILE", "DIR"],
    "--router": ["round_robin", "nope"],
    "--scheduling": ["fcfs", "plas", "x"],
    "--retention": ["lru", "x"],
    "--prefetch": ["none", "x"],
    "--out": ["FILE", "DIR"],
}


@st.composite
def flag_sets(draw):
    flags = draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), min_size=1, max_size=3, unique=True))
    return [(f, draw(st.sampled_from(FLAG_VALUES[f]))) for f in flags]


def _flags_case(tmp: Path, flags) -> int:
    (tmp / "FILE").write_text("not what anyone expects\n")
    (tmp / "DIR").mkdir(exist_ok=True)
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(_small_cfg()))
    args = ["run", cfg, "--quiet"]
    if not any(f == "--out" for f, _ in flags):
        args += ["--out", tmp / "out"]
    for f, v in flags:
        args += [f, str(tmp / v) if v in ("FILE", "DIR", "MISSING") else v]
    r = invoke(args)
    exc = r.exception
    if isinstance(exc, SystemExit) and r.exit_code == 2 and "Usage:" in r.output:
        return 2  # rejected by the argument parser itself (a non-integer for an integer flag)
    return check_exit(r, f"flags {flags}")


@fast(25)
@given(flags=flag_sets())
def test_fuzz_flags(tmp_path_factory, flags):
    _flags_case(tmp_path_factory.mktemp("fl"), flags)


@slow
@long()
@given(flags=flag_sets())
def test_fuzz_flags_long(tmp_path_factory, flags):
    _flags_case(tmp_path_factory.mktemp("fl"), flags)


# ---------------------------------------------------------------- workloads

def _flat_line(i: int) -> dict:
    return {"input_toks": 20 + 7 * i, "output_toks": 3 + i % 4, "arrival_time_ns": 1_000_000 * i}


def _session_line(i: int) -> dict:
    return {"session_id": f"s{i}", "arrival_time_ns": 5_000_000 * i, "sub_requests": [
        {"input_toks": 30, "output_toks": 4, "tool_duration_ns": 2_000_000},
        {"input_toks": 50, "output_toks": 3}]}


def _dag_line(i: int) -> dict:
    return {"program_id": f"p{i}", "arrival_time_ns": 1_000_000 * i, "turns": [
        {"id": "a", "new_tokens": 40, "output_tokens": 3},
        {"id": "b", "new_tokens": 10, "output_tokens": 2, "parents": [{"turn": "a", "tool": "t", "delay_ns": 1000}],
         "context_parent": "a"}]}


FORMATS = {"flat": _flat_line, "session": _session_line, "dag": _dag_line}
JSON_BAD = [None, -1, 0, 1.5, 2**70, 1e300, "NaN", "x", [], {}, True, [1, "a"], "Infinity"]
RAW_BAD = [b"NaN", b"Infinity", b"-Infinity", b"\xff\xfe\x00", b"{", b"[]", b"{}", b"null", b'"x"', b"1e999",
           b'{"input_toks": NaN, "output_toks": 1, "arrival_time_ns": 0}',
           b'{"input_toks": 5, "output_toks": Infinity, "arrival_time_ns": 0}', b"[" * 5000]


@st.composite
def mutated_workload(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    lines: list[bytes] = []
    objs = [FORMATS[fmt](i) for i in range(draw(st.integers(1, 4)))]
    for _ in range(draw(st.integers(0, 3))):
        o = draw(st.sampled_from(objs))
        paths = [p for p in _paths(o) if p]
        path = draw(st.sampled_from(paths))
        parent = _get(o, path[:-1])
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            # a copy: a later mutation may reach into an inserted list or dict, which must not change JSON_BAD
            parent[path[-1]] = copy.deepcopy(draw(st.one_of(st.sampled_from(JSON_BAD), st.integers(-5, 10**6))))
    for o in objs:
        lines.append(json.dumps(o).encode())
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(RAW_BAD)))
    if draw(st.integers(0, 9)) == 0:
        lines = []
    return fmt, b"\n".join(lines) + b"\n"


def _small_cfg() -> dict:
    return {"name": "f", "seed": 1, "model": "Llama-3.1-8B", "instances": [{"name": "g", "hardware": "H100-SXM"}],
            "engine": {"max_num_seqs": 16, "max_num_batched_tokens": 512},
            "workload": {"kind": "synthetic", "num_requests": 4}}


def _run_workload(tmp: Path, fmt: str, data: bytes) -> int:
    w = tmp / "w.jsonl"
    w.write_bytes(data)
    d = _small_cfg()
    if fmt == "dag":
        d["workload"] = {"kind": "agents", "trace": str(w)}
        d["engine"]["num_gpu_blocks_override"] = 400
        code, _ = _run_config(tmp, d)
    else:
        code, _ = _run_config(tmp, d, ("--workload", str(w)))
    return code


@fast(25)
@given(case=mutated_workload())
def test_fuzz_workloads(tmp_path_factory, case):
    _run_workload(tmp_path_factory.mktemp("wl"), *case)


@slow
@long()
@given(case=mutated_workload())
def test_fuzz_workloads_long(tmp_path_factory, case):
    _run_workload(tmp_path_factory.mktemp("wl"), *case)


# ---------------------------------------------------------------- reference sets for validate

def _reference(tmp: Path, n: int = 8) -> tuple[Path, Path]:
    """A run of n requests and a matching fabricated vLLM reference (vllm/ inside a set directory)."""
    w = tmp / "w.jsonl"
    w.write_text("".join(json.dumps(_flat_line(i)) + "\n" for i in range(n)))
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(_small_cfg()))
    run = tmp / "run"
    assert check_exit(invoke(["run", cfg, "--quiet", "--out", run, "--workload", w])) == 0
    ref = tmp / "set" / "vllm"
    ref.mkdir(parents=True)
    rows = []
    for i in range(n):
        ln = _flat_line(i)
        q = 100.0 + i * 0.001
        rows.append({"request_id": f"bench-{i}", "input_toks": ln["input_toks"], "output_toks": ln["output_toks"],
                     "queued_ts": q, "first_token_ts": q + 0.02, "last_token_ts": q + 0.02 + 0.01 * ln["output_toks"]})
    (ref / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ref / "timeseries.csv").write_text("t,prompt_throughput,gen_throughput,running,waiting,kv_cache_pct\n"
                                        "1.0,300.0,20.0,3,0,1.5\n2.0,0.0,4.0,0,0,0.0\n")
    (ref / "meta.json").write_text("{}")
    return run, tmp / "set"


REF_FILES = ["vllm/requests.jsonl", "vllm/timeseries.csv", "run/requests.csv", "run/iterations.csv",
             "run/summary.json"]


@st.composite
def reference_mutation(draw):
    target = draw(st.sampled_from(REF_FILES))
    op = draw(st.sampled_from(["drop_line", "truncate", "replace_cell", "empty", "garbage", "delete", "drop_column",
                               "same_times", "one_token"]))
    k = draw(st.integers(0, 7))
    val = draw(st.sampled_from(['"x"', "NaN", "-1", "1e999", "", "null", "0", "1.5", "Infinity", "\xff"]))
    return target, op, k, val


def _mutate_file(p: Path, op: str, k: int, val: str) -> None:
    if op == "delete":
        p.unlink()
        return
    text = p.read_text(errors="replace")
    lines = text.splitlines()
    if op == "empty":
        p.write_text("")
    elif op == "garbage":
        p.write_bytes(b"\xff\x00garbage,,,\n" + text.encode()[: len(text) // 2])
    elif op == "truncate":
        p.write_text(text[: max(1, len(text) * k // 8)])
    elif op == "drop_line" and lines:
        del lines[min(k, len(lines) - 1)]
        p.write_text("\n".join(lines) + "\n")
    elif op == "drop_column" and lines:
        if p.suffix == ".jsonl":
            p.write_text("".join(json.dumps({kk: vv for j, (kk, vv) in enumerate(json.loads(ln).items()) if j != k % 6})
                                 + "\n" for ln in lines))
        else:
            cut = [",".join(c for j, c in enumerate(ln.split(",")) if j != k % 4) for ln in lines]
            p.write_text("\n".join(cut) + "\n")
    elif op in ("same_times", "one_token") and p.name == "requests.jsonl":
        rows = [json.loads(ln) for ln in lines]
        for r in rows:
            if op == "same_times":
                r["first_token_ts"] = r["last_token_ts"] = r["queued_ts"] = 5.0
            else:
                r["output_toks"] = 1
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif lines:
        i = min(k, len(lines) - 1)
        if p.suffix == ".jsonl":
            lines[i] = lines[i].replace('"queued_ts": ', f'"queued_ts": {val}, "x": ', 1) if k % 2 else \
                lines[i].replace("100.", f"{val}", 1)
        else:
            cells = lines[i].split(",")
            cells[k % len(cells)] = val
            lines[i] = ",".join(cells)
        p.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def clean_reference(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("ref"))


def _validate_case(tmp: Path, clean: tuple[Path, Path], case) -> int:
    run0, set0 = clean
    shutil.copytree(run0, tmp / "run")
    shutil.copytree(set0, tmp / "set")
    target, op, k, val = case
    base = tmp / "set" if target.startswith("vllm/") else tmp
    _mutate_file(base / target, op, k, val)
    ref = tmp / "set" if k % 2 else tmp / "set" / "vllm"
    r = invoke(["validate", "--run", tmp / "run", "--reference", ref, "--no-plots"])
    code = check_exit(r, f"validate after {case}")
    if code == 0:
        res = json.loads((tmp / "run" / "validate.json").read_text(),
                         parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
        assert res["requests"]["sim"] == res["requests"]["real"]
    return code


@fast(20)
@given(case=reference_mutation())
def test_fuzz_reference_sets(tmp_path_factory, clean_reference, case):
    _validate_case(tmp_path_factory.mktemp("v"), clean_reference, case)


@slow
@long()
@given(case=reference_mutation())
def test_fuzz_reference_sets_long(tmp_path_factory, clean_reference, case):
    _validate_case(tmp_path_factory.mktemp("v"), clean_reference, case)


# ---------------------------------------------------------------- profile bundles

BUNDLE_FILES = ["bf16/meta.yaml", "bf16/tp1/dense.csv", "bf16/tp1/per_sequence.csv", "bf16/tp1/attention.csv"]


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """The RTX4090 bundle's tables (without the large skew files)."""
    need_shared()
    d = tmp_path_factory.mktemp("bundle") / "Llama-3.1-8B"
    for f in BUNDLE_FILES:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLE / f, d / f)
    return d


@st.composite
def bundle_mutation(draw):
    return (draw(st.sampled_from(BUNDLE_FILES)),
            draw(st.sampled_from(["drop_line", "truncate", "replace_cell", "empty", "garbage", "delete",
                                  "drop_column", "duplicate"])),
            draw(st.integers(0, 40)), draw(st.sampled_from(["x", "nan", "-1", "inf", "", "1e400", "0", ": [", "2.5"])))


def _bundle_case(tmp: Path, bundle: Path, case) -> int:
    b = tmp / "b"
    shutil.copytree(bundle, b)
    f, op, k, val = case
    p = b / f
    if op == "duplicate" and p.suffix == ".csv":
        lines = p.read_text().splitlines()
        row = lines[min(1 + k, len(lines) - 1)].split(",")
        row[-1] = str(float(row[-1]) + 1.0) if row[-1] and row[-1][0].isdigit() else "1"
        p.write_text("\n".join([*lines, ",".join(row)]) + "\n")
    elif p.suffix == ".yaml" and op == "replace_cell":
        p.write_text(p.read_text().replace("architecture: llama", f"architecture: {val}"))
    else:
        _mutate_file(p, op, k, val)
    d = _small_cfg()
    d["instances"] = [{"name": "g", "hardware": "RTX4090"}]
    code, _ = _run_config(tmp, d, ("--profile", str(b)))
    return code


@fast(10)
@given(case=bundle_mutation())
def test_fuzz_profile_bundles(tmp_path_factory, small_bundle, case):
    _bundle_case(tmp_path_factory.mktemp("pb"), small_bundle, case)


@slow
@long()
@given(case=bundle_mutation())
def test_fuzz_profile_bundles_long(tmp_path_factory, small_bundle, case):
    _bundle_case(tmp_path_factory.mktemp("pb"), small_bundle, case)


# ---------------------------------------------------------------- fake ASTRA-sim binaries

FAKE_BINARIES = {
    "exit1": "echo boom >&2; exit 1",
    "silent": "exit 0",
    "zero_cycles": 'echo "sys[0] finished, 0 cycles"; echo "sys[1] finished, 0 cycles"',
    "one_rank": 'echo "sys[0] finished, 5000 cycles"',
    "garbage": "head -c 3000 /dev/urandom | tr -dc 'a-z[]0-9 ,' ",
    "huge": 'echo "sys[0] finished, 99999999999999999999999 cycles"; echo "sys[1] finished, 99999999999999999999999 cycles"',
    "negative": 'echo "sys[0] finished, -5 cycles"; echo "sys[1] finished, -5 cycles"',
    "extra_rank": 'for r in 0 1 2 3 4 5 6 7 8; do echo "sys[$r] finished, 100000000 cycles"; done',
    "sleeps": "sleep 30",
    "killed": "kill -9 $$",
    "not_executable": None,
}


@pytest.mark.parametrize("kind", sorted(FAKE_BINARIES))
def test_fake_astrasim_binaries(tmp_path: Path, kind: str, monkeypatch):
    monkeypatch.delenv("ASTRA_SIM_BIN", raising=False)
    b = tmp_path / "fake_astrasim"
    body = FAKE_BINARIES[kind]
    b.write_text("#!/bin/sh\n" + (body or "exit 0") + "\n")
    if body is not None:
        b.chmod(b.stat().st_mode | stat.S_IEXEC)
    d = _small_cfg()
    d["workload"]["num_requests"] = 2
    d["backend"] = {"kind": "astra-sim", "astra_sim": {"binary": str(b), "timeout_s": 1}}
    code, out = _run_config(tmp_path, d)
    if kind != "extra_rank":  # 1e8 cycles per rank is a plausible (slow) answer
        assert code == 2, kind
