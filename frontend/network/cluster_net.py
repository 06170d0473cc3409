"""The cluster network inside a run: instances placed on NPUs, messages between them on the engine's clock.

Why here: KV moves between instances on links that several transfers share, so the network has to keep its
state (which link is busy until when, which NPU has a send in flight) across the whole run, not per
iteration. The cluster layer owns one `ClusterNetwork`; it issues messages (frontend/pd.py) and arms an
engine timer at the network's next event so arrivals are handled at their exact simulated times.
Messages between instances are timed by this model (ASTRA-sim's congestion-aware semantics, checked
against the binary by bench/differential_network.py) whichever backend times the iterations: the binary
is run per iteration and cannot hold a network's state from one call to the next.
"""

from __future__ import annotations

from collections.abc import Callable

from frontend.config.schema import ClusterConfig
from frontend.errors import ConfigError
from frontend.network.linknet import LinkNetwork, Message
from frontend.network.topology import ClusterTopology


def topology_of(cfg: ClusterConfig, nodes_used: int) -> ClusterTopology:
    n = cfg.num_nodes if cfg.num_nodes is not None else nodes_used
    if n < nodes_used:
        raise ConfigError(f"cluster.num_nodes: {n} nodes, but an instance sits on node {nodes_used - 1}")
    return ClusterTopology(num_nodes=n, npus_per_node=cfg.npus_per_node,
                           scale_up_bw_gbps=cfg.scale_up.bw_gbps, scale_up_latency_ns=cfg.scale_up.latency_ns,
                           scale_out_bw_gbps=cfg.scale_out.bw_gbps, scale_out_latency_ns=cfg.scale_out.latency_ns,
                           nodes_per_leaf=cfg.nodes_per_leaf, oversubscription=cfg.oversubscription)


def place(instances, npus_per_node: int) -> dict[str, int]:
    """First NPU of each instance: packed onto its node in listing order (error when a node overflows)."""
    used: dict[int, int] = {}
    base = {}
    for ri in instances:
        node = ri.node
        off = used.get(node, 0)
        if off + ri.num_npus > npus_per_node:
            names = [r.name for r in instances if r.node == node]
            raise ConfigError(f"cluster.npus_per_node: node {node} holds instances {names} needing "
                              f"{off + ri.num_npus} NPUs, more than its {npus_per_node}")
        base[ri.name] = node * npus_per_node + off
        used[node] = off + ri.num_npus
    return base


class ClusterNetwork:
    def __init__(self, cfg: ClusterConfig, instances, schedule_timer: Callable) -> None:
        """`instances`: resolved instances (name, node, num_npus) in listing order; `schedule_timer(t, fn)` the
        engine's timers."""
        nodes_used = max(ri.node for ri in instances) + 1
        self.topology = topology_of(cfg, nodes_used)
        self.base = place(instances, cfg.npus_per_node)
        self.net: LinkNetwork = self.topology.build()
        self.schedule_timer = schedule_timer
        self._routes: dict[tuple[int, int], list[int]] = {}

    def npu(self, instance: str, rank: int) -> int:
        return self.base[instance] + rank

    def send(self, t_ns: int, src: int, dst: int, size: int, on_arrival: Callable[[int], None]) -> Message:
        """Issue a message; the engine has the network catch up before it moves its clock (`catch_up`)."""
        route = self._routes.get((src, dst))
        if route is None:
            route = self._routes[(src, dst)] = self.topology.route(src, dst)
        return self.net.send_at(t_ns, src, dst, size, route, on_arrival)

    def notify(self, t_ns: int, fn: Callable) -> None:
        """A network outcome the engine must act on at `t_ns` (a transfer complete): an engine timer; the
        network pauses after it, so whatever the engine then issues finds the links as they are at `t_ns`."""
        self.net.halt = True
        self.schedule_timer(t_ns, fn)

    def catch_up(self, next_engine_ns: int | None) -> None:
        """The engine is about to move its clock to `next_engine_ns` (None: it has nothing left but what the
        network will tell it). Everything it does at the current time is done, so nothing can issue a message
        before then: handle the network's events up to just before that time in one go, stopping after the
        first outcome the engine must see (its timer is then the engine's next event)."""
        net = self.net
        e = net.next_time()
        if e is None or (next_engine_ns is not None and e >= next_engine_ns):
            return
        net.halt = False
        if next_engine_ns is not None:
            net.advance(next_engine_ns - 1)
        else:  # the engine waits on the network alone: run to its first outcome (or its end)
            while not net.halt and (e := net.next_time()) is not None:
                net.advance(e)
        net.halt = False

    @property
    def idle(self) -> bool:
        return self.net.next_time() is None

    def link_stats(self) -> dict:
        """Bytes and busy time per directed link that carried traffic (device ids as in topology.py)."""
        return {f"{a}->{b}": {"bytes": ln.bytes, "busy_ms": round(ln.busy_ns / 1e6, 4)}
                for (a, b), ln in sorted(self.net.links.items()) if ln.bytes}
