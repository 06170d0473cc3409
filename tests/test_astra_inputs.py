"""ASTRA-sim input sets, the astra-sim backend's failure checks and the embedded closed forms added
for issue 12 (no binary needed; the last tests run only when ASTRA_SIM_BIN is set)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from google.protobuf.internal.decoder import _DecodeVarint32

from astra_bridge.astrasim import AstraSimBackend, AstraSimError
from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.backend import make_executor
from astra_bridge.embedded.memory import PER_NODE, PER_NPU, POOL, MemoryTierModel
from astra_bridge.embedded.network import (
    Dimension,
    SystemKnobs,
    chunk_plan,
    collective_time_ns,
    p2p_time_ns,
    ring_finish_ns,
)
from astra_bridge.inputs import memory_json, system_json, write_input_set
from chakra_gen import et_def_pb2 as pb
from chakra_gen.builder import BuildSpec, MemTransfer, MicroBatchCost, build_graphs
from chakra_gen.et_io import EXACT_PEAK_TFLOPS, exact_num_ops, with_micro_durations
from chakra_gen.graph import COLL, COMP, MEM_LOAD, CollectiveType, Graph, PipeGraph
from frontend.compute.batch import OpCost

REAL = os.environ.get("ASTRA_SIM_BIN")
needs_bin = pytest.mark.skipif(not REAL, reason="set ASTRA_SIM_BIN to an upstream analytical binary")
LAYER = ["layernorm", "qkv_proj", "attention", "o_proj", "layernorm", "gate_up_proj", "act_fn", "down_proj"]


def _mb(tokens: int = 64, d: int = 1234) -> MicroBatchCost:
    return MicroBatchCost([OpCost("embed", 777, 1, 1)], [OpCost(n, d + i, 10, 10) for i, n in enumerate(LAYER)],
                          [OpCost("lm_head", 999, 1, 1)], tokens)


def _nodes(path: Path) -> list[pb.Node]:
    raw = path.read_bytes()
    n, pos = _DecodeVarint32(raw, 0)
    pos += n
    out = []
    while pos < len(raw):
        n, pos = _DecodeVarint32(raw, pos)
        node = pb.Node()
        node.ParseFromString(raw[pos:pos + n])
        pos += n
        out.append(node)
    return out


def test_involved_dim_on_every_collective_of_a_multi_dim_network(tmp_path: Path):
    dims = (Dimension("Ring", 2, 100, 500), Dimension("Switch", 2, 50, 1000), Dimension("Switch", 2, 50, 1000))
    gs = build_graphs(BuildSpec(num_layers=2, tp=8, hidden_size=256), [_mb()])  # pp = 1: no involved_dim given
    write_input_set(tmp_path, InstanceSystem("t", 8, dims), gs)
    colls = [n for n in _nodes(tmp_path / "workload.5.et") if n.type == COLL]
    assert colls and all([a.bool_list.values for a in n.attr if a.name == "involved_dim"] == [[True] * 3]
                         for n in colls)
    g = Graph(rank=0)
    g.add("ar", COLL, attrs={"comm_type": 0, "comm_size": 1 << 20, "involved_dim": [True, False]})
    gs = [g] + [Graph(rank=r, names=g.names, types=g.types, durations_ns=g.durations_ns, deps=g.deps,
                      ctrl_deps=g.ctrl_deps, num_ops=g.num_ops, tensor_bytes=g.tensor_bytes, attrs=g.attrs)
                for r in range(1, 8)]
    write_input_set(tmp_path / "b", InstanceSystem("t", 8, dims), gs)
    inv = [a.bool_list.values for a in _nodes(tmp_path / "b" / "workload.0.et")[0].attr if a.name == "involved_dim"]
    assert inv == [[True, False, True]]  # padded with the embedded model's default (involved)


@pytest.mark.parametrize("kind", [PER_NPU, PER_NODE, POOL])
def test_single_npu_instance_gets_an_independent_dummy_rank(tmp_path: Path, kind: str):
    tier = MemoryTierModel("dram", kind, 25, 2000, npus_per_node=1)
    g = Graph(rank=0)
    ld = g.add("load", MEM_LOAD, tensor_bytes=1 << 20, attrs={"tier": "dram"})
    g.add("attn", COMP, duration_ns=1500, deps=(ld,))
    system = InstanceSystem("one", 1, (), tiers=(tier,))
    write_input_set(tmp_path, system, [g])
    dummy = _nodes(tmp_path / "workload.1.et")
    assert [n.type for n in dummy] == [COMP]  # no memory traffic, no communication
    mem = json.loads((tmp_path / "memory.json").read_text())
    assert mem["memory-type"] == kind
    if kind == PER_NODE:  # both NPUs of the 2-NPU network have a node
        assert mem["num-nodes"] * mem["num-npus-per-node"] >= 2


def test_one_remote_memory_per_run():
    tiers = (MemoryTierModel("dram", PER_NPU), MemoryTierModel("cxl", POOL))
    g = Graph(rank=0)
    g.add("a", MEM_LOAD, tensor_bytes=64, attrs={"tier": "dram"})
    g.add("b", MEM_LOAD, tensor_bytes=64, attrs={"tier": "cxl"})
    with pytest.raises(ValueError, match="one remote memory"):
        memory_json(InstanceSystem("t", 1, (), tiers=tiers), [g])


def test_system_json_carries_the_knobs_and_exact_compute():
    dims = (Dimension("Switch", 4, 450, 500),)
    knobs = SystemKnobs(preferred_dataset_splits=8, scheduling_policy="FIFO", collective_optimization="baseline",
                        split_mode="auto", min_chunk_bytes=1 << 20)
    gs = build_graphs(BuildSpec(num_layers=1, tp=4, hidden_size=4096), [_mb(tokens=300)])  # 2.4 MB all-reduces
    js = system_json(InstanceSystem("t", 4, dims, knobs), gs)
    assert js["scheduling-policy"] == "FIFO" and js["collective-optimization"] == "baseline"
    assert js["preferred-dataset-splits"] == 3  # ceil(2457600 / 1 MiB)
    assert js["roofline-enabled"] == 1 and js["peak-perf"] == EXACT_PEAK_TFLOPS
    plain = system_json(InstanceSystem("t", 4, dims, peak_tflops=989.0), gs, compute_time="micros")
    assert plain["roofline-enabled"] == 0 and plain["peak-perf"] == 989.0
    with pytest.raises(ValueError, match="p2p_route"):
        system_json(InstanceSystem("t", 4, dims, SystemKnobs(p2p_route="all_dims")), gs)


def test_exact_num_ops_survive_the_binarys_double_arithmetic():
    perf = EXACT_PEAK_TFLOPS * 1000000000000  # Sys: peak-perf * 1e12; Roofline: min(bw * inf, peak)
    for d in [1, 2, 3, 999, 1000, 1001, 123457, 9_999_999, 10**9 + 7, 3 * 10**11 + 1]:
        assert int(exact_num_ops(d) / perf * 1e9) == d
    assert int(exact_num_ops(0) / perf * 1e9) == 1  # a 0-ns compute node takes 1 ns, as in replay


def test_remainder_chunk_and_min_chunk_rule():
    dims = (Dimension("Switch", 8, 50, 500),)
    k4 = SystemKnobs(preferred_dataset_splits=4)
    assert chunk_plan(0, 1 << 20, dims, k4) == (1 << 18, 4)
    assert chunk_plan(0, (1 << 20) + 3, dims, k4) == (1 << 18, 5)  # splits + 1 full chunks
    assert chunk_plan(0, 20, dims, k4) == (8, 4)  # at least one byte per NPU of the system
    assert chunk_plan(int(CollectiveType.ALL_GATHER), 20, dims, k4) == (5, 4)


def test_auto_splits_follow_the_message_size():
    dims = (Dimension("Switch", 8, 450, 500),)
    auto = SystemKnobs(preferred_dataset_splits=8, split_mode="auto", min_chunk_bytes=1 << 20)
    assert [auto.splits_for(b) for b in (1, 1 << 20, (1 << 20) + 1, 5 << 20, 1 << 30)] == [1, 1, 2, 5, 8]
    for b in (8192, 3 << 20, 64 << 20):
        fixed = SystemKnobs(preferred_dataset_splits=auto.splits_for(b))
        assert collective_time_ns(0, b, dims, (True,), auto) == collective_time_ns(0, b, dims, (True,), fixed)
    # a small TP all-reduce pays one chunk's latencies instead of four
    small = 8192
    assert collective_time_ns(0, small, dims, (True,), auto) < collective_time_ns(0, small, dims, (True,), SystemKnobs())
    with pytest.raises(ValueError):
        SystemKnobs(split_mode="nccl")


def test_p2p_charges_the_lowest_differing_dimension_unless_asked():
    dims = (Dimension("Ring", 4, 100, 500), Dimension("Switch", 2, 50, 1000))
    one = p2p_time_ns(1, 6, 3 << 20, dims)  # differ in both dims: ASTRA-sim charges dim 0 only
    assert one == p2p_time_ns(1, 2, 3 << 20, dims)
    assert p2p_time_ns(1, 6, 3 << 20, dims, "all_dims") == one + p2p_time_ns(0, 4, 3 << 20, dims)


def test_ring_data_flow_reduces_to_the_closed_form_when_issued_together():
    dims = (Dimension("Switch", 4, 50, 500),)
    k = SystemKnobs(preferred_dataset_splits=3)
    t = collective_time_ns(0, 3 << 20, dims, (True,), k)
    assert ring_finish_ns(0, 3 << 20, [100] * 4, (0, 1, 2, 3), dims, k) == [100 + t] * 4
    late = ring_finish_ns(0, 3 << 20, [0, 0, 0, 5000], (0, 1, 2, 3), dims, k)
    assert min(late) < t + 5000 and max(late) <= t + 5000  # early members do not wait for a barrier


def _plain(g: Graph) -> Graph:
    return Graph(rank=g.rank, names=list(g.names), types=list(g.types), durations_ns=list(g.durations_ns),
                 deps=list(g.deps), ctrl_deps=list(g.ctrl_deps), num_ops=list(g.num_ops),
                 tensor_bytes=list(g.tensor_bytes), attrs=list(g.attrs))


FIELDS = ("duration_ns", "per_rank_finish_ns", "compute_ns", "comm_ns", "exposed_comm_ns", "mem_ns", "exposed_mem_ns",
          "comm_bytes", "mem_bytes_by_tier")


@pytest.mark.parametrize("load_bytes", [4096, 1 << 20, 16 << 20])
def test_memory_template_with_collectives_equals_event_loop(load_bytes: int):
    """Memory transfers hold the communication slot and have the lower ids: collectives wait for them."""
    tier = MemoryTierModel("dram", PER_NPU, 25, 2000)
    spec = BuildSpec(num_layers=6, tp=4, hidden_size=4096, loads=[MemTransfer("dram", load_bytes)],
                     stores=[MemTransfer("dram", load_bytes // 2)])
    gs = build_graphs(spec, [_mb(tokens=128)])
    system = InstanceSystem("t", 4, (Dimension("Switch", 4, 450, 500),), tiers=(tier,))
    fast = make_executor(system).run(gs)
    slow = make_executor(system).run([_plain(g) for g in gs], force_event_loop=True, reduce_symmetry=False)
    for f in FIELDS:
        assert getattr(fast, f) == getattr(slow, f), f


@pytest.mark.parametrize("tp, pp, dims", [
    (2, 2, (Dimension("FullyConnected", 2, 300, 500), Dimension("Switch", 2, 50, 2000))),
    (1, 4, (Dimension("Ring", 4, 100, 700),)),
    (4, 2, (Dimension("Switch", 4, 450, 500, "direct"), Dimension("Switch", 2, 50, 1000))),
])
def test_pipeline_closed_form_equals_event_loop(tp: int, pp: int, dims):
    spec = BuildSpec(num_layers=8, tp=tp, pp=pp, hidden_size=4096,
                     tp_involved_dims=(True, False) if tp > 1 else None)
    mbs = [_mb(tokens=t, d=900 + 37 * t) for t in (64, 48, 80, 8)][:pp]
    gs = build_graphs(spec, mbs)
    assert isinstance(gs[0], PipeGraph)
    system = InstanceSystem("t", tp * pp, dims, comm_groups=tuple(sorted(spec.comm_groups().items())))
    fast = make_executor(system).run(gs)
    slow = make_executor(system).run([_plain(g) for g in gs], force_event_loop=True)
    for f in FIELDS:
        assert getattr(fast, f) == getattr(slow, f), f


def _fake(tmp: Path, body: str) -> Path:
    p = tmp / "fake_astrasim"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def _two_rank():
    gs = []
    for r in range(2):
        g = Graph(rank=r)
        g.add("c", COMP, duration_ns=3000)
        gs.append(g)
    return InstanceSystem("t", 2, (Dimension("FullyConnected", 2, 50, 500),)), gs


@pytest.mark.parametrize("body, match", [
    ('kill -SEGV $$', "signal"),
    ('echo "sys[0] finished, 3000 cycles, exposed communication 0 cycles."\n'
     'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."\n'
     'echo "sys[2] finished, 3000 cycles, exposed communication 0 cycles."', "does not have"),
    ('echo "sys[0] finished, 0 cycles, exposed communication 0 cycles."\n'
     'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."', "0 cycles"),
    ('echo "sys[0] finished, 2999 cycles, exposed communication 0 cycles."\n'
     'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."', "before its compute"),
    ('echo "sys[0] finished, 3000 cycles, exposed communication 0 cycles."\n'
     'echo "sys[0] finished, 4000 cycles, exposed communication 0 cycles."\n'
     'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."', "twice"),
])
def test_backend_never_reports_a_silent_success(tmp_path: Path, body: str, match: str):
    system, gs = _two_rank()
    b = AstraSimBackend(binary=_fake(tmp_path, body), cache=False)
    with pytest.raises(AstraSimError, match=match):
        b.run(system, gs)


@needs_bin
def test_sub_microsecond_compute_is_exact_on_the_binary():
    b = AstraSimBackend(binary=Path(REAL), cache=False)
    dims = (Dimension("Switch", 4, 450, 500),)
    gs = []
    for r in range(4):
        g = Graph(rank=r)
        prev = -1
        for i, d in enumerate((1, 499, 501, 1499, 2501, 0, 123457)):
            prev = g.add(f"c{i}", COMP, duration_ns=d, deps=(prev,) if prev >= 0 else ())
        g.add("ar", COLL, deps=(prev,), attrs={"comm_type": 0, "comm_size": 12345})
        gs.append(g)
    system = InstanceSystem("t", 4, dims)
    assert b.run(system, gs).per_rank_finish_ns == make_executor(system).run(
        [with_micro_durations(g) for g in gs]).per_rank_finish_ns


@needs_bin
def test_single_npu_with_node_tier_runs_on_the_binary():
    b = AstraSimBackend(binary=Path(REAL), cache=False)
    tier = MemoryTierModel("dram", PER_NODE, 25, 2000, npus_per_node=1)
    spec = BuildSpec(num_layers=3, tp=1, loads=[MemTransfer("dram", 1 << 20)], stores=[MemTransfer("dram", 4096)])
    gs = build_graphs(spec, [_mb()])
    system = InstanceSystem("one", 1, (), tiers=(tier,))
    assert b.run(system, gs).duration_ns == make_executor(system).run(gs).duration_ns


AWARE = os.environ.get("ASTRA_SIM_BIN_AWARE")


@pytest.mark.skipif(not AWARE, reason="set ASTRA_SIM_BIN_AWARE to an upstream congestion-aware analytical binary")
def test_congestion_aware_binary_differs_only_where_links_are_shared():
    """The unaware model (embedded) equals the aware binary on FullyConnected dimensions and for ring
    on a Ring; on a Switch (two store-and-forward links per message) the aware binary is slower; it
    rejects multi-dimensional networks (astra_bridge/README.md)."""
    b = AstraSimBackend(binary=Path(AWARE), cache=False)
    for dim, same in ((Dimension("FullyConnected", 4, 50, 500), True), (Dimension("Ring", 4, 50, 500), True),
                      (Dimension("Switch", 4, 50, 500), False)):
        gs = []
        for r in range(4):
            g = Graph(rank=r)
            g.add("ar", COLL, attrs={"comm_type": 0, "comm_size": 5_000_000})
            gs.append(g)
        system = InstanceSystem("t", 4, (dim,))
        aware = b.run(system, gs).duration_ns
        unaware = make_executor(system).run(gs).duration_ns
        assert (aware == unaware) if same else aware > unaware, dim
    two_d = InstanceSystem("t", 4, (Dimension("Switch", 2, 50, 500), Dimension("Switch", 2, 50, 500)))
    gs = []
    for r in range(4):
        g = Graph(rank=r)
        g.add("c", COMP, duration_ns=1000)
        gs.append(g)
    with pytest.raises(AstraSimError):
        b.run(two_d, gs)
