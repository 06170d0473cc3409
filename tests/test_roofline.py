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
    assert ops["qkv_proj"].duration_ns == int(qkv_bytes / (2000 * 0.5))
    assert ops["qkv_proj"].flops == 2 * 4096 * 6144


def test_prefill_gemm_is_compute_bound():
    r = Roofline(M, HW)
    ops = {o.name: o for o in r.layer_ops(BatchShape(q=[2048], ctx=[0], num_sampled=1))}
    flops = 2 * 2048 * 4096 * 2 * 14336
    assert ops["gate_up_proj"].flops == flops
    assert ops["gate_up_proj"].duration_ns == int(flops / (1000e12 * 0.5 / 1e9))


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
