"""Multi-model clusters: requests name a model, the router picks among the instances serving it."""

from __future__ import annotations

import json

import pytest

from frontend.config.loader import parse_config, resolve
from frontend.session import simulate
from frontend.workload.jsonl import WorkloadError, read_jsonl
from frontend.workload.request import Request
from tests.conftest import small_run_dict

NVL2 = {"dims": [{"topology": "Switch", "npus": 2, "bw_gbps": 450, "latency_ns": 500}]}


def _run(mix: dict | None = None):
    d = small_run_dict(instances=[{"name": "a", "hardware": "H100-SXM", "model": "Llama-3.1-8B"},
                                  {"name": "b", "hardware": "H100-SXM", "model": "Llama-3.1-8B"},
                                  {"name": "q", "hardware": "H100-SXM", "model": "Qwen3-32B", "tp": 2,
                                   "network": NVL2}])
    if mix:
        d["workload"]["model_mix"] = mix
    return resolve(parse_config(d, "x.yaml"))


def test_requests_go_only_to_instances_serving_their_model():
    res, _ = simulate(_run({"Llama-3.1-8B": 1, "Qwen3-32B": 1}))
    by = {r.request_id: r for r in res.requests}
    assert all(r.status == "finished" for r in by.values())
    for r in by.values():
        assert r.instance in (("a", "b") if r.model == "Llama-3.1-8B" else ("q",))
    assert {r.instance for r in by.values()} == {"a", "b", "q"}  # round robin over the two Llama instances


def test_a_model_nobody_serves_is_rejected_with_its_reason():
    reqs = [Request("r0", 0, 100, 5, model="meta-llama/Llama-3.1-8B"), Request("r1", 0, 100, 5, model="Mixtral-8x7B")]
    res, _ = simulate(_run(), requests=reqs)
    by = {r.request_id: r for r in res.requests}
    assert by["r0"].status == "finished" and by["r0"].instance in ("a", "b")  # HF id and catalog name match
    assert by["r1"].status == "rejected" and "no instance serves model 'Mixtral-8x7B'" in by["r1"].reject_reason


def test_the_mix_is_seeded_and_changes_nothing_else():
    from frontend.workload.synthetic import synthetic_requests

    plain = _run().config.workload
    mixed = _run({"Llama-3.1-8B": 3, "Qwen3-32B": 1}).config.workload
    a, b = synthetic_requests(plain, 5), synthetic_requests(mixed, 5)
    assert [(r.arrival_ns, r.input_tokens, r.output_tokens) for r in a] == \
        [(r.arrival_ns, r.input_tokens, r.output_tokens) for r in b]
    assert [r.model for r in b] == [r.model for r in synthetic_requests(mixed, 5)]
    share = sum(r.model == "Llama-3.1-8B" for r in b) / len(b)
    assert 0.55 < share < 0.95 and all(r.model is None for r in a)


def test_jsonl_model_field(tmp_path):
    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps({"input_toks": 10, "output_toks": 2, "arrival_time_ns": 0, "model": "Qwen3-32B"}) + "\n")
    assert read_jsonl(p)[0][0].model == "Qwen3-32B"
    p.write_text(json.dumps({"input_toks": 10, "output_toks": 2, "arrival_time_ns": 0, "model": 7}) + "\n")
    with pytest.raises(WorkloadError, match="field 'model' must be a non-empty string"):
        read_jsonl(p)
