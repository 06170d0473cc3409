"""A set of timed point-to-point messages as Chakra graphs for ASTRA-sim's congestion-aware binary, and the
per-NPU finish times the in-process cluster network gives for the same set.

Why: the cluster network (frontend/network/linknet.py) claims ASTRA-sim's congestion-aware semantics; the
way to check that is to run the same messages through the binary. Each message (issue time, source NPU,
destination NPU, bytes) becomes a SEND on its source and a RECV on its destination (a unique tag each).
A source's issue times are a chain of compute nodes (an NPU runs one compute node at a time, so delays
must be chained, not parallel): a SEND depends on the compute node that ends at its issue time, or on
nothing when issued at 0. Every NPU finishes at its last node: a SEND ends when its chunk arrives, a RECV
when its message has arrived, the delay chain at the last issue time; an NPU with no message runs one 1-ns
compute node.
"""

from __future__ import annotations

from dataclasses import dataclass

from chakra_gen.graph import COMP, RECV, SEND, Graph


@dataclass(frozen=True)
class TimedMessage:
    t_ns: int
    src: int
    dst: int
    size: int


def message_graphs(num_npus: int, messages: list[TimedMessage]) -> list[Graph]:
    graphs = [Graph(rank=r) for r in range(num_npus)]
    by_src: dict[int, list[tuple[int, int]]] = {}
    for k, m in enumerate(messages):
        by_src.setdefault(m.src, []).append((m.t_ns, k))
    for src, items in by_src.items():
        g = graphs[src]
        last_t, last_node = 0, None
        for t, k in sorted(items):
            if t > last_t:
                last_node = g.add(f"delay{k}", COMP, duration_ns=t - last_t,
                                  deps=[last_node] if last_node is not None else [])
                last_t = t
            m = messages[k]
            g.add(f"send{k}", SEND, deps=[last_node] if last_node is not None else [],
                  attrs={"comm_dst": m.dst, "comm_tag": k + 1, "comm_size": m.size})
    for k, m in enumerate(messages):
        graphs[m.dst].add(f"recv{k}", RECV, attrs={"comm_src": m.src, "comm_tag": k + 1, "comm_size": m.size})
    for g in graphs:
        if not len(g):
            g.add("idle", COMP, duration_ns=1)
    return graphs


def model_finish(net, route, num_npus: int, messages: list[TimedMessage]) -> list[int]:
    """Per-NPU finish on a `LinkNetwork` (`route(src, dst)` gives device lists), as `message_graphs` runs."""
    finish = [0] * num_npus
    for m in messages:
        finish[m.src] = max(finish[m.src], m.t_ns)

    def arrived(t: int, m: TimedMessage) -> None:
        finish[m.src] = max(finish[m.src], t)
        finish[m.dst] = max(finish[m.dst], t)

    # a source issues its messages in (time, listing) order, as the graphs' ready queue does
    order = sorted(range(len(messages)), key=lambda k: (messages[k].t_ns, k))
    for k in order:
        m = messages[k]
        net.send_at(m.t_ns, m.src, m.dst, m.size, route(m.src, m.dst), lambda t, m=m: arrived(t, m))
    net.run()
    touched = {m.src for m in messages} | {m.dst for m in messages}
    return [finish[r] if r in touched else 1 for r in range(num_npus)]
