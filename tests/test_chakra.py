"""Chakra schema field numbers, .et round trip, and the builder's graphs."""

from __future__ import annotations

from pathlib import Path

from chakra_gen import et_def_pb2 as pb
from chakra_gen.builder import BuildSpec, MicroBatchCost, build_graphs
from chakra_gen.et_io import read_et, write_et
from chakra_gen.graph import COLL, COMP, MEM_LOAD, RECV, SEND, Graph
from frontend.compute.batch import OpCost


def test_field_numbers_match_chakra():
    f = pb.Node.DESCRIPTOR.fields_by_name
    assert {k: f[k].number for k in ("id", "name", "type", "ctrl_deps", "data_deps", "start_time_micros",
                                     "duration_micros", "inputs", "outputs", "attr")} == {
        "id": 1, "name": 2, "type": 3, "ctrl_deps": 4, "data_deps": 5, "start_time_micros": 6,
        "duration_micros": 7, "inputs": 8, "outputs": 9, "attr": 10}
    a = pb.AttributeProto.DESCRIPTOR.fields_by_name
    assert a["int64_val"].number == 9 and a["uint64_val"].number == 13 and a["bool_list"].number == 28
    assert a["string_val"].number == 29 and a["bytes_list"].number == 32
    assert pb.COMP_NODE == 4 and pb.COMM_COLL_NODE == 7 and pb.MEM_LOAD_NODE == 2
    assert pb.ALL_REDUCE == 0 and pb.ALL_TO_ALL == 6 and pb.REDUCE_SCATTER == 7
    assert pb.GlobalMetadata.DESCRIPTOR.fields_by_name["version"].number == 1


def test_round_trip_lossless(tmp_path: Path):
    g = Graph(rank=3)
    a = g.add("L0.qkv", COMP, duration_ns=12345, num_ops=10**12, tensor_bytes=5 << 20)
    b = g.add("ar", COLL, deps=(a,), attrs={"comm_type": 0, "comm_size": 1 << 20, "involved_dim": [True, False],
                                             "pg_name": "1"})
    c = g.add("send", SEND, deps=(b,), attrs={"comm_dst": 7, "comm_size": 64, "comm_tag": 2})
    g.add("recv", RECV, attrs={"comm_src": 1, "comm_size": 64, "comm_tag": 2})
    g.add("load", MEM_LOAD, deps=(a,), ctrl_deps=(c,), tensor_bytes=4096, attrs={"tier": "dram"})
    p = tmp_path / "workload.3.et"
    write_et(g, p)
    h, meta = read_et(p, rank=3)
    assert meta["version"] == "0.0.4"
    assert h.names == g.names and h.types == g.types and h.durations_ns == g.durations_ns
    assert h.deps == g.deps and h.ctrl_deps == g.ctrl_deps and h.num_ops == g.num_ops
    assert h.tensor_bytes == g.tensor_bytes and h.attrs == g.attrs
    assert h.digest() == g.digest()
    # what ASTRA-sim reads: duration in whole microseconds, int attrs as integers
    raw = p.read_bytes()
    from google.protobuf.internal.decoder import _DecodeVarint32

    n, pos = _DecodeVarint32(raw, 0)
    pos += n
    n, pos = _DecodeVarint32(raw, pos)
    node = pb.Node()
    node.ParseFromString(raw[pos:pos + n])
    assert node.duration_micros == 12 and node.type == pb.COMP_NODE
    attrs = {x.name: x for x in node.attr}
    assert attrs["num_ops"].WhichOneof("value") == "int64_val"
    # exact compute time (default): ASTRA-sim's roofline at 2e9 FLOP/s times 2*12345+1 ops as 12345 ns
    assert attrs["num_ops"].int64_val == 2 * 12345 + 1 and attrs["tensor_size"].uint64_val == 0
    assert attrs["model_num_ops"].int64_val == 10**12 and attrs["model_tensor_size"].int64_val == 5 << 20
    # the plain replay form keeps the model's figures in num_ops / tensor_size
    write_et(g, p, compute_time="micros")
    raw = p.read_bytes()
    n, pos = _DecodeVarint32(raw, 0)
    pos += n
    n, pos = _DecodeVarint32(raw, pos)
    node = pb.Node()
    node.ParseFromString(raw[pos:pos + n])
    attrs = {x.name: x for x in node.attr}
    assert attrs["num_ops"].int64_val == 10**12 and attrs["tensor_size"].uint64_val == 5 << 20
    h, _ = read_et(p, rank=3)
    assert h.digest() == g.digest()


def _ops(names, d=1000):
    return [OpCost(n, d, 10, 10) for n in names]


LAYER = ["layernorm", "qkv_proj", "rotary_emb", "attention", "o_proj", "layernorm", "gate_up_proj", "act_fn",
         "down_proj"]


def test_builder_single_npu_one_comp_per_op_per_layer():
    mb = MicroBatchCost(_ops(["embedding"]), _ops(LAYER), _ops(["final_layernorm", "lm_head", "sampler"]), 16)
    gs = build_graphs(BuildSpec(num_layers=4), [mb])
    assert len(gs) == 1
    g = gs[0]
    assert len(g) == 1 + 4 * 9 + 3 and all(t == COMP for t in g.types)
    assert g.is_chain() and g.names[1] == "L0.layernorm"
    g.validate()


def test_builder_tp_allreduce_bytes_and_pp_send_recv_tags():
    mb = MicroBatchCost(_ops(["embedding"]), _ops(LAYER), _ops(["lm_head"]), 10)
    gs = build_graphs(BuildSpec(num_layers=4, tp=2, hidden_size=4096, act_dtype_bytes=2), [mb])
    colls = [gs[0].attrs[i] for i, t in enumerate(gs[0].types) if t == COLL]
    assert len(colls) == 8 and all(a["comm_size"] == 10 * 4096 * 2 for a in colls)
    spec = BuildSpec(num_layers=4, tp=2, pp=2, hidden_size=4096, act_dtype_bytes=2,
                     tp_involved_dims=(True, False))
    gs = build_graphs(spec, [mb, mb])
    assert len(gs) == 4
    sends = [(g.rank, g.attrs[i]) for g in gs for i, t in enumerate(g.types) if t == SEND]
    recvs = [(g.rank, g.attrs[i]) for g in gs for i, t in enumerate(g.types) if t == RECV]
    assert sorted((r, a["comm_dst"], a["comm_tag"], a["comm_size"]) for r, a in sends) == \
        sorted((a["comm_src"], r, a["comm_tag"], a["comm_size"]) for r, a in recvs)
    assert all(a.get("pg_name") in ("1", "2") for g in gs for a in g.attrs if a and "comm_type" in a)
    assert spec.comm_groups() == {"1": (0, 1), "2": (2, 3)}
    for g in gs:
        g.validate()


def test_builder_layerwise_loads_gate_attention():
    mb = MicroBatchCost(_ops(["embedding"]), _ops(LAYER), _ops(["lm_head"]), 10)
    from chakra_gen.builder import MemTransfer

    g = build_graphs(BuildSpec(num_layers=3, loads=[MemTransfer("dram", 1000)]), [mb])[0]
    loads = [i for i, t in enumerate(g.types) if t == MEM_LOAD]
    assert len(loads) == 3
    attn = [i for i, n in enumerate(g.names) if n.endswith("attention")]
    for li, a in enumerate(attn):
        assert loads[li] in g.deps[a]


def test_chain_graph_columns_and_fast_time_match_the_explicit_graph():
    """Builder chains are held as templates; their columns and their closed-form time equal those of
    the same chain written node by node and run through the general event loop."""
    from astra_bridge.embedded.executor import Executor, NetworkContext
    from astra_bridge.embedded.network import Dimension
    from chakra_gen.graph import ChainGraph

    mb = MicroBatchCost(_ops(["embedding"]), [OpCost(n, 0 if n == "act_fn" else 100 + i, 10, 10)
                                              for i, n in enumerate(LAYER)], _ops(["lm_head"]), 12)
    for tp in (1, 4):
        gs = build_graphs(BuildSpec(num_layers=5, tp=tp, hidden_size=1024, act_dtype_bytes=2), [mb])
        assert all(isinstance(g, ChainGraph) for g in gs) and len(gs) == tp
        explicit = []
        for g in gs:
            e = Graph(rank=g.rank)
            for i in range(len(g)):  # node by node, through the public column accessors
                e.add(g.names[i], g.types[i], duration_ns=g.durations_ns[i], deps=g.deps[i], num_ops=g.num_ops[i],
                      tensor_bytes=g.tensor_bytes[i], attrs=g.attrs[i])
            explicit.append(e)
        assert len(gs[0]) == len(explicit[0]) == 1 + 5 * (9 + (2 if tp > 1 else 0)) + 1
        assert gs[0].names[1] == "L0.layernorm" and gs[0].names[-2].startswith("L4.down_proj")
        assert gs[0].tensor_bytes_total() == sum(explicit[0].tensor_bytes)
        dims = (Dimension("Switch", tp, 100.0, 500.0),) if tp > 1 else ()
        ex = Executor(NetworkContext(dims))
        fresh = build_graphs(BuildSpec(num_layers=5, tp=tp, hidden_size=1024, act_dtype_bytes=2), [mb])
        assert ex._can_fast_template(fresh)  # the closed form on the template, columns never built
        fast = ex.run(fresh)
        assert "types" not in vars(fresh[0])
        slow = ex.run(explicit, force_event_loop=True)
        assert fast.duration_ns == slow.duration_ns and fast.comm_ns == slow.comm_ns
        assert fast.compute_ns == slow.compute_ns and fast.comm_bytes == slow.comm_bytes


def test_chain_graph_cache_key_shared_by_ranks_and_distinguishes_values():
    mb = MicroBatchCost(_ops(["embedding"]), _ops(LAYER), _ops(["lm_head"]), 12)
    spec = BuildSpec(num_layers=3, tp=2, hidden_size=1024, act_dtype_bytes=2)
    gs = build_graphs(spec, [mb])
    assert gs[0].compact_key is gs[1].compact_key
    assert build_graphs(spec, [mb])[0].compact_key == gs[0].compact_key
    other = MicroBatchCost(_ops(["embedding"]), _ops(LAYER, d=6), _ops(["lm_head"]), 12)
    assert build_graphs(spec, [other])[0].compact_key != gs[0].compact_key
    bigger = MicroBatchCost(_ops(["embedding"]), _ops(LAYER), _ops(["lm_head"]), 13)  # all-reduce size differs
    assert build_graphs(spec, [bigger])[0].compact_key != gs[0].compact_key


def test_editing_a_chain_graph_makes_it_a_plain_graph():
    from astra_bridge.embedded.executor import Executor, NetworkContext

    mb = MicroBatchCost(_ops(["embedding"]), _ops(LAYER), _ops(["lm_head"]), 12)
    g, twin = build_graphs(BuildSpec(num_layers=2, tp=2, hidden_size=64, act_dtype_bytes=2), [mb])
    n = len(g)
    before = Executor(NetworkContext(())).run([build_graphs(BuildSpec(num_layers=2), [mb])[0]]).duration_ns
    solo = build_graphs(BuildSpec(num_layers=2), [mb])[0]
    m = len(solo)
    solo.add("extra", COMP, duration_ns=500, deps=(m - 1,))
    assert len(solo) == m + 1 and solo.template is None and solo.compact_key is None
    assert solo.tensor_bytes_total() == sum(solo.tensor_bytes)
    assert Executor(NetworkContext(())).run([solo]).duration_ns == before + 500
    g.add("extra", COMP, duration_ns=500, deps=(n - 1,))
    assert len(twin) == n and len(twin.types) == n  # the rank sharing the template is untouched


def test_mem_chain_template_time_matches_the_explicit_graph():
    """Layer-wise loads/stores held as a template: the closed form equals the explicit graph through the
    general event loop, and the shared-pool closed form equals the node-by-node memory walk."""
    from astra_bridge.embedded.executor import Executor, NetworkContext
    from astra_bridge.embedded.memory import MemorySystem, MemoryTierModel
    from chakra_gen.builder import MemTransfer
    from chakra_gen.graph import MemChainGraph

    layer = [OpCost(n, 0 if n == "rotary_emb" else 50 + 30 * i, 10, 10) for i, n in enumerate(LAYER)]
    mb = MicroBatchCost(_ops(["embedding"]), layer, _ops(["lm_head"]), 12)
    tiers = {"dram": MemoryTierModel("dram", "PER_NPU_MEMORY_EXPANSION", 20.0, 700),
             "cxl": MemoryTierModel("cxl", "MEMORY_POOL", 10.0, 1500)}
    cases = [([MemTransfer("dram", 40_000)], []), ([], [MemTransfer("dram", 9_000)]),
             ([MemTransfer("cxl", 3_000), MemTransfer("dram", 500)], [MemTransfer("cxl", 70_000)])]
    for loads, stores in cases:
        spec = BuildSpec(num_layers=4, loads=loads, stores=stores)
        g = build_graphs(spec, [mb])[0]
        assert isinstance(g, MemChainGraph)
        explicit = Graph(rank=0)
        ref = build_graphs(spec, [mb])[0]
        explicit.extend_columns(list(ref.names), list(ref.types), list(ref.durations_ns), list(ref.deps),
                                list(ref.num_ops), list(ref.tensor_bytes), list(ref.attrs))
        assert len(g) == len(explicit) and g.tensor_bytes_total() == sum(explicit.tensor_bytes)
        ex = Executor(NetworkContext(()), MemorySystem(dict(tiers), "dram"))
        assert ex._mem_template_ok([g])
        fast = ex.run([g])
        slow = Executor(NetworkContext(()), MemorySystem(dict(tiers), "dram")).run([explicit], force_event_loop=True)
        for f in ("duration_ns", "compute_ns", "mem_ns", "exposed_mem_ns", "mem_bytes_by_tier"):
            assert getattr(fast, f) == getattr(slow, f), (loads, stores, f)
        # a pool shared with another instance that is busy until 5 us into this iteration
        runs = []
        for graph in (build_graphs(spec, [mb])[0], explicit):
            mem = MemorySystem(dict(tiers), "dram", shared_pools={"cxl": 105_000}, t0=100_000)
            ex2 = Executor(NetworkContext(()), mem)
            if isinstance(graph, MemChainGraph):
                r = ex2.run([graph])
            else:
                r = ex2._mem_chain_time(graph, graph.mem_shape_hint or ex2._mem_chain_shape(graph))
            runs.append((r.duration_ns, r.exposed_mem_ns, r.mem_ns, dict(mem.shared_pools)))
        assert runs[0] == runs[1], (loads, stores)
