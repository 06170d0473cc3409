"""Weights in a lower memory tier (placement): HBM freed for the KV cache, streamed every iteration."""

from __future__ import annotations

import pytest

from frontend.config.loader import ConfigError, parse_config, resolve
from frontend.errors import UserError
from frontend.metrics.report import summarize
from frontend.session import simulate
from tests.conftest import small_run_dict

TIER = {"name": "cxl", "kind": "cxl", "capacity_gib": 64, "bw_gbps": 40, "latency_ns": 300, "scope": "instance"}


def _run(fraction: float = 0.0, **over):
    d = small_run_dict(kv={"tiers": [TIER]})
    if fraction:
        d["placement"] = {"weights_tier": "cxl", "weights_fraction": fraction}
    d.update(over)
    return resolve(parse_config(d, "x.yaml"))


def test_offloaded_weights_free_hbm_and_stream_every_iteration():
    base, off = _run().instances[0], _run(0.25).instances[0]
    m = base.model
    emb = 2 * m.vocab_size * m.hidden_size * 2  # untied embedding + LM head, bf16
    assert off.offloaded_weight_bytes_per_npu == int(0.25 * (base.weight_bytes_per_npu - emb))
    assert off.weight_bytes_per_npu == base.weight_bytes_per_npu - off.offloaded_weight_bytes_per_npu
    assert off.num_gpu_blocks > base.num_gpu_blocks
    res, extra = simulate(_run(0.25))
    per_layer = off.offloaded_weight_bytes_per_npu // m.num_layers
    for r in res.iterations.rows[:20]:  # every iteration moved every layer's share over the tier
        assert r[11] > 0  # mem_ns
    inst = res.instances[0]
    plan = type("P", (), {"kv_moves": []})()
    spec = inst.spec_for(plan)
    assert [(t.tier, t.bytes_per_layer) for t in spec.loads] == [("cxl", per_layer)]


def test_more_offloaded_weights_slow_decoding():
    def tpot(f):
        res, extra = simulate(_run(f))
        return summarize(res, extra)["tpot_ms"]["mean"]

    assert tpot(0.0) < tpot(0.1) < tpot(0.4)


def test_placement_errors_name_the_field():
    with pytest.raises(ConfigError, match="placement.weights_tier: 'dram' is not a kv.tiers entry"):
        resolve(parse_config(small_run_dict(kv={"tiers": [TIER]}, placement={"weights_tier": "dram",
                                                                            "weights_fraction": 0.2}), "x.yaml"))
    with pytest.raises(UserError, match="weights_fraction > 0 needs weights_tier"):
        parse_config(small_run_dict(placement={"weights_fraction": 0.2}), "x.yaml")
    small = {**TIER, "capacity_gib": 1}
    with pytest.raises(ConfigError, match="exceed its 1.0 GiB"):
        simulate(resolve(parse_config(small_run_dict(kv={"tiers": [small]}, placement={
            "weights_tier": "cxl", "weights_fraction": 0.5}), "x.yaml")))
