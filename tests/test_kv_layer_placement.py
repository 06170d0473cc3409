"""Per-layer KV placement (issue 16 item 2, KV half): patterns, capacity at load, and the per-layer streams."""

from __future__ import annotations

import pytest

from chakra_gen.graph import MEM_LOAD, MEM_STORE
from frontend.config.loader import ConfigError, parse_config, resolve
from frontend.instance.kv_layers import parse_layers
from frontend.session import simulate
from tests.conftest import small_run_dict

TIER = {"name": "cxl", "kind": "cxl", "capacity_gib": 64, "bw_gbps": 40, "latency_ns": 300, "scope": "instance"}


def _run(kv_layers, tier=TIER, **over):
    d = small_run_dict(kv={"tiers": [tier]}, placement={"kv_layers": kv_layers})
    d.update(over)
    return resolve(parse_config(d, "x.yaml"))


def test_layer_patterns():
    assert parse_layers("0-3", 32, "w") == [0, 1, 2, 3]
    assert parse_layers("30-", 32, "w") == [30, 31]
    assert parse_layers("0-7/2, 9", 32, "w") == [0, 2, 4, 6, 9]
    for bad in ("32", "5-2", "a-b", "0-4/0", ""):
        with pytest.raises(ConfigError):
            parse_layers(bad, 32, "placement.kv_layers[0].layers")


def test_capacity_and_errors():
    base = _run([]).instances[0]
    half = _run([{"layers": "16-31", "tier": "cxl"}]).instances[0]
    per_layer = base.kv_block_bytes // 32
    assert half.kv_layer_share_bytes == {"cxl": 16 * per_layer}
    # HBM holds half of each block: about twice the blocks (the same free HBM)
    assert half.num_gpu_blocks == pytest.approx(2 * base.num_gpu_blocks, abs=2)
    with pytest.raises(ConfigError, match="tier 'cxl' .* less than one max_model_len"):
        _run([{"layers": "0-", "tier": "cxl"}], tier={**TIER, "capacity_gib": 0.5})
    with pytest.raises(ConfigError, match="is neither 'hbm' nor a kv.tiers entry"):
        _run([{"layers": "0-3", "tier": "dram"}])
    with pytest.raises(ConfigError, match="layer 3 is placed twice"):
        _run([{"layers": "0-3", "tier": "cxl"}, {"layers": "3", "tier": "hbm"}])


def test_placed_layers_stream_their_kv_every_iteration():
    run = _run([{"layers": "0-31/4", "tier": "cxl"}])
    res, _ = simulate(run)
    rt = res.instances[0]
    placed = set(range(0, 32, 4))
    per_token = rt.inst.kv_block_bytes // (16 * 32)
    from frontend.instance.plan import IterationPlan

    plan = IterationPlan("g", [], [1, 1, 200], [100, 700, 0], num_sampled=3)
    g = rt.graphs_for(plan)[0]
    loads = {int(n.split(".")[0][1:]): b for n, t, b in zip(g.names, g.types, g.tensor_bytes, strict=True)
             if t == MEM_LOAD}
    stores = {int(n.split(".")[0][1:]): b for n, t, b in zip(g.names, g.types, g.tensor_bytes, strict=True)
              if t == MEM_STORE}
    assert set(loads) == placed and set(stores) == placed
    assert all(b == 800 * per_token for b in loads.values())  # the cached contexts
    assert all(b == 202 * per_token for b in stores.values())  # the step's new tokens
    # each placed layer's attention waits for its load
    for li in placed:
        attn = g.names.index(f"L{li}.attention")
        ld = g.names.index(f"L{li}.kv_load.cxl")
        assert ld in g.deps[attn]
    # the run moved bytes over the tier in its iterations
    assert sum(r[11] for r in res.iterations.rows) > 0


def test_weight_layers_stream_only_their_layers():
    d = small_run_dict(kv={"tiers": [TIER]}, placement={"weights_layers": [{"layers": "24-31", "tier": "cxl"}]})
    run = resolve(parse_config(d, "x.yaml"))
    frac = resolve(parse_config(small_run_dict(kv={"tiers": [TIER]}, placement={"weights_fraction": 0.25,
                                                                                  "weights_tier": "cxl"}), "y.yaml"))
    i, f = run.instances[0], frac.instances[0]
    # 8 of 32 whole layers = a quarter of every layer: the same HBM freed, within a byte per layer
    assert abs(i.weight_bytes_per_npu - f.weight_bytes_per_npu) <= 32
    res, _ = simulate(run)
    rt = res.instances[0]
    from frontend.instance.plan import IterationPlan

    g = rt.graphs_for(IterationPlan("g", [], [1], [50], num_sampled=1))[0]
    loads = {int(n.split(".")[0][1:]): b for n, t, b in zip(g.names, g.types, g.tensor_bytes, strict=True)
             if t == MEM_LOAD}
    assert loads == {li: i.weight_layer_bytes for li in range(24, 32)}  # the offloaded stream per iteration
    with pytest.raises(Exception, match="either weights_fraction"):
        parse_config(small_run_dict(kv={"tiers": [TIER]}, placement={
            "weights_fraction": 0.2, "weights_tier": "cxl", "weights_layers": [{"layers": "0", "tier": "cxl"}]}), "z")
