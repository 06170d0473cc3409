"""Prefill/decode disaggregation (frontend/pd.py): hand-off, KV transfer bytes and timing, decode-side block
pressure, conditional disaggregation, configuration errors."""

from __future__ import annotations

import pytest

from frontend.config.loader import ConfigError, parse_config, resolve
from frontend.config.models import DTYPE_BYTES
from frontend.metrics.report import summarize
from frontend.session import simulate
from frontend.workload.request import Request
from tests.conftest import small_run_dict

NVL2 = {"dims": [{"topology": "Switch", "npus": 2, "bw_gbps": 450, "latency_ns": 500}]}


def _pd_run(decode_blocks: int | None = None, pd: dict | None = None, n_req: int = 40, tp_p: int = 2, tp_d: int = 2,
            same_node: bool = False, **workload):
    insts = [{"name": "p", "hardware": "H100-SXM", "tp": tp_p, "role": "prefill", "node": 0, **({"network": NVL2}
                                                                                                 if tp_p > 1 else {})},
             {"name": "d", "hardware": "H100-SXM", "tp": tp_d, "role": "decode", "node": 0 if same_node else 1,
              **({"network": NVL2} if tp_d > 1 else {})}]
    if decode_blocks is not None:
        insts[1]["engine"] = {"max_num_seqs": 32, "max_num_batched_tokens": 512, "block_size": 16,
                              "num_gpu_blocks_override": decode_blocks}
    d = small_run_dict(instances=insts)
    d["workload"]["num_requests"] = n_req
    d["workload"].update(workload)
    if pd:
        d["pd"] = pd
    return resolve(parse_config(d, "x.yaml"))


def _req(i: int, t: int, prompt: int, out: int) -> Request:
    return Request(request_id=f"r{i}", arrival_ns=t, input_tokens=prompt, output_tokens=out)


def test_transferred_bytes_equal_the_formula_summed_over_requests():
    run = _pd_run()
    res, extra = simulate(run)
    s = summarize(res, extra)
    m = run.instances[0].model
    per_token = 2 * m.num_kv_heads * m.head_dim * m.num_layers * DTYPE_BYTES["bf16"]
    assert m.kv_bytes_per_token(2) == per_token
    assert s["completed"] == 40 and s["pd"]["transfers"] == 40
    assert s["pd"]["kv_transfer_bytes"] == sum(r.input_tokens for r in res.requests) * per_token
    assert {r.instance for r in res.requests} == {"d"}  # every client token came from the decode side
    assert s["per_instance"][0]["iterations"] > 0  # the prefill instance ran the prompts


def test_ttft_includes_the_transfer_and_the_decode_side_first_step():
    run = _pd_run(tp_p=1, tp_d=1)
    res, _ = simulate(run, requests=[_req(0, 0, 4000, 3)])
    r = res.requests[0]
    t = res.pd.stats.transfers[0]
    m = run.instances[0].model
    nbytes = 4000 * m.kv_bytes_per_token(2)
    assert t.bytes == nbytes and t.end_ns - t.start_ns == int(nbytes / 50.0) + 2000  # 1 lane, 50 GB/s, 2 us
    rows = res.iterations.rows
    p_rows = [x for x in rows if x[0] == "p"]
    assert t.handoff_ns == p_rows[-1][2]  # the hand-off is the end of the last prefill step
    d_first = min(x for x in rows if x[0] == "d" and x[1] >= t.end_ns)
    assert r.first_token_ns == d_first[2] and r.first_token_ns > t.end_ns
    assert r.finish_ns > r.first_token_ns and r.instance == "d"


def test_more_gpu_pairs_move_the_kv_faster_and_one_node_uses_the_scale_up_link():
    one = _pd_run(tp_p=1, tp_d=1)
    two = _pd_run(tp_p=2, tp_d=2)
    near = _pd_run(tp_p=2, tp_d=2, same_node=True)
    req = [_req(0, 0, 3000, 2)]
    t1, t2, t3 = (simulate(r, requests=[_req(0, 0, 3000, 2)])[0].pd.stats.transfers[0] for r in (one, two, near))
    assert req and t1.bytes == t2.bytes == t3.bytes
    assert t2.end_ns - t2.start_ns == int(t1.bytes / (2 * 50.0)) + 2000
    assert t3.end_ns - t3.start_ns == int(t1.bytes / (2 * 450.0)) + 1000


def test_concurrent_transfers_share_the_links_in_turn():
    run = _pd_run(tp_p=1, tp_d=1)
    res, _ = simulate(run, requests=[_req(0, 0, 1500, 2), _req(1, 0, 1500, 2)])
    a, b = sorted(res.pd.stats.transfers, key=lambda t: t.start_ns)
    busy = int(a.bytes / 50.0)
    assert b.start_ns >= a.start_ns + busy  # the second waits for the first to leave the NICs


def test_every_request_completes_under_decode_side_block_pressure():
    run = _pd_run(decode_blocks=300, n_req=60)  # 4800 tokens of decode KV for prompts of ~300 tokens
    res, extra = simulate(run)
    s = summarize(res, extra)
    assert s["completed"] + s["rejected"] == 60 and s["completed"] > 50
    assert s["pd"]["decode_wait_ms"]["p99"] > s["pd"]["decode_wait_ms"]["mean"] > 0
    d = res.instances[1]
    assert not d.scheduler.awaiting_kv and d.pool.num_used == 0


def test_conditional_disaggregation_keeps_short_prefills_on_the_decode_instance():
    run = _pd_run(pd={"local_prefill_max_tokens": 200})
    res, extra = simulate(run)
    s = summarize(res, extra)
    short = sum(1 for r in res.requests if r.input_tokens <= 200)
    assert short > 0 and s["pd"]["local_prefills"] == short
    assert s["pd"]["transfers"] == 40 - short


def test_role_errors_name_the_problem():
    d = small_run_dict(instances=[{"name": "p", "hardware": "H100-SXM", "role": "prefill"}])
    with pytest.raises(ConfigError, match="prefill instances need at least one role: decode"):
        resolve(parse_config(d, "x.yaml"))
    d = small_run_dict(instances=[{"name": "d", "hardware": "H100-SXM", "role": "decode"}])
    with pytest.raises(ConfigError, match="decode instances need"):
        resolve(parse_config(d, "x.yaml"))
    d = small_run_dict(instances=[{"name": "p", "hardware": "H100-SXM", "role": "warm"}])
    with pytest.raises(ConfigError, match=r"instances\[0\].role"):
        parse_config(d, "x.yaml")


def test_a_transfer_is_a_chakra_graph_per_gpu_pair_and_is_dumped(tmp_path):
    from chakra_gen.graph import RECV, SEND
    from frontend.pd import transfer_graphs
    from frontend.session import ChakraDumper

    system, graphs = transfer_graphs(4, 2, 1000, 50.0, 2000.0, "p->d")
    assert system.num_npus == 8 and len(graphs) == 8
    sends = [(g.rank, g.attrs[0]) for g in graphs if g.types[0] == SEND]
    recvs = [(g.rank, g.attrs[0]) for g in graphs if g.types[0] == RECV]
    assert sends == [(0, {"comm_dst": 4, "comm_tag": 1, "comm_size": 500}),
                     (1, {"comm_dst": 5, "comm_tag": 1, "comm_size": 500})]  # 2 lanes: the decode side has 2 GPUs
    assert [r for r, _ in recvs] == [4, 5]
    run = _pd_run(n_req=6)
    dump = ChakraDumper({0, 1, 2}, tmp_path)
    simulate(run, dump=dump)
    kv = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("iter-kv"))
    assert kv == ["iter-kv0", "iter-kv1", "iter-kv2"]
    assert (tmp_path / "iter-kv0" / "workload.0.et").is_file() and (tmp_path / "iter-kv0" / "embedded.json").is_file()


def test_cost_is_gpu_hours_at_each_hardware_entrys_price_and_absent_without_one():
    d = small_run_dict(instances=[{"name": "p", "hardware": "H100-SXM", "role": "prefill", "node": 0},
                                  {"name": "d", "hardware": "L40S", "role": "decode", "node": 1}])
    d["workload"]["num_requests"] = 10
    res, extra = simulate(resolve(parse_config(d, "x.yaml")))
    s = summarize(res, extra)
    hours = s["simulated_duration_s"] / 3600
    assert s["cost"]["gpus"] == 2
    assert s["cost"]["usd"] == pytest.approx((2.95 + 1.46) * hours, rel=1e-4)
    assert s["cost"]["output_tokens_per_usd"] == pytest.approx(sum(r.output_tokens for r in res.requests)
                                                               / s["cost"]["usd"], rel=1e-3)
    d["instances"][1]["hardware"] = "RTXPRO6000"  # no rental price with a source in its entry
    res, extra = simulate(resolve(parse_config(d, "x.yaml")))
    assert "cost" not in summarize(res, extra)


def test_a_request_no_decode_instance_can_hold_is_rejected_not_stuck():
    run = _pd_run(decode_blocks=100, n_req=1)  # 1600 tokens of decode KV
    res, _ = simulate(run, requests=[_req(0, 0, 3000, 4), _req(1, 0, 500, 4)])
    by = {r.request_id: r for r in res.requests}
    assert by["r0"].status == "rejected" and by["r0"].reject_reason.startswith("decode side: needs")
    assert by["r1"].status == "finished"
