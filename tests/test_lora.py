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


# ---- the measured LoRA kernels (a profile bundle's lora.csv) ----
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000, "max_position_embeddings": 4096,
        "torch_dtype": "float32"}


def test_lora_table_lookup_interpolates_and_is_monotone():
    from frontend.compute.errors import ProfileError
    from frontend.compute.lora_table import LoRATable

    rows = [("o_proj", r, a, t, float(r * t + 10 * a)) for r in (8, 16) for a in (1, 4) for t in (1, 2, 4)]
    rows = [x if (x[1], x[2], x[3]) != (16, 4, 2) else (*x[:4], 1.0) for x in rows]  # a noisy dip
    warned = []
    tab = LoRATable(rows, "t.csv", lambda *a: warned.append(a[0]))
    assert tab.time_ns("o_proj", 8, 1, 2) == 26.0  # a grid point
    assert tab.time_ns("o_proj", 12, 1, 3) == pytest.approx((8 * 3 + 10 + 16 * 3 + 10) / 2)  # linear on both axes
    assert tab.time_ns("o_proj", 16, 4, 2) >= tab.time_ns("o_proj", 16, 4, 1)  # the dip is lifted
    assert tab.time_ns("o_proj", 8, 1, 8) == 8 * 8 + 10 and warned == ["lora.tokens"]  # extrapolated, told once
    with pytest.raises(ProfileError, match=r"lora.target_modules \['qkv_proj'\] are not profiled"):
        tab.check_modules(["o_proj", "qkv_proj"])


def test_profiler_writes_the_lora_table_and_the_compute_model_reads_it(tmp_path):
    import csv
    import json

    import yaml
    from typer.testing import CliRunner

    pytest.importorskip("torch")
    from frontend.cli import app
    from frontend.compute.batch import BatchShape
    from frontend.instance.lora import LoRACompute, module_dims
    from frontend.session import build_instances, make_backend

    model = tmp_path / "tiny.json"
    model.write_text(json.dumps(TINY))
    bundle = tmp_path / "bundle"
    r = CliRunner().invoke(app, ["profile", "--model", str(model), "--device", "cpu", "--dtype", "fp32", "--out",
                                 str(bundle), "--max-tokens", "32", "--max-seqs", "4", "--max-kv", "64", "--iters", "1",
                                 "--lora-ranks", "4,8,16", "--lora-adapters", "1,4"])
    assert r.exit_code == 0, r.output
    tdir = bundle / "fp32" / "tp1"
    with (tdir / "lora.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["module", "rank", "adapters", "tokens", "time_us"]
    assert len(rows) == 4 * 3 * 2 * 6 and all(float(x["time_us"]) > 0 for x in rows)  # tokens 1..32 doubling
    meta = yaml.safe_load((bundle / "fp32" / "meta.yaml").read_text())
    assert meta["lora"]["ranks"] == [4, 8, 16] and meta["lora"]["adapters"] == [1, 4]

    def run_of(rank: int):
        d = {"name": "tiny", "model": str(model), "instances": [{"name": "cpu", "hardware": "RTX4090"}],
             "engine": {"dtype": "fp32", "max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 512},
             "compute": {"kind": "profile", "profile": str(bundle)},
             "lora": {"adapters": 4, "rank": rank, "max_loras": 4},
             "workload": {"kind": "synthetic", "num_requests": 12,
                          "prompt_tokens": {"dist": "uniform", "low": 10, "high": 30, "max": 40},
                          "output_tokens": {"dist": "uniform", "low": 2, "high": 8, "max": 10}}}
        return resolve(parse_config(d, "x.yaml"))

    def lora_ns(rank: int, tokens: int, active: int = 2) -> int:
        run = run_of(rank)
        lc = build_instances(run, make_backend(run))[0].compute
        assert isinstance(lc, LoRACompute)
        lc.active = active
        return next(o for o in lc.layer_ops(BatchShape(q=[tokens], ctx=[0], num_sampled=1)) if o.name == "lora").duration_ns

    run = run_of(8)
    lc = build_instances(run, make_backend(run))[0].compute
    assert lc.table is not None
    assert lora_ns(8, 4) == int(sum(lc.table.time_ns(m, 8, 2, 4) for m in lc.modules))
    grid = [[lora_ns(r, t) for t in (1, 3, 8, 20, 32)] for r in (4, 6, 8, 16)]
    assert all(row == sorted(row) for row in grid)  # monotone in tokens
    assert all(list(col) == sorted(col) for col in zip(*grid, strict=True))  # and in rank
    res, extra = simulate(run)
    assert summarize(res, extra)["completed"] == 12

    # no lora.csv: the roofline prices the kernels, exactly as without a bundle
    (tdir / "lora.csv").unlink()
    lc = build_instances(run, make_backend(run))[0].compute
    assert lc.table is None
    lc.active = 2
    roof, t = lc.roof, 4
    mods = list(module_dims(run.model, 1).values())
    flops = sum(2 * t * 8 * (i + o) for i, o in mods)
    nbytes = 2 * lc.layer_bytes + sum(t * (i + o) for i, o in mods) * 4
    expect = int(max(flops / roof.flops_per_ns, nbytes / roof.bytes_per_ns)) + 2 * len(mods) * roof.launch
    assert next(o for o in lc.layer_ops(BatchShape(q=[t], ctx=[0], num_sampled=1)) if o.name == "lora").duration_ns \
        == expect
