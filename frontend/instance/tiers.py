"""KV tiers below HBM: host DRAM per node, CXL devices or a CXL pool shared by instances.

A tier holds KV blocks by content (model, chained block hash) with its own
LRU and a capacity in bytes. Instance-scoped tiers belong to one instance,
node-scoped tiers to every instance on that node, pool-scoped tiers to every
instance they serve, so a prefix written by one instance can be hit by
another of the same model. Which instances share a tier object is decided
once, when the cluster is built.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from astra_bridge.embedded.memory import PER_NODE, PER_NPU, POOL, MemoryTierModel
from frontend.config.schema import TierConfig

GIB = 1 << 30
SCOPE_TO_KIND = {"instance": PER_NPU, "node": PER_NODE, "pool": POOL}


@dataclass
class TierStats:
    hit_blocks: int = 0
    loaded_blocks: int = 0
    stored_blocks: int = 0
    loaded_bytes: int = 0
    stored_bytes: int = 0
    evictions: int = 0


@dataclass
class LowerTier:
    cfg: TierConfig
    capacity_bytes: int
    entries: OrderedDict = field(default_factory=OrderedDict)  # key -> bytes (LRU order, oldest first)
    used_bytes: int = 0
    stats: TierStats = field(default_factory=TierStats)

    @property
    def name(self) -> str:
        return self.cfg.name

    def contains(self, key) -> bool:
        return key in self.entries

    def touch(self, key) -> None:
        self.entries.move_to_end(key)

    def put(self, key, nbytes: int) -> bool:
        """Store a block (evicting LRU blocks to make room). False if it can never fit."""
        if nbytes > self.capacity_bytes:
            return False
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        while self.used_bytes + nbytes > self.capacity_bytes:
            _, b = self.entries.popitem(last=False)
            self.used_bytes -= b
            self.stats.evictions += 1
        self.entries[key] = nbytes
        self.used_bytes += nbytes
        return True

    def remove(self, key) -> None:
        b = self.entries.pop(key, None)
        if b is not None:
            self.used_bytes -= b

    def occupancy_blocks(self) -> int:
        return len(self.entries)

    def timing_model(self, npus_per_node: int) -> MemoryTierModel:
        return MemoryTierModel(self.cfg.name, SCOPE_TO_KIND[self.cfg.scope], self.cfg.bw_gbps, self.cfg.latency_ns,
                               npus_per_node=npus_per_node)


def build_tiers(tier_cfgs: list[TierConfig], instances) -> dict[str, list[LowerTier]]:
    """Instance name -> its ordered lower tiers, sharing objects per node / pool."""
    shared: dict[tuple, LowerTier] = {}
    out: dict[str, list[LowerTier]] = {}
    for inst in instances:
        tiers = []
        for t in tier_cfgs:
            if t.scope == "pool" and t.shared_by and inst.name not in t.shared_by:
                continue
            key = (t.name,) if t.scope == "pool" else (t.name, inst.node) if t.scope == "node" else (t.name, inst.name)
            if key not in shared:
                shared[key] = LowerTier(t, int(t.capacity_gib * GIB))
            if getattr(inst, "weights_tier", None) == t.name:  # offloaded weights take their share first
                tier = shared[key]
                tier.capacity_bytes -= inst.offloaded_weight_bytes_per_npu * inst.num_npus
                if tier.capacity_bytes < 0:
                    from frontend.errors import ConfigError

                    raise ConfigError(f"placement.weights_fraction: the weights offloaded to {t.name!r} exceed its "
                                      f"{t.capacity_gib} GiB (kv.tiers {t.name}.capacity_gib)")
            wl = sum(1 for x in getattr(inst, "weight_layer_tiers", {}).values() if x == t.name)
            if wl:  # placement.weights_layers: those layers' weights live here
                shared[key].capacity_bytes -= wl * inst.weight_layer_bytes * inst.num_npus
                if shared[key].capacity_bytes < 0:
                    from frontend.errors import ConfigError

                    raise ConfigError(f"placement.weights_layers: the weights placed in {t.name!r} exceed its "
                                      f"{t.capacity_gib} GiB (kv.tiers {t.name}.capacity_gib)")
            share = getattr(inst, "kv_layer_share_bytes", {}).get(t.name)
            if share:  # placement.kv_layers: the placed layers' KV of every block lives here, beside the LRU
                shared[key].capacity_bytes -= share * inst.num_gpu_blocks * inst.num_npus
                if shared[key].capacity_bytes < 0:
                    from frontend.errors import ConfigError

                    raise ConfigError(f"placement.kv_layers: the KV of the layers placed in {t.name!r} by the "
                                      f"instances sharing it exceeds its {t.capacity_gib} GiB")
            tiers.append(shared[key])
        out[inst.name] = tiers
    return out
