"""The profiler measures moe.csv for a tiny MoE model on CPU; the compute model reads the bundle."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from frontend.cli import app

torch = pytest.importorskip("torch")
runner = CliRunner()

# Qwen3-MoE keys (as in Qwen3-30B-A3B's config.json), shrunk
TINY_MOE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 64,
            "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
            "norm_topk_prob": True, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "vocab_size": 500, "max_position_embeddings": 4096, "torch_dtype": "float32"}


def _profile(tmp_path: Path, cfg: dict, name: str) -> tuple[Path, Path]:
    model = tmp_path / f"{name}.json"
    model.write_text(json.dumps(cfg))
    bundle = tmp_path / f"{name}-bundle"
    r = runner.invoke(app, ["profile", "--model", str(model), "--device", "cpu", "--dtype", "fp32", "--out", str(bundle),
                            "--max-tokens", "16", "--max-seqs", "4", "--max-kv", "32", "--iters", "1"])
    assert r.exit_code == 0, r.output
    return model, bundle


def _load(model: Path, bundle: Path):
    from frontend.compute.profile import ProfileModel
    from frontend.compute.roofline import Roofline
    from frontend.config.hardware import load_hardware
    from frontend.config.loader import CONFIGS
    from frontend.config.models import load_model_spec

    warnings: list[str] = []
    roof = Roofline(load_model_spec(model), load_hardware(CONFIGS / "hardware/RTX4090.yaml"), "fp32")
    return ProfileModel(bundle, "fp32", 1, roof, warn=warnings.append), warnings


def test_forced_routing_activates_exactly_the_requested_experts():
    from frontend.profiler.layer import forced_routing

    for tokens, k, a in [(1, 2, 2), (3, 2, 4), (4, 2, 8), (16, 2, 8), (5, 8, 32), (2, 8, 16)]:
        ids = forced_routing(tokens, k, a)
        assert ids.shape == (tokens, k)
        assert set(ids.flatten().tolist()) == set(range(a))
        assert all(len(set(row)) == k for row in ids.tolist())  # a token's k experts are distinct
        loads = torch.bincount(ids.flatten(), minlength=a)
        assert int(loads.max() - loads.min()) <= 1  # balanced
    for tokens, k, a in [(1, 2, 4), (2, 4, 2)]:
        with pytest.raises(ValueError):
            forced_routing(tokens, k, a)


def test_moe_op_matches_a_reference_moe_block():
    """The timed block computes a real sparse MoE (forced routing, renormalised router weights, shared expert)."""
    import torch.nn.functional as F

    from frontend.config.models import ModelSpec
    from frontend.profiler.layer import Layer, forced_routing

    spec = ModelSpec(name="t", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                     intermediate_size=64, vocab_size=100, num_experts=8, experts_per_token=2,
                     moe_intermediate_size=16, shared_expert_intermediate_size=24, model_type="qwen3_moe")
    layer = Layer(spec, "cpu", torch.float32)
    assert layer.ops["moe"] == ["moe"] and "gate_up_proj" not in layer.ops["dense"]
    tokens, a = 5, 4
    x = torch.randn(tokens, 32)
    run = layer.moe_op(tokens, a, x)
    ids = forced_routing(tokens, 2, a)
    probs = torch.softmax(F.linear(x, layer.w_router), dim=-1)
    wts = probs.gather(1, ids)
    wts = wts / wts.sum(-1, keepdim=True)
    ref = torch.zeros_like(x)
    for t in range(tokens):
        for c in range(2):
            e = int(ids[t, c])
            h = F.linear(x[t], layer.w_exp_gate_up[e])
            ref[t] += wts[t, c] * F.linear(F.silu(h[:16]) * h[16:], layer.w_exp_down[e])
    h = F.linear(x, layer.w_sh_gate_up)
    ref += F.linear(F.silu(h[:, :24]) * h[:, 24:], layer.w_sh_down)
    torch.testing.assert_close(run(), ref)


def test_profile_tiny_moe_writes_moe_csv_and_loads(tmp_path: Path):
    model, bundle = _profile(tmp_path, TINY_MOE, "tiny-moe")
    vdir = bundle / "fp32"
    tdir = vdir / "tp1"
    meta = yaml.safe_load((vdir / "meta.yaml").read_text())
    assert meta["architecture"] == "qwen3_moe"
    assert meta["moe"]["experts"] == 8 and meta["moe"]["experts_per_token"] == 2
    assert "round-robin" in meta["moe"]["routing"]

    with (tdir / "moe.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["tokens", "activated_experts", "time_us"]
    grid = [(int(r["tokens"]), int(r["activated_experts"])) for r in rows]
    # tokens doubling to --max-tokens, activated experts doubling from k=2 to E=8, capped at min(E, tokens*k)
    assert grid == [(1, 2), (2, 2), (2, 4), (4, 2), (4, 4), (4, 8), (8, 2), (8, 4), (8, 8), (16, 2), (16, 4), (16, 8)]
    assert all(float(r["time_us"]) > 0 for r in rows)

    with (tdir / "dense.csv").open() as f:
        dense_ops = {r["layer"] for r in csv.DictReader(f)}
    assert dense_ops == {"embedding", "layernorm", "qkv_proj", "qk_norm", "rotary_emb", "o_proj", "final_layernorm"}

    from frontend.compute.batch import BatchShape

    pm, warnings = _load(model, bundle)
    assert pm.moe is not None and sorted(pm.moe) == [2, 4, 8]
    assert not [w for w in warnings if "not in architecture" in w], warnings
    for t in (1, 3, 8, 16):
        assert pm.moe_ns(t) > 0
    ops = pm.layer_ops(BatchShape(q=[1, 1, 8], ctx=[10, 20, 0], num_sampled=3))
    assert [o.name for o in ops] == ["layernorm", "qkv_proj", "qk_norm", "rotary_emb", "attention", "o_proj",
                                     "layernorm", "moe"]
    assert all(o.duration_ns > 0 for o in ops)
    assert not warnings, warnings


def test_profile_dense_qwen3_times_qk_norm_and_has_no_moe_csv(tmp_path: Path):
    cfg = {k: v for k, v in TINY_MOE.items() if k not in ("num_experts", "num_experts_per_tok",
                                                           "moe_intermediate_size", "norm_topk_prob")}
    cfg.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    model, bundle = _profile(tmp_path, cfg, "tiny-qwen3")
    assert yaml.safe_load((bundle / "fp32" / "meta.yaml").read_text())["architecture"] == "qwen3"
    assert not (bundle / "fp32" / "tp1" / "moe.csv").exists()
    pm, warnings = _load(model, bundle)
    assert pm.moe is None and "qk_norm" in pm.dense and "gate_up_proj" in pm.dense
    assert not warnings, warnings
