"""Expert parallelism and DP groups in the loop: lockstep, dummy batches, padding, EP collectives, routing."""

from __future__ import annotations

import pytest

from chakra_gen.graph import COLL, CollectiveType
from frontend.cluster import LockstepGroup, SoloUnit, build_units, cudagraph_capture_sizes, padded_tokens
from frontend.compute.batch import BatchShape
from frontend.config.loader import parse_config, resolve
from frontend.router import Router
from frontend.session import build_instances, make_backend, simulate
from frontend.workload.request import Request
from tests.conftest import small_run_dict

NET2 = {"dims": [{"topology": "FullyConnected", "npus": 2, "bw_gbps": 50, "latency_ns": 5000}]}


def _run(dp: int = 2, tp: int = 1, workload: dict | None = None, **over):
    inst = {"name": "g", "hardware": "H100-SXM", "tp": tp, "dp": dp, "enable_expert_parallel": True}
    n = tp * dp
    if n > 1:  # TP dimension first, then the DP one
        inst["network"] = {"dims": [{"topology": "FullyConnected", "npus": x, "bw_gbps": 50, "latency_ns": 5000}
                                    for x in (tp, dp) if x > 1]}
    d = small_run_dict(model="Qwen3-30B-A3B", instances=[inst], **over)
    if workload is not None:
        d["workload"] = workload
    return resolve(parse_config(d, "x.yaml"))


def _units(run):
    be = make_backend(run)
    insts = build_instances(run, be)
    return insts, build_units(insts, be, run.config.backend.system), be


def _req(i: int, t_ns: int, prompt: int, out: int) -> Request:
    return Request(request_id=f"r{i}", arrival_ns=t_ns, input_tokens=prompt, output_tokens=out)


def test_capture_sizes_and_padding_follow_vllm_defaults():
    c = cudagraph_capture_sizes(128)  # max capture size min(2 x 128, 512) = 256
    assert c[:5] == [1, 2, 4, 8, 16] and c[-3:] == [240, 248, 256] and 252 not in c
    assert cudagraph_capture_sizes(256)[-1] == 512 and 272 in cudagraph_capture_sizes(256)
    assert padded_tokens(33, c) == 40 and padded_tokens(256, c) == 256
    assert padded_tokens(257, c) == 0  # beyond the largest graph: eager, no padding
    assert padded_tokens(5, []) == 0  # enforce_eager


def test_dp_group_is_one_lockstep_unit_and_dense_dp_members_are_independent():
    run = _run()
    insts, units, _ = _units(run)
    assert len(units) == 1 and isinstance(units[0], LockstepGroup)
    assert [m.name for m in units[0].members] == ["g-dp0", "g-dp1"] and all(i.unit is units[0] for i in insts)
    d = small_run_dict(instances=[{"name": "g", "hardware": "H100-SXM", "dp": 2, "network": NET2}])
    dense = resolve(parse_config(d, "x.yaml"))
    _, du, _ = _units(dense)
    assert [type(u) for u in du] == [SoloUnit, SoloUnit]


def test_idle_member_runs_a_dummy_batch_and_members_end_together():
    run = _run()
    res, _ = simulate(run, requests=[_req(0, 0, 300, 5)])
    rows = res.iterations.rows
    by_inst: dict[str, list] = {}
    for r in rows:
        by_inst.setdefault(r[0], []).append(r)
    assert set(by_inst) == {"g-dp0", "g-dp1"}
    a, b = by_inst["g-dp0"], by_inst["g-dp1"]
    assert len(a) == len(b) == 5  # one prefill step (with its first token) and four decodes, both members
    assert [(x[1], x[2]) for x in a] == [(x[1], x[2]) for x in b]  # same start and end: lockstep
    real, dummy = (a, b) if a[0][3] else (b, a)
    assert all(x[3] == 1 for x in real) and all(x[3] == 0 for x in dummy)  # the idle member ran empty steps
    g = res.instances[0].unit
    assert g.stats.steps == 5 and g.stats.dummy_member_steps == 5


def test_padding_runs_dense_operators_at_the_groups_largest_batch():
    run = _run()
    _, (g,), _ = _units(run)
    small = BatchShape(q=[1] * 3, ctx=[100] * 3, num_sampled=3)
    big = BatchShape(q=[1] * 30, ctx=[100] * 30, num_sampled=30)
    cost = g._group_cost([small, big], padded_tokens(30, g.capture_sizes), 64, True)
    lead = g.members[0].compute
    alone = lead.layer_ops(BatchShape(q=[32], ctx=[0], num_sampled=1), tokens_routed=64)
    assert [o.duration_ns for o in cost.layer if o.name == "qkv_proj"] == \
        [o.duration_ns for o in alone if o.name == "qkv_proj"]  # 30 -> capture size 32
    attn = [o for o in cost.layer if o.name == "attention"][0]
    assert attn == [o for o in lead.layer_ops(big) if o.name == "attention"][0]  # the slower member's attention


def test_group_step_has_ep_dispatch_and_combine_on_the_dp_dimension():
    run = _run(dp=2, tp=2, workload=None)
    run.instances[0].group_dims  # noqa: B018 - resolved
    insts, (g,), be = _units(run)
    for m in insts:
        m.scheduler.add(_req(int(m.name[-1]), 0, 64, 2))
    outs = g.step(0)
    assert outs is not None and len(outs) == 2
    graphs = outs[0][1].graphs
    assert len(graphs) == 4  # dp x tp ranks
    t = graphs[0].template
    colls = [(n[0], n[5]) for n in t.layer if n[1] == COLL]
    names = [c[0] for c in colls]
    assert names == ["o_proj.allreduce", "moe.dispatch", "moe.combine", "moe.allreduce"]
    attrs = dict(colls)
    assert attrs["moe.dispatch"]["comm_type"] == CollectiveType.ALL_GATHER
    assert attrs["moe.combine"]["comm_type"] == CollectiveType.REDUCE_SCATTER
    assert attrs["moe.dispatch"]["involved_dim"] == [False, True]
    assert attrs["o_proj.allreduce"]["involved_dim"] == [True, False]
    m = run.instances[0].model
    tokens = 64  # both members prefill 64 tokens: a CUDA-graph size, nothing to pad
    assert attrs["moe.dispatch"]["comm_size"] == tokens * (m.hidden_size + m.num_experts) * 2
    assert attrs["moe.combine"]["comm_size"] == 2 * tokens * m.hidden_size * 2


def test_expert_parallel_costs_the_straggler_and_skew_raises_it():
    balanced = _run(dp=1, tp=2)
    skewed = _run(dp=1, tp=2, moe={"routing": "skewed", "zipf_s": 1.2})
    tb = build_instances(balanced, make_backend(balanced))[0].compute
    ts = build_instances(skewed, make_backend(skewed))[0].compute

    def moe(c, shape):
        return [o for o in c.layer_ops(shape) if o.name == "moe"][0].duration_ns

    # a large prefill batch is compute-bound on the straggler: skew piles assignments onto the hot rank
    prefill = BatchShape(q=[8192], ctx=[0], num_sampled=1)
    assert moe(ts, prefill) > 1.1 * moe(tb, prefill)
    assert tb.last_routing.imbalance == pytest.approx(1.0)
    ts.layer_ops(prefill)
    assert ts.last_routing.imbalance > 1.2
    # a decode batch is weight-bound: hot experts mean fewer distinct experts streamed, so skew is not slower
    decode = BatchShape(q=[1] * 64, ctx=[500] * 64, num_sampled=64)
    assert moe(ts, decode) <= moe(tb, decode)
    # EP halves the experts a rank streams against TP-sharded experts reading every touched expert
    dense_style = resolve(parse_config(small_run_dict(model="Qwen3-30B-A3B", instances=[
        {"name": "g", "hardware": "H100-SXM", "tp": 2, "network": NET2}]), "x.yaml"))
    td = build_instances(dense_style, make_backend(dense_style))[0].compute
    assert moe(td, decode) > moe(tb, decode)  # TP-sharded experts: every rank reads every touched expert


def test_random_routing_is_keyed_by_step_so_run_ahead_is_byte_identical(tmp_path):
    from tests.test_runahead import assert_same_both_ways

    d = small_run_dict(model="Qwen3-30B-A3B", moe={"routing": "random"}, instances=[
        {"name": "g", "hardware": "H100-SXM", "dp": 2, "enable_expert_parallel": True, "network": NET2}])
    import yaml

    p = tmp_path / "moe.yaml"
    p.write_text(yaml.safe_dump(d))
    assert_same_both_ways(p, None, tmp_path)


def test_dp_balance_router_scores_stale_counts_like_vllm():
    run = _run()
    insts, _, _ = _units(run)
    router = Router(run.config.router, insts)
    assert router.policy_name == "dp_balance"
    a, b = insts
    # a publication at t=0 sees both empty; then the balancer's own increments spread a burst
    picks = [router.choose(_req(i, 0, 10, 1), 0).name for i in range(4)]
    assert picks == ["g-dp0", "g-dp1", "g-dp0", "g-dp1"]
    # engine 0 gets 3 running (score 3) vs engine 1 with one waiting (score 4): engine 0 wins at the next publication
    for i in range(3):
        r = _req(10 + i, 0, 10, 1)
        a.scheduler.running.append(r)
    b.scheduler.waiting.append(_req(20, 0, 10, 1))
    # stale until the next publication: the balancer's own counts (2, 2) -> tie to the lowest index, then (3, 2)
    assert router.choose(_req(30, 0, 10, 1), 50_000_000).name == "g-dp0"
    assert router.choose(_req(31, 0, 10, 1), 60_000_000).name == "g-dp1"
    assert router.choose(_req(32, 0, 10, 1), 100_000_000).name == "g-dp0"  # published: scores 3 vs 4


def test_lockstep_run_finishes_every_request():
    run = _run()
    res, _ = simulate(run)
    assert res.request_log.finished == run.config.workload.num_requests
    names = {r.instance for r in res.requests}
    assert names == {"g-dp0", "g-dp1"}
