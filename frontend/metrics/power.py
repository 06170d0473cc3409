"""Energy of a run from device states and bytes moved.

Per NPU of an instance, over simulated time:
  compute   : active_w  x (time a compute node is in flight)
  standby   : standby_w x (rest of an iteration: waiting on communication or memory)
  idle      : idle_w    x (time the instance runs no iteration)
  deep idle : deep_idle_w x (the part of a gap beyond idle_to_deep_idle_ms, when the entry sets it)
  wake      : wake_energy_j per GPU each time an iteration starts after the GPUs reached deep idle
plus data movement, which the device powers above exclude:
  HBM       : bytes read/written by the operators x 8 x dram_pj_per_bit
  links     : collective / send bytes x 8 x link_pj_per_bit
  host tiers: bytes loaded/stored to DRAM/CXL tiers x 8 x host_dram_pj_per_bit
  PIM       : with placement.pim, the PIM devices' dynamic energy (bits read at the banks, bits over the
              interface, MACs, each at the device entry's pJ figure) plus active_w while their attention nodes
              run and idle_w otherwise
              (`pim`; the NPU's compute time is then its own rank's, not the PIM rank's)
This is the component model LLMServingSim and similar simulators use (NPU
state powers + DRAM and link energy per bit); the per-bit figures are in the
hardware catalog entries with their sources.

Power states between iterations: after an instance's last iteration (or the run's start) its GPUs stay at
idle_w (clocks up) for idle_to_deep_idle_ms, then drop to deep_idle_w; a gap of exactly the threshold or less
never leaves idle. The next iteration after a deep gap is a wake-up: wake_energy_j per GPU goes to `wake_j`,
and wake_latency_us is counted in `wake_latency_ns`; it is applied to timing only with the hardware's
wake_latency_applied (frontend/instance/runtime.py lengthens that iteration by it, billed at standby_w).
A gap still open at the end of the run (finish) has no wake-up. Unset idle_to_deep_idle_ms
keeps every gap at idle_w, with the same float operations as before the states existed.
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
    deep_idle_j: float = 0.0
    wake_j: float = 0.0
    pim_j: float = 0.0  # PIM devices (placement.pim): active_w while attending, idle_w otherwise

    @property
    def total_j(self) -> float:
        t = self.compute_j + self.standby_j + self.idle_j + self.hbm_j + self.link_j + self.host_j
        if self.deep_idle_j or self.wake_j:  # zero without power states: same float result as before they existed
            t = t + self.deep_idle_j + self.wake_j
        if self.pim_j:  # zero without PIM: same float result as before
            t = t + self.pim_j
        return t

    def components(self) -> dict[str, float]:
        """Every component, for the sum check: total_j == sum(components().values()) up to rounding."""
        return dict(vars(self))

    def add(self, other: EnergyBreakdown) -> None:
        self.compute_j += other.compute_j
        self.standby_j += other.standby_j
        self.idle_j += other.idle_j
        self.hbm_j += other.hbm_j
        self.link_j += other.link_j
        self.host_j += other.host_j
        self.deep_idle_j += other.deep_idle_j
        self.wake_j += other.wake_j
        self.pim_j += other.pim_j


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
        # power states: None = every gap at idle_w
        after = hw.idle_to_deep_idle_ms
        self._deep_after_ns = None if after is None else int(round(after * 1e6))
        self._deep_w = num_npus * (hw.deep_idle_w or 0.0)
        self._wake_j = num_npus * hw.wake_energy_j
        self._wake_ns = int(round(hw.wake_latency_us * 1e3))
        self.wakeups = 0
        self.wake_latency_ns = 0
        # PIM devices beside the NPUs (placement.pim): set by the runtime, 0 W without one
        self.pim_active_w = 0.0
        self.pim_idle_w = 0.0
        self.pim_pj = (0.0, 0.0, 0.0)  # pJ per bit read at the banks, per bit over the interface, per MAC

    def pim(self, gap_ns: int, duration_ns: int, busy_ns: int, work: tuple[int, int, int] = (0, 0, 0)) -> float:
        """PIM device energy of one iteration and the gap before it: the dynamic energy of its work (bits its
        units read at the banks, bits over its interface, MACs: `work`, at the device's pJ figures), plus
        active_w while its attention nodes run and idle_w the rest of the iteration and the gap (PIM devices
        have no deep idle state here). Returns the iteration's part (the gap's is in the total, as the NPUs'
        idle energy is)."""
        busy = min(busy_ns, duration_ns)
        j = self.pim_active_w * busy * 1e-9 + self.pim_idle_w * (duration_ns - busy) * 1e-9
        read_b, io_b, macs = work
        if read_b or io_b or macs:
            e_read, e_io, e_mac = self.pim_pj
            j += (8 * read_b * e_read + 8 * io_b * e_io + macs * e_mac) * 1e-12
        self.energy.pim_j += j + self.pim_idle_w * gap_ns * 1e-9
        return j

    def wake_delay_ns(self, start_ns: int) -> int:
        """The wake-up latency an iteration starting at start_ns pays (its gap reached deep idle), else 0."""
        after = self._deep_after_ns
        if after is None or start_ns - self.last_end_ns <= after:
            return 0
        return self._wake_ns

    @property
    def deep_after_ns(self) -> int | None:
        """Gap after which the GPUs are in deep idle (None: never)."""
        return self._deep_after_ns

    @property
    def has_states(self) -> bool:
        """Whether the hardware entry configures the deep idle state (idle_to_deep_idle_ms)."""
        return self._deep_after_ns is not None

    def _gap(self, gap_ns: int, after: int) -> tuple[float, float]:
        """(idle J, deep idle J) of a gap between iterations, deep idle after `after` ns."""
        if gap_ns <= after:
            return self._idle_w * gap_ns * 1e-9, 0.0
        return self._idle_w * after * 1e-9, self._deep_w * (gap_ns - after) * 1e-9

    def iteration(self, start_ns: int, duration_ns: int, compute_ns: int, hbm_bytes_per_npu: int, comm_bytes: int,
                  host_bytes: int) -> float:
        """Account one iteration (and the idle gap before it); return its energy in joules."""
        n = self.npus
        # n * idle_w * gap * 1e-9 and so on, left to right (the same float operations as spelled out)
        gap = max(0, start_ns - self.last_end_ns)
        after = self._deep_after_ns
        if after is None or gap <= after:
            idle = self._idle_w * gap * 1e-9
        else:  # the GPUs reached deep idle in this gap: it is billed in two parts and this iteration wakes them
            idle, deep = self._gap(gap, after)
            self.energy.deep_idle_j += deep
            self.energy.wake_j += self._wake_j
            self.wakeups += 1
            self.wake_latency_ns += self._wake_ns
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
        if self.pim_idle_w:
            self.energy.pim_j += self.pim_idle_w * gap * 1e-9
        after = self._deep_after_ns
        if after is None:
            self.energy.idle_j += self.npus * self.hw.idle_w * gap * 1e-9
        else:  # the trailing gap may reach deep idle; nothing wakes the GPUs after the run
            idle, deep = self._gap(gap, after)
            self.energy.idle_j += idle
            self.energy.deep_idle_j += deep
        self.last_end_ns = end_ns
