"""What a backend returns for one iteration."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IterationResult:
    """Timing of one iteration's graphs. All times are integer ns from iteration start.

    exposed_comm_ns / exposed_mem_ns: time of the slowest rank during which a
    communication (resp. memory) node was in flight and no compute node was.
    """

    duration_ns: int
    per_rank_finish_ns: list[int]
    compute_ns: int = 0
    comm_ns: int = 0
    mem_ns: int = 0
    exposed_comm_ns: int = 0
    exposed_mem_ns: int = 0
    comm_bytes: int = 0
    mem_bytes_by_tier: dict[str, int] = field(default_factory=dict)
    cached: bool = False
