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
    return insts, build_units(insts, be, run.config.backend.system, run.config.moe.dispatch), be


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


def _deepseek(tp: int = 2, dp: int = 4):
    inst = {"name": "g", "hardware": "H200", "tp": tp, "dp": dp, "enable_expert_parallel": True,
            "network": {"dims": [{"topology": "Switch", "npus": n, "bw_gbps": 450, "latency_ns": 500}
                                 for n in (tp, dp) if n > 1]}}
    d = small_run_dict(model="DeepSeek-V3", instances=[inst])
    d["engine"] = {**d["engine"], "dtype": "fp8"}
    return resolve(parse_config(d, "x.yaml"))


def test_dense_prefix_layers_run_once_in_the_prologue_with_their_all_reduces():
    run = _deepseek()
    insts, (g,), _ = _units(run)
    m = run.instances[0].model
    assert (m.dense_prefix_layers, g.spec.num_layers, insts[0].spec.num_layers) == (3, 58, 58)
    for inst in insts:
        inst.scheduler.add(_req(int(inst.name[-1]), 0, 40, 2))
    outs = g.step(0)
    t = outs[0][1].graphs[0].template
    pro = [n[0] for n in t.prologue]
    assert pro.count("gate_up_proj") == 3 and pro.count("down_proj.allreduce") == 3 and pro.count("o_proj.allreduce") == 3
    assert "moe.dispatch" not in pro and t.num_layers == 58
    assert [n[0] for n in t.layer].count("moe.dispatch") == 1


def test_mla_kv_is_the_latent_on_every_tp_rank_and_weights_follow_the_layers():
    from frontend.config.loader import weight_bytes_per_npu

    run = _deepseek()
    ri = run.instances[0]
    m = ri.model
    assert ri.kv_block_bytes == 16 * (512 + 64) * 1 * 61  # block x latent x fp8 x layers, whatever tp
    assert _deepseek(tp=1, dp=8).instances[0].kv_block_bytes == ri.kv_block_bytes
    # per NPU: attention and dense layers over TP, routed experts over EP, embeddings over TP
    dense = 3 * m.dense_layer_params() / 2
    moe = 58 * ((m.layer_params() - m.routed_expert_params()) / 2 + m.routed_expert_params() / 8)
    emb = 2 * m.vocab_size * m.hidden_size / 2
    assert weight_bytes_per_npu(m, 1, 2, 1, 8, True) == int(dense + moe + emb)
    assert ri.weight_bytes_per_npu == int(dense + moe + emb)


def test_all_to_all_dispatch_sends_tokens_only_where_their_experts_are():
    run = _run(dp=4, moe={"routing": "balanced", "dispatch": "all_to_all"})
    insts, (g,), _ = _units(run)
    assert g.dispatch == "all_to_all"
    for inst in insts:
        inst.scheduler.add(_req(int(inst.name[-1]), 0, 64, 2))
    outs = g.step(0)
    t = outs[0][1].graphs[0].template
    colls = {n[0]: n[5] for n in t.layer if n[1] == COLL}
    assert colls["moe.dispatch"]["comm_type"] == colls["moe.combine"]["comm_type"] == CollectiveType.ALL_TO_ALL
    m = run.instances[0].model
    r = g._routing
    p = max(r.tokens_per_rank) / r.num_tokens  # a token reaches a given rank with this probability (top-8 of 128)
    assert 0.5 < p < 1.0 and r.num_tokens == 4 * 64
    assert colls["moe.dispatch"]["comm_size"] == int(64 * p * 4 * m.hidden_size * 2)


def test_summary_reports_the_groups_padding_dummies_and_imbalance():
    from frontend.metrics.report import summarize

    run = _run(moe={"routing": "skewed", "zipf_s": 1.0})
    res, extra = simulate(run)
    s = summarize(res, extra)["moe"]
    assert s["routing"] == "skewed" and len(s["groups"]) == 1
    grp = s["groups"][0]
    assert grp["members"] == ["g-dp0", "g-dp1"] and grp["steps"] > 0
    assert grp["mean_straggler_imbalance"] > 1.0 and grp["max_straggler_imbalance"] >= grp["mean_straggler_imbalance"]


@pytest.mark.parametrize("compute, bound", [("roofline", 10.0), ("profile", 30.0)])
def test_the_dp2_ep2_reference_set_is_reproduced(tmp_path, compute: str, bound: float):
    """The RTX PRO 6000 Qwen3-30B-A3B DP2+EP2 set: roofline within the issue's 10% on every TTFT/TPOT/E2E
    statistic; the profile path is held to its current 30% (TPOT and E2E within 10%) so a regression shows."""
    from pathlib import Path

    from frontend.config.loader import load_and_resolve
    from frontend.metrics.report import write_outputs
    from frontend.validation.compare import compare
    from tests.conftest import LSS, need_shared

    need_shared()
    repo = Path(__file__).resolve().parents[1]
    run = load_and_resolve(repo / "configs/examples/validate-rtxpro6000-qwen3-30b-a3b-dp2ep2.yaml",
                           {"compute": {"kind": compute}} if compute == "roofline" else None)
    res, extra = simulate(run)
    write_outputs(res, tmp_path, extra)
    table = compare(tmp_path, LSS / "validation" / "RTXPRO6000-Qwen3-30B-A3B" / "vllm")
    errs = {(k, st): v["error_pct"] for k, stats in table["latency"].items() for st, v in stats.items()}
    assert max(abs(e) for e in errs.values()) < bound, errs
    assert max(abs(e) for (k, _), e in errs.items() if k != "ttft") < 10.0, errs


def test_expert_trace_routes_each_step_by_its_requests_histograms(tmp_path):
    import json

    from frontend.compute.moe_routing import ExpertPlacement, ExpertTrace, make_router

    pl = ExpertPlacement(128, 2)  # linear: experts 0..63 on rank 0
    p = tmp_path / "experts.jsonl"
    hot = [0] * 128
    for e in range(8):
        hot[e] = 10  # request "hot" only ever picks experts 0..7 (rank 0)
    p.write_text(json.dumps({"request_id": "hot", "experts": hot}) + "\n"
                 + json.dumps({"request_id": "sparse", "experts": {"64": 3, "65": 1}}) + "\n")
    tr = ExpertTrace(p, 128)
    r = tr.route_batch([("hot", 100)], 8, pl, 100)
    assert sum(r.assignments_per_rank) == pytest.approx(800)  # t x k, conserved
    assert r.assignments_per_rank[0] == pytest.approx(800) and r.assignments_per_rank[1] == pytest.approx(0)
    assert r.experts_per_rank[0] == pytest.approx(8, abs=1e-6) and r.imbalance == pytest.approx(2.0)
    s = tr.route_batch([("sparse", 10)], 8, pl, 10)
    assert s.assignments_per_rank[1] == pytest.approx(80) and s.experts_per_rank[1] < 2.0
    # a request the trace does not name, and padding, route uniformly: close to the balanced closed form
    u = tr.route_batch([("unknown", 30)], 8, pl, 64)
    b = make_router("balanced").route(64, 8, pl)
    assert u.assignments_per_rank == pytest.approx(b.assignments_per_rank)
    assert u.experts_per_rank == pytest.approx(b.experts_per_rank, rel=0.02)
    for bad, msg in (({"request_id": "x"}, "expected an object"), ({"request_id": "x", "experts": [1, 2]}, "list of 128"),
                     ({"request_id": "x", "experts": {"200": 1}}, "outside 0..127"),
                     ({"request_id": "x", "experts": {"3": -1}}, "finite number >= 0")):
        p.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=msg) as e:
            ExpertTrace(p, 128)
        assert f"{p}:1" in str(e.value)


def test_trace_routing_in_a_dp_group_raises_the_straggler(tmp_path):
    import json

    from frontend.metrics.report import summarize

    hot = [0] * 128
    for e in range(8):
        hot[e] = 1
    p = tmp_path / "experts.jsonl"
    p.write_text("".join(json.dumps({"request_id": f"req-{i}", "experts": hot}) + "\n" for i in range(40)))
    run = _run(moe={"routing": "trace", "expert_trace": str(p)})
    res, extra = simulate(run)
    g = summarize(res, extra)["moe"]["groups"][0]
    assert g["mean_straggler_imbalance"] > 1.5  # all tokens on rank 0's experts (padding still uniform)
    base = summarize(*simulate(_run()))["moe"]["groups"][0]
    assert base["mean_straggler_imbalance"] == pytest.approx(1.0)
    from frontend.config.loader import ConfigError

    with pytest.raises(ConfigError, match="routing: trace needs expert_trace"):
        _run(moe={"routing": "trace"})
