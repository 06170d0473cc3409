"""LoRA adapters: HBM slots, cold loads with LRU residency, the per-batch adapter limit, kernel cost."""

from __future__ import annotations

import pytest

from frontend.config.loader import parse_config, resolve
from frontend.instance.lora import adapter_bytes_per_layer, slot_bytes_per_npu
from frontend.metrics.report import summarize
from frontend.session import simulate
from frontend.workload.request import Request
from tests.conftest import small_run_dict


def _run(**lora):
    d = small_run_dict()
    if lora:
        d["lora"] = {"adapters": 4, "rank": 8, "max_loras": 2, **lora}
    return resolve(parse_config(d, "x.yaml"))


def _req(i: int, t: int, lora: int, out: int = 3) -> Request:
    return Request(request_id=f"r{i}", arrival_ns=t, input_tokens=64, output_tokens=out, lora=lora)


def test_slots_reserve_hbm_so_the_kv_cache_shrinks():
    base, with_lora = _run().instances[0], _run(adapters=4, rank=8, max_loras=2, max_lora_rank=32).instances[0]
    m = base.model
    per_layer = adapter_bytes_per_layer(m, 1, 32, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], 2)
    d, hd, inter = m.hidden_size, m.head_dim, m.intermediate_size
    qkv = d + (m.num_heads + 2 * m.num_kv_heads) * hd
    assert per_layer == 32 * (qkv + (m.num_heads * hd + d) + (d + 2 * inter) + (inter + d)) * 2
    slots = slot_bytes_per_npu(m, 1, 1, _run(max_lora_rank=32).config.lora, 2)
    assert slots == 2 * m.num_layers * per_layer
    assert base.num_gpu_blocks - with_lora.num_gpu_blocks == pytest.approx(slots / base.kv_block_bytes, abs=1)


def test_cold_loads_follow_lru_residency_and_cost_bytes_over_the_host_link():
    run = _run(max_loras=2, host_bw_gbps=10)
    # one request at a time, adapters 0 1 2 0 3: with 2 slots every one is a cold load (LRU evicts 0, then 1, ...)
    reqs = [_req(i, i * 2_000_000_000, a) for i, a in enumerate([0, 1, 2, 0, 3, 3])]
    res, extra = simulate(run, requests=reqs)
    s = summarize(res, extra)["lora"]
    lc = res.instances[0].compute
    assert s["loads"] == 5 and s["load_bytes"] == 5 * lc.adapter_bytes  # the second 3 was resident
    assert list(lc.resident) == [0, 3]
    # the load is an operator of the step that needed it, bytes / host bandwidth
    from frontend.compute.batch import BatchShape
    from frontend.instance.plan import IterationPlan

    plan = IterationPlan("x", [_req(9, 0, 1)], [64], [0])
    lc.begin_step(99, plan)
    ops = lc.prologue_ops(BatchShape(q=[64], ctx=[0], num_sampled=1))
    assert ops[-1].name == "lora_load" and ops[-1].duration_ns == int(lc.adapter_bytes / 10)
    assert "lora" in [o.name for o in lc.layer_ops(BatchShape(q=[64], ctx=[0], num_sampled=1))]


def test_a_batch_holds_at_most_max_loras_adapters_and_the_queue_goes_on():
    run = _run(max_loras=2)
    reqs = [_req(0, 0, 0, out=20), _req(1, 0, 1, out=20), _req(2, 0, 2, out=3), _req(3, 0, 0, out=3)]
    res, _ = simulate(run, requests=reqs)
    by = {r.request_id: r for r in res.requests}
    assert all(r.status == "finished" for r in by.values())
    # r2 (a third adapter) waits while r0 and r1 run; r3 (adapter 0, already in the batch) is not held behind it
    assert by["r3"].scheduled_ns == by["r0"].scheduled_ns < by["r2"].scheduled_ns


def test_adapters_requests_name_and_unserved_ones():
    res, _ = simulate(_run(max_loras=2), requests=[_req(0, 0, 9), _req(1, 0, -1)])
    by = {r.request_id: r for r in res.requests}
    assert by["r0"].status == "rejected" and "names LoRA adapter 9 but the run serves 4" in by["r0"].reject_reason
    assert by["r1"].status == "finished"
    res, _ = simulate(_run(), requests=[_req(0, 0, 1)])  # no lora section: no adapters served
    assert res.requests[0].status == "rejected" and "serves 0" in res.requests[0].reject_reason


def test_synthetic_requests_draw_adapters_by_popularity():
    res, extra = simulate(_run(popularity_zipf_s=1.0, share=0.5))
    named = [r.lora for r in res.requests if r.lora is not None and r.lora >= 0]
    assert 0 < len(named) < len(res.requests)
    assert named.count(0) > named.count(3)
    assert summarize(res, extra)["lora"]["loads"] >= 1


def test_jsonl_lora_field(tmp_path):
    import json

    from frontend.workload.jsonl import WorkloadError, read_jsonl

    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps({"input_toks": 10, "output_toks": 2, "arrival_time_ns": 0, "lora": 3}) + "\n")
    assert read_jsonl(p)[0][0].lora == 3
    p.write_text(json.dumps({"input_toks": 10, "output_toks": 2, "arrival_time_ns": 0, "lora": "a3"}) + "\n")
    with pytest.raises(WorkloadError, match="field 'lora' must be an adapter index"):
        read_jsonl(p)


def test_lora_affinity_routes_to_an_instance_holding_the_adapter():
    def run(policy: str):
        d = small_run_dict(instances=[{"name": "g", "hardware": "H100-SXM", "replicas": 2}])
        d["lora"] = {"adapters": 4, "rank": 8, "max_loras": 2}
        d["router"] = {"policy": policy}
        reqs = [_req(i, i * 1_000_000_000, a, out=2) for i, a in enumerate([1, 2, 2, 1])]
        res, extra = simulate(resolve(parse_config(d, "x.yaml")), requests=reqs)
        return {r.request_id: r.instance for r in res.requests}, summarize(res, extra)["lora"]["loads"]

    rr, rr_loads = run("round_robin")
    aff, aff_loads = run("lora_affinity")
    assert rr_loads == 4  # alternating instances: each adapter's second request finds it on the other one
    assert aff_loads == 2 and aff["r2"] == aff["r1"] and aff["r3"] == aff["r0"]
