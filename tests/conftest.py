from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASTRASERVE_SHARED", REPO.parent / "shared"))
LSS = SHARED / "data" / "llmservingsim"
SHAREGPT = LSS / "workloads" / "sharegpt-llama-3.1-8b-300-sps10.jsonl"
VLLM_REF = LSS / "validation" / "RTX4090-Llama-3.1-8B" / "vllm"
BUNDLE = LSS / "profiles" / "RTX4090" / "meta-llama" / "Llama-3.1-8B"


def need_shared() -> None:
    if not LSS.is_dir():
        pytest.skip(f"shared reference data not found at {LSS}")


@pytest.fixture
def repo() -> Path:
    return REPO


def small_run_dict(**over) -> dict:
    d = {
        "name": "t",
        "seed": 1,
        "model": "Llama-3.1-8B",
        "instances": [{"name": "g", "hardware": "H100-SXM"}],
        "engine": {"max_num_seqs": 32, "max_num_batched_tokens": 512, "block_size": 16},
        "workload": {"kind": "synthetic", "num_requests": 40, "arrival": {"process": "poisson", "rate_per_s": 50},
                     "prompt_tokens": {"dist": "lognormal", "mean": 300, "sigma": 0.8, "max": 2000},
                     "output_tokens": {"dist": "lognormal", "mean": 40, "sigma": 0.5, "max": 200}},
    }
    for k, v in over.items():
        d[k] = v
    return d
