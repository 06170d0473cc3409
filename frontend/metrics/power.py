"""Energy of a run from device states and bytes moved.

Per NPU of an instance, over simulated time:
  compute   : active_w  x (time a compute node is in flight)
  standby   : standby_w x (rest of an iteration: waiting on communication or memory)
  idle      : idle_w    x (time the instance runs no iteration)
plus data movement, which the device powers above exclude:
  HBM       : bytes read/written by the operators x 8 x dram_pj_per_bit
  links     : collective / send bytes x 8 x link_pj_per_bit
  host tiers: bytes loaded/stored to DRAM/CXL tiers x 8 x host_dram_pj_per_bit
This is the component model LLMServingSim and similar simulators use (NPU
state powers + DRAM and link energy per bit); the per-bit figures are in the
hardware catalog entries with their sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontend.config.hardware import HardwareSpec


@dataclass
class EnergyBreakdown:
    compute_j: float = 0.0
    standby_j: float = 0.0
    idle_j: float = 0.0
    hbm_j: float = 0.0
    link_j: float = 0.0
    host_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.compute_j + self.standby_j + self.idle_j + self.hbm_j + self.link_j + self.host_j

    def add(self, other: EnergyBreakdown) -> None:
        self.compute_j += other.compute_j
        self.standby_j += other.standby_j
        self.idle_j += other.idle_j
        self.hbm_j += other.hbm_j
        self.link_j += other.link_j
        self.host_j += other.host_j


class InstancePower:
    def __init__(self, hw: HardwareSpec, num_npus: int) -> None:
        self.hw = hw
        self.npus = num_npus
        self.energy = EnergyBreakdown()
        self.last_end_ns = 0
        # per-iteration factors, read once (this runs every iteration); each product is the first factor pair
        # of the expressions below, so the sums are evaluated in the same order as written out in full
        pw = hw.power
        self._idle_w = num_npus * hw.idle_w
        self._compute_w = num_npus * hw.compute_w
        self._standby_w = num_npus * hw.standby_w
        self._dram = pw.dram_pj_per_bit
        self._link = pw.link_pj_per_bit
        self._host = pw.host_dram_pj_per_bit

    def iteration(self, start_ns: int, duration_ns: int, compute_ns: int, hbm_bytes_per_npu: int, comm_bytes: int,
                  host_bytes: int) -> float:
        """Account one iteration (and the idle gap before it); return its energy in joules."""
        n = self.npus
        # n * idle_w * gap * 1e-9 and so on, left to right (the same float operations as spelled out)
        idle = self._idle_w * max(0, start_ns - self.last_end_ns) * 1e-9
        busy = min(compute_ns, duration_ns)
        comp = self._compute_w * busy * 1e-9
        standby = self._standby_w * (duration_ns - busy) * 1e-9
        hbm = n * hbm_bytes_per_npu * 8 * self._dram * 1e-12
        link = comm_bytes * 8 * self._link * 1e-12
        host = host_bytes * 8 * self._host * 1e-12
        self.last_end_ns = start_ns + duration_ns
        e = self.energy  # plain floats, no per-iteration breakdown object: this runs every iteration
        e.compute_j += comp
        e.standby_j += standby
        e.idle_j += idle
        e.hbm_j += hbm
        e.link_j += link
        e.host_j += host
        return comp + standby + idle + hbm + link + host - idle  # same summation order as total_j

    def finish(self, end_ns: int) -> None:
        gap = max(0, end_ns - self.last_end_ns)
        self.energy.idle_j += self.npus * self.hw.idle_w * gap * 1e-9
        self.last_end_ns = end_ns
