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

Not modelled: layer-by-layer streaming of the KV while the prefill runs (the pull starts when the prefill
ends, as vLLM's NixlConnector does; the transfer is its own graph, not inside the prefill step's), P and D of
different models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.network import Dimension
from chakra_gen.graph import COMP, RECV, SEND, Graph
from frontend.config.models import DTYPE_BYTES
from frontend.config.schema import PDConfig
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
        queue = np.array([x.start_ns - x.admitted_ns for x in t]) / 1e6
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


class PDCoordinator:
    """Hands prefilled requests to decode instances and times their KV transfers (module docstring)."""

    def __init__(self, cfg: PDConfig, instances: list[InstanceRuntime], schedule_timer) -> None:
        self.cfg = cfg
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
    def _start_transfer(self, dst: InstanceRuntime, req: Request, cached_tokens: int, now: int) -> None:
        src, handoff_ns = self._pending.pop(id(req))
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
