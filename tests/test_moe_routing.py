"""Expert routing per EP rank: placement, balanced closed form, sampling, skew, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frontend.compute.moe_routing import ExpertPlacement, make_router, router_names


def test_placement_linear_and_round_robin():
    lin = ExpertPlacement(8, 4, "linear")
    rr = ExpertPlacement(8, 4, "round_robin")
    assert lin.experts_of_rank(1) == [2, 3]
    assert rr.experts_of_rank(1) == [1, 5]
    for p in (lin, rr):  # every expert on exactly one rank, E / EP each
        assert sorted(sum((p.experts_of_rank(r) for r in range(4)), [])) == list(range(8))
        assert np.bincount(p.rank_of_expert(), minlength=4).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError):
        ExpertPlacement(128, 3)


def test_registry():
    assert {"balanced", "random", "skewed"} <= set(router_names())
    with pytest.raises(ValueError, match="unknown expert router"):
        make_router("nope")


def test_balanced_closed_form():
    p = ExpertPlacement(128, 4)
    r = make_router("balanced").route(16, 8, p)
    per_rank = 32 * (1 - (1 - 8 / 128) ** 16)
    assert r.experts_per_rank == pytest.approx((per_rank,) * 4)
    assert sum(r.assignments_per_rank) == pytest.approx(16 * 8)
    assert r.imbalance == pytest.approx(1.0)
    # a token misses a rank's 32 experts with probability C(96, 8) / C(128, 8)
    assert r.tokens_per_rank[0] == pytest.approx(16 * (1 - math.comb(96, 8) / math.comb(128, 8)))
    # EP = 1: every token reaches the one rank; t = 0: nothing is activated
    one = make_router("balanced").route(5, 2, ExpertPlacement(8, 1))
    assert one.tokens_per_rank == (5.0,)
    assert make_router("balanced").route(0, 2, p).experts_per_rank == (0.0,) * 4


@pytest.mark.parametrize("placement", ["linear", "round_robin"])
def test_balanced_matches_mean_of_random(placement: str):
    p = ExpertPlacement(64, 4, placement)
    bal = make_router("balanced").route(24, 6, p)
    rnd = make_router("random")
    rng = np.random.default_rng(7)
    samples = [rnd.route(24, 6, p, rng) for _ in range(400)]
    for field in ("experts_per_rank", "tokens_per_rank", "assignments_per_rank"):
        mean = np.mean([getattr(s, field) for s in samples], axis=0)
        assert mean == pytest.approx(np.array(getattr(bal, field)), rel=0.03), field


def test_conservation_of_assignments():
    p = ExpertPlacement(128, 8, "round_robin")
    rng = np.random.default_rng(3)
    for name, params in (("random", {}), ("skewed", {"zipf_s": 1.2})):
        r = make_router(name, **params).route(300, 8, p, rng)
        assert sum(r.assignments_per_rank) == 300 * 8
        assert all(tok <= 300 and tok <= a for tok, a in zip(r.tokens_per_rank, r.assignments_per_rank, strict=True))
        assert all(0 <= x <= 16 for x in r.experts_per_rank)


def test_seeded_determinism_and_no_global_state():
    p = ExpertPlacement(32, 4)
    np.random.seed(0)
    a = make_router("skewed", zipf_s=1.0).route(50, 4, p, np.random.default_rng(11))
    np.random.seed(999)  # global state must not matter
    b = make_router("skewed", zipf_s=1.0).route(50, 4, p, np.random.default_rng(11))
    c = make_router("skewed", zipf_s=1.0).route(50, 4, p, np.random.default_rng(12))
    assert a == b and a != c
    with pytest.raises(ValueError, match="Generator"):
        make_router("random").route(5, 2, p)


def test_skew_raises_imbalance_and_round_robin_spreads_it():
    rng = np.random.default_rng(5)
    lin = ExpertPlacement(64, 8, "linear")
    rr = ExpertPlacement(64, 8, "round_robin")
    skew = make_router("skewed", zipf_s=1.2)
    uni = make_router("random")
    im = {key: np.mean([r.route(512, 4, p, rng).imbalance for _ in range(20)])
          for key, r, p in (("uniform", uni, lin), ("skew_linear", skew, lin), ("skew_rr", skew, rr))}
    assert im["skew_linear"] > im["skew_rr"] > im["uniform"]
    assert im["uniform"] < 1.15
    assert make_router("skewed", zipf_s=1.2).route(512, 4, lin, rng).straggler_rank == 0  # hot experts 0..7
