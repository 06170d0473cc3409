"""MoE parallelism in the run file (vLLM meanings), its validation, and per-rank weights and KV."""

from __future__ import annotations

import math

import pytest

from frontend.config.loader import GIB, ConfigError, parse_config, resolve, resolve_instance
from frontend.config.models import ModelSpec
from tests.conftest import small_run_dict


def _inst(**over) -> dict:
    d = {"name": "g", "hardware": "H100-SXM", **over}
    n = d.get("tp", 1) * d.get("dp", 1)
    if n > 1 and "network" not in d:
        d["network"] = {"dims": [{"topology": "FullyConnected", "npus": n, "bw_gbps": 100, "latency_ns": 1000}]}
    return d


def _resolve_one(model: str = "Qwen3-30B-A3B", **over):
    cfg = parse_config(small_run_dict(model=model, instances=[_inst(**over)]), "x.yaml")
    return resolve_instance("instances[0]", cfg.instances[0], "g", cfg, 0)


@pytest.mark.parametrize(
    "model, over, expect",
    [
        ("Llama-3.1-8B", {"enable_expert_parallel": True}, "instances[0].enable_expert_parallel: model"),
        ("Qwen3-30B-A3B", {"ep": 2}, "instances[0].ep: set only with enable_expert_parallel"),
        ("Qwen3-30B-A3B", {"expert_placement": "round_robin"}, "instances[0].expert_placement: set only"),
        ("Qwen3-30B-A3B", {"enable_expert_parallel": True, "dp": 2, "ep": 4}, "instances[0].ep: ep=4 but"),
        ("Qwen3-30B-A3B", {"enable_expert_parallel": True, "dp": 3}, "does not divide the model's 128 experts"),
    ],
)
def test_moe_config_errors_name_the_field(model: str, over: dict, expect: str):
    with pytest.raises(ConfigError) as e:
        _resolve_one(model, **over)
    assert expect in str(e.value)


def test_schema_rejects_bad_values():
    for over in ({"dp": 0}, {"expert_placement": "striped"}, {"ep": 0}):
        with pytest.raises(ConfigError) as e:
            parse_config(small_run_dict(instances=[_inst(**over)]), "x.yaml")
        assert f"instances[0].{next(iter(over))}" in str(e.value)


def test_ep_defaults_to_tp_times_dp_and_placement_to_linear():
    r = _resolve_one(enable_expert_parallel=True, dp=4)
    assert (r.ep, r.dp, r.expert_placement) == (4, 4, "linear")
    r = _resolve_one(enable_expert_parallel=True, dp=2, ep=2, expert_placement="round_robin")
    assert (r.ep, r.expert_placement) == (2, "round_robin")
    off = _resolve_one()
    assert (off.ep, off.dp, off.enable_expert_parallel) == (1, 1, False)


@pytest.mark.parametrize(
    "model, over, expect",
    [
        ("Qwen3-30B-A3B", {"dp": 2}, "instances[0].enable_expert_parallel: dp=2 with MoE model"),
        ("Qwen3-30B-A3B", {"dp": 2, "pp": 2, "enable_expert_parallel": True,
                           "network": {"dims": [{"topology": "Ring", "npus": 4, "bw_gbps": 10, "latency_ns": 1}]}},
         "instances[0].pp: dp=2 with pp=2"),
        ("Qwen3-30B-A3B", {"dp": 2, "enable_expert_parallel": True,
                           "network": {"dims": [{"topology": "Ring", "npus": 4, "bw_gbps": 10, "latency_ns": 1}]}},
         "instances[0].network: dimensions hold 4 NPUs but the DP group has tp*dp = 2"),
        ("Qwen3-30B-A3B", {"dp": 2, "tp": 2, "enable_expert_parallel": True,
                           "network": {"dims": [{"topology": "Ring", "npus": 4, "bw_gbps": 10, "latency_ns": 1}]}},
         "instances[0].network.dims: TP ranks span the innermost dimensions"),
        ("Qwen3-30B-A3B", {"dp": 2, "enable_expert_parallel": True, "network": None},
         "instances[0].network: a DP group of 2 NPUs"),
    ],
)
def test_dp_group_errors_name_the_field(model: str, over: dict, expect: str):
    d = _inst(**{k: v for k, v in over.items() if v is not None})
    if "network" in over and over["network"] is None:  # None: no network at all
        d.pop("network")
    with pytest.raises(ConfigError) as e:
        resolve(parse_config(small_run_dict(model=model, instances=[d]), "x.yaml"))
    assert expect in str(e.value)


def test_dp_group_expands_to_members():
    d = _inst(dp=2, tp=2, enable_expert_parallel=True,
              network={"dims": [{"topology": "FullyConnected", "npus": 2, "bw_gbps": 100, "latency_ns": 100},
                                {"topology": "Ring", "npus": 2, "bw_gbps": 10, "latency_ns": 1000}]})
    run = resolve(parse_config(small_run_dict(model="Qwen3-30B-A3B", instances=[d]), "x.yaml"))
    assert [i.name for i in run.instances] == ["g-dp0", "g-dp1"]
    assert [i.dp_rank for i in run.instances] == [0, 1] and {i.dp_group for i in run.instances} == {"g"}
    m = run.instances[0]
    assert (m.ep, m.num_npus, len(m.dims), len(m.group_dims)) == (4, 2, 1, 2)  # own dims: the TP dimension
    # a dense model's DP members are independent engines; they are members all the same
    dense = resolve(parse_config(small_run_dict(instances=[_inst(dp=2)]), "x.yaml"))
    assert [i.name for i in dense.instances] == ["g-dp0", "g-dp1"]


def test_per_rank_weights_and_kv_follow_ep():
    off = _resolve_one()
    ep2 = _resolve_one(enable_expert_parallel=True, dp=2)
    m = off.model
    # Qwen3-30B-A3B: 128 experts x 3 x 2048 x 768 per layer, 48 layers, bf16: EP2 drops half of them per rank
    routed = 128 * 3 * 2048 * 768
    assert m.routed_expert_params() == routed
    saved = routed * 48 * 2 / 2
    assert off.weight_bytes_per_npu - ep2.weight_bytes_per_npu == pytest.approx(saved, abs=2)
    assert ep2.weight_bytes_per_npu / GIB == pytest.approx(29.87, abs=0.01)
    # KV capacity follows the freed memory, block size unchanged (DP members each hold their own KV)
    assert ep2.kv_block_bytes == off.kv_block_bytes
    usable = off.hardware.hbm_capacity_gib * GIB * 0.9
    assert ep2.num_gpu_blocks == int((usable - ep2.weight_bytes_per_npu - ep2.activation_reserve_bytes)
                                     // ep2.kv_block_bytes)
    assert ep2.num_gpu_blocks > off.num_gpu_blocks * 2
    # EP = TP x DP with dp = 1: whole experts over TP ranks hold the same bytes as TP-sharded experts
    tp2 = _resolve_one(tp=2, network={"dims": [{"topology": "FullyConnected", "npus": 2, "bw_gbps": 400,
                                                 "latency_ns": 500}]})
    ep_tp2 = _resolve_one(tp=2, enable_expert_parallel=True, network={"dims": [
        {"topology": "FullyConnected", "npus": 2, "bw_gbps": 400, "latency_ns": 500}]})
    assert ep_tp2.ep == 2 and abs(ep_tp2.weight_bytes_per_npu - tp2.weight_bytes_per_npu) <= 1


def test_shared_experts_stay_tp_sharded(tmp_path):
    from frontend.config.loader import weight_bytes_per_npu
    from frontend.config.models import load_model_spec

    p = tmp_path / "m.json"
    p.write_text('{"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100, '
                 '"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, '
                 '"n_shared_experts": 2}')
    m = load_model_spec(p)
    assert m.shared_expert_intermediate_size == 64
    attn = 64 * (64 + 2 * 64) + 64 * 64
    shared = 3 * 64 * 64
    routed = 8 * 3 * 64 * 32
    assert m.layer_params() == attn + routed + shared + 64 * 8 + 2 * 64
    got = weight_bytes_per_npu(m, 2, tp=2, pp=1, ep=4, enable_expert_parallel=True)
    per_layer = (m.layer_params() - routed) * 2 / 2 + routed * 2 / 4
    assert got == int(per_layer * 2 + 100 * 64 * 2 / 2 * 2)
    dense_layout = ModelSpec("x", 64, 2, 4, 4, 16, 256, 100)
    assert dense_layout.routed_expert_params() == 0
    assert math.isclose(weight_bytes_per_npu(dense_layout, 2, 1, 1), dense_layout.total_params() * 2 - 64 * 2,
                        abs_tol=1)
