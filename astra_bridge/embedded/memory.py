"""Remote-memory timing for MEM_LOAD / MEM_STORE nodes (ASTRA-sim's expansion models).

time = latency_ns + trunc(bytes / bw) with bw in bytes/ns = GB/s (GB = 1e9),
e.g. 16 MiB at 100 GB/s and 1000 ns = 168772 ns. PER_NPU tiers serve each NPU
independently; PER_NODE tiers serialize requests from the NPUs of one node;
POOL tiers serialize every request (a shared CXL pool, say), which is how a
pool's bandwidth is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PER_NPU = "PER_NPU_MEMORY_EXPANSION"
PER_NODE = "PER_NODE_MEMORY_EXPANSION"
POOL = "MEMORY_POOL"
KINDS = (PER_NPU, PER_NODE, POOL)


@dataclass(frozen=True)
class MemoryTierModel:
    name: str
    kind: str = PER_NPU
    bw_gbps: float = 100.0
    latency_ns: int = 1000
    npus_per_node: int = 1

    def transfer_ns(self, size: int) -> int:
        return int(self.latency_ns + int(size / self.bw_gbps))


@dataclass
class MemorySystem:
    """Serialization state for one backend run (one iteration)."""

    tiers: dict[str, MemoryTierModel]
    default_tier: str | None = None
    _busy_until: dict[tuple[str, int], int] = field(default_factory=dict)
    # Pools shared by several instances keep their busy-until in absolute
    # simulated time across iterations (and instances); t0 is this iteration's start.
    shared_pools: dict[str, int] | None = None
    t0: int = 0

    def tier(self, name: str | None) -> MemoryTierModel:
        key = name or self.default_tier
        if key is None or key not in self.tiers:
            raise ValueError(f"memory node names tier {name!r} but the instance has tiers {sorted(self.tiers)}")
        return self.tiers[key]

    def request(self, tier_name: str | None, rank: int, issue_ns: int, size: int) -> int:
        """Finish time of a load/store issued at issue_ns."""
        t = self.tier(tier_name)
        dur = t.transfer_ns(size)
        if t.kind == PER_NPU:
            return issue_ns + dur
        if t.kind == POOL and self.shared_pools is not None:
            start = max(issue_ns + self.t0, self.shared_pools.get(t.name, 0))
            self.shared_pools[t.name] = start + dur
            return start + dur - self.t0
        server = rank // max(1, t.npus_per_node) if t.kind == PER_NODE else 0
        key = (t.name, server)
        start = max(issue_ns, self._busy_until.get(key, 0))
        end = start + dur
        self._busy_until[key] = end
        return end

    def reset(self) -> None:
        self._busy_until.clear()
