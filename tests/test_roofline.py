"""Roofline numbers for one layer against a hand calculation."""

from __future__ import annotations

from frontend.compute.batch import BatchShape
from frontend.compute.roofline import Roofline
from frontend.config.hardware import HardwareSpec
from frontend.config.models import ModelSpec

M = ModelSpec("m", hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
              intermediate_size=14336, vocab_size=128256)
HW = HardwareSpec(name="hw", peak_tflops={"bf16": 1000.0}, hbm_capacity_gib=80, hbm_bw_gbps=2000, tdp_w=700,
                  efficiency={"gemm_flops": 0.5, "mem_bw": 0.5, "attention_flops": 0.5}, kernel_launch_ns=0)


def test_decode_gemm_is_memory_bound():
    r = Roofline(M, HW)
    ops = {o.name: o for o in r.layer_ops(BatchShape(q=[1], ctx=[1000], num_sampled=1))}
    # qkv: weights 4096 x (32+16)*128 x 2 B = 50,331,648 B, plus in/out rows
    qkv_bytes = (4096 * 6144 + 4096 + 6144) * 2
    assert ops["qkv_proj"].bytes == qkv_bytes
    # memory-bound: the weight stream plus the default unhidden share (0.29) of 16 rows of tensor-core work
    tc = 2 * 16 * 4096 * 6144 / (1000e12 * 0.5 / 1e9)
    assert ops["qkv_proj"].duration_ns == int(qkv_bytes / (2000 * 0.5) + 0.29 * tc)
    assert ops["qkv_proj"].flops == 2 * 4096 * 6144


def test_prefill_gemm_is_compute_bound():
    r = Roofline(M, HW)
    ops = {o.name: o for o in r.layer_ops(BatchShape(q=[2048], ctx=[0], num_sampled=1))}
    flops = 2 * 2048 * 4096 * 2 * 14336
    assert ops["gate_up_proj"].flops == flops
    assert ops["gate_up_proj"].duration_ns == int(flops / (1000e12 * 0.5 / 1e9))


def test_gemm_tile_rows_and_overlap_loss():
    """16 rows up to 16 tokens (one mma instruction tall), then multiples of 64; a memory-bound GEMM pays
    gemm_overlap_loss of its tensor-core time on top of its memory time, a compute-bound one none."""
    from frontend.compute.roofline import gemm_ns, gemm_rows

    assert [gemm_rows(m) for m in (1, 16, 17, 64, 65, 2048)] == [16, 16, 64, 64, 128, 2048]
    assert gemm_ns(64, 1000, 1000, 1e6, 1000.0, 10.0, 0.25) == int(1e6 / 10 + 0.25 * 2 * 64e6 / 1000)
    assert gemm_ns(2048, 1000, 1000, 1e6, 1000.0, 1000.0, 0.25) == int(2 * 2048e6 / 1000)
    hw = HW.model_copy(update={"efficiency": HW.efficiency.model_copy(update={"gemm_overlap_loss": 0.0})})
    ops = {o.name: o for o in Roofline(M, hw).layer_ops(BatchShape(q=[40], ctx=[0], num_sampled=1))}
    assert ops["down_proj"].duration_ns == int(ops["down_proj"].bytes / 1000)  # pure weight stream


def test_mixed_batch_attention_pays_whole_query_tiles_and_the_sm_bound():
    """A decode riding in a mixed (varlen) batch costs a whole query tile; a batch of few tiles is bounded
    by its slowest tile on one SM (calibrated tile height: the shipped RTX entries hold 66-68 rows)."""
    from frontend.compute.roofline import attention_tile_units

    assert attention_tile_units(1, 999, 64) == 64 * 1000
    assert attention_tile_units(100, 0, 64) == 2 * 64 * 0 + 64 * (64 * 1 + 100)  # tiles see 64 and 100 keys
    hw = HW.model_copy(update={"attention_tile_rows": 64, "num_sms": None, "attention_floor_ns": 0,
                               "attention_per_seq_ns": 0})
    r = Roofline(M, hw)
    mixed = BatchShape(q=[1, 100], ctx=[999, 0], num_sampled=2)
    busy = 32 * (64 * 1000 + 64 * (64 + 100))  # 32 heads
    rate = 1000e12 * 0.5 / 1e9
    assert r.attention(mixed).duration_ns == int(max(4 * busy * 128 / rate, r.attention(mixed).bytes / 1000))
    sm = Roofline(M, hw.model_copy(update={"num_sms": 1000}))
    bound = 64 * 1000 * 1000  # the longest sequence's last tile (1000 keys) on one of 1000 SMs
    assert sm.attention(mixed).duration_ns == int(4 * bound * 128 / rate)
    decode_only = BatchShape(q=[1, 1], ctx=[999, 99], num_sampled=2)  # split-KV path: no tiles
    assert sm.attention(decode_only).duration_ns == r.attention(decode_only).duration_ns


def test_qk_norm_follows_the_family_architecture():
    import dataclasses

    qwen = dataclasses.replace(M, model_type="qwen3")
    names = [o.name for o in Roofline(qwen, HW).layer_ops(BatchShape(q=[8], ctx=[0], num_sampled=1))]
    assert names[:4] == ["layernorm", "qkv_proj", "qk_norm", "rotary_emb"]
    assert "qk_norm" not in [o.name for o in Roofline(M, HW).layer_ops(BatchShape(q=[8], ctx=[0], num_sampled=1))]


def test_attention_flops_and_kv_bytes():
    r = Roofline(M, HW)
    shape = BatchShape(q=[1, 100], ctx=[999, 0], num_sampled=2)
    a = r.attention(shape)
    units = 1 * (999 + 1) + 100 * (0 + 101 / 2)
    assert a.flops == int(4 * units * 128 * 32)
    kv = (1000 + 100) * 2 * 8 * 128 * 2
    qo = 2 * 101 * 32 * 128 * 2 + 101 * 2 * 8 * 128 * 2
    assert a.bytes == kv + qo


def test_tp_splits_weights():
    r1, r2 = Roofline(M, HW, tp=1), Roofline(M, HW, tp=2)
    s = BatchShape(q=[1], ctx=[10], num_sampled=1)
    o1 = {o.name: o for o in r1.layer_ops(s)}
    o2 = {o.name: o for o in r2.layer_ops(s)}
    assert abs(o2["down_proj"].bytes / o1["down_proj"].bytes - 0.5) < 0.01


def test_moe_reads_only_touched_experts():
    moe = ModelSpec("moe", hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128,
                    intermediate_size=6144, vocab_size=151936, num_experts=128, experts_per_token=8,
                    moe_intermediate_size=768)
    r = Roofline(moe, HW)
    one = {o.name: o for o in r.layer_ops(BatchShape(q=[1], ctx=[10], num_sampled=1))}["moe"]
    many = {o.name: o for o in r.layer_ops(BatchShape(q=[4096], ctx=[0], num_sampled=1))}["moe"]
    w_expert = 3 * 2048 * 768 * 2
    assert abs(one.bytes - (8 * w_expert + 8 * (2 * 2048 + 3 * 768) * 2)) < w_expert * 0.01
    assert many.bytes > 127 * w_expert  # all experts touched
