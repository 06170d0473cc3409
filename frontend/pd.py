"""Prefill/decode disaggregation: prompts run on prefill instances, their KV moves to decode instances.

Why a coordinator in the cluster layer: the hand-off spans two instances and a network path between
them, which no single instance's scheduler sees. The flow follows vLLM's disaggregated serving with a
KV connector that the decode side pulls from (NixlConnector; vLLM docs "Disaggregated Prefilling"):

1. A new request is routed to a prefill (or mixed) instance. On a prefill instance it is marked
   `handoff`: it runs its prompt there (chunked like any prefill) and, when the prompt is done, the token
   sampled there is dropped (the client's tokens come from the decode side) and the request leaves the
   prefill instance's batch, its blocks kept until the KV has left.
2. A decode instance is chosen (`pd.decode_router`: round robin or least loaded) and the request joins its
   waiting queue as a remote-KV request. When that instance's scheduler can give it blocks for the whole
   prompt (a prefix the decode side already caches is reused and not sent), it holds them while the KV
   arrives (vLLM's WAITING_FOR_REMOTE_KVS); short of blocks, it waits in the queue like any request.
3. The transfer moves the prompt's uncached KV, all layers: tokens x model.kv_bytes_per_token (2 x KV
   heads x head_dim x layers x KV dtype bytes; MLA: the latent). Each prefill rank holds 1/tp_p of it and
   each decode rank needs 1/tp_d, so min(tp_p, tp_d) GPU pairs move it in parallel, each over its own
   path: the scale-up link when both instances are on one node, else the scale-out NIC (`pd.scale_up`,
   `pd.scale_out`). The transfer is a Chakra graph (SEND/RECV per GPU pair, `transfer_graphs`) timed by the
   run's backend, embedded or the ASTRA-sim binary: latency + bytes / (lanes x bw) on the analytical
   network. The prefill instance's egress and the decode instance's ingress are FIFO resources: a
   transfer starts when both are free, so concurrent transfers share the links' bandwidth in turn.
4. When the KV has arrived the prefill side frees its blocks and the request joins the decode batch: its
   first step recomputes the last prompt token and samples the first token (the client's TTFT: arrival to
   that step's end, transfer and decode-side queueing included).

Conditional disaggregation (`pd.local_prefill_max_tokens`): a request whose prompt, less what the chosen
decode instance already caches, is short is prefilled on that decode instance itself (DistServe / vLLM's
"conditional" P/D: short prefills do not pay the transfer).

On a cluster network (`cluster:`, frontend/network/): the KV moves as messages between the two instances'
NPUs over the cluster's links, which other transfers share (ASTRA-sim's congestion-aware semantics):
prefill rank j sends decode rank k the part of each layer's KV heads both hold (TP_p != TP_d fans in or
out), that layer's 2 x kv_heads/TP_d x head_dim x tokens x bytes per decode rank, the pipeline stage
holding the layer on each side. `pd.kv_transfer: layerwise` pushes each prefill step's chunk layer by
layer as the step computes it (DistServe / Mooncake-style streaming): the decode instance is chosen at the
request's first prefill step, the decode side's cached prefix is not sent, and layer l leaves when the
step's layer l ends (the chain's layers are identical: l ends at prologue + (l+1) x the layer time). When
the decode side admits the request, any part of its prompt the decode cache held at the first step but
has evicted since is sent then; the KV is ready when the last message arrives.

Not modelled: P and D of different models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.network import Dimension
from chakra_gen.graph import COMP, RECV, SEND, Graph
from frontend.config.models import DTYPE_BYTES
from frontend.config.schema import ClusterConfig, PDConfig
from frontend.instance.runtime import InstanceRuntime
from frontend.workload.request import Request


@dataclass
class TransferRecord:
    request_id: str
    src: str
    dst: str
    bytes: int
    handoff_ns: int  # the prefill finished
    admitted_ns: int  # the decode side gave it blocks (transfer may start)
    start_ns: int  # the links were free
    end_ns: int


@dataclass
class PDStats:
    transfers: list[TransferRecord] = field(default_factory=list)
    local_prefills: int = 0  # kept on a decode instance by conditional disaggregation

    def summary(self) -> dict:
        import numpy as np

        t = self.transfers
        if not t:
            return {"transfers": 0, "kv_transfer_bytes": 0, "local_prefills": self.local_prefills}
        dur = np.array([x.end_ns - x.start_ns for x in t]) / 1e6
        # a streamed transfer starts before the decode side admits its request: no queue on the links then
        queue = np.array([max(0, x.start_ns - x.admitted_ns) for x in t]) / 1e6
        wait = np.array([x.admitted_ns - x.handoff_ns for x in t]) / 1e6
        by_link: dict[str, dict] = {}
        for x in t:
            k = f"{x.src}->{x.dst}"
            e = by_link.setdefault(k, {"transfers": 0, "bytes": 0, "busy_ms": 0.0})
            e["transfers"] += 1
            e["bytes"] += x.bytes
            e["busy_ms"] += (x.end_ns - x.start_ns) / 1e6

        def q(a, p):
            return round(float(np.percentile(a, p)), 4)

        return {"transfers": len(t), "kv_transfer_bytes": int(sum(x.bytes for x in t)),
                "local_prefills": self.local_prefills,
                "transfer_ms": {"mean": round(float(dur.mean()), 4), "p50": q(dur, 50), "p99": q(dur, 99)},
                "link_queue_ms": {"mean": round(float(queue.mean()), 4), "p99": q(queue, 99)},
                "decode_wait_ms": {"mean": round(float(wait.mean()), 4), "p99": q(wait, 99)},
                "links": {k: {**v, "busy_ms": round(v["busy_ms"], 4)} for k, v in sorted(by_link.items())}}


@dataclass
class StreamState:
    """A hand-off request's KV on the cluster network: where it goes and what is still on the links."""

    decoder: InstanceRuntime
    cached_tokens: int  # the decode side's cached prefix when it was chosen (not sent)
    outstanding: int = 0
    sent_bytes: int = 0
    first_ns: int = -1
    last_ns: int = -1
    on_done: object = None  # set at decode-side admission: runs when the last message has arrived
    messages: list | None = None  # (issue ns, source NPU, destination NPU, bytes), kept for Chakra dumps


def kv_pairs(tp_src: int, tp_dst: int) -> list[tuple[int, int, int]]:
    """(source rank, destination rank, share in 1/tp_src units of the destination rank's part): rank j of a
    TP-t instance holds KV heads [j/t, (j+1)/t) of every layer (vLLM shards KV heads over TP), so decode rank
    k receives from each prefill rank the overlap of their slices."""
    out = []
    for k in range(tp_dst):
        for j in range(tp_src):
            u = min((j + 1) * tp_dst, (k + 1) * tp_src) - max(j * tp_dst, k * tp_src)
            if u > 0:
                out.append((j, k, u))
    return out


class PDCoordinator:
    """Hands prefilled requests to decode instances and times their KV transfers (module docstring)."""

    def __init__(self, cfg: PDConfig, instances: list[InstanceRuntime], schedule_timer,
                 cluster: ClusterConfig | None = None) -> None:
        self.cfg = cfg
        self.network = None
        if cluster is not None:
            from frontend.network.cluster_net import ClusterNetwork

            self.network = ClusterNetwork(cluster, [i.inst for i in instances], schedule_timer)
        self.streaming = cfg.kv_transfer == "layerwise"
        self._stream: dict[int, StreamState] = {}
        self.decoders = [i for i in instances if i.inst.role == "decode"]
        self.by_name = {i.name: i for i in instances}
        self.schedule_timer = schedule_timer
        self.backend = instances[0].backend
        self.on_transfer = None  # hook (request, system, graphs, start ns): Chakra dumps, differential captures
        self.stats = PDStats()
        self._rr = 0
        self._free_at: dict[tuple[str, str], int] = {}  # (instance, "out" | "in") -> when its links are free
        self._pending: dict[int, tuple[InstanceRuntime, int]] = {}  # id(request) -> (prefill instance, handoff ns)
        for d in self.decoders:
            d.scheduler.on_remote_admit = lambda req, cached, d=d: self._start_transfer(d, req, cached,
                                                                                         d.scheduler.now_ns)

    # ---- routing of new requests ----
    def admit_new(self, req: Request, inst: InstanceRuntime) -> InstanceRuntime:
        """A new request routed to `inst`: on a prefill instance it is marked for hand-off, or kept on a
        decode instance when its uncached prompt is short (conditional disaggregation)."""
        if inst.inst.role != "prefill":
            return inst
        limit = self.cfg.local_prefill_max_tokens
        if limit:
            d = self._pick_decoder()
            cached = len(d.pool.find_cached_prefix(req)) * d.pool.block_size
            if req.input_tokens - cached <= limit:
                self.stats.local_prefills += 1
                return d
        req.handoff = True
        return inst

    def rejection_reason(self, req: Request) -> str:
        """A prefill instance's request must also fit a decode instance: one no decoder can ever hold would
        wait in a decode queue forever."""
        if not req.handoff:
            return ""
        return min((d.scheduler.rejection_reason(req) for d in self.decoders), key=len)

    def _pick_decoder(self) -> InstanceRuntime:
        ds = self.decoders
        if self.cfg.decode_router == "round_robin":
            d = ds[self._rr % len(ds)]
            return d
        return min(ds, key=lambda i: (i.scheduler.load() + len(i.scheduler.awaiting_kv), i.name))

    # ---- after a step of any instance ----
    def after_complete(self, inst: InstanceRuntime, now: int) -> list[InstanceRuntime]:
        """Requests the step finished prefilling go to decode instances; returns the instances to wake."""
        sched = inst.scheduler
        if not sched.handed_off:
            return []
        woken = []
        for req in sched.handed_off:
            st = self._stream.get(id(req))
            if st is not None:  # streamed: its decode instance was chosen at its first prefill step
                d = st.decoder
            else:
                d = self._pick_decoder()
                if self.cfg.decode_router == "round_robin":
                    self._rr += 1
            req.handoff = False
            req.remote_kv = True
            req.num_computed_tokens = 0
            self._pending[id(req)] = (inst, now)
            d.receive(req, now)
            woken.append(d)
        sched.handed_off = []
        return woken

    # ---- transfers ----
    # ---- the cluster network ----
    def on_step_start(self, inst: InstanceRuntime, out, now: int) -> None:
        """Layer-wise streaming: a prefill step starting now pushes each layer's KV of its hand-off chunks as
        that layer ends (module docstring)."""
        if not self.streaming or inst.inst.role != "prefill":
            return
        plan = out.plan
        offsets = None
        for req, n, c0 in zip(plan.requests, plan.num_new_tokens, plan.contexts, strict=True):
            if not req.handoff:
                continue
            st = self._stream.get(id(req))
            if st is None:
                d = self._pick_decoder()
                if self.cfg.decode_router == "round_robin":
                    self._rr += 1
                cached = len(d.pool.find_cached_prefix(req)) * d.pool.block_size
                st = self._stream[id(req)] = StreamState(d, cached)
                if c0 > cached:  # the prefill side's own cached prefix: its KV is there already, sent now
                    self._send_kv(inst, d, st, c0 - cached, None, now)
            lo, hi = max(c0, st.cached_tokens), min(c0 + n, req.input_tokens)
            if hi <= lo:
                continue
            if offsets is None:
                offsets = layer_end_offsets(out, inst.inst.model.num_layers)
            self._send_kv(inst, st.decoder, st, hi - lo, [now + o for o in offsets])

    def _send_kv(self, src: InstanceRuntime, dst: InstanceRuntime, st: StreamState, tokens: int,
                 layer_times: list[int] | None, now: int = 0) -> None:
        """Messages carrying `tokens` tokens' KV from `src` to `dst`: per layer at `layer_times` (streaming),
        or every layer at once at `now`, one message per NPU pair (the layers of a pipeline stage summed)."""
        net = self.network
        a, b = src.inst, dst.inst
        L = a.model.num_layers
        eng = b.engine
        kv_b = DTYPE_BYTES[eng.dtype if eng.kv_cache_dtype == "auto" else eng.kv_cache_dtype]
        per_rank = tokens * b.model.kv_bytes_per_token_per_layer(kv_b, b.tp)  # one layer, one decode rank
        pairs = kv_pairs(a.tp, b.tp)
        per_a, per_b = -(-L // a.pp), -(-L // b.pp)
        sizes: dict[tuple[int, int, int], int] = {}
        for layer in range(L):
            t = layer_times[layer] if layer_times is not None else now
            sa, sb = layer // per_a, layer // per_b
            for j, k, u in pairs:
                key = (t, net.npu(a.name, sa * a.tp + j), net.npu(b.name, sb * b.tp + k))
                sizes[key] = sizes.get(key, 0) + per_rank * u // a.tp
        for (t, s_npu, d_npu), size in sizes.items():
            if size <= 0:
                continue
            st.outstanding += 1
            st.sent_bytes += size
            if self.on_transfer is not None:
                if st.messages is None:
                    st.messages = []
                st.messages.append((t, s_npu, d_npu, size))
            if st.first_ns < 0 or t < st.first_ns:
                st.first_ns = t
            net.send(t, s_npu, d_npu, size, lambda at, st=st: self._message_arrived(st, at))

    def _message_arrived(self, st: StreamState, at: int) -> None:
        st.outstanding -= 1
        st.last_ns = max(st.last_ns, at)
        if st.outstanding == 0 and st.on_done is not None:
            done, st.on_done = st.on_done, None
            self.network.notify(at, done)

    def _start_network_transfer(self, src: InstanceRuntime, dst: InstanceRuntime, req: Request, cached_tokens: int,
                                handoff_ns: int, now: int) -> None:
        st = self._stream.pop(id(req), None)
        if st is None:  # pulled once the prefill ended: the whole uncached prompt now
            st = StreamState(dst, cached_tokens)
            tokens = req.input_tokens - cached_tokens
        else:  # streamed: what the decode cache held at the first step but no longer does
            tokens = max(0, st.cached_tokens - cached_tokens)
            if tokens:
                st.cached_tokens = cached_tokens
        if tokens > 0:
            self._send_kv(src, dst, st, tokens, None, now)

        def arrived(src=src, dst=dst, req=req, st=st) -> InstanceRuntime:
            src.scheduler.release_kv_source(req)
            dst.scheduler.kv_arrived(req)
            if self.on_transfer is not None and st.messages:
                self._dump_messages(req, st.messages)
            self.stats.transfers.append(TransferRecord(req.request_id, src.name, dst.name, st.sent_bytes, handoff_ns,
                                                       now, st.first_ns if st.first_ns >= 0 else now,
                                                       max(now, st.last_ns)))
            return dst

        if st.outstanding == 0:
            self.schedule_timer(now, arrived)
        else:
            st.on_done = arrived

    def _dump_messages(self, req: Request, messages: list) -> None:
        """A transfer's messages as Chakra SEND/RECV graphs over the NPUs they touch (renumbered from 0), on a
        1-D Switch of the link they crossed: what ASTRA-sim's congestion-aware binary runs for them alone
        (astra_bridge/network_messages.py). `per_rank_finish_ns` is the cluster network's answer for that
        isolated set; in the run other transfers may have shared the links."""
        from astra_bridge.network_messages import TimedMessage, message_graphs, model_finish
        from frontend.network.topology import ClusterTopology

        topo = self.network.topology
        npus = sorted({m[1] for m in messages} | {m[2] for m in messages})
        idx = {g: i for i, g in enumerate(npus)}
        t0 = min(m[0] for m in messages)
        msgs = [TimedMessage(t - t0, idx[a], idx[b], n) for t, a, b, n in messages]
        intra = topo.node_of(messages[0][1]) == topo.node_of(messages[0][2])
        bw, lat = ((topo.scale_up_bw_gbps, topo.scale_up_latency_ns) if intra
                   else (topo.scale_out_bw_gbps, topo.scale_out_latency_ns))
        n = max(2, len(npus))
        alone = ClusterTopology(num_nodes=n, npus_per_node=1, scale_up_bw_gbps=1.0, scale_up_latency_ns=0.0,
                                scale_out_bw_gbps=bw, scale_out_latency_ns=lat)
        finish = model_finish(alone.build(), alone.route, n, msgs)
        system = InstanceSystem(name=f"kv-net {req.request_id}", num_npus=n,
                                dims=(Dimension("Switch", n, bw * 1e9 / 2**30, float(lat), "ring"),))
        self.on_transfer(req, system, message_graphs(n, msgs), t0, finish)

    def _start_transfer(self, dst: InstanceRuntime, req: Request, cached_tokens: int, now: int) -> None:
        src, handoff_ns = self._pending.pop(id(req))
        if self.network is not None:
            self._start_network_transfer(src, dst, req, cached_tokens, handoff_ns, now)
            return
        tokens = max(0, req.input_tokens - cached_tokens)
        eng = dst.inst.engine
        kv_b = DTYPE_BYTES[eng.dtype if eng.kv_cache_dtype == "auto" else eng.kv_cache_dtype]
        nbytes = tokens * dst.inst.model.kv_bytes_per_token(kv_b)
        link = self.cfg.scale_up if src.inst.node == dst.inst.node else self.cfg.scale_out
        system, graphs = transfer_graphs(src.inst.num_npus, dst.inst.num_npus, int(nbytes), link.bw_gbps,
                                         link.latency_ns, f"{src.name}->{dst.name}")
        start = max(now, self._free_at.get((src.name, "out"), 0), self._free_at.get((dst.name, "in"), 0))
        took = self.backend.run(system, graphs, start_ns=start).duration_ns if nbytes else 0
        self._free_at[(src.name, "out")] = self._free_at[(dst.name, "in")] = start + took
        end = start + took
        if self.on_transfer is not None:
            self.on_transfer(req, system, graphs, start)
        self.stats.transfers.append(TransferRecord(req.request_id, src.name, dst.name, int(nbytes), handoff_ns, now,
                                                   start, end))

        def arrived(src=src, dst=dst, req=req) -> InstanceRuntime:
            src.scheduler.release_kv_source(req)
            dst.scheduler.kv_arrived(req)
            return dst

        self.schedule_timer(end, arrived)


def layer_end_offsets(out, num_layers: int) -> list[int]:
    """When each of the model's layers ends in a step, from the step's start: its chain's layers are one
    template repeated, so after the prologue they end at equal intervals before the epilogue (the
    sampler/LM head); other graph kinds (pipelines) spread the layers evenly over the step."""
    core = max(1, out.result.duration_ns)
    pro = epi = 0
    t = getattr(out.graphs[0], "template", None) if out.graphs else None
    if t is not None and hasattr(t, "prologue"):
        pro = sum(x[2] for x in t.prologue if x[1] == COMP)
        epi = sum(x[2] for x in t.epilogue if x[1] == COMP)
        if pro + epi >= core:
            pro = epi = 0
    span = core - pro - epi
    return [pro + (i + 1) * span // num_layers for i in range(num_layers)]


def transfer_graphs(tp_src: int, tp_dst: int, nbytes: int, bw_gbps: float, latency_ns: float, name: str
                    ) -> tuple[InstanceSystem, list[Graph]]:
    """One KV transfer as Chakra graphs over the two instances' ranks, for either backend to time.

    Ranks side * tp + i (side 0: the prefill instance, 1: the decode instance, tp = the larger TP). The
    network has the instances' scale-up dimension inside (unused by the transfer) and a 2-NPU dimension
    between the instances: the per-GPU link the KV crosses (bw in GB/s = 1e9 B/s, converted to ASTRA-sim's
    GiB/s). min(tp_src, tp_dst) GPU pairs i -> tp + i each SEND/RECV their 1/lanes of the bytes, so they move
    in parallel; other ranks hold one 1 ns compute node (every rank needs a workload).
    """
    tp = max(tp_src, tp_dst)
    lanes = max(1, min(tp_src, tp_dst))
    link = Dimension("FullyConnected", 2, bw_gbps * 1e9 / 2**30, float(latency_ns), "ring")  # one hop: end to end
    dims = (Dimension("FullyConnected", tp, 1e6, 0.0, "ring"), link) if tp > 1 else (link,)
    part = -(-nbytes // lanes)
    graphs = []
    for r in range(2 * tp):
        g = Graph(rank=r)
        side, i = divmod(r, tp)
        if i >= lanes:
            g.add("idle", COMP, duration_ns=1)
        elif side == 0:
            g.add("kv.send", SEND, attrs={"comm_dst": tp + i, "comm_tag": 1, "comm_size": part})
        else:
            g.add("kv.recv", RECV, attrs={"comm_src": i, "comm_tag": 1, "comm_size": part})
        graphs.append(g)
    return InstanceSystem(name=f"kv {name}", num_npus=2 * tp, dims=dims), graphs
