"""Real vLLM benchmark runs (requests.jsonl, timeseries.csv, meta.json) as reference data."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frontend.errors import UserError

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "auto": "bf16"}


def engine_from_meta(meta_path: Path) -> dict[str, Any]:
    """Engine settings of a vLLM run, as an `engine:` override of a run file."""
    from frontend.config.loader import ConfigError

    try:
        meta = json.loads(Path(meta_path).read_text())
    except OSError as e:
        raise ConfigError(f"--engine-meta {meta_path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--engine-meta {meta_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"--engine-meta {meta_path}: expected a vLLM benchmark meta.json object")
    kw = meta.get("engine_kwargs", {})
    kv = meta.get("kv_cache", {})
    rc = meta.get("resolved_config", {})
    sched = rc.get("scheduler_config", {}) if isinstance(rc, dict) else None
    for key, v in (("engine_kwargs", kw), ("kv_cache", kv), ("resolved_config.scheduler_config", sched)):
        if not isinstance(v, dict):
            raise ConfigError(f"--engine-meta {meta_path}: {key!r} must be an object, got {type(v).__name__}")
    try:
        out = _engine_fields(kw, kv, sched)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"--engine-meta {meta_path}: a setting is not a number ({e})") from None
    if not out:
        raise ConfigError(f"--engine-meta {meta_path}: holds none of vLLM's engine settings (engine_kwargs, "
                          "kv_cache, resolved_config.scheduler_config); is it a benchmark run's meta.json?")
    return out


def _engine_fields(kw: dict[str, Any], kv: dict[str, Any], sched: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        if kw.get(key) is not None:
            out[key] = int(kw[key])
    if kv.get("block_size"):
        out["block_size"] = int(kv["block_size"])
    if kv.get("gpu_memory_utilization"):
        out["gpu_memory_utilization"] = float(kv["gpu_memory_utilization"])
    if kv.get("enable_prefix_caching") is not None:
        out["enable_prefix_caching"] = bool(kv["enable_prefix_caching"])
    if kv.get("num_gpu_blocks"):
        out["num_gpu_blocks_override"] = int(kv["num_gpu_blocks"])
    if "scheduler_reserve_full_isl" in sched:
        out["scheduler_reserve_full_isl"] = bool(sched["scheduler_reserve_full_isl"])
    if "async_scheduling" in sched:
        out["async_scheduling"] = bool(sched["async_scheduling"])
    if "enable_chunked_prefill" in sched:
        out["enable_chunked_prefill"] = bool(sched["enable_chunked_prefill"])
    if kw.get("enforce_eager") is not None:
        out["enforce_eager"] = bool(kw["enforce_eager"])
    if kw.get("dtype") in _DTYPES:
        out["dtype"] = _DTYPES[kw["dtype"]]
    return out


@dataclass
class LatencySet:
    """Per-request latencies in seconds."""

    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    finish_s: np.ndarray  # completion times from the run's start
    output_tokens: np.ndarray


class ReferenceError_(UserError):
    """A reference set or a run directory given to `validate` that cannot be compared; names file:line."""


def resolve_reference_dir(path: Path) -> Path:
    """A vLLM run directory (requests.jsonl) given itself or as a reference set holding it in vllm/."""
    path = Path(path)
    if (path / "requests.jsonl").is_file():
        return path
    if (path / "vllm" / "requests.jsonl").is_file():
        return path / "vllm"
    if not path.is_dir():
        raise ReferenceError_(f"--reference {path}: no such directory")
    raise ReferenceError_(f"--reference {path}: no requests.jsonl here or in {path / 'vllm'} (expected a vLLM "
                          "benchmark run directory or a reference set holding one in vllm/)")


def _num(row: dict[str, Any], key: str, where: str, integer: bool = False) -> float:
    if key not in row:
        raise ReferenceError_(f"{where}: missing field {key!r}")
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ReferenceError_(f"{where}: field {key!r} must be a finite number, got {v!r}")
    if integer and (v != int(v) or v < 0):
        raise ReferenceError_(f"{where}: field {key!r} must be a non-negative integer, got {v!r}")
    return float(v)


@dataclass
class RefRequests:
    latency: LatencySet
    tokens: list[tuple[int, int]]  # (input, output) per request


def load_vllm_requests(ref_dir: Path) -> LatencySet:
    return load_vllm_reference(ref_dir).latency


def load_vllm_reference(ref_dir: Path, limit: int | None = None) -> RefRequests:
    """TTFT = first_token_ts - queued_ts, E2E = last_token_ts - queued_ts, TPOT = (last - first)/(out - 1)."""
    from frontend.workload.jsonl import WorkloadError, parse_json_line

    path = Path(ref_dir) / "requests.jsonl"
    if not path.is_file():
        raise ReferenceError_(f"{ref_dir}: no requests.jsonl (expected a vLLM benchmark run directory)")
    q, f, last, out, tokens = [], [], [], [], []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ReferenceError_(f"{path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if limit is not None and len(q) >= limit:
            break
        where = f"{path}:{lineno}"
        try:
            row = parse_json_line(line, where)
        except WorkloadError as e:
            raise ReferenceError_(str(e)) from None
        if not isinstance(row, dict):
            raise ReferenceError_(f"{where}: each line must be a JSON object")
        qt, ft, lt = (_num(row, k, where) for k in ("queued_ts", "first_token_ts", "last_token_ts"))
        o = int(_num(row, "output_toks", where, integer=True))
        i = int(_num(row, "input_toks", where, integer=True)) if "input_toks" in row else -1
        if o < 1:
            raise ReferenceError_(f"{where}: output_toks must be >= 1, got {o}")
        if not qt <= ft <= lt:
            raise ReferenceError_(f"{where}: timestamps must satisfy queued_ts <= first_token_ts <= last_token_ts "
                                  f"(got {qt}, {ft}, {lt})")
        q.append(qt)
        f.append(ft)
        last.append(lt)
        out.append(o)
        tokens.append((i, o))
    if not q:
        raise ReferenceError_(f"{path}: holds no requests")
    qa, fa, la, oa = np.array(q), np.array(f), np.array(last), np.array(out)
    multi = oa > 1
    lat = LatencySet(ttft=fa - qa, tpot=(la[multi] - fa[multi]) / (oa[multi] - 1), e2e=la - qa,
                     finish_s=la - qa.min(), output_tokens=oa)
    return RefRequests(lat, tokens)


SIM_COLUMNS = ("arrival_ns", "first_token_ns", "finish_ns", "input_tokens", "output_tokens", "status")


@dataclass
class SimRequests:
    latency: LatencySet
    tokens: list[tuple[int, int]]  # (input, output) of every request, finished or not
    total: int


def load_sim_requests(run_dir: Path) -> LatencySet:
    return load_sim_run(run_dir).latency


def load_sim_run(run_dir: Path) -> SimRequests:
    """A run directory's requests, checked complete against its summary.json (a truncated run is an error)."""
    run_dir = Path(run_dir)
    path = run_dir / "requests.csv"
    if not path.is_file():
        raise ReferenceError_(f"{run_dir}: no requests.csv (expected an `astraserve run` output directory)")
    a, f, last, out, tokens = [], [], [], [], []
    total = 0
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SIM_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReferenceError_(f"{path}: missing column(s) {missing}")
            for lineno, r in enumerate(reader, 2):
                total += 1
                try:
                    inp, o = int(r["input_tokens"]), int(r["output_tokens"])
                    tokens.append((inp, o))
                    if r["status"] != "finished":
                        continue
                    ai, fi, li = int(r["arrival_ns"]), int(r["first_token_ns"]), int(r["finish_ns"])
                    # latencies from the engine core's queue, as vLLM's queued_ts; older runs: from arrival
                    ai = max(ai, int(r.get("queued_ns") or -1))
                except (TypeError, ValueError):
                    raise ReferenceError_(f"{path}:{lineno}: a cell is not an integer (truncated or edited file?)") from None
                if not 0 <= ai <= fi <= li or o < 1:
                    raise ReferenceError_(f"{path}:{lineno}: inconsistent times or tokens for a finished request")
                a.append(ai)
                f.append(fi)
                last.append(li)
                out.append(o)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReferenceError_(f"{path}: not a readable CSV ({e})") from None
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            expect = json.loads(summary.read_text()).get("requests")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise ReferenceError_(f"{summary}: not a valid run summary") from None
        if isinstance(expect, int) and expect != total:
            raise ReferenceError_(f"{path}: holds {total} requests but {summary.name} counts {expect}: the run's "
                                  "outputs are truncated or mixed with another run's")
    if not a:
        raise ReferenceError_(f"{path}: has no finished requests")
    aa, fa, la = (np.array(x, dtype=np.int64) / 1e9 for x in (a, f, last))
    oa = np.array(out)
    multi = oa > 1
    lat = LatencySet(ttft=fa - aa, tpot=(la[multi] - fa[multi]) / (oa[multi] - 1), e2e=la - aa,
                     finish_s=la - aa.min(), output_tokens=oa)
    return SimRequests(lat, tokens, total)


def load_timeseries(ref_dir: Path, notes: list[str] | None = None) -> list[dict[str, float]]:
    """timeseries.csv rows as floats (optional file); a row with a non-number names file:line."""
    p = Path(ref_dir) / "timeseries.csv"
    if not p.is_file():
        return []
    out = []
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "t" not in cols:
                if notes is not None:
                    notes.append(f"{p}: no 't' column; the time series is not compared")
                return []
            for lineno, r in enumerate(reader, 2):
                row = {}
                for k, v in r.items():
                    if k is None:
                        raise ReferenceError_(f"{p}:{lineno}: more cells than columns")
                    try:
                        x = float(v) if v not in (None, "") else math.nan
                    except ValueError:
                        raise ReferenceError_(f"{p}:{lineno}: column {k!r} is not a number ({v!r})") from None
                    row[k] = x
                if not math.isfinite(row["t"]):
                    raise ReferenceError_(f"{p}:{lineno}: column 't' must be a finite number")
                out.append(row)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReferenceError_(f"{p}: not a readable CSV ({e})") from None
    return out
