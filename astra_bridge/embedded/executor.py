"""Dependency-driven execution of per-NPU Chakra graphs with ASTRA-sim's rules.

Per NPU at most one compute node and one communication node (collective, send,
memory load/store) are in flight; receives are exempt. A node issues when its
dependencies are done and its resource is free; among ready nodes of one
resource the lowest node id goes first. Collectives start when every member of
their group has issued them (the k-th collective of a group on each rank is the
same collective), sends deliver after the point-to-point time, a receive ends
when it is issued and its message has arrived.

A graph that is a strict chain (each node depends only on its predecessor)
cannot overlap anything, so its time is the sum of its nodes' times; that
closed form is used when every rank's graph is the same chain and there are no
sends/receives (tests check it against the event loop).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate, compress

from astra_bridge.embedded.memory import MemorySystem
from astra_bridge.embedded.network import (
    Dimension,
    SystemKnobs,
    collective_time_ns,
    group_ring_time_ns,
    p2p_time_ns,
    ring_finish_ns,
    skewed_finish_ns,
)
from astra_bridge.result import IterationResult
from chakra_gen.graph import (
    COLL,
    COMP,
    MEM_LOAD,
    MEM_STORE,
    RECV,
    SEND,
    ChainGraph,
    ChainTemplate,
    Graph,
    MemChainGraph,
    MemChainTemplate,
    PipeGraph,
)

_COMM_TYPES = (COLL, SEND, MEM_LOAD, MEM_STORE)


@dataclass
class NetworkContext:
    dims: tuple[Dimension, ...]
    knobs: SystemKnobs = field(default_factory=SystemKnobs)
    comm_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def group(self, pg: str, nranks: int) -> tuple[int, ...]:
        if not pg:
            return tuple(range(nranks))
        if pg not in self.comm_groups:
            raise ValueError(f"collective names comm group {pg!r}, which is not defined")
        return self.comm_groups[pg]

    def involved(self, attrs: dict) -> tuple[bool, ...]:
        inv = attrs.get("involved_dim")
        if inv is None:
            return tuple(True for _ in self.dims)
        return tuple(bool(x) for x in inv)

    @cached_property
    def total_npus(self) -> int:
        return math.prod(d.npus for d in self.dims) if self.dims else 1

    def coll_time(self, attrs: dict) -> int:
        """A collective on a named comm group smaller than the system runs ASTRA-sim's group plan: one
        ring over the group's NPUs, whatever algorithms the dimensions are configured with; a group
        of every NPU (and a collective without a group) runs the configured per-dimension algorithms
        (a group of every NPU on all dimensions). Memoized per (type, size, group, involved dims): a
        serving run repeats the same few sizes."""
        inv = attrs.get("involved_dim")
        key = (attrs["comm_type"], attrs["comm_size"], attrs.get("pg_name"), tuple(inv) if inv is not None else None)
        memo = self._coll_memo
        hit = memo.get(key)
        if hit is None:
            hit = self._coll_time(attrs)
            if len(memo) < 65536:
                memo[key] = hit
        return hit

    @cached_property
    def _coll_memo(self) -> dict:
        return {}

    def _coll_time(self, attrs: dict) -> int:
        pg = attrs.get("pg_name")
        if pg:
            members = self.comm_groups.get(pg)
            if members is None:
                raise ValueError(f"collective names comm group {pg!r}, which is not defined")
            if len(members) != self.total_npus:
                return group_ring_time_ns(int(attrs["comm_type"]), int(attrs["comm_size"]), tuple(members),
                                          self.dims, self.knobs)
            return collective_time_ns(int(attrs["comm_type"]), int(attrs["comm_size"]), self.dims,
                                      tuple(True for _ in self.dims), self.knobs)
        return collective_time_ns(int(attrs["comm_type"]), int(attrs["comm_size"]), self.dims,
                                  self.involved(attrs), self.knobs)

    def skewed_finish(self, attrs: dict, members: list[int], starts: list[int]) -> list[int] | None:
        """Per-member finish times of a collective issued at different times (members: global ranks),
        for the ring collectives whose data flow is modelled (ring_finish_ns); None otherwise (the
        caller then starts it when its last member issues it, a barrier approximation)."""
        if self.knobs.active_chunks_per_dimension != 1:
            return None
        ct, size = int(attrs["comm_type"]), int(attrs["comm_size"])
        pg = attrs.get("pg_name")
        if pg and len(members) != self.total_npus:
            return ring_finish_ns(ct, size, starts, tuple(members), self.dims, self.knobs)
        inv = self.involved(attrs) if not pg else tuple(True for _ in self.dims)
        inv = tuple(inv) + (True,) * (len(self.dims) - len(inv))
        active = [i for i, d in enumerate(self.dims) if inv[i] and d.npus > 1]
        if len(active) != 1:
            return None
        d = self.dims[active[0]]
        # direct on 2 NPUs exchanges one message per phase, exactly a 2-NPU ring (checked on the binary)
        as_ring = d.algorithm == "ring" or (d.algorithm == "direct" and d.npus == 2)
        k = active[0]
        stride = math.prod(d.npus for d in self.dims[:k])
        rings: dict[int, list[int]] = defaultdict(list)  # NPUs that differ only along dim k form one ring
        for pos, r in enumerate(members):
            rings[r - (r // stride % self.dims[k].npus) * stride].append(pos)
        out = [0] * len(members)
        for positions in rings.values():
            positions.sort(key=lambda p: members[p])
            if len(positions) != self.dims[k].npus:
                return None
            st = [starts[p] for p in positions]
            fin = ring_finish_ns(ct, size, st, tuple(members[p] for p in positions), self.dims, self.knobs) \
                if as_ring else skewed_finish_ns(ct, size, st, d, self.knobs)
            if fin is None:
                return None
            for p, f in zip(positions, fin, strict=True):
                out[p] = f
        return out

    def resolved(self, graphs: list[Graph]) -> NetworkContext:
        """This context with split_mode "auto" resolved for these graphs (one chunk count per iteration,
        from its largest collective), or itself."""
        if self.knobs.split_mode == "fixed":
            return self
        k = self.knobs.resolved(max_collective_bytes(graphs))
        ctx = self._resolved.get(k)
        if ctx is None:
            ctx = self._resolved[k] = NetworkContext(self.dims, k, self.comm_groups)
        return ctx

    @cached_property
    def _resolved(self) -> dict[SystemKnobs, NetworkContext]:
        return {}


def max_collective_bytes(graphs: list[Graph]) -> int:
    """The largest collective's comm_size over all ranks' graphs (0 without collectives)."""
    best = 0
    seen: set[int] = set()
    for g in graphs:
        pt = getattr(g, "ptemplate", None)
        chains = [c for st in pt.stages for c in st] if pt is not None else \
            [getattr(g, "template", None) or getattr(getattr(g, "mtemplate", None), "chain", None)]
        if chains[0] is not None:
            for t in chains:
                if id(t) in seen:
                    continue
                seen.add(id(t))
                for _, typ, _, _, _, a in t.prologue + t.layer + t.epilogue:
                    if typ == COLL:
                        best = max(best, int(a["comm_size"]))
            continue
        if id(g.attrs) in seen:
            continue
        seen.add(id(g.attrs))
        for i in compress(range(len(g)), map(COLL.__eq__, g.types)):
            best = max(best, int(g.attrs[i]["comm_size"]))
    return best


def _union_minus(intervals: list[tuple[int, int]], cover: list[tuple[int, int]]) -> int:
    """Length of the union of `intervals` not covered by the union of `cover`."""
    if not intervals:
        return 0
    events: list[tuple[int, int, int]] = []
    for a, b in intervals:
        if b > a:
            events.append((a, 1, 0))
            events.append((b, -1, 0))
    for a, b in cover:
        if b > a:
            events.append((a, 0, 1))
            events.append((b, 0, -1))
    events.sort()
    total = 0
    on = cov = 0
    last = 0
    for t, d_on, d_cov in events:
        if on > 0 and cov == 0:
            total += t - last
        on += d_on
        cov += d_cov
        last = t
    return total


class Executor:
    def __init__(self, network: NetworkContext, memory: MemorySystem | None = None) -> None:
        self.network = network
        self.memory = memory

    # ---------------- fast path ----------------
    def _template_time(self, t: ChainTemplate) -> IterationResult:
        """_chain_time of a compute/collective chain, summed per template node times its repeat count."""
        comp = comm = comm_bytes = 0
        coll_ns: dict[int, int] = {}  # a template's collectives usually share one attribute dict
        for nodes, reps in ((t.prologue, 1), (t.layer, t.num_layers), (t.epilogue, 1)):
            c = 0
            for name, typ, dur, _, _, a in nodes:
                if typ == COMP:
                    c += dur or 1  # COMP nodes of 0 ns take 1 ns (as in ASTRA-sim)
                elif dur:
                    raise ValueError(f"node {name}: only compute nodes may carry a duration")
                elif typ == COLL:
                    ct = coll_ns.get(id(a))
                    if ct is None:
                        ct = coll_ns[id(a)] = self.network.coll_time(a)
                    comm += reps * ct
                    comm_bytes += reps * int(a["comm_size"])
                else:
                    raise ValueError(f"node {name}: chain templates hold compute and collective nodes only")
            comp += reps * c
        return IterationResult(duration_ns=comp + comm, per_rank_finish_ns=[], compute_ns=comp, comm_ns=comm,
                               mem_ns=0, exposed_comm_ns=comm, exposed_mem_ns=0, comm_bytes=comm_bytes,
                               mem_bytes_by_tier={})

    def _mem_template_ok(self, graphs: list[Graph]) -> bool:
        """_mem_fast_ok for graphs sharing one memory template whose compute chain has no collectives."""
        mt = graphs[0].mtemplate  # type: ignore[attr-defined]
        if mt is None or any(getattr(g, "mtemplate", None) is not mt for g in graphs):
            return False
        types = mt.chain.node_types()
        if not types <= {COMP, COLL}:
            return False
        if COLL in types and len(graphs) > 1:
            for _, typ, _, _, _, a in mt.chain.prologue + mt.chain.layer + mt.chain.epilogue:
                pg = a.get("pg_name", "") if (typ == COLL and a) else ""
                if pg and len(self.network.group(pg, len(graphs))) != len(graphs):
                    return False
        return len(graphs) == 1 or all(t.kind == "PER_NPU_MEMORY_EXPANSION" for t in self.memory.tiers.values())

    def _mem_template_time(self, mt: MemChainTemplate) -> IterationResult:
        """_mem_chain_time on the template: loads back to back (layer-major), then stores; each layer's
        attention starts no earlier than that layer's last load ends; COMP nodes of 0 ns take 1 ns."""
        mem = self.memory
        assert mem is not None
        shared = mem.shared_pools
        memo: dict[tuple[str, int], tuple] = {}
        pools_used: set[str] = set()
        mem_bytes: dict[str, int] = defaultdict(int)
        t = 0
        n_layers = mt.chain.num_layers
        load_end: list[int] = []
        for transfers, is_load in ((mt.loads, True), (mt.stores, False)):
            if not transfers or not n_layers:
                continue
            # the first layer's transfers one by one (a shared pool may delay its first use), then
            # every further layer repeats them back to back
            per_layer = 0
            for name, b in transfers:
                hit = memo.get((name, b))
                if hit is None:
                    tier = mem.tier(name)
                    hit = memo[(name, b)] = (tier, tier.transfer_ns(b))
                tier, d = hit
                if shared is not None and tier.kind == "MEMORY_POOL" and tier.name not in pools_used:
                    pools_used.add(tier.name)  # wait for other instances' transfers on the shared pool
                    t = max(t, shared.get(tier.name, 0) - mem.t0)
                t += d
                per_layer += d
                mem_bytes[tier.name] += n_layers * b
            if is_load:
                load_end = list(range(t, t + n_layers * per_layer, per_layer)) if per_layer else [t] * n_layers
            t += (n_layers - 1) * per_layer
        for name in pools_used:
            shared[name] = max(shared.get(name, 0), t + mem.t0)
        mem_end = t
        c = mt.chain
        k = mt.attention_k if (mt.loads and mt.attention_k is not None) else None
        if COLL in c.node_types():
            return self._mem_template_walk(c, k, load_end, mem_end, dict(mem_bytes))
        layer = [n[2] or 1 for n in c.layer]
        pre = sum(layer[:k]) if k is not None else 0
        post = sum(layer) - pre
        pro = sum(n[2] or 1 for n in c.prologue)
        now = pro
        stall = 0
        if k is None:
            now += n_layers * (pre + post)
        else:
            for ready in load_end:
                now += pre
                if ready > now:
                    stall += ready - now
                    now = ready
                now += post
        epi = sum(n[2] or 1 for n in c.epilogue)
        now += epi
        comp = pro + n_layers * (pre + post) + epi
        return IterationResult(duration_ns=max(now, mem_end), per_rank_finish_ns=[], compute_ns=comp, comm_ns=0,
                               mem_ns=mem_end, exposed_comm_ns=0, exposed_mem_ns=stall + max(0, mem_end - now),
                               comm_bytes=0, mem_bytes_by_tier=dict(mem_bytes))

    def _mem_template_walk(self, c: ChainTemplate, k: int | None, load_end: list[int], mem_end: int,
                           mem_bytes: dict[str, int]) -> IterationResult:
        """The chain of a memory template that holds collectives, walked node by node.

        Memory nodes and collectives share the NPU's one communication slot and the memory nodes
        have the lower ids (the builder writes them first), so ASTRA-sim runs every load and store
        before any collective: the memory chain is always ready again when its slot frees, and the
        lowest ready id goes first. A collective therefore starts at max(its predecessor's end,
        the last memory transfer's end).
        """
        now = stall = comp = comm = comm_bytes = wait = 0
        coll_ns: dict[int, int] = {}
        net = self.network

        def walk(nodes: list, gate: int) -> None:
            nonlocal now, stall, comp, comm, comm_bytes, wait
            for j, (_, typ, dur, _, _, a) in enumerate(nodes):
                if j == k and gate >= 0 and load_end[gate] > now:
                    stall += load_end[gate] - now
                    now = load_end[gate]
                if typ == COMP:
                    d = dur or 1
                    comp += d
                else:
                    if mem_end > now:
                        wait += mem_end - now
                        now = mem_end
                    d = coll_ns.get(id(a))
                    if d is None:
                        d = coll_ns[id(a)] = net.coll_time(a)
                    comm += d
                    comm_bytes += int(a["comm_size"])
                now += d

        walk(c.prologue, -1)
        for li in range(c.num_layers):
            walk(c.layer, li if load_end else -1)
        walk(c.epilogue, -1)
        return IterationResult(duration_ns=max(now, mem_end), per_rank_finish_ns=[], compute_ns=comp, comm_ns=comm,
                               mem_ns=mem_end, exposed_comm_ns=comm,
                               exposed_mem_ns=stall + wait + max(0, mem_end - now), comm_bytes=comm_bytes,
                               mem_bytes_by_tier=mem_bytes)

    def _chain_time(self, g: Graph) -> IterationResult:
        types = g.types
        durs = g.durations_ns
        n = len(types)
        n_comp = types.count(COMP)
        comp = sum(durs)
        # COMP nodes of 0 ns take 1 ns (as in ASTRA-sim); other nodes carry no duration of their own
        comp += durs.count(0) - (n - n_comp)
        comm = mem = 0
        comm_bytes = 0
        mem_bytes: dict[str, int] = defaultdict(int)
        if n_comp != n:
            coll_cache: dict[int, int] = {}
            for i in compress(range(n), map(COMP.__ne__, types)):
                if durs[i]:
                    raise ValueError(f"node {i} ({g.names[i]}): only compute nodes may carry a duration")
                t = types[i]
                a = g.attrs[i]
                if t == COLL:
                    k = id(a)
                    ct = coll_cache.get(k)
                    if ct is None:
                        ct = coll_cache[k] = self.network.coll_time(a)
                    comm += ct
                    comm_bytes += int(a["comm_size"])
                else:  # MEM_LOAD / MEM_STORE (single rank only)
                    if self.memory is None:
                        raise ValueError("graph has memory nodes but the instance has no memory tiers")
                    tier = self.memory.tier((a or {}).get("tier"))
                    mem += tier.transfer_ns(g.tensor_bytes[i])
                    mem_bytes[tier.name] += g.tensor_bytes[i]
        total = comp + comm + mem
        return IterationResult(duration_ns=total, per_rank_finish_ns=[], compute_ns=comp, comm_ns=comm,
                               mem_ns=mem, exposed_comm_ns=comm, exposed_mem_ns=mem, comm_bytes=comm_bytes,
                               mem_bytes_by_tier=dict(mem_bytes))

    def _mem_fast_ok(self, graphs: list[Graph]) -> bool:
        """One rank, or identical ranks whose memory tiers never serialize across ranks."""
        g0 = graphs[0]
        if SEND in g0.types or RECV in g0.types:
            return False
        if len(graphs) == 1:
            return True
        if any(t.kind != "PER_NPU_MEMORY_EXPANSION" for t in self.memory.tiers.values()):
            return False
        for i in compress(range(len(g0)), map(COLL.__eq__, g0.types)):
            pg = g0.attrs[i].get("pg_name", "") if g0.attrs[i] else ""
            if pg and len(self.network.group(pg, len(graphs))) != len(graphs):
                return False
        return all(g.digest() == g0.digest() for g in graphs[1:])

    def _mem_chain_shape(self, g: Graph) -> tuple[list[int], list[int], list[int]] | None:
        """Split a graph into a compute/collective chain, a load chain gating some chain nodes, and a store chain.

        Returns (main, loads, stores) node ids when the graph has exactly that
        shape (what the builder emits for layer-wise KV loads and offloads);
        None otherwise.
        """
        types = g.types
        deps = g.deps
        loads: list[int] = []
        stores: list[int] = []
        main: list[int] = []
        for i, t in enumerate(types):
            d = deps[i]
            if g.ctrl_deps[i]:
                return None
            if t == MEM_LOAD:
                if (loads and d != (loads[-1],)) or (not loads and d):
                    return None
                loads.append(i)
            elif t == MEM_STORE:
                if (stores and d != (stores[-1],)) or (not stores and d):
                    return None
                stores.append(i)
            elif t in (COMP, COLL):
                if not main:
                    if d:
                        return None
                elif d[0] != main[-1] or any(x not in loads for x in d[1:]) or len(d) > 2:
                    return None
                main.append(i)
            else:
                return None
        if loads and stores and stores[0] < loads[-1]:
            return None  # stores would interleave with loads on the memory resource
        mem_ids = loads + stores
        if mem_ids and any(types[i] == COLL and i < max(mem_ids) for i in main):
            return None  # a collective could win the communication slot between memory transfers
        return main, loads, stores

    def _mem_chain_time(self, g: Graph, shape) -> IterationResult:
        """Closed form of a compute chain with a gating load chain and an independent store chain.

        Memory nodes share the NPU's communication resource and issue lowest id
        first, so loads run back to back from t=0, then stores back to back; a
        chain node gated by load l starts at max(its predecessor's end, load l's end).
        The memory resource is busy from 0 to the last store's end without gaps,
        so the exposed memory time is the chain's total stall plus any tail of
        memory traffic after the chain ends.
        """
        main, loads, stores = shape[:3]
        gates_hint = shape[3] if len(shape) > 3 else None
        assert self.memory is not None
        mem = self.memory
        mem_bytes: dict[str, int] = defaultdict(int)
        load_end: dict[int, int] = {}
        t = 0
        attrs = g.attrs
        tb = g.tensor_bytes
        shared = mem.shared_pools
        memo: dict[tuple[int, int], tuple] = {}  # (id(attrs), bytes) -> (tier, duration)
        pools_used: set[str] = set()
        for ids, is_load in ((loads, True), (stores, False)):
            for i in ids:
                a = attrs[i]
                k = (id(a), tb[i])
                hit = memo.get(k)
                if hit is None:
                    tier = mem.tier(a.get("tier") if a else None)
                    hit = memo[k] = (tier, tier.transfer_ns(tb[i]))
                tier, d = hit
                if shared is not None and tier.kind == "MEMORY_POOL" and tier.name not in pools_used:
                    # a pool shared with other instances: wait until their transfers are done; after
                    # that this iteration's transfers follow each other on the NPU's memory resource
                    pools_used.add(tier.name)
                    t = max(t, shared.get(tier.name, 0) - mem.t0)
                t += d
                mem_bytes[tier.name] += tb[i]
                if is_load:
                    load_end[i] = t
        for name in pools_used:  # the pool is busy until this iteration's last transfer ends
            shared[name] = max(shared.get(name, 0), t + mem.t0)
        mem_end = t
        types = g.types
        durs = g.durations_ns
        deps = g.deps
        comp = comm = comm_bytes = 0
        now = 0
        stall = 0
        coll_cache: dict[int, int] = {}
        if isinstance(main, range) and main.step == 1:
            seg_types = types[main.start:main.stop]
            seg = durs[main.start:main.stop]
            if COLL not in seg_types and 0 not in seg:
                # prefix sums between the gated nodes
                acc = list(accumulate(seg, initial=0))
                gates = gates_hint if gates_hint is not None else [(i - main.start, i) for i in main if len(deps[i]) > 1]
                prev = 0
                for pos, i in gates:
                    now += acc[pos] - acc[prev]
                    ready = max(load_end[x] for x in deps[i][1:])
                    if ready > now:
                        stall += ready - now
                        now = ready
                    prev = pos
                now += acc[-1] - acc[prev]
                comp = acc[-1]
                total = max(now, mem_end)
                return IterationResult(duration_ns=total, per_rank_finish_ns=[], compute_ns=comp, comm_ns=0,
                                       mem_ns=mem_end, exposed_comm_ns=0, exposed_mem_ns=stall + max(0, mem_end - now),
                                       comm_bytes=0, mem_bytes_by_tier=dict(mem_bytes))
        for i in main:
            d = deps[i]
            if len(d) > 1:
                ready = max(load_end[x] for x in d[1:])
                if ready > now:
                    stall += ready - now
                    now = ready
            if types[i] == COMP:
                dur = durs[i] if durs[i] > 0 else 1
                comp += dur
            else:
                # memory transfers hold the one communication slot and have the lower ids: a
                # collective starts only after the last of them (see _mem_template_walk)
                if mem_end > now:
                    stall += mem_end - now
                    now = mem_end
                a = attrs[i]
                dur = coll_cache.get(id(a))
                if dur is None:
                    dur = coll_cache[id(a)] = self.network.coll_time(a)
                comm += dur
                comm_bytes += int(a["comm_size"])
            now += dur
        total = max(now, mem_end)
        return IterationResult(duration_ns=total, per_rank_finish_ns=[], compute_ns=comp, comm_ns=comm,
                               mem_ns=mem_end, exposed_comm_ns=comm,
                               exposed_mem_ns=stall + max(0, mem_end - now), comm_bytes=comm_bytes,
                               mem_bytes_by_tier=dict(mem_bytes))

    def template_result(self, graphs: list[Graph]) -> IterationResult | None:
        """The closed-form timing of builder templates (ChainGraph / MemChainGraph ranks), or None when
        the graphs are not templates of a shape the closed forms cover."""
        base = self.network
        if base.knobs.split_mode == "fixed":
            return self._template_result(graphs)
        self.network = base.resolved(graphs)
        try:
            return self._template_result(graphs)
        finally:
            self.network = base

    def _pipe_ok(self, graphs: list[Graph]) -> bool:
        pt = graphs[0].ptemplate  # type: ignore[attr-defined]
        if pt is None or any(getattr(g, "ptemplate", None) is not pt for g in graphs):
            return False
        if len(graphs) != pt.tp * len(pt.stages) or [g.rank for g in graphs] != list(range(len(graphs))):
            return False
        return all(c.node_types() <= {COMP, COLL} for st in pt.stages for c in st)

    def _pipe_time(self, pt) -> IterationResult:
        """Closed form of a pipeline-parallel iteration (PipeTemplate), stage by stage.

        Each stage's TP ranks run the same chain (their collectives complete together), so one
        representative per stage is timed, as the event loop's symmetry reduction does. Per
        micro-batch m a stage's chain starts at max(its previous chain's end, the arrival of m from
        the previous stage) (RECV nodes do not hold the NPU); its first collective waits for the
        communication slot, which the previous micro-batch's SEND holds until delivery; the SEND of
        m issues when m's chain ends and delivers after the point-to-point time. Later collectives
        of the chain find the slot free (chain order). Checked against the event loop in tests.
        """
        net = self.network
        tp, n_st = pt.tp, len(pt.stages)
        coll_ns: dict[int, int] = {}

        def parts(c: ChainTemplate) -> tuple[int, int, int, int, int, bool]:
            """(compute before the first collective, the rest of the chain, compute, collectives, collective
            bytes, whether it has a collective); collectives sit only in the layer template (builder)."""
            edge = sum(n[2] or 1 for n in c.prologue) + sum(n[2] or 1 for n in c.epilogue)
            lay_comp = lay_comm = lay_bytes = 0
            before = None
            for j, (_, typ, dur, _, _, a) in enumerate(c.layer):
                if typ == COMP:
                    lay_comp += dur or 1
                    continue
                if typ != COLL or any(n[1] != COMP for n in c.prologue + c.epilogue):
                    raise ValueError("pipeline templates hold compute and collective nodes only")
                if before is None:
                    before = sum(n[2] or 1 for n in c.layer[:j])
                d = coll_ns.get(id(a))
                if d is None:
                    d = coll_ns[id(a)] = net.coll_time(a)
                lay_comm += d
                lay_bytes += int(a["comm_size"])
            nl = c.num_layers
            comp = edge + nl * lay_comp
            comm = nl * lay_comm
            has = before is not None and nl > 0
            pre = sum(n[2] or 1 for n in c.prologue) + before if has else comp  # type: ignore[operator]
            return pre, comp + comm - pre, comp, comm, nl * lay_bytes, has

        arrivals: list[int] = []
        finish: list[int] = []
        stats: list[tuple[int, int, int]] = []  # per stage: compute, comm, exposed comm
        comm_bytes = 0
        for s in range(n_st):
            rank = s * tp
            now = comm_free = 0
            comp = comm = exposed = 0
            nxt: list[int] = []
            pending_send: tuple[int, int] | None = None  # (start, end) of the previous SEND
            fin = 0
            for m, c in enumerate(pt.stages[s]):
                pre, rest, c_comp, c_comm, c_bytes, has_coll = parts(c)
                start = max(now, arrivals[m]) if s > 0 else now
                fin = max(fin, arrivals[m]) if s > 0 else fin
                first = start + pre
                if pending_send is not None:  # the send overlaps this chain's compute before its first collective
                    a, b = pending_send
                    overlap = max(0, min(b, first if has_coll else start + pre + rest) - max(a, start))
                    exposed += (b - a) - overlap
                if has_coll:
                    first = max(first, comm_free)
                now = first + rest
                comp += c_comp
                comm += c_comm
                exposed += c_comm
                comm_bytes += c_bytes
                if s < n_st - 1:
                    size = pt.act_bytes[m]
                    end = now + p2p_time_ns(rank, rank + tp, size, net.dims, net.knobs.p2p_route)
                    nxt.append(end)
                    comm_free = end
                    comm += end - now
                    comm_bytes += size
                    pending_send = (now, end)
                    fin = max(fin, end)
                else:
                    pending_send = None
            if pending_send is not None:
                a, b = pending_send
                exposed += b - a
            finish.append(max(fin, now))
            stats.append((comp, comm, exposed))
            arrivals = nxt
        slow = max(range(n_st), key=lambda k: finish[k])
        comp, comm, exposed = stats[slow]
        return IterationResult(duration_ns=finish[slow], per_rank_finish_ns=[finish[r // tp] for r in range(tp * n_st)],
                               compute_ns=comp, comm_ns=comm, mem_ns=0, exposed_comm_ns=exposed, exposed_mem_ns=0,
                               comm_bytes=comm_bytes, mem_bytes_by_tier={})

    def _template_result(self, graphs: list[Graph]) -> IterationResult | None:
        g0 = graphs[0]
        if isinstance(g0, PipeGraph) and self._pipe_ok(graphs):
            return self._pipe_time(g0.ptemplate)
        if isinstance(g0, ChainGraph) and self._can_fast_template(graphs):
            r = self._template_time(g0.template)  # type: ignore[arg-type]
        elif self.memory is not None and isinstance(g0, MemChainGraph) and self._mem_template_ok(graphs):
            r = self._mem_template_time(g0.mtemplate)  # type: ignore[arg-type]
            r.mem_bytes_by_tier = {k: v * len(graphs) for k, v in r.mem_bytes_by_tier.items()}
        else:
            return None
        r.per_rank_finish_ns = [r.duration_ns] * len(graphs)
        return r

    def _can_fast_template(self, graphs: list[Graph]) -> bool:
        """All ranks hold the same chain template of compute and collective nodes whose collectives span
        every rank (or one rank alone): then every rank finishes at the template's time."""
        t = graphs[0].template  # type: ignore[attr-defined]
        if t is None:
            return False
        if any(getattr(g, "template", None) is not t for g in graphs):
            return False
        if not t.node_types() <= {COMP, COLL}:
            return False
        if len(graphs) > 1:
            for _, typ, _, _, _, a in t.layer + t.prologue + t.epilogue:
                pg = a.get("pg_name", "") if (typ == COLL and a) else ""
                if pg and len(self.network.group(pg, len(graphs))) != len(graphs):
                    return False
        return True

    def _can_fast(self, graphs: list[Graph]) -> bool:
        g0 = graphs[0]
        if not g0.is_chain():
            return False
        kinds = set(g0.types)
        if SEND in kinds or RECV in kinds:
            return False
        if len(graphs) == 1:
            return True
        if MEM_LOAD in kinds or MEM_STORE in kinds:
            return False
        if COLL in kinds:
            for i in compress(range(len(g0)), map(COLL.__eq__, g0.types)):
                pg = g0.attrs[i].get("pg_name", "") if g0.attrs[i] else ""
                if pg and len(self.network.group(pg, len(graphs))) != len(graphs):
                    return False
        for g in graphs[1:]:
            if g.durations_ns is g0.durations_ns and g.types is g0.types and g.attrs is g0.attrs \
                    and g.deps is g0.deps:
                continue  # the builder shares columns between identical TP ranks
            if g.digest() != g0.digest():
                return False
        return True

    # ---------------- general event loop ----------------
    def run(self, graphs: list[Graph], *, force_event_loop: bool = False, reduce_symmetry: bool = True
            ) -> IterationResult:
        if not graphs:
            raise ValueError("no graphs to execute")
        base = self.network
        if base.knobs.split_mode == "fixed":
            return self._run(graphs, force_event_loop, reduce_symmetry)
        self.network = base.resolved(graphs)
        try:
            return self._run(graphs, force_event_loop, reduce_symmetry)
        finally:
            self.network = base

    def _run(self, graphs: list[Graph], force_event_loop: bool, reduce_symmetry: bool) -> IterationResult:
        if self.memory is not None:
            self.memory.reset()
        if not force_event_loop:
            r = self._template_result(graphs)
            if r is not None:
                return r
        if not force_event_loop and self._can_fast(graphs):
            r = self._chain_time(graphs[0])
            r.per_rank_finish_ns = [r.duration_ns] * len(graphs)
            return r
        if not force_event_loop and self.memory is not None and self._mem_fast_ok(graphs):
            shape = graphs[0].mem_shape_hint or self._mem_chain_shape(graphs[0])
            if shape is not None:
                r = self._mem_chain_time(graphs[0], shape)
                r.per_rank_finish_ns = [r.duration_ns] * len(graphs)
                r.mem_bytes_by_tier = {k: v * len(graphs) for k, v in r.mem_bytes_by_tier.items()}
                return r
        if not reduce_symmetry:
            return self._event_loop_ranks(graphs, solo_groups=False)
        return self._event_loop(graphs)

    def _symmetric_representatives(self, graphs: list[Graph]) -> list[Graph] | None:
        """One rank per comm group when every member's graph matches its representative's.

        Members of a TP group run the same nodes with the same durations; their
        collectives complete together, so executing one member per group and
        letting its collectives complete on its own gives every member's timing.
        Sends between representatives keep their meaning because a stage's
        representative sends to the next stage's representative.
        """
        groups = self.network.comm_groups
        if not groups:
            return None
        if self.memory is not None and any(t.kind != "PER_NPU_MEMORY_EXPANSION" for t in self.memory.tiers.values()) \
                and any(g.has_memory_nodes() for g in graphs):
            return None  # members' transfers serialize on a shared node / pool: every rank must run
        by_rank = {g.rank: g for g in graphs}
        reps: list[Graph] = []
        covered: set[int] = set()
        for members in groups.values():
            rep = by_rank.get(members[0])
            if rep is None:
                return None
            for m in members[1:]:
                g = by_rank.get(m)
                if g is None or g.types != rep.types or g.durations_ns != rep.durations_ns or g.deps != rep.deps:
                    return None
            reps.append(rep)
            covered.update(members)
        if covered != set(by_rank):
            return None
        for g in reps:  # p2p partners must themselves be representatives
            for i in compress(range(len(g)), map(lambda t: t in (SEND, RECV), g.types)):
                a = g.attrs[i]
                peer = int(a.get("comm_dst", a.get("comm_src", -1)))
                if peer not in {r.rank for r in reps}:
                    return None
        return reps

    def _event_loop(self, graphs: list[Graph]) -> IterationResult:
        reps = self._symmetric_representatives(graphs)
        if reps is not None and len(reps) < len(graphs):
            rep_of = {}
            for members in self.network.comm_groups.values():
                for m in members:
                    rep_of[m] = members[0]
            r = self._event_loop_ranks(reps, solo_groups=True)
            fin = dict(zip([g.rank for g in reps], r.per_rank_finish_ns, strict=True))
            r.per_rank_finish_ns = [fin[rep_of[g.rank]] for g in graphs]
            return r
        return self._event_loop_ranks(graphs, solo_groups=False)

    def _event_loop_ranks(self, graphs: list[Graph], solo_groups: bool) -> IterationResult:
        nr = len(graphs)
        net = self.network
        mem = self.memory
        pos = {g.rank: i for i, g in enumerate(graphs)}
        all_ranks = max(pos) + 1
        indeg: list[list[int]] = []
        succ: list[list[list[int]]] = []
        for g in graphs:
            n = len(g)
            deg = [0] * n
            s: list[list[int]] = [[] for _ in range(n)]
            for i in range(n):
                ds = g.all_deps(i)
                deg[i] = len(ds)
                for d in ds:
                    s[d].append(i)
            indeg.append(deg)
            succ.append(s)
        ready_comp: list[list[int]] = [[] for _ in range(nr)]
        ready_comm: list[list[int]] = [[] for _ in range(nr)]
        comp_busy = [False] * nr
        comm_busy = [False] * nr
        finish = [0] * nr
        done_count = [0] * nr
        comp_iv: list[list[tuple[int, int]]] = [[] for _ in range(nr)]
        comm_iv: list[list[tuple[int, int]]] = [[] for _ in range(nr)]
        mem_iv: list[list[tuple[int, int]]] = [[] for _ in range(nr)]
        comm_bytes = 0
        mem_bytes: dict[str, int] = defaultdict(int)
        events: list[tuple[int, int, int, int]] = []  # (time, seq, rank, node)
        seq = 0
        coll_count: dict[tuple[str, int], int] = defaultdict(int)
        rendezvous: dict[tuple[str, int], dict[int, tuple[int, int]]] = {}
        arrivals: dict[tuple[int, int, int], list[int]] = defaultdict(list)  # (src,dst,tag) -> arrival times
        waiting_recv: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)  # -> (rank,node)
        node_start: list[dict[int, int]] = [dict() for _ in range(nr)]

        def push(t: int, r: int, i: int) -> None:
            nonlocal seq
            heapq.heappush(events, (t, seq, r, i))
            seq += 1

        def make_ready(r: int, i: int, now: int) -> None:
            t = graphs[r].types[i]
            if t == COMP:
                heapq.heappush(ready_comp[r], i)
            elif t == RECV:
                a = graphs[r].attrs[i]
                src_rank = int(a["comm_src"])
                if src_rank not in pos:
                    raise ValueError(f"rank {graphs[r].rank} receives from rank {src_rank}, which has no graph")
                key = (pos[src_rank], r, int(a.get("comm_tag", 0)))
                node_start[r][i] = now
                if arrivals[key]:
                    push(max(now, arrivals[key].pop(0)), r, i)
                else:
                    waiting_recv[key].append((r, i))
            else:
                heapq.heappush(ready_comm[r], i)

        def issue(r: int, now: int) -> None:
            nonlocal comm_bytes
            g = graphs[r]
            if not comp_busy[r] and ready_comp[r]:
                i = heapq.heappop(ready_comp[r])
                comp_busy[r] = True
                d = g.durations_ns[i] if g.durations_ns[i] > 0 else 1
                node_start[r][i] = now
                push(now + d, r, i)
            if not comm_busy[r] and ready_comm[r]:
                i = heapq.heappop(ready_comm[r])
                comm_busy[r] = True
                node_start[r][i] = now
                t = g.types[i]
                a = g.attrs[i] or {}
                if t == COLL:
                    pg = a.get("pg_name", "")
                    members = net.group(pg, all_ranks)
                    if g.rank not in members:
                        raise ValueError(f"rank {g.rank} issues a collective of group {pg!r} it is not in")
                    members = [pos[m] for m in members if m in pos] if solo_groups else [pos[m] for m in members]
                    k = coll_count[(pg, r)]
                    coll_count[(pg, r)] = k + 1
                    rv = rendezvous.setdefault((pg, k), {})
                    rv[r] = (now, i)
                    if len(rv) == len(members):
                        sizes = {int(graphs[m].attrs[n]["comm_size"]) for m, (_, n) in rv.items()}
                        if len(sizes) != 1:
                            raise ValueError(f"collective #{k} of group {pg!r} has different sizes {sorted(sizes)}")
                        start = max(t0 for t0, _ in rv.values())
                        comm_bytes += int(a["comm_size"])
                        ends = None
                        if len(rv) > 1 and min(t0 for t0, _ in rv.values()) != start:
                            # members issued it at different times: ASTRA-sim's data flow lets the
                            # early ones progress (ring collectives; others start at the last issue)
                            order = sorted(rv)
                            fin = net.skewed_finish(a, [graphs[m].rank for m in order], [rv[m][0] for m in order])
                            if fin is not None:
                                ends = dict(zip(order, fin, strict=True))
                        if ends is None:
                            end = start + net.coll_time(a)
                            ends = dict.fromkeys(rv, end)
                        for m, (_, n) in rv.items():
                            push(ends[m], m, n)
                        del rendezvous[(pg, k)]
                elif t == SEND:
                    dst_rank = int(a["comm_dst"])
                    if dst_rank not in pos:
                        raise ValueError(f"rank {g.rank} sends to rank {dst_rank}, which has no graph")
                    dst = pos[dst_rank]
                    size = int(a["comm_size"])
                    arrive = now + p2p_time_ns(g.rank, dst_rank, size, net.dims, net.knobs.p2p_route)
                    comm_bytes += size
                    key = (r, dst, int(a.get("comm_tag", 0)))
                    if waiting_recv[key]:
                        rr, ri = waiting_recv[key].pop(0)
                        push(max(arrive, node_start[rr][ri]), rr, ri)
                    else:
                        arrivals[key].append(arrive)
                    push(arrive, r, i)
                else:  # memory
                    if mem is None:
                        raise ValueError("graph has memory nodes but the instance has no memory tiers")
                    size = g.tensor_bytes[i]
                    tier = mem.tier(a.get("tier"))
                    end = mem.request(tier.name, g.rank, now, size)
                    mem_bytes[tier.name] += size
                    push(end, r, i)

        for r, g in enumerate(graphs):
            for i in range(len(g)):
                if indeg[r][i] == 0:
                    make_ready(r, i, 0)
            issue(r, 0)

        while events:
            now, _, r, i = heapq.heappop(events)
            g = graphs[r]
            t = g.types[i]
            st = node_start[r].get(i, now)
            if t == COMP:
                comp_busy[r] = False
                comp_iv[r].append((st, now))
            elif t in (COLL, SEND):
                comm_busy[r] = False
                comm_iv[r].append((st, now))
            elif t in (MEM_LOAD, MEM_STORE):
                comm_busy[r] = False
                mem_iv[r].append((st, now))
            done_count[r] += 1
            if now > finish[r]:
                finish[r] = now
            for s in succ[r][i]:
                indeg[r][s] -= 1
                if indeg[r][s] == 0:
                    make_ready(r, s, now)
            issue(r, now)

        for r, g in enumerate(graphs):
            if done_count[r] != len(g):
                stuck = [graphs[r].names[i] for i in range(len(g)) if indeg[r][i] >= 0][:3]
                raise RuntimeError(
                    f"rank {r} finished {done_count[r]} of {len(g)} nodes: unmatched send/recv or "
                    f"collective (e.g. {stuck})")
        slow = max(range(nr), key=lambda r: finish[r])
        return IterationResult(
            duration_ns=finish[slow],
            per_rank_finish_ns=finish,
            compute_ns=sum(b - a for a, b in comp_iv[slow]),
            comm_ns=sum(b - a for a, b in comm_iv[slow]),
            mem_ns=sum(b - a for a, b in mem_iv[slow]),
            exposed_comm_ns=_union_minus(comm_iv[slow], comp_iv[slow]),
            exposed_mem_ns=_union_minus(mem_iv[slow], comp_iv[slow] + comm_iv[slow]),
            comm_bytes=comm_bytes,
            mem_bytes_by_tier=dict(mem_bytes),
        )
