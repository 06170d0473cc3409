"""Turn one iteration's per-operator costs into one Chakra graph per NPU.

Rank layout: rank = stage * tp + tp_rank, so a TP group is tp consecutive
ranks (the inner network dimensions) and pipeline stages differ in the outer
ones. Per layer the TP ranks all-reduce the activations after the attention
output projection and after the MLP down projection (Megatron-style row
parallel layers), tokens * hidden * dtype bytes each. Pipeline stages pass
activations (tokens * hidden * dtype bytes) with SEND/RECV, one micro-batch at
a time, so stages overlap across micro-batches as vLLM's pipeline does.

Layer-wise KV loads (lower tier -> HBM) are MEM_LOAD nodes, one per layer,
chained among themselves and each gating that layer's attention, so loading
layer l+1 overlaps the compute of layer l. KV stores (offload, swap-out) are
MEM_STORE nodes chained among themselves with no compute dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from chakra_gen.graph import (
    COLL,
    COMP,
    EMPTY,
    MEM_LOAD,
    MEM_STORE,
    RECV,
    SEND,
    ChainGraph,
    ChainTemplate,
    CollectiveType,
    Graph,
    MemChainGraph,
    MemChainTemplate,
    PipeGraph,
    PipeTemplate,
    no_deps,
)
from frontend.compute.batch import OpCost

ALLREDUCE_AFTER = ("o_proj", "down_proj", "moe")


@dataclass
class MicroBatchCost:
    prologue: list[OpCost]
    layer: list[OpCost]
    epilogue: list[OpCost]
    num_tokens: int


@dataclass
class MemTransfer:
    tier: str
    bytes_per_layer: int  # per NPU, for each of the NPU's layers
    layers: frozenset[int] | None = None  # only these layers (placement.kv_layers); None: every layer


@dataclass
class BuildSpec:
    num_layers: int
    tp: int = 1
    pp: int = 1
    hidden_size: int = 4096
    act_dtype_bytes: float = 2
    tp_involved_dims: tuple[bool, ...] | None = None
    loads: list[MemTransfer] = field(default_factory=list)
    stores: list[MemTransfer] = field(default_factory=list)
    # expert parallelism over a DP group (frontend/cluster.py): dp members of tp ranks each, rank = d * tp + t;
    # around each MoE block the DP ranks all-gather the hidden states and router logits (per rank:
    # moe_dispatch_bytes, ASTRA-sim's all-gather size) and reduce-scatter the expert outputs (the whole
    # gathered tensor: moe_combine_bytes) over the dp_involved_dims, vLLM's default EP path
    dp: int = 1
    dp_involved_dims: tuple[bool, ...] | None = None
    moe_dispatch_bytes: int = 0
    moe_combine_bytes: int = 0
    # "allgather_reducescatter" (vLLM's default EP path) or "all_to_all" (sparse dispatch/combine, DeepEP-style:
    # each rank sends each token only to the ranks holding its experts; both sizes are ASTRA-sim ALL_TO_ALL sizes)
    moe_collective: str = "allgather_reducescatter"

    @property
    def num_npus(self) -> int:
        return self.tp * self.pp * self.dp

    def stage_layers(self, stage: int) -> range:
        per = math.ceil(self.num_layers / self.pp)
        return range(stage * per, min(self.num_layers, (stage + 1) * per))

    def tp_group_name(self, stage: int) -> str:
        return "" if self.pp == 1 else str(stage + 1)

    def comm_groups(self) -> dict[str, tuple[int, ...]]:
        if self.pp == 1 or self.tp == 1:
            return {}
        return {str(s + 1): tuple(range(s * self.tp, (s + 1) * self.tp)) for s in range(self.pp)}


def _tp_attrs(spec: BuildSpec, stage: int, tokens: int) -> dict:
    a: dict = {"comm_type": int(CollectiveType.ALL_REDUCE),
               "comm_size": int(tokens * spec.hidden_size * spec.act_dtype_bytes)}
    if spec.tp_involved_dims is not None:
        a["involved_dim"] = list(spec.tp_involved_dims)
    pg = spec.tp_group_name(stage)
    if pg:
        a["pg_name"] = pg
    return a


def _stage_graph(spec: BuildSpec, rank: int, mbs: list[MicroBatchCost]) -> Graph:
    stage = rank // spec.tp
    g = Graph(rank=rank)
    layers = spec.stage_layers(stage)
    first_stage = stage == 0
    last_stage = stage == spec.pp - 1
    tp = spec.tp
    # memory traffic for this NPU's layers
    load_ids: dict[int, list[int]] = {}
    if spec.loads:
        prev = -1
        for li in layers:
            ids = []
            for tr in spec.loads:
                if tr.layers is not None and li not in tr.layers:
                    continue
                nid = g.add(f"L{li}.kv_load.{tr.tier}", MEM_LOAD, deps=(prev,) if prev >= 0 else EMPTY,
                            tensor_bytes=tr.bytes_per_layer, attrs={"tier": tr.tier})
                prev = nid
                ids.append(nid)
            if ids:
                load_ids[li] = ids
    if spec.stores:
        prev = -1
        for li in layers:
            for tr in spec.stores:
                if tr.layers is not None and li not in tr.layers:
                    continue
                prev = g.add(f"L{li}.kv_store.{tr.tier}", MEM_STORE, deps=(prev,) if prev >= 0 else EMPTY,
                             tensor_bytes=tr.bytes_per_layer, attrs={"tier": tr.tier})
    state = {"last": -1, "pending": -1}

    def add_comp(name: str, op: OpCost, extra: int = -1) -> None:
        deps: tuple[int, ...] = (state["last"],) if state["last"] >= 0 else EMPTY
        if state["pending"] >= 0:
            deps = deps + (state["pending"],)
            state["pending"] = -1
        if extra >= 0:
            deps = deps + (extra,)
        state["last"] = g.add(name, COMP, duration_ns=op.duration_ns, deps=deps, num_ops=op.flops,
                              tensor_bytes=op.bytes)

    for mb_i, mb in enumerate(mbs):
        act_bytes = int(mb.num_tokens * spec.hidden_size * spec.act_dtype_bytes)
        if not first_stage:
            # receives are posted up front (they do not hold the NPU); compute waits on them
            state["pending"] = g.add(f"mb{mb_i}.recv", RECV,
                                     attrs={"comm_src": rank - tp, "comm_tag": mb_i, "comm_size": act_bytes})
        pre = f"mb{mb_i}." if len(mbs) > 1 else ""
        if first_stage:
            for op in mb.prologue:
                add_comp(f"{pre}{op.name}", op)
                if tp > 1 and op.name in ALLREDUCE_AFTER:  # a leading dense layer's row-parallel output
                    state["last"] = g.add(f"{pre}{op.name}.allreduce", COLL, deps=(state["last"],),
                                          attrs=_tp_attrs(spec, stage, mb.num_tokens))
        for li in layers:
            gate = load_ids[li][-1] if (mb_i == 0 and li in load_ids) else -1
            for op in mb.layer:
                add_comp(f"{pre}L{li}.{op.name}", op, gate if op.name == "attention" else -1)
                if tp > 1 and op.name in ALLREDUCE_AFTER:
                    state["last"] = g.add(f"{pre}L{li}.{op.name}.allreduce", COLL, deps=(state["last"],),
                                          attrs=_tp_attrs(spec, stage, mb.num_tokens))
        if last_stage:
            for op in mb.epilogue:
                add_comp(f"{pre}{op.name}", op)
        else:
            g.add(f"mb{mb_i}.send", SEND, deps=(state["last"],),
                  attrs={"comm_dst": rank + tp, "comm_tag": mb_i, "comm_size": act_bytes})
    return g


def build_graphs(spec: BuildSpec, mbs: list[MicroBatchCost]) -> list[Graph]:
    """One graph per NPU rank of the instance."""
    if not mbs:
        raise ValueError("no micro-batches to build")
    if spec.pp == 1 and len(mbs) != 1:
        raise ValueError("micro-batching is only used with pipeline parallelism")
    graphs = []
    if any(t.layers is not None for t in spec.loads + spec.stores):  # per-layer transfers: the general graph
        if spec.dp > 1:
            raise ValueError("per-layer transfers are built for one TP group")
        return [_stage_graph(spec, r, mbs) for r in range(spec.num_npus)]
    if spec.pp == 1 and (spec.loads or spec.stores):
        chain = _chain_template(spec, mbs[0])
        names = [n[0] for n in chain.layer]
        mt = MemChainTemplate(chain, tuple((t.tier, t.bytes_per_layer) for t in spec.loads),
                              tuple((t.tier, t.bytes_per_layer) for t in spec.stores),
                              names.index("attention") if "attention" in names else None,
                              lambda: _single_stage_with_memory(spec, mbs[0], chain))
        return [MemChainGraph(r, mt) for r in range(spec.tp)]
    if spec.pp == 1 and not spec.loads and not spec.stores:
        t = _chain_template(spec, mbs[0])
        return [ChainGraph(r, t) for r in range(spec.tp * spec.dp)]
    if spec.dp > 1:
        raise ValueError("a DP group's iteration is one compute/collective chain (no pipeline, no KV transfers)")
    if not spec.loads and not spec.stores:
        stages = [[_chain_template(spec, mb, stage) for mb in mbs] for stage in range(spec.pp)]
        pt = PipeTemplate(spec.tp, stages, [int(mb.num_tokens * spec.hidden_size * spec.act_dtype_bytes) for mb in mbs],
                          lambda rank: _stage_graph(spec, rank, mbs))
        return [PipeGraph(r, pt) for r in range(spec.num_npus)]
    for r in range(spec.num_npus):
        graphs.append(_stage_graph(spec, r, mbs))
    return graphs


def _chain_template(spec: BuildSpec, mb: MicroBatchCost, stage: int = 0) -> ChainTemplate:
    """A stage's compute/collective chain for one micro-batch, held as its layer template (the whole
    iteration without PP): the prologue on the first stage, the epilogue on the last."""
    ar = _tp_attrs(spec, stage, mb.num_tokens) if spec.tp > 1 else None
    ag = rs = None
    if spec.dp > 1:
        inv = {"involved_dim": list(spec.dp_involved_dims)} if spec.dp_involved_dims is not None else {}
        a2a = spec.moe_collective == "all_to_all"
        ag = {"comm_type": int(CollectiveType.ALL_TO_ALL if a2a else CollectiveType.ALL_GATHER),
              "comm_size": int(spec.moe_dispatch_bytes), **inv}
        rs = {"comm_type": int(CollectiveType.ALL_TO_ALL if a2a else CollectiveType.REDUCE_SCATTER),
              "comm_size": int(spec.moe_combine_bytes), **inv}
    layer = []
    layer_bytes = 0
    for op in mb.layer:
        if ag is not None and op.name == "moe":
            layer.append(("moe.dispatch", COLL, 0, 0, 0, ag))
        layer.append((op.name, COMP, op.duration_ns, op.flops, op.bytes, None))
        layer_bytes += op.bytes
        if rs is not None and op.name == "moe":
            layer.append(("moe.combine", COLL, 0, 0, 0, rs))
            if ar is not None:
                # the TP all-reduce must not depend directly on the reduce-scatter: ASTRA-sim f66c1da ends by
                # segfault on some chains of two directly dependent collectives (bench/differential.py found it),
                # so a 0 ns compute node (1 ns in both backends) separates them
                layer.append(("moe.combine.done", COMP, 0, 0, 0, None))
        if ar is not None and op.name in ALLREDUCE_AFTER:
            layer.append((op.name + ".allreduce", COLL, 0, 0, 0, ar))
    pro = []
    if stage == 0:  # a model's leading dense layers run in the prologue, with their TP all-reduces
        for o in mb.prologue:
            pro.append((o.name, COMP, o.duration_ns, o.flops, o.bytes, None))
            if ar is not None and o.name in ALLREDUCE_AFTER:
                pro.append((o.name + ".allreduce", COLL, 0, 0, 0, ar))
    epi = [(o.name, COMP, o.duration_ns, o.flops, o.bytes, None) for o in mb.epilogue] if stage == spec.pp - 1 else []
    n_layers = len(spec.stage_layers(stage))
    t = ChainTemplate(pro, layer, n_layers, epi)
    t._types = _COMP_COLL if len(layer) > len(mb.layer) or len(pro) > len(mb.prologue) else _COMP_ONLY
    if not pro and not epi and not n_layers:
        t._types = frozenset()
    t._bytes = n_layers * layer_bytes + sum(n[4] for n in pro) + sum(n[4] for n in epi)
    return t


_COMP_ONLY = frozenset((COMP,))
_COMP_COLL = frozenset((COMP, COLL))


def _single_stage_with_memory(spec: BuildSpec, mb: MicroBatchCost, chain: ChainTemplate | None = None) -> Graph:
    """Column-wise: layer-wise KV loads (chained), stores (chained), then the compute chain.

    Loads come first in id order so they win the NPU's memory/communication
    resource over stores, and each layer's attention waits for its layer's loads.
    """
    base = ChainGraph(0, chain or _chain_template(spec, mb))
    n_layers = spec.num_layers
    per_layer_loads = len(spec.loads)
    mem_names, mem_types, mem_bytes, mem_attrs, deps = _mem_columns(
        n_layers, tuple((t.tier, t.bytes_per_layer) for t in spec.loads),
        tuple((t.tier, t.bytes_per_layer) for t in spec.stores))
    m = len(mem_types)
    n_loads = n_layers * per_layer_loads
    # the compute chain, shifted by m; attention of layer l also waits for layer l's last load
    n_pro = len(mb.prologue)
    t_len = (len(base) - n_pro - len(mb.epilogue)) // max(1, n_layers)
    attn_k = next((k for k in range(t_len) if base.names[n_pro + k].endswith(".attention")), None)
    attn_pos = [] if attn_k is None else [n_pro + li * t_len + attn_k for li in range(n_layers)]
    chain_deps = _gated_chain_deps(len(base), m, per_layer_loads, tuple(attn_pos[:n_layers]))
    g = Graph(rank=0, names=mem_names + list(base.names), types=mem_types + base.types,
              durations_ns=[0] * m + base.durations_ns, deps=deps + chain_deps, ctrl_deps=no_deps(m + len(base)),
              num_ops=[0] * m + base.num_ops, tensor_bytes=mem_bytes + base.tensor_bytes, attrs=mem_attrs + base.attrs)
    gates = [(pos, pos + m) for pos in attn_pos[:n_layers]] if per_layer_loads else []
    g.mem_shape_hint = (range(m, m + len(base)), list(range(n_loads)), list(range(n_loads, m)), gates)
    return g


@lru_cache(maxsize=256)
def _gated_chain_deps(n: int, shift: int, per_layer_loads: int, attn_pos: tuple[int, ...]) -> list[tuple[int, ...]]:
    deps = [EMPTY] + [(i - 1 + shift,) for i in range(1, n)]
    if per_layer_loads:
        for li, pos in enumerate(attn_pos):
            deps[pos] = deps[pos] + ((li + 1) * per_layer_loads - 1,)
    return deps + []


@lru_cache(maxsize=256)
def _mem_columns(n_layers: int, loads: tuple, stores: tuple) -> tuple:
    """Shared (read-only) columns of the load and store chains."""
    names: list[str] = []
    types: list[int] = []
    nbytes: list[int] = []
    attrs: list[dict | None] = []
    tier_attrs: dict[str, dict] = {}  # one (read-only) attrs dict per tier, shared by its nodes
    for kind, transfers, label in ((MEM_LOAD, loads, "kv_load"), (MEM_STORE, stores, "kv_store")):
        for li in range(n_layers):
            for tier, b in transfers:
                names.append(f"L{li}.{label}.{tier}")
                types.append(kind)
                nbytes.append(b)
                attrs.append(tier_attrs.setdefault(tier, {"tier": tier}))
    n_loads = n_layers * len(loads)
    deps = [EMPTY if (i == 0 or i == n_loads) else (i - 1,) for i in range(len(types))]
    return names, types, nbytes, attrs, deps
