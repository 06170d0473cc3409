"""The profiler writes a bundle on CPU for a tiny model; the loader reads it and a run uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from frontend.cli import app

torch = pytest.importorskip("torch")
runner = CliRunner()

TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000, "max_position_embeddings": 4096,
        "torch_dtype": "float32"}


def test_profile_cpu_tiny_then_run(tmp_path: Path):
    model = tmp_path / "tiny.json"
    model.write_text(json.dumps(TINY))
    bundle = tmp_path / "bundle"
    r = runner.invoke(app, ["profile", "--model", str(model), "--device", "cpu", "--dtype", "fp32", "--out", str(bundle),
                            "--max-tokens", "64", "--max-seqs", "8", "--max-kv", "128", "--iters", "1"])
    assert r.exit_code == 0, r.output
    tdir = bundle / "fp32" / "tp1"
    for f in ("dense.csv", "per_sequence.csv", "attention.csv"):
        assert (tdir / f).stat().st_size > 100
    meta = yaml.safe_load((bundle / "fp32" / "meta.yaml").read_text())
    assert meta["architecture"] == "llama" and meta["device"] == "cpu"

    from frontend.compute.batch import BatchShape
    from frontend.compute.profile import ProfileModel
    from frontend.compute.roofline import Roofline
    from frontend.config.hardware import load_hardware
    from frontend.config.loader import CONFIGS
    from frontend.config.models import load_model_spec

    spec = load_model_spec(model)
    pm = ProfileModel(bundle, "fp32", 1, Roofline(spec, load_hardware(CONFIGS / "hardware/RTX4090.yaml"), "fp32"))
    ops = pm.layer_ops(BatchShape(q=[1, 1, 32], ctx=[50, 70, 0], num_sampled=3))
    assert [o.name for o in ops][:4] == ["layernorm", "qkv_proj", "rotary_emb", "attention"]
    assert all(o.duration_ns > 0 for o in ops)

    cfg = {"name": "tiny", "model": str(model), "instances": [{"name": "cpu", "hardware": "RTX4090"}],
           "engine": {"dtype": "fp32", "max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 512},
           "compute": {"kind": "profile", "profile": str(bundle)},
           "workload": {"kind": "synthetic", "num_requests": 10,
                        "prompt_tokens": {"dist": "uniform", "low": 10, "high": 60, "max": 100},
                        "output_tokens": {"dist": "uniform", "low": 2, "high": 10, "max": 20}}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["run", str(p), "--quiet", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["completed"] == 10
