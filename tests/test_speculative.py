"""Speculative decoding: verify width, accepted tokens, draft cost, and what turning it off leaves unchanged."""

from __future__ import annotations

import pytest

from frontend.compute.batch import BatchShape
from frontend.config.loader import parse_config, resolve
from frontend.metrics.report import summarize
from frontend.session import build_instances, make_backend, simulate
from tests.conftest import small_run_dict


def _run(k: int = 0, a: float = 0.7, method: str = "eagle", n: int = 40, out_mean: int = 200):
    d = small_run_dict()
    d["engine"] = {**d["engine"], "speculative_tokens": k, "speculative_acceptance": a, "speculative_method": method}
    d["workload"]["num_requests"] = n
    d["workload"]["output_tokens"] = {"dist": "lognormal", "mean": out_mean, "sigma": 0.3, "min": 20, "max": 2000}
    return resolve(parse_config(d, "x.yaml"))


def _summary(run):
    res, extra = simulate(run)
    return res, summarize(res, extra)


def test_off_is_the_plain_engine():
    a, sa = _summary(_run(0))
    d = small_run_dict()
    d["workload"]["num_requests"] = 40
    d["workload"]["output_tokens"] = {"dist": "lognormal", "mean": 200, "sigma": 0.3, "min": 20, "max": 2000}
    b, sb = _summary(resolve(parse_config(d, "x.yaml")))
    assert a.iterations.rows == b.iterations.rows and "speculative" not in sa
    assert [(r.first_token_ns, r.finish_ns) for r in a.requests] == [(r.first_token_ns, r.finish_ns) for r in b.requests]


def test_tokens_are_conserved_and_the_mean_follows_the_formula():
    res, s = _summary(_run(4, 0.6, n=60, out_mean=600))
    sp = s["speculative"]
    assert all(r.status == "finished" and r.num_output_done == r.output_tokens for r in res.requests)
    # every output token is the prefill's first one or comes from a verify pass
    assert sp["tokens_emitted"] + len(res.requests) == sum(r.output_tokens for r in res.requests)
    expect = (1 - 0.6 ** 5) / (1 - 0.6)
    assert sp["expected_tokens_per_pass"] == pytest.approx(expect)
    assert sp["tokens_per_pass"] == pytest.approx(expect, rel=0.04)  # sampling noise and the output-length cap


def test_verify_width_and_the_eagle_draft_in_the_step():
    run = _run(3)
    inst = build_instances(run, make_backend(run))[0]
    shape = BatchShape(q=[4, 4, 100], ctx=[500, 800, 0], num_sampled=3)  # two verify passes + a prefill
    ops = inst.compute.epilogue_ops(shape)
    assert ops[-1].name == "spec_draft"
    inner = inst.compute.inner
    draft = BatchShape(q=[1, 1], ctx=[500, 800], num_sampled=2)
    d = inner.model.hidden_size
    fc = inner._gemm("eagle_fc", 2, 2 * d, d)  # EAGLE's feature fusion 2d -> d, then the layer and the LM head
    one = fc.duration_ns + sum(o.duration_ns for o in inner.layer_ops(draft)) + \
        sum(o.duration_ns for o in inner.epilogue_ops(draft) if o.name == "lm_head")
    assert ops[-1].duration_ns == 3 * one
    ngram = build_instances(_run(3, method="ngram"), make_backend(run))[0]
    assert "spec_draft" not in [o.name for o in ngram.compute.epilogue_ops(shape)]
    res, _ = simulate(run)
    assert max(r[5] for r in res.iterations.rows) >= 4  # decode tokens of a step: verify passes of width 4


def test_throughput_rises_with_acceptance_and_falls_when_the_draft_costs_too_much():
    def tpot(k, a, method="eagle"):
        return _summary(_run(k, a, method, out_mean=400))[1]["tpot_ms"]["mean"]

    base = tpot(0, 0.5)
    lo, hi = tpot(4, 0.3), tpot(4, 0.9)
    assert hi < lo and hi < base  # more accepted drafts, fewer passes per token
    assert tpot(8, 0.05) > base  # drafts almost never accepted: the draft passes and the wide verify are waste
    assert tpot(4, 0.9, "ngram") < hi  # the same acceptance without an accelerator drafter


def test_a_draft_model_costs_its_forward_passes_and_its_memory():
    plain = _run(0).instances[0]
    d = small_run_dict()
    d["engine"] = {**d["engine"], "speculative_tokens": 3, "speculative_method": "draft_model",
                   "speculative_draft_model": "Llama-3.2-1B"}
    run = resolve(parse_config(d, "x.yaml"))
    ri = run.instances[0]
    draft = ri.draft_model
    assert draft.name == "Llama-3.2-1B"
    from frontend.config.loader import weight_bytes_per_npu

    assert ri.weight_bytes_per_npu == plain.weight_bytes_per_npu + weight_bytes_per_npu(draft, 2, 1, 1)
    per_token = (plain.model.kv_bytes_per_token_per_layer(2, 1) * plain.model.num_layers
                 + draft.kv_bytes_per_token_per_layer(2, 1) * draft.num_layers)
    assert ri.kv_block_bytes == 16 * per_token and ri.num_gpu_blocks < plain.num_gpu_blocks
    inst = build_instances(run, make_backend(run))[0]
    shape = BatchShape(q=[4, 4], ctx=[300, 600], num_sampled=2)
    op = inst.compute.epilogue_ops(shape)[-1]
    dr = inst.compute.draft
    one = BatchShape(q=[1, 1], ctx=[300, 600], num_sampled=2)
    full = sum(o.duration_ns for o in dr.prologue_ops(one) + draft.num_layers * dr.layer_ops(one) + dr.epilogue_ops(one))
    assert op.name == "spec_draft" and op.duration_ns == 3 * full
    res, s = _summary(run)
    assert s["speculative"]["method"] == "draft_model" and s["completed"] == len(res.requests)
    with pytest.raises(Exception, match="speculative_draft_model"):
        d["engine"].pop("speculative_draft_model")
        resolve(parse_config(d, "x.yaml"))


def test_per_position_rates_and_per_request_rates_from_a_trace(tmp_path):
    import json

    from frontend.config.loader import ConfigError

    # per position: the second draft is never accepted, so a pass emits at most 2 tokens
    res, s = _summary(_run(3, [0.9, 0.0, 0.5], out_mean=300))
    sp = s["speculative"]
    assert sp["expected_tokens_per_pass"] == pytest.approx(1 + 0.9)
    assert sp["tokens_per_pass"] == pytest.approx(1.9, rel=0.05) and sp["tokens_per_pass"] <= 2.0
    with pytest.raises(ConfigError, match="3 per-position rates for speculative_tokens = 2"):
        _run(2, [0.5, 0.5, 0.5])
    # per request: a trace naming half the requests with acceptance 0 (one token a pass)
    p = tmp_path / "acc.jsonl"
    p.write_text("".join(json.dumps({"request_id": f"req-{i}", "acceptance": 0.0}) + "\n" for i in range(0, 40, 2)))
    d = small_run_dict()
    d["engine"] = {**d["engine"], "speculative_tokens": 4, "speculative_acceptance": 0.9,
                   "speculative_acceptance_trace": str(p)}
    d["workload"]["num_requests"] = 40
    res, s = _summary(resolve(parse_config(d, "x.yaml")))
    assert 1.0 < s["speculative"]["tokens_per_pass"] < (1 - 0.9 ** 5) / 0.1
    p.write_text(json.dumps({"request_id": "req-0", "acceptance": 1.5}) + "\n")
    from frontend.workload.jsonl import WorkloadError

    with pytest.raises(WorkloadError, match="acceptance in \\[0, 1\\)"):
        _summary(resolve(parse_config(d, "x.yaml")))


# ---- MTP modules, draft-head memory, draft overhead share ----
def _deepseek(k: int = 1, method: str = "mtp", n: int = 12, **eng):
    d = small_run_dict(model="DeepSeek-V3", instances=[{"name": "tp8", "hardware": "H200", "tp": 8,
                                                        "network": {"preset": "h100-nvlink-8"}}])
    d["engine"] = {**d["engine"], "dtype": "fp8", "speculative_tokens": k, "speculative_method": method,
                   "speculative_acceptance": 0.8, **eng}
    d["workload"]["num_requests"] = n
    return resolve(parse_config(d, "x.yaml"))


def test_deepseek_v3_has_one_mtp_module_of_the_reported_size():
    from frontend.compute.drafters import mtp_module_params
    from frontend.config.loader import CONFIGS
    from frontend.config.models import load_model_spec

    m = load_model_spec(CONFIGS / "models/DeepSeek-V3.json")
    assert m.mtp_modules == 1  # HF num_nextn_predict_layers
    # the report's 14B of MTP weights (arXiv 2412.19437 sec. 1) hold copies of the shared embedding and head
    emb = m.vocab_size * m.hidden_size
    assert mtp_module_params(m) + 2 * emb == pytest.approx(14e9, rel=0.05)
    assert load_model_spec(CONFIGS / "models/Llama-3.1-8B.json").mtp_modules == 0


def test_mtp_draft_is_projection_one_moe_layer_and_the_head_per_position():
    run = _deepseek(1)
    inst = build_instances(run, make_backend(run))[0]
    shape = BatchShape(q=[2, 2, 2], ctx=[300, 500, 900], num_sampled=3)
    op = inst.compute.epilogue_ops(shape)[-1]
    assert op.name == "spec_draft"
    inner = inst.compute.inner
    draft = BatchShape(q=[1, 1, 1], ctx=[300, 500, 900], num_sampled=3)
    d = inner.model.hidden_size
    layer = inner.layer_ops(draft)
    assert any(o.name in ("moe", "routed_experts", "experts") or "expert" in o.name for o in layer)  # MoE layer
    parts = ([o for o in inner.prologue_ops(draft) if o.name == "embedding"]
             + [inner._elementwise("mtp_norms", 3 * 2 * d, 4, 2), inner._gemm("mtp_eh_proj", 3, 2 * d, d)]
             + layer + [o for o in inner.epilogue_ops(draft) if o.name in ("final_layernorm", "lm_head")])
    assert op.duration_ns == sum(o.duration_ns for o in parts)
    assert op.flops == sum(o.flops for o in parts)
    # reused modules (vLLM's rule, opt-in): K = 2 runs the one module twice, and holds it once
    run2 = _deepseek(2, speculative_mtp_reuse=True)
    inst2 = build_instances(run2, make_backend(run2))[0]
    shape2 = BatchShape(q=[3, 3, 3], ctx=[300, 500, 900], num_sampled=3)
    assert inst2.compute.epilogue_ops(shape2)[-1].duration_ns == 2 * op.duration_ns
    assert run2.instances[0].weight_bytes_per_npu == run.instances[0].weight_bytes_per_npu


def test_mtp_errors_name_the_field(tmp_path):
    import json

    from frontend.config.loader import CONFIGS, ConfigError

    with pytest.raises(ConfigError, match=r"engine\.speculative_tokens: 2 draft tokens but model .* has 1 MTP"):
        _deepseek(2)
    with pytest.raises(ConfigError, match=r"engine\.speculative_method: mtp needs multi-token-prediction modules"):
        _run(2, method="mtp")
    raw = json.loads((CONFIGS / "models/DeepSeek-V3.json").read_text())
    raw["mtp_modules"] = 2  # a catalog entry's own count overrides num_nextn_predict_layers
    p = tmp_path / "dsv3-mtp2.json"
    p.write_text(json.dumps(raw))
    d = small_run_dict(model=str(p), instances=[{"name": "tp8", "hardware": "H200", "tp": 8,
                                                 "network": {"preset": "h100-nvlink-8"}}])
    d["engine"] = {**d["engine"], "dtype": "fp8", "speculative_tokens": 3, "speculative_method": "mtp",
                   "speculative_mtp_reuse": True}
    with pytest.raises(ConfigError, match=r"engine\.speculative_tokens: with speculative_mtp_reuse, 3 must be a "
                                          r"multiple of the model's 2"):
        resolve(parse_config(d, "x.yaml"))
    d["engine"]["speculative_tokens"] = 2
    assert resolve(parse_config(d, "x.yaml")).instances[0].model.mtp_modules == 2


def _kv_check(plain, ri, head_bytes: int, kv_layers: int):
    """The head's weights come out of the KV cache and every block also holds the head's layers' KV."""
    from frontend.config.loader import GIB

    assert ri.weight_bytes_per_npu == plain.weight_bytes_per_npu + head_bytes
    layer_kv = ri.engine.block_size * ri.model.kv_bytes_per_token_per_layer(
        ri.dtype_bytes if ri.engine.kv_cache_dtype == "auto" else 1, ri.tp)
    assert ri.kv_block_bytes == plain.kv_block_bytes + kv_layers * layer_kv
    free_plain = ri.hardware.hbm_capacity_gib * GIB * ri.engine.gpu_memory_utilization - plain.weight_bytes_per_npu \
        - plain.activation_reserve_bytes
    assert ri.num_gpu_blocks == int((free_plain - head_bytes) // ri.kv_block_bytes)
    assert ri.num_gpu_blocks < plain.num_gpu_blocks


def test_eagle_head_weights_and_kv_reduce_the_kv_cache():
    plain = _run(0).instances[0]
    ri = _run(3).instances[0]
    m = ri.model
    d = m.hidden_size
    head = (2 * d * d + m.layer_params()) * 2  # fc 2d -> d (replicated) + one decoder layer, bf16, tp 1
    _kv_check(plain, ri, head, 1)
    from frontend.compute.drafters import head_memory

    hm = head_memory("eagle", m, 2, 1)
    assert hm.weight_bytes_per_npu == head and hm.kv_layers == 1
    # ngram keeps nothing on the accelerator
    assert _run(3, method="ngram").instances[0].num_gpu_blocks == plain.num_gpu_blocks


def test_mtp_module_weights_and_kv_reduce_the_kv_cache():
    from frontend.config.loader import weight_bytes_per_npu

    plain = _deepseek(0).instances[0]
    ri = _deepseek(1).instances[0]
    m = ri.model
    d = m.hidden_size
    head = int((2 * d + 2 * d * d + d) * 1 + m.layer_params() * 1 / 8)  # fp8: norms + eh_proj whole, block / TP8
    _kv_check(plain, ri, head, 1)
    assert plain.weight_bytes_per_npu == weight_bytes_per_npu(m, 1, 8, 1)


def test_draft_overhead_share():
    _, se = _summary(_run(4, 0.7))
    _, sn = _summary(_run(4, 0.7, method="ngram"))
    e = se["speculative"]
    assert 0.02 < e["draft_overhead_share"] < 0.6 and e["draft_ms"] > 0
    assert sn["speculative"]["draft_overhead_share"] == 0.0
    # the closed-form decode steps count the draft like the steps the backend times
    run = _run(4, 0.7)
    a, _ = simulate(run)
    b, _ = simulate(run, run_ahead=False)
    assert a.instances[0].draft_ns == b.instances[0].draft_ns
    _, s8 = _summary(_run(8, 0.7))
    assert s8["speculative"]["draft_overhead_share"] > e["draft_overhead_share"]


def test_mtp_run_conserves_tokens():
    res, s = _summary(_deepseek(1, n=8))
    sp = s["speculative"]
    assert sp["method"] == "mtp" and s["completed"] == 8
    assert sp["tokens_emitted"] + len(res.requests) == sum(r.output_tokens for r in res.requests)
    assert 0 < sp["draft_overhead_share"] < 0.5


def test_mtp_reuse_only_with_mtp():
    from frontend.config.loader import ConfigError

    d = small_run_dict()
    d["engine"] = {**d["engine"], "speculative_tokens": 2, "speculative_mtp_reuse": True}
    with pytest.raises(ConfigError, match="speculative_mtp_reuse: only with speculative_method: mtp"):
        parse_config(d, "x.yaml")
