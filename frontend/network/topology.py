"""The cluster's network: nodes of NPUs, a scale-up switch inside each node, NICs to leaf switches, a spine.

Why a topology of its own: traffic between instances (prefill -> decode KV) leaves one instance's GPUs and
enters another's, over links other instances also use; the per-instance networks of the iteration traces
stop at the instance's edge. The run file names the cluster (`cluster:`), instances sit on its nodes
(`instances[].node`, their NPUs packed in the order the instances are listed), and every message between
two NPUs takes the route this class gives over links of a `LinkNetwork` (frontend/network/linknet.py).

Devices: NPUs 0 .. N-1 (node n holds n x npus_per_node ..), then one scale-up switch per node (NVSwitch /
PCIe switch), one leaf switch per `nodes_per_leaf` nodes, and one spine (the leaves' uplinks aggregated:
a non-blocking fat tree when oversubscription = 1).
Links (each one per direction, ASTRA-sim's bidirectional `connect`):
  - NPU <-> its node's switch: `scale_up` (per-GPU NVLink bandwidth, e.g. 450 GB/s on H100 HGX);
  - NPU <-> its leaf switch: `scale_out` (the GPU's own NIC, rail style: one NIC per GPU);
  - leaf <-> spine: npus under the leaf x scale_out bw / oversubscription, scale_out latency.
Routes: the same node -> NPU, node switch, NPU; nodes under one leaf -> NPU, leaf, NPU; else NPU, leaf,
spine, leaf, NPU. One leaf over all NPUs with one NPU per node is ASTRA-sim's 1-D `Switch` topology
exactly (what the congestion-aware binary at f66c1da supports: 1-D Ring / FullyConnected / Switch only),
and so is a single node (its scale-up switch): those are the cases the binary checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontend.network.linknet import LinkNetwork


@dataclass(frozen=True)
class ClusterTopology:
    num_nodes: int
    npus_per_node: int
    scale_up_bw_gbps: float
    scale_up_latency_ns: float
    scale_out_bw_gbps: float
    scale_out_latency_ns: float
    nodes_per_leaf: int = 0  # 0: one leaf switch holds every node
    oversubscription: float = 1.0

    @property
    def num_npus(self) -> int:
        return self.num_nodes * self.npus_per_node

    @property
    def num_leaves(self) -> int:
        per = self.nodes_per_leaf or self.num_nodes
        return -(-self.num_nodes // per)

    def node_of(self, npu: int) -> int:
        return npu // self.npus_per_node

    def leaf_of_node(self, node: int) -> int:
        return node // (self.nodes_per_leaf or self.num_nodes)

    def _node_switch(self, node: int) -> int:
        return self.num_npus + node

    def _leaf(self, leaf: int) -> int:
        return self.num_npus + self.num_nodes + leaf

    def _spine(self) -> int:
        return self.num_npus + self.num_nodes + self.num_leaves

    def uplink_bw_gbps(self) -> float:
        """A leaf's uplink to the spine: its NPUs' NIC bandwidth over the oversubscription ratio."""
        per = self.nodes_per_leaf or self.num_nodes
        return per * self.npus_per_node * self.scale_out_bw_gbps / self.oversubscription

    def route(self, src: int, dst: int) -> list[int]:
        if not (0 <= src < self.num_npus and 0 <= dst < self.num_npus) or src == dst:
            raise ValueError(f"no route from NPU {src} to NPU {dst} in a {self.num_npus}-NPU cluster")
        ns, nd = self.node_of(src), self.node_of(dst)
        if ns == nd:
            return [src, self._node_switch(ns), dst]
        ls, ld = self.leaf_of_node(ns), self.leaf_of_node(nd)
        if ls == ld:
            return [src, self._leaf(ls), dst]
        return [src, self._leaf(ls), self._spine(), self._leaf(ld), dst]

    def build(self) -> LinkNetwork:
        net = LinkNetwork()
        for g in range(self.num_npus):
            node = self.node_of(g)
            if self.npus_per_node > 1:
                net.connect(g, self._node_switch(node), self.scale_up_bw_gbps, self.scale_up_latency_ns)
            if self.num_nodes > 1:
                net.connect(g, self._leaf(self.leaf_of_node(node)), self.scale_out_bw_gbps, self.scale_out_latency_ns)
        if self.num_leaves > 1:
            for leaf in range(self.num_leaves):
                net.connect(self._leaf(leaf), self._spine(), self.uplink_bw_gbps(), self.scale_out_latency_ns)
        return net
