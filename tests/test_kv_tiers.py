"""KV hierarchy: lower tiers, offload/reload, swap, conservation, timing from the backend."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from astra_bridge.embedded.memory import MemoryTierModel
from frontend.cli import app
from frontend.config.schema import EngineConfig, TierConfig
from frontend.instance.kv import BlockPool
from frontend.instance.kv_tiers import TierManager
from frontend.instance.scheduler import Scheduler
from frontend.instance.tiers import LowerTier
from frontend.workload.request import Request, TokenContent
from tests.conftest import small_run_dict

runner = CliRunner()
BB = 1000  # bytes per block (test scale)


def _req(i: int, ids: list[int], out: int = 2) -> Request:
    return Request(f"r{i}", 0, len(ids), out, content=TokenContent(ids=ids), seq=i)


def _setup(hbm_blocks: int, tier_blocks: int, offload: str = "write_through", swap: bool = False):
    pool = BlockPool(hbm_blocks, 16)
    tier = LowerTier(TierConfig(name="dram", kind="dram", capacity_gib=1, bw_gbps=10, latency_ns=1000), tier_blocks * BB)
    tm = TierManager([tier], offload, "m", BB, pool)
    s = Scheduler("i", EngineConfig(max_num_seqs=8, max_num_batched_tokens=4096, block_size=16), pool, 100000)
    s.tiers = tm
    s.swap = swap
    return pool, tier, tm, s


def _drive(s: Scheduler, reqs: list[Request]) -> list:
    plans = []
    for r in reqs:
        s.add(r)
    t = 0
    while s.has_work:
        p = s.schedule()
        assert p is not None
        plans.append(p)
        t += 1000
        s.complete(p, t)
    assert s.schedule() is None  # async scheduling: the last finished requests give their blocks back
    return plans


def test_write_through_copies_and_reload_after_hbm_eviction():
    pool, tier, tm, s = _setup(hbm_blocks=8, tier_blocks=100)
    a_ids = list(range(100, 196))  # 6 full blocks
    a = _req(0, a_ids)
    plans = _drive(s, [a])
    stored = sum(m.blocks for p in plans for m in p.kv_moves if m.direction == "store")
    assert stored == 6 and tier.occupancy_blocks() == 6
    # flush HBM with unrelated content so a's blocks are evicted there
    _drive(s, [_req(1, list(range(5000, 5118)))])  # 8 blocks: the whole HBM
    assert not pool.find_cached_prefix(_req(9, a_ids + [1]))
    b = _req(2, a_ids + [7, 7])
    plans = _drive(s, [b])
    loads = [m for p in plans for m in p.kv_moves if m.direction == "load"]
    assert sum(m.blocks for m in loads) == 6 and loads[0].tier == "dram"
    assert b.cached_tokens == 96 and b.cached_tokens_by_tier == {"dram": 96}
    assert plans[0].num_new_tokens[0] == 2  # only the uncached tail is computed


def test_write_back_stores_only_on_eviction():
    pool, tier, tm, s = _setup(hbm_blocks=8, tier_blocks=100, offload="write_back")
    plans = _drive(s, [_req(0, list(range(100, 196)))])
    assert sum(m.blocks for p in plans for m in p.kv_moves) == 0
    plans = _drive(s, [_req(1, list(range(5000, 5096)))])
    assert sum(m.blocks for p in plans for m in p.kv_moves if m.direction == "store") >= 5


def test_lower_tier_lru_and_capacity():
    t = LowerTier(TierConfig(name="d", capacity_gib=1, bw_gbps=1, latency_ns=0), 3 * BB)
    for k in "abc":
        assert t.put(k, BB)
    t.touch("a")
    t.put("d", BB)  # evicts b, the least recently used
    assert [k for k in t.entries] == ["c", "a", "d"] and t.used_bytes == 3 * BB
    assert not t.put("huge", 4 * BB)


def test_blocks_conserved_across_tiers():
    pool, tier, tm, s = _setup(hbm_blocks=12, tier_blocks=7)
    reqs = [_req(i, [i % 3] * 16 + list(range(1000 * i, 1000 * i + 40)), out=5) for i in range(12)]
    _drive(s, reqs)
    assert all(r.status == "finished" for r in reqs)
    assert pool.num_free == pool.num_blocks  # HBM: nothing leaked
    pool.check_invariants([])
    assert tier.occupancy_blocks() <= 7 and tier.used_bytes == tier.occupancy_blocks() * BB
    # every cached HBM block's content is in the HBM map exactly once
    assert len(set(pool.cached.values())) == len(pool.cached)


def test_swap_preemption_moves_blocks_out_and_back():
    pool, tier, tm, s = _setup(hbm_blocks=10, tier_blocks=100, offload="none", swap=True)
    a, b = _req(0, list(range(60)), out=60), _req(1, list(range(500, 560)), out=60)
    plans = _drive(s, [a, b])
    moves = [(m.direction, m.reason, m.blocks) for p in plans for m in p.kv_moves]
    assert any(d == "store" and r == "swap" for d, r, _ in moves)
    assert any(d == "load" and r == "swap" for d, r, _ in moves)
    assert a.status == b.status == "finished"
    swapped = [r for r in (a, b) if r.preemptions]
    assert swapped and all(r.num_output_done == r.output_tokens for r in (a, b))
    assert pool.num_free == 10


def _tier_run(tmp: Path, name: str, kv: dict | None, rate: float | None = None, **over) -> dict:
    cfg = small_run_dict(**over)
    if rate is not None:
        cfg["workload"]["arrival"]["rate_per_s"] = rate
    cfg["workload"]["shared_prefix_tokens"] = 512
    cfg["engine"]["num_gpu_blocks_override"] = 120
    if kv is not None:
        cfg["kv"] = kv
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp / name
    r = runner.invoke(app, ["run", str(p), "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return {"summary": json.loads((out / "summary.json").read_text()), "requests": (out / "requests.csv").read_text(),
            "iterations": (out / "iterations.csv").read_text()}


def test_zero_capacity_tier_equals_no_tier(tmp_path: Path):
    base = _tier_run(tmp_path, "none", None)
    zero = _tier_run(tmp_path, "zero", {"offload": "write_through", "tiers": [
        {"name": "dram", "kind": "dram", "capacity_gib": 0, "bw_gbps": 25, "latency_ns": 2000}]})
    keep = ["ttft_ms", "tpot_ms", "e2e_ms", "iterations", "simulated_duration_s", "preemptions"]
    assert {k: base["summary"][k] for k in keep} == {k: zero["summary"][k] for k in keep}
    rows = lambda t: [line.split(",")[:6] for line in t.splitlines()[1:]]  # noqa: E731
    assert rows(base["requests"]) == rows(zero["requests"])


def test_reload_time_is_what_the_backend_says():
    """An iteration that reloads n blocks per layer takes at least the tier's transfer time for them."""
    from astra_bridge.embedded.backend import EmbeddedBackend
    from frontend.compute.roofline import Roofline
    from frontend.config.loader import parse_config, resolve
    from frontend.instance.plan import IterationPlan, KVMove
    from frontend.instance.runtime import InstanceRuntime
    cfg = small_run_dict(kv={"offload": "write_through", "tiers": [
        {"name": "dram", "kind": "dram", "capacity_gib": 4, "bw_gbps": 8, "latency_ns": 3000, "scope": "instance"}]})
    run = resolve(parse_config(cfg))
    ri = run.instances[0]
    from frontend.instance.tiers import build_tiers

    tiers = build_tiers(run.config.kv.tiers, run.instances)[ri.name]
    rt = InstanceRuntime(ri, Roofline(ri.model, ri.hardware), EmbeddedBackend(cache=False), run.config.backend.system,
                         tiers=tiers, kv_cfg=run.config.kv)
    req = Request("x", 0, 64, 4)
    base = IterationPlan("g", [req], [1], [2000])
    heavy = IterationPlan("g", [req], [1], [2000], kv_moves=[KVMove("dram", "load", 400)])
    t0 = rt.backend.run(rt.system, rt.graphs_for(base)).duration_ns
    r = rt.backend.run(rt.system, rt.graphs_for(heavy))
    per_layer = 400 * (ri.kv_block_bytes // ri.model.num_layers)
    tier = MemoryTierModel("dram", "PER_NPU_MEMORY_EXPANSION", 8, 3000)
    transfer = ri.model.num_layers * tier.transfer_ns(per_layer)
    assert r.mem_ns == transfer
    assert r.mem_bytes_by_tier == {"dram": ri.model.num_layers * per_layer}
    assert r.duration_ns >= transfer > t0  # bandwidth-bound: the loads decide when the iteration ends
    assert r.exposed_mem_ns > 0


def test_tier_summary_and_columns(tmp_path: Path):
    res = _tier_run(tmp_path, "dram", {"offload": "write_through", "tiers": [
        {"name": "dram", "kind": "dram", "capacity_gib": 8, "bw_gbps": 25, "latency_ns": 2000}]})
    kt = res["summary"]["kv_tiers"]
    assert set(kt) == {"hbm", "dram"} and kt["dram"]["stored_blocks"] > 0
    head = res["iterations"].splitlines()[0]
    assert "dram_load_blocks" in head and "dram_occupancy_blocks" in head
    assert "cached_tokens_dram" in res["requests"].splitlines()[0]


def test_pool_shared_across_instances_gives_cross_instance_hits(tmp_path: Path):
    kv = {"offload": "write_through", "tiers": [
        {"name": "cxl", "kind": "cxl", "capacity_gib": 8, "bw_gbps": 20, "latency_ns": 600, "scope": "pool"}]}
    res = _tier_run(tmp_path, "pool", kv, rate=2.0, instances=[{"name": "g", "hardware": "H100-SXM", "replicas": 2}],
                    router={"policy": "round_robin"})
    kt = res["summary"]["kv_tiers"]
    assert kt["cxl"]["hit_tokens"] > 0  # the shared system prompt written by one instance is read by the other


def test_bad_tier_layouts_rejected():
    import pytest

    from frontend.config.loader import ConfigError, parse_config, resolve

    bad = [
        ({"tiers": [{"name": "hbm", "capacity_gib": 1, "bw_gbps": 1, "latency_ns": 0}]}, "'hbm'"),
        ({"tiers": [{"name": "d", "capacity_gib": 1, "bw_gbps": 0, "latency_ns": 0}]}, "bw_gbps"),
        ({"preemption": "swap", "tiers": [{"name": "c", "kind": "cxl", "capacity_gib": 1, "bw_gbps": 1,
                                           "latency_ns": 0}]}, "swap"),
        ({"tiers": [{"name": "d", "capacity_gib": 1, "bw_gbps": 1, "latency_ns": 0, "scope": "node",
                     "shared_by": ["g"]}]}, "only a scope='pool'"),
        ({"tiers": [{"name": "d", "capacity_gib": 1, "bw_gbps": 1, "latency_ns": 0, "scope": "pool",
                     "shared_by": ["nope"]}]}, "unknown instances"),
    ]
    for kv, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            resolve(parse_config(small_run_dict(kv=kv)))
