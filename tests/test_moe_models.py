"""MoE catalog models (Qwen3-30B-A3B, Qwen3-235B-A22B, Mixtral-8x7B, DeepSeek-V3): parameter counts, MLA's
latent KV, dense-first layers and shared experts in the roofline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frontend.compute.architecture import Architecture, family_layer_ops, find_architecture
from frontend.compute.batch import BatchShape
from frontend.compute.moe_routing import ExpertPlacement, make_router
from frontend.compute.roofline import Roofline
from frontend.config.hardware import load_hardware
from frontend.config.loader import find_catalog_file
from frontend.config.models import ModelSpec, load_model_spec
from frontend.errors import ConfigError

HW = load_hardware(find_catalog_file("H100-SXM", "hardware", None))


def _model(name: str) -> ModelSpec:
    return load_model_spec(find_catalog_file(name, "models", None))


DSV3 = _model("DeepSeek-V3")


def test_new_models_load_with_their_published_shapes():
    q = _model("Qwen3-235B-A22B")
    assert (q.num_layers, q.hidden_size, q.num_heads, q.num_kv_heads, q.head_dim) == (94, 4096, 64, 4, 128)
    assert (q.num_experts, q.experts_per_token, q.moe_intermediate_size, q.vocab_size) == (128, 8, 1536, 151936)
    assert q.model_type == "qwen3_moe" and not q.is_mla and q.dense_prefix_layers == 0
    assert q.shared_expert_intermediate_size == 0
    d = DSV3
    assert d.model_type == "deepseek_v3" and d.is_mla and d.is_moe
    assert (d.num_layers, d.hidden_size, d.num_heads, d.vocab_size) == (61, 7168, 128, 129280)
    assert (d.q_lora_rank, d.kv_lora_rank, d.qk_nope_head_dim, d.qk_rope_head_dim, d.v_head_dim) == (
        1536, 512, 128, 64, 128)
    assert (d.num_experts, d.experts_per_token, d.moe_intermediate_size) == (256, 8, 2048)
    assert d.shared_expert_intermediate_size == 2048  # n_shared_experts (1) x moe_intermediate_size
    assert d.first_k_dense_replace == 3 and d.dense_prefix_layers == 3 and d.num_moe_layers == 58
    assert d.intermediate_size == 18432 and d.qk_head_dim == 192
    m = _model("Mixtral-8x7B")
    assert (m.num_experts, m.experts_per_token, m.moe_intermediate_size) == (8, 2, 14336)


@pytest.mark.parametrize(("name", "total_b", "active_b", "embedding", "tol"), [
    ("DeepSeek-V3", 671.0, 36.6, False, 0.01),  # 671B main model (MTP module apart), 36.6B activated (no input emb.)
    ("Qwen3-235B-A22B", 235.0, 22.0, True, 0.02),
    ("Qwen3-30B-A3B", 30.5, 3.3, True, 0.02),
    ("Mixtral-8x7B", 46.7, 12.9, True, 0.02),
])
def test_parameter_counts_match_the_published_sizes(name, total_b, active_b, embedding, tol):
    m = _model(name)
    assert abs(m.total_params() / 1e9 / total_b - 1) < tol
    assert abs(m.active_params(embedding=embedding) / 1e9 / active_b - 1) < 0.02


def test_dense_prefix_layers_count_in_total_params():
    d = DSV3
    assert d.all_layer_params() == 3 * d.dense_layer_params() + 58 * d.layer_params()
    assert d.dense_layer_params() == d.attention_params() + 3 * d.hidden_size * 18432 + 2 * d.hidden_size
    assert d.layer_params_at(0) == d.layer_params_at(2) == d.dense_layer_params()
    assert d.layer_params_at(3) == d.layer_params_at(60) == d.layer_params()
    with pytest.raises(IndexError):
        d.layer_params_at(61)
    assert d.all_routed_expert_params() == 58 * d.routed_expert_params()
    emb = d.vocab_size * d.hidden_size
    assert d.total_params() == d.all_layer_params() + 2 * emb + d.hidden_size
    # without a dense prefix, all_layer_params is num_layers x layer_params (the old formula)
    q = _model("Qwen3-30B-A3B")
    assert q.all_layer_params() == q.num_layers * q.layer_params()


def test_mla_attention_parameters():
    d = DSV3
    h, hid = 128, 7168
    expected = (hid * 1536 + 1536 + 1536 * h * 192  # q_a_proj, q_a_layernorm, q_b_proj
                + hid * (512 + 64) + 512 + 512 * h * (128 + 128)  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
                + h * 128 * hid)  # o_proj
    assert d.attention_params() == expected
    # GQA attention is unchanged: q, k, v, o
    q = _model("Qwen3-235B-A22B")
    assert q.attention_params() == 4096 * (64 * 128 + 2 * 4 * 128) + 64 * 128 * 4096


def test_mla_kv_is_the_latent_once_per_token_and_tp_independent():
    for tp in (1, 2, 8, 16):
        assert DSV3.kv_bytes_per_token_per_layer(2, tp) == (512 + 64) * 2
    assert DSV3.kv_bytes_per_token_per_layer(1, 8) == 576  # fp8 cache
    assert DSV3.kv_bytes_per_token(2) == 576 * 2 * 61
    assert DSV3.kv_bytes_per_token(2, layers=8) == 576 * 2 * 8


def test_gqa_kv_bytes_unchanged_and_split_over_tp():
    q = _model("Qwen3-235B-A22B")  # 4 KV heads of 128
    assert q.kv_bytes_per_token(2) == 2 * 4 * 128 * 2 * 94
    assert q.kv_bytes_per_token_per_layer(2, 1) == 2 * 4 * 128 * 2
    assert q.kv_bytes_per_token_per_layer(2, 2) == 2 * 2 * 128 * 2
    assert q.kv_bytes_per_token_per_layer(2, 8) == 2 * 1 * 128 * 2  # replicated when tp > kv heads
    llama = _model("Llama-3.1-8B")
    assert llama.kv_bytes_per_token(2) == 131072  # 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B
    assert llama.kv_bytes_per_token_per_layer(2) * llama.num_layers == llama.kv_bytes_per_token(2)


def _write(tmp_path: Path, **over) -> Path:
    raw = json.loads(find_catalog_file("DeepSeek-V3", "models", None).read_text())
    for k, v in over.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    p = tmp_path / "m.json"
    p.write_text(json.dumps(raw))
    return p


@pytest.mark.parametrize(("over", "match"), [
    ({"first_k_dense_replace": -1}, r"'first_k_dense_replace' must be in \[0"),
    ({"first_k_dense_replace": 1.5}, "'first_k_dense_replace' must be an integer"),
    ({"first_k_dense_replace": True}, "'first_k_dense_replace' must be an integer"),
    ({"first_k_dense_replace": 61}, r"first_k_dense_replace \(61\) must be less than num_hidden_layers \(61\)"),
    ({"intermediate_size": None}, "first_k_dense_replace .* needs intermediate_size"),
    ({"kv_lora_rank": "512"}, "'kv_lora_rank' must be an integer"),
    ({"v_head_dim": 0}, r"kv_lora_rank=512\) needs positive v_head_dim"),
    ({"qk_rope_head_dim": None, "qk_nope_head_dim": None}, "needs positive qk_nope_head_dim, qk_rope_head_dim"),
    ({"kv_lora_rank": None}, "given without kv_lora_rank"),
    ({"moe_layer_freq": 2}, "moe_layer_freq=2 .* not modelled"),
])
def test_bad_mla_and_dense_prefix_fields_are_config_errors(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        load_model_spec(_write(tmp_path, **over))


def test_mla_without_q_lora_and_dense_prefix_on_dense_model(tmp_path):
    m = load_model_spec(_write(tmp_path, q_lora_rank=None))
    assert m.is_mla and m.q_lora_rank == 0
    assert m.attention_params() == DSV3.attention_params() - (7168 * 1536 + 1536 + 1536 * 128 * 192) \
        + 7168 * 128 * 192
    names = [o.name for o in Roofline(m, HW).layer_ops(BatchShape([4], [0]))]
    assert names[:5] == ["layernorm", "kv_a_proj_with_mqa", "latent_norm", "q_proj", "rotary_emb"]
    # a dense model ignores first_k_dense_replace (every layer is dense)
    dense = load_model_spec(_write(tmp_path, n_routed_experts=None, n_shared_experts=None))
    assert not dense.is_moe and dense.dense_prefix_layers == 0
    assert dense.total_params() == dense.num_layers * dense.dense_layer_params() + 2 * 129280 * 7168 + 7168


def test_deepseek_architecture_file_lists_the_mla_operators():
    ops = family_layer_ops("deepseek_v3")
    assert ops == ["layernorm", "qkv_a_proj", "latent_norm", "q_b_proj", "rotary_emb", "kv_b_proj", "attention",
                   "o_proj", "layernorm"]
    arch = Architecture(find_architecture({}, "deepseek_v3", None, None))
    assert arch.mlp_dense == ["gate_up_proj", "act_fn", "down_proj"] and arch.mlp_moe == ["moe"]
    # the roofline's layer runs the same attention operators in the same order
    r = Roofline(DSV3, HW, tp=8)
    names = [o.name for o in r.layer_ops(BatchShape([1, 1], [100, 200]))]
    assert names[:len(ops)] == ops
    assert names[len(ops):] == ["moe_gate", "moe", "shared_experts"]


def _attn(r: Roofline, shape: BatchShape):
    return next(o for o in r.layer_ops(shape) if o.name == "attention")


def test_mla_decode_attention_reads_the_latent_cache():
    for tp in (1, 8):
        r = Roofline(DSV3, HW, tp=tp)
        n = 32
        short = _attn(r, BatchShape([1] * n, [1000] * n))
        long = _attn(r, BatchShape([1] * n, [9000] * n))
        assert long.duration_ns > short.duration_ns
        # KV bytes grow by the latent (576 x 2 B) per extra context token per sequence, independent of TP
        assert long.bytes - short.bytes == n * 8000 * 576 * 2
        # decode FLOPs: every local head scores 576 dims and sums 512 dims per cached token
        assert long.flops - short.flops == 2 * n * 8000 * (128 // tp) * (576 + 512)
    # fp8 KV cache halves the latent bytes
    r8 = Roofline(DSV3, HW, tp=8, kv_dtype="fp8")
    a, b = _attn(r8, BatchShape([1], [1000])), _attn(r8, BatchShape([1], [2000]))
    assert b.bytes - a.bytes == 1000 * 576


def test_mla_decode_is_far_cheaper_in_kv_than_the_expanded_heads():
    """The latent cache (576 values per token) against MHA's K and V of 128 heads (128 x 256 values)."""
    r = Roofline(DSV3, HW)
    dec = _attn(r, BatchShape([1] * 8, [8000] * 8))
    assert dec.bytes < 8 * 8001 * 128 * 256 * 2 / 20


def test_mla_prefill_uses_the_expanded_form_and_mixed_batches_add_both():
    r = Roofline(DSV3, HW)
    pre = _attn(r, BatchShape([512], [0]))
    units = 512 * (0 + 513 / 2)
    assert pre.flops == int(2 * units * 128 * (192 + 128))  # MHA with qk width 192, v width 128
    dec = _attn(r, BatchShape([1] * 16, [2000] * 16))
    mixed = _attn(r, BatchShape([512] + [1] * 16, [0] + [2000] * 16))
    assert mixed.duration_ns == pre.duration_ns + dec.duration_ns  # vLLM runs the two parts separately
    assert mixed.flops == pre.flops + dec.flops
    # kv_b_proj: absorbed bmm's for decodes, one up-projection GEMM over ctx + q rows for prefills
    def kvb(q, c):
        return next(o for o in r.layer_ops(BatchShape(q, c)) if o.name == "kv_b_proj")

    assert kvb([1] * 16, [2000] * 16).flops == 2 * 16 * 128 * (128 * 512 + 512 * 128)
    assert kvb([512], [0]).flops == 2 * 512 * 512 * 128 * 256
    assert kvb([512], [4096]).flops == 2 * (4096 + 512) * 512 * 128 * 256
    assert kvb([512], [4096]).duration_ns > kvb([512], [0]).duration_ns
    assert kvb([512] + [1] * 16, [0] + [2000] * 16).flops == kvb([512], [0]).flops + kvb([1] * 16, [2000] * 16).flops


def test_dense_prefix_layer_ops():
    r = Roofline(DSV3, HW, tp=8)
    assert r.dense_prefix_layers == 3
    shape = BatchShape([1] * 8, [500] * 8)
    dense = r.dense_prefix_layer_ops(shape)
    moe = r.layer_ops(shape)
    names = [o.name for o in dense]
    assert names[-3:] == ["gate_up_proj", "act_fn", "down_proj"] and "moe" not in names
    assert [o.name for o in moe][-3:] == ["moe_gate", "moe", "shared_experts"]
    gate_up = next(o for o in dense if o.name == "gate_up_proj")
    assert gate_up.flops == 2 * 8 * 7168 * 2 * (18432 // 8)  # intermediate_size, TP-sharded
    # the attention block is the same in both kinds of layer
    assert dense[:9] == moe[:9]
    # memoized per kind: asking again (either order) gives the same ops
    assert r.dense_prefix_layer_ops(shape) == dense and r.layer_ops(shape) == moe
    # models without a dense prefix: 0, and dense_prefix_layer_ops of a dense model is its layer
    q = Roofline(_model("Qwen3-30B-A3B"), HW)
    assert q.dense_prefix_layers == 0
    llama = Roofline(_model("Llama-3.1-8B"), HW)
    assert llama.dense_prefix_layers == 0 and llama.dense_prefix_layer_ops(shape) == llama.layer_ops(shape)


def test_shared_experts_add_time_to_the_moe_ops():
    r = Roofline(DSV3, HW, tp=8)
    t = 64
    ops = r.moe_ops(t)
    assert [o.name for o in ops] == ["moe_gate", "moe", "shared_experts"]
    shared = ops[2]
    inter = 2048 // 8
    assert shared.flops == 2 * t * 7168 * 2 * inter + int(t * inter * 5) + 2 * t * inter * 7168
    assert shared.duration_ns > 0
    # the same model without shared experts has only the router and the routed experts
    from dataclasses import replace
    bare = Roofline(replace(DSV3, shared_expert_intermediate_size=0), HW, tp=8).moe_ops(t)
    assert [o.name for o in bare] == ["moe_gate", "moe"] and bare == ops[:2]
    assert sum(o.duration_ns for o in ops) > sum(o.duration_ns for o in bare)
    # under expert parallelism the shared experts stay TP-sharded over all t tokens
    k = DSV3.experts_per_token
    routing = make_router("balanced").route(t, k, ExpertPlacement(DSV3.num_experts, 16))
    ep = r.moe_ops(t, routing)
    assert [o.name for o in ep] == ["moe_gate", "moe", "shared_experts"] and ep[2] == shared


def test_models_without_shared_experts_keep_their_moe_ops():
    q = Roofline(_model("Qwen3-235B-A22B"), HW, tp=4)
    assert [o.name for o in q.moe_ops(100)] == ["moe_gate", "moe"]
    names = [o.name for o in q.layer_ops(BatchShape([100], [0]))]
    assert names == ["layernorm", "qkv_proj", "qk_norm", "rotary_emb", "attention", "o_proj", "layernorm",
                     "moe_gate", "moe"]
