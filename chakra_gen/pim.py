"""Chakra graphs of an iteration whose decode attention runs on a PIM device.

Representation (documented choice): the PIM device is its own rank. Rank 0 is the accelerator, rank 1 the PIM
device (all its channels; a node's duration is the most loaded channel's time, see frontend/compute/pim.py). The
two are joined by a network of one 2-NPU dimension whose bandwidth and latency are those of the accelerator-PIM
link, so both backends time the traffic between them as point-to-point messages:

* per layer and sub-batch the accelerator SENDs the decode tokens' q, k, v (and the KV of the step's prefill
  tokens, which is written to the PIM device where the KV lives) after its pre-attention operators;
* the PIM rank RECVs them, runs one COMP node `L{l}.pim_attention[.sb]` (the PIM time; PIM compute nodes are
  chained, so they run in arrival order) and SENDs the attention output (decode tokens x heads x head_dim)
  back; the accelerator's first post-attention operator waits for that RECV;
* attention of the step's other sequences (prefill chunks) stays on the accelerator: a COMP node
  `L{l}.attention` after the SEND, priced by the compute model on those sequences alone; when those chunks
  have a cached context (a later chunk, a prefix-cache hit), its KV of the layer comes back from the PIM device
  first (SEND on the PIM rank after it received the layer's message, RECV gating the accelerator's attention).

Sub-batch interleaving (NeuPIMs, ASPLOS'24): with two sub-batches A and B, the accelerator's chain per layer is
post(A, l), pre(A, l+1), post(B, l), pre(B, l+1), so it runs one sub-batch's dense operators while the PIM
device attends the other. Receives are posted up front (they hold no resource), as in the pipeline builder.
Message tags: ((layer * 2 + sub-batch) * 3 + direction), direction 0 = to the PIM device, 1 = attention output
back, 2 = cached-context KV back.
"""

from __future__ import annotations

from dataclasses import dataclass

from chakra_gen.graph import COMP, RECV, SEND, Graph
from frontend.compute.batch import OpCost

ACCEL_RANK = 0
PIM_RANK = 1


@dataclass
class SubBatchWork:
    """One sub-batch of a PIM step: its accelerator operators around attention and its PIM work per layer."""

    pre: list[OpCost]  # one layer's operators before attention
    post: list[OpCost]  # one layer's operators after attention
    gpu_attention: OpCost | None  # attention of the sequences that stay on the accelerator (prefill), or None
    to_pim_bytes: int  # per layer: decode q/k/v + prefill KV written to the PIM device
    from_pim_bytes: int  # per layer: attention output of the decode tokens
    pim_ns: int  # per layer: the PIM device's attention time (0: no decode attention on PIM)
    pim_ops: int = 0  # per layer: the PIM MAC operations (x2 FLOP), for the trace's num_ops
    kv_fetch_bytes: int = 0  # per layer: cached-context KV of the prefill chunks, read back for their attention


def _tag(layer: int, sb: int, direction: int) -> int:
    return (layer * 2 + sb) * 3 + direction


def build_pim_graphs(num_layers: int, prologue: list[OpCost], epilogue: list[OpCost],
                     subs: list[SubBatchWork]) -> list[Graph]:
    """[accelerator graph, PIM graph] for one iteration (tp = pp = 1)."""
    if not 1 <= len(subs) <= 2:
        raise ValueError("a PIM step has one or two sub-batches")
    acc = Graph(rank=ACCEL_RANK)
    pim = Graph(rank=PIM_RANK)
    # receives first, in the order their messages are sent
    back: dict[tuple[int, int], int] = {}
    fwd: dict[tuple[int, int], int] = {}
    fetch: dict[tuple[int, int], int] = {}
    for li in range(num_layers):
        for sb, w in enumerate(subs):
            if not w.to_pim_bytes:
                continue
            fwd[li, sb] = pim.add(f"L{li}.pim_recv.{sb}", RECV,
                                  attrs={"comm_src": ACCEL_RANK, "comm_tag": _tag(li, sb, 0),
                                         "comm_size": w.to_pim_bytes})
            if w.kv_fetch_bytes:
                fetch[li, sb] = acc.add(f"L{li}.kv_fetch.{sb}", RECV,
                                        attrs={"comm_src": PIM_RANK, "comm_tag": _tag(li, sb, 2),
                                               "comm_size": w.kv_fetch_bytes})
            if w.pim_ns:
                back[li, sb] = acc.add(f"L{li}.pim_result.{sb}", RECV,
                                       attrs={"comm_src": PIM_RANK, "comm_tag": _tag(li, sb, 1),
                                              "comm_size": w.from_pim_bytes})
    last = [-1]

    def comp(name: str, op: OpCost, extra: int = -1) -> None:
        deps = (last[0],) if last[0] >= 0 else ()
        if extra >= 0:
            deps = deps + (extra,)
        last[0] = acc.add(name, COMP, duration_ns=op.duration_ns, deps=deps, num_ops=op.flops,
                          tensor_bytes=op.bytes)

    def pre(li: int, sb: int) -> None:
        w = subs[sb]
        sfx = f".{sb}" if len(subs) > 1 else ""
        for op in w.pre:
            comp(f"L{li}.{op.name}{sfx}", op)
        if w.to_pim_bytes:
            acc.add(f"L{li}.pim_send.{sb}", SEND, deps=(last[0],) if last[0] >= 0 else (),
                    attrs={"comm_dst": PIM_RANK, "comm_tag": _tag(li, sb, 0), "comm_size": w.to_pim_bytes})
        if w.gpu_attention is not None:  # after the cached context's KV has come back from the PIM device
            comp(f"L{li}.attention{sfx}", w.gpu_attention, fetch.get((li, sb), -1))

    def post(li: int, sb: int) -> None:
        w = subs[sb]
        sfx = f".{sb}" if len(subs) > 1 else ""
        gate = back.get((li, sb), -1)
        for k, op in enumerate(w.post):
            comp(f"L{li}.{op.name}{sfx}", op, gate if k == 0 else -1)
        if not w.post and gate >= 0:  # nothing after attention: the next operator waits for the result
            comp(f"L{li}.pim_wait{sfx}", OpCost("pim_wait", 0, 0, 0), gate)

    for op in prologue:
        comp(op.name, op)
    if num_layers:
        for sb in range(len(subs)):
            pre(0, sb)
        for li in range(num_layers):
            for sb in range(len(subs)):
                post(li, sb)
                if li + 1 < num_layers:
                    pre(li + 1, sb)
    for op in epilogue:
        comp(op.name, op)
    if not len(acc):
        acc.add("idle", COMP, duration_ns=1)
    # the PIM device: attention in arrival order, each result sent back
    prev = -1
    for li in range(num_layers):
        for sb, w in enumerate(subs):
            r = fwd.get((li, sb))
            if r is None:
                continue
            if w.kv_fetch_bytes:  # the prefill chunks' cached context, read out for the accelerator
                pim.add(f"L{li}.kv_fetch_send.{sb}", SEND, deps=(r,),
                        attrs={"comm_dst": ACCEL_RANK, "comm_tag": _tag(li, sb, 2), "comm_size": w.kv_fetch_bytes})
            if not w.pim_ns:
                continue
            deps = (r,) if prev < 0 else (prev, r)
            prev = pim.add(f"L{li}.pim_attention.{sb}", COMP, duration_ns=w.pim_ns, deps=deps, num_ops=w.pim_ops,
                           attrs={"device": "pim"})
            pim.add(f"L{li}.pim_reply.{sb}", SEND, deps=(prev,),
                    attrs={"comm_dst": ACCEL_RANK, "comm_tag": _tag(li, sb, 1), "comm_size": w.from_pim_bytes})
    if not len(pim):
        pim.add("idle", COMP, duration_ns=1)  # an independent rank (a step without PIM traffic)
    return [acc, pim]


def pim_busy_ns(graph: Graph) -> int:
    """Time the PIM rank's attention nodes take (the device is active), from its graph."""
    return sum(d for t, d, a in zip(graph.types, graph.durations_ns, graph.attrs, strict=True)
               if t == COMP and a and a.get("device") == "pim")
