"""The cluster network (frontend/network/) and prefill/decode transfers over it (issue 14 items 1 and 3)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from astra_bridge.network_messages import TimedMessage, model_finish
from frontend.config.loader import load_and_resolve, parse_config, resolve
from frontend.errors import ConfigError
from frontend.network.linknet import LinkNetwork, astra_bytes_per_ns
from frontend.network.topology import ClusterTopology
from frontend.session import simulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _switch(n: int, bw: float, lat: float) -> ClusterTopology:
    return ClusterTopology(num_nodes=n, npus_per_node=1, scale_up_bw_gbps=1.0, scale_up_latency_ns=0.0,
                           scale_out_bw_gbps=bw, scale_out_latency_ns=lat)


def test_reference_table_of_the_congestion_aware_binary_is_reproduced_exactly():
    """Per-NPU finish times the ASTRA-sim congestion-aware binary gave for each message set
    (bench/differential_network.py --json) equal the in-process network's."""
    import differential_network as dn

    ref = json.loads((REPO / "tests" / "astra_sim_network_reference.json").read_text())
    assert len(ref["cases"]) >= 20
    for c in ref["cases"]:
        assert dn.run_model(c) == c["binary_finish_ns"], c["name"]


def test_one_message_is_stored_and_forwarded_per_hop():
    topo = _switch(2, 50.0, 2000.0)
    size = 64 << 20
    bpn = astra_bytes_per_ns(50.0)
    hop = int(2000.0 + size / bpn)
    assert model_finish(topo.build(), topo.route, 2, [TimedMessage(0, 0, 1, size)]) == [2 * hop, 2 * hop]


def test_messages_sharing_a_link_queue_first_come_first_served():
    """Two NPUs send to a third at once: both reach the switch together, the downlink serves one, then the
    other one serialization later."""
    topo = _switch(3, 25.0, 1000.0)
    size = 8 << 20
    ser = int(size / astra_bytes_per_ns(25.0))
    fin = model_finish(topo.build(), topo.route, 3, [TimedMessage(0, 0, 2, size), TimedMessage(0, 1, 2, size)])
    first = 2 * (1000 + ser)
    assert fin[0] == first
    assert fin[1] == first + ser
    assert fin[2] == fin[1]


def test_an_npu_has_one_send_in_flight():
    """ASTRA-sim's HardwareResource: an NPU's second message leaves when its first has arrived."""
    topo = _switch(3, 50.0, 500.0)
    size = 1 << 20
    one = 2 * int(500.0 + size / astra_bytes_per_ns(50.0))
    fin = model_finish(topo.build(), topo.route, 3, [TimedMessage(0, 0, 1, size), TimedMessage(0, 0, 2, size)])
    assert fin[1] == one and fin[2] == 2 * one and fin[0] == 2 * one


def test_routes_and_the_oversubscribed_spine():
    t = ClusterTopology(num_nodes=4, npus_per_node=2, scale_up_bw_gbps=450.0, scale_up_latency_ns=1000.0,
                        scale_out_bw_gbps=50.0, scale_out_latency_ns=2000.0, nodes_per_leaf=2, oversubscription=2.0)
    assert len(t.route(0, 1)) == 3  # same node: its scale-up switch
    assert len(t.route(0, 2)) == 3  # nodes 0 and 1 share a leaf
    assert len(t.route(0, 4)) == 5  # over the spine
    assert t.uplink_bw_gbps() == 2 * 2 * 50.0 / 2.0
    net = t.build()
    leaf0, spine = t.route(0, 4)[1], t.route(0, 4)[2]
    assert net.links[(leaf0, spine)].bytes_per_ns == pytest.approx(astra_bytes_per_ns(100.0))


def test_a_message_cannot_be_issued_in_the_past():
    net = LinkNetwork()
    net.connect(0, 1, 10.0, 0.0)
    net.send_at(100, 0, 1, 10, [0, 1])
    net.run()
    with pytest.raises(ValueError, match="before the network's time"):
        net.send_at(50, 0, 1, 10, [0, 1])


NV2 = {"dims": [{"topology": "Switch", "npus": 2, "bw_gbps": 450, "latency_ns": 500, "algorithm": "direct"}]}
NV4 = {"preset": "h100-nvlink-4"}
PD = {
    "name": "pd-net", "seed": 3, "model": "Llama-3.1-8B",
    "instances": [{"name": "p", "hardware": "H100-SXM", "tp": 2, "role": "prefill", "node": 0, "network": NV2},
                  {"name": "d", "hardware": "H100-SXM", "tp": 2, "role": "decode", "node": 1, "network": NV2}],
    "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 4096},
    "cluster": {"npus_per_node": 4, "scale_out": {"bw_gbps": 10.0, "latency_ns": 5000}},
    "workload": {"kind": "synthetic", "num_requests": 30, "arrival": {"process": "poisson", "rate_per_s": 2},
                 "prompt_tokens": {"dist": "uniform", "low": 1000, "high": 3000},
                 "output_tokens": {"dist": "uniform", "low": 4, "high": 40}},
}


def _run(raw: dict):
    return simulate(resolve(parse_config(raw, "test")))[0]


def _with(**kw) -> dict:
    raw = json.loads(json.dumps(PD))
    for k, v in kw.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


def test_pd_over_the_cluster_network_moves_the_formula_bytes_and_every_request_completes():
    res = _run(PD)
    assert all(r.status == "finished" for r in res.requests)
    inst = res.instances[0].inst
    per_tok = inst.model.kv_bytes_per_token(2)
    expect = sum((r.input_tokens - r.cached_tokens) * per_tok for r in res.requests)
    t = res.pd.stats.transfers
    assert len(t) == 30
    assert sum(x.bytes for x in t) == expect
    links = res.pd.network.link_stats()
    assert sum(v["bytes"] for k, v in links.items()) == 2 * expect  # NIC up, then the decode NPU's downlink


def test_layerwise_streaming_overlaps_the_prefill_and_shortens_ttft_on_a_slow_link():
    pull = _run(PD)
    push = _run(_with(pd={"kv_transfer": "layerwise"}))
    assert sum(x.bytes for x in push.pd.stats.transfers) == sum(x.bytes for x in pull.pd.stats.transfers)
    # streamed transfers start before their prefill has ended
    assert all(x.start_ns < x.handoff_ns for x in push.pd.stats.transfers)

    def mean_ttft(res):
        return sum(r.first_token_ns - r.arrival_ns for r in res.requests) / len(res.requests)

    assert mean_ttft(push) < 0.8 * mean_ttft(pull)


def test_fan_in_from_tp4_prefill_to_tp2_decode_sends_each_decode_rank_its_heads():
    raw = _with()
    raw["instances"] = [{"name": "p", "hardware": "H100-SXM", "tp": 4, "role": "prefill", "node": 0, "network": NV4},
                        {"name": "d", "hardware": "H100-SXM", "tp": 2, "role": "decode", "node": 1, "network": NV2}]
    res = _run(raw)
    links = res.pd.network.link_stats()
    ups = {k: v["bytes"] for k, v in links.items() if k.split("->")[0] in ("0", "1", "2", "3")}
    assert len(ups) == 4 and len(set(ups.values())) == 1  # every prefill rank sends its quarter
    downs = [v["bytes"] for k, v in links.items() if k.endswith("->4") or k.endswith("->5")]
    assert len(downs) == 2 and downs[0] == downs[1] == 2 * next(iter(ups.values()))


def test_cluster_configuration_errors_name_the_field():
    with pytest.raises(ConfigError, match="npus_per_node: node 0"):
        resolve(parse_config(_with(cluster={"npus_per_node": 2},
                                   instances=[{"name": "p", "hardware": "H100-SXM", "tp": 2, "role": "prefill",
                                               "node": 0, "network": NV2},
                                              {"name": "d", "hardware": "H100-SXM", "tp": 2, "role": "decode",
                                               "node": 0, "network": NV2}]), "t"))
    with pytest.raises(ConfigError, match="remove pd.scale_out"):
        parse_config(_with(pd={"scale_out": {"bw_gbps": 10, "latency_ns": 1}}), "t")
    raw = _with()
    del raw["cluster"]
    raw["pd"] = {"kv_transfer": "layerwise"}
    with pytest.raises(ConfigError, match="add a `cluster:` section"):
        parse_config(raw, "t")
    raw = _with()
    raw["instances"] = [{"name": "a", "hardware": "H100-SXM"}]
    with pytest.raises(ConfigError, match="no instance has role: prefill"):
        resolve(parse_config(raw, "t"))


def test_the_cluster_example_runs():
    run = load_and_resolve(REPO / "configs/examples/pd-2p1d-cluster-layerwise.yaml",
                           {"workload": {"num_requests": 40}})
    res, _ = simulate(run)
    assert all(r.status == "finished" for r in res.requests)
    assert res.pd.network is not None


def _aware_binary() -> Path | None:
    import os

    p = os.environ.get("ASTRA_SIM_BIN_AWARE")
    if p:
        return Path(p)
    b = os.environ.get("ASTRA_SIM_BIN")
    if b and (Path(b).parent / "AstraSim_Analytical_Congestion_Aware").is_file():
        return Path(b).parent / "AstraSim_Analytical_Congestion_Aware"
    return None


def _dump_transfers(tmp_path: Path) -> Path:
    from frontend.cli import app

    out = tmp_path / "dump"
    try:
        app(["run", str(REPO / "configs/examples/pd-2p1d-cluster-layerwise.yaml"), "--num-requests", "12",
             "--out", str(tmp_path / "run"), "--dump-chakra", str(out), "--dump-iterations", "0-2", "--quiet"])
    except SystemExit as e:
        assert not e.code
    return out


def test_network_transfers_are_dumped_as_congestion_aware_message_sets(tmp_path: Path):
    out = _dump_transfers(tmp_path)
    for k in range(3):
        d = out / f"iter-kv{k}"
        meta = json.loads((d / "embedded.json").read_text())
        assert meta["binary"] == "AstraSim_Analytical_Congestion_Aware"
        assert "Switch" in (d / "network.yml").read_text()
        assert len(list(d.glob("workload.*.et"))) == len(meta["per_rank_finish_ns"])


@pytest.mark.astrasim
def test_dumped_network_transfers_replay_on_the_congestion_aware_binary(tmp_path: Path):
    binary = _aware_binary()
    if binary is None:
        pytest.skip("set ASTRA_SIM_BIN (with the congestion-aware binary beside it) or ASTRA_SIM_BIN_AWARE")
    import subprocess

    from astra_bridge.astrasim import parse_finished

    out = _dump_transfers(tmp_path)
    for k in range(3):
        d = out / f"iter-kv{k}"
        meta = json.loads((d / "embedded.json").read_text())
        p = subprocess.run([str(binary), "--workload-configuration=./workload", "--system-configuration=system.json",
                            "--network-configuration=network.yml", "--remote-memory-configuration=memory.json"],
                           cwd=d, capture_output=True, text=True, timeout=300, check=True)
        finish, _ = parse_finished(p.stdout, len(meta["per_rank_finish_ns"]))
        assert finish == meta["per_rank_finish_ns"]


def test_fan_out_and_pipeline_stages_send_from_the_stage_holding_each_layer():
    """TP2 x PP2 prefill -> TP4 decode: each prefill stage's two ranks send its layers' KV, every decode rank
    receives a quarter of the heads of every layer; bytes still equal the formula."""
    raw = _with()
    raw["instances"] = [{"name": "p", "hardware": "H100-SXM", "tp": 2, "pp": 2, "role": "prefill", "node": 0,
                         "network": {"dims": [{"topology": "Switch", "npus": 2, "bw_gbps": 450, "latency_ns": 500},
                                              {"topology": "Switch", "npus": 2, "bw_gbps": 450, "latency_ns": 500}]}},
                        {"name": "d", "hardware": "H100-SXM", "tp": 4, "role": "decode", "node": 1, "network": NV4}]
    res = _run(raw)
    assert all(r.status == "finished" for r in res.requests)
    per_tok = res.instances[0].inst.model.kv_bytes_per_token(2)
    assert sum(x.bytes for x in res.pd.stats.transfers) == sum((r.input_tokens - r.cached_tokens) * per_tok
                                                               for r in res.requests)
    links = res.pd.network.link_stats()
    ups = {int(k.split("->")[0]): v["bytes"] for k, v in links.items() if int(k.split("->")[0]) < 4}
    assert sorted(ups) == [0, 1, 2, 3] and len(set(ups.values())) == 1  # both stages, both ranks, equal shares
    downs = {k: v["bytes"] for k, v in links.items() if int(k.split("->")[1]) in (4, 5, 6, 7)}
    assert len(downs) == 4 and len(set(downs.values())) == 1


def test_streaming_also_sends_the_prefill_sides_cached_prefix():
    """Prompts sharing a long system prompt hit the prefill instance's prefix cache: that KV never runs in a
    prefill step, yet the decode side needs it; streamed or pulled, the bytes are the same."""
    raw = _with(workload={"shared_prefix_tokens": 1024}, pd={"decode_router": "round_robin"})
    raw["instances"].append({"name": "d2", "hardware": "H100-SXM", "tp": 2, "role": "decode", "node": 1,
                             "network": NV2})  # a second decoder sees the shared prompt later than the prefill side
    pull = _run(raw)
    push = _run({**raw, "pd": {"decode_router": "round_robin", "kv_transfer": "layerwise"}})
    per_tok = pull.instances[0].inst.model.kv_bytes_per_token(2)
    for res in (pull, push):
        assert sum(x.bytes for x in res.pd.stats.transfers) == sum((r.input_tokens - r.cached_tokens) * per_tok
                                                                   for r in res.requests)
    # the prefill side hit its cache for the shared prompt (those tokens never ran in a prefill step)
    assert sum(it[4] for it in push.iterations.rows if it[0] == "p") < sum(r.input_tokens for r in push.requests)
