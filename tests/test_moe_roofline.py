"""Roofline MoE op per EP rank: the straggler's experts and tokens; unchanged without routing."""

from __future__ import annotations

import numpy as np

from frontend.compute.moe_routing import ExpertPlacement, make_router
from frontend.compute.roofline import Roofline
from frontend.config.hardware import load_hardware
from frontend.config.loader import find_catalog_file
from frontend.config.models import load_model_spec

MODEL = load_model_spec(find_catalog_file("Qwen3-30B-A3B", "models", None))
HW = load_hardware(find_catalog_file("H100-SXM", "hardware", None))


def test_ep1_balanced_equals_the_uniform_tp1_op():
    r = Roofline(MODEL, HW)
    for t in (1, 16, 300, 2048):
        bal = make_router("balanced").route(t, MODEL.experts_per_token, ExpertPlacement(MODEL.num_experts, 1))
        assert r.moe_ops(t, bal) == r.moe_ops(t)


def test_straggler_rank_sets_the_time():
    r = Roofline(MODEL, HW)
    t, k = 256, MODEL.experts_per_token
    p = ExpertPlacement(MODEL.num_experts, 8, "linear")
    bal = r.moe_ops(t, make_router("balanced").route(t, k, p))[1]
    one_rank = r.moe_ops(t, make_router("balanced").route(t, k, ExpertPlacement(MODEL.num_experts, 1)))[1]
    assert bal.duration_ns < one_rank.duration_ns  # EP8 streams an eighth of the activated experts
    rng = np.random.default_rng(0)
    skew = make_router("skewed", zipf_s=1.2).route(t, k, p, rng)
    op = r.moe_ops(t, skew)[1]
    assert op.duration_ns > bal.duration_ns  # skew raises the straggler time
    # the op is the slowest rank's: its assignments' FLOPs
    inter, d = MODEL.moe_intermediate_size, MODEL.hidden_size
    assert op.flops == int(2 * max(skew.assignments_per_rank) * 3 * d * inter)
