"""Real vLLM benchmark runs (requests.jsonl, timeseries.csv, meta.json) as reference data."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    sched = meta.get("resolved_config", {}).get("scheduler_config", {})
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
    if "enable_chunked_prefill" in sched:
        out["enable_chunked_prefill"] = bool(sched["enable_chunked_prefill"])
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


def load_vllm_requests(ref_dir: Path) -> LatencySet:
    """TTFT = first_token_ts - queued_ts, E2E = last_token_ts - queued_ts, TPOT = (last - first)/(out - 1)."""
    path = Path(ref_dir) / "requests.jsonl"
    if not path.is_file():
        raise ValueError(f"{ref_dir}: no requests.jsonl (expected a vLLM benchmark run directory)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{ref_dir}/requests.jsonl holds no requests")
    q = np.array([r["queued_ts"] for r in rows])
    f = np.array([r["first_token_ts"] for r in rows])
    last = np.array([r["last_token_ts"] for r in rows])
    out = np.array([r["output_toks"] for r in rows])
    multi = out > 1
    return LatencySet(ttft=f - q, tpot=(last[multi] - f[multi]) / (out[multi] - 1), e2e=last - q,
                      finish_s=last - q.min(), output_tokens=out)


def load_sim_requests(run_dir: Path) -> LatencySet:
    if not (Path(run_dir) / "requests.csv").is_file():
        raise ValueError(f"{run_dir}: no requests.csv (expected an `astraserve run` output directory)")
    with (Path(run_dir) / "requests.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "finished"]
    if not rows:
        raise ValueError(f"{run_dir}/requests.csv has no finished requests")
    a = np.array([int(r["arrival_ns"]) for r in rows]) / 1e9
    f = np.array([int(r["first_token_ns"]) for r in rows]) / 1e9
    last = np.array([int(r["finish_ns"]) for r in rows]) / 1e9
    out = np.array([int(r["output_tokens"]) for r in rows])
    multi = out > 1
    return LatencySet(ttft=f - a, tpot=(last[multi] - f[multi]) / (out[multi] - 1), e2e=last - a,
                      finish_s=last - a.min(), output_tokens=out)


def load_timeseries(ref_dir: Path) -> list[dict[str, float]]:
    p = Path(ref_dir) / "timeseries.csv"
    if not p.is_file():
        return []
    with p.open() as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
