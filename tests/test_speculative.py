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
    one = sum(o.duration_ns for o in inner.layer_ops(draft)) + \
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
