"""Per-iteration records, kept as flat tuples (thousands per run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime, StepOutcome

ITER_COLUMNS = [
    "instance", "start_ns", "end_ns", "num_seqs", "prefill_tokens", "decode_tokens", "kv_blocks_used",
    "kv_blocks_total", "compute_ns", "comm_ns", "exposed_comm_ns", "mem_ns", "exposed_mem_ns", "comm_bytes",
    "preempted", "cached", "energy_j",
]


@dataclass
class IterationLog:
    rows: list[tuple] = field(default_factory=list)
    tier_names: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        cols = list(ITER_COLUMNS)
        for t in self.tier_names:
            cols += [f"{t}_load_blocks", f"{t}_store_blocks", f"{t}_load_bytes", f"{t}_store_bytes",
                     f"{t}_occupancy_blocks"]
        return cols

    def add(self, inst: InstanceRuntime, start: int, end: int, out: StepOutcome) -> None:
        p = out.plan
        r = out.result
        g0 = out.graphs[0]
        hbm = g0.tensor_bytes_total() - sum(r.mem_bytes_by_tier.values()) // max(1, len(out.graphs))
        energy = inst.power.iteration(start, end - start, r.compute_ns, max(0, hbm), r.comm_bytes,
                                      sum(r.mem_bytes_by_tier.values()))
        self.rows.append((inst.name, start, end, p.num_seqs, p.num_prefill_tokens, p.num_decode_tokens,
                          inst.pool.num_used, inst.pool.num_blocks, r.compute_ns, r.comm_ns, r.exposed_comm_ns,
                          r.mem_ns, r.exposed_mem_ns, r.comm_bytes, len(p.preempted), int(r.cached),
                          round(energy, 6)) + self._tier_cells(inst, p))

    def _tier_cells(self, inst: InstanceRuntime, plan) -> tuple:
        if not self.tier_names:
            return ()
        moved: dict[tuple[str, str], int] = {}
        for m in plan.kv_moves:
            moved[(m.tier, m.direction)] = moved.get((m.tier, m.direction), 0) + m.blocks
        occ = {t.name: t.occupancy_blocks() for t in inst.lower_tiers}
        bb = inst.inst.kv_block_bytes * inst.inst.num_npus
        cells: list = []
        for t in self.tier_names:
            lo, st = moved.get((t, "load"), 0), moved.get((t, "store"), 0)
            cells += [lo, st, lo * bb, st * bb, occ.get(t, "")]
        return tuple(cells)

    def __len__(self) -> int:
        return len(self.rows)
