"""Decode attention in processing-in-memory (PIM): device catalog entries and a bank-level timing model.

A PIM device (configs/pim/*.yaml) is a DRAM part whose banks carry processing units: `channels` PIM-enabled
channels of `banks_per_channel` banks, one unit per `banks_per_unit` banks, each unit reading
`unit_access_bytes` per cycle of its `unit_clock_mhz` clock and doing `macs_per_unit_cycle` MACs per cycle.

Timing model ("bank_parallel"), the analytical form that AttAcc (Park et al., ASPLOS'24, "AttAcc! Unleashing the
Power of PIM for Batched Transformer-based Generative Model Inference", doi 10.1145/3620665.3640422) and NeuPIMs
(Heo et al., ASPLOS'24, "NeuPIMs: NPU-PIM Heterogeneous Acceleration for Batched LLM Inferencing", arXiv
2403.00579) use for attention GEMVs in HBM-PIM, with Aquabolt-XL's all-bank mode (Lee et al., ISCA'21):

* A work item is one (sequence, KV head) of a decode step: a score GEMV q.K^T over the sequence's L = ctx + 1
  cached keys and a context GEMV p.V over its values, for the g = num_heads / num_kv_heads query heads that share
  the KV head (GQA). The item runs on one channel; its L tokens are striped over the channel's U = banks_per_channel
  / banks_per_unit units, which work in lockstep (one command drives all banks of a channel), so a unit holds
  ceil(L / U) tokens of K (and of V): bytes_u = ceil(L / U) x head_dim x kv_bytes.
* Per GEMV and unit: rows_u = ceil(bytes_u / row_bytes) row activations, each an ACT + PRE pair
  (t_rcd_ns + t_rp_ns, not overlapped with the unit's column reads: one open row per bank at a time);
  the column reads stream bytes_u / unit_access_bytes cycles, and the MACs need g x ceil(L / U) x head_dim /
  macs_per_unit_cycle cycles; reads and MACs pipeline, so the streaming part takes the larger of the two.
  One CAS latency (cl_ns) fills the pipeline per GEMV.
      gemv_ns = cl_ns + rows_u x (t_rcd_ns + t_rp_ns) + max(read_cycles, mac_cycles) x t_ck_ns
      item_ns = gemv_ns(K) + gemv_ns(V)
  Internal bandwidth = units x unit_access_bytes / t_ck (AttAcc's "banks x per-bank bandwidth"). Softmax between
  the two GEMVs runs in the device's buffer die / controller (AttAcc) and is not timed here.
* Channels run in parallel, the items of one channel one after another. Items are placed longest sequence
  first, each KV head of a sequence on the channel with the least assigned time so far (ties: lowest index),
  so a sequence splits across channels by KV head. The device's time is its most loaded channel's.

Integer nanoseconds: item times are rounded up once per item; channel loads are sums of those integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from frontend.errors import ConfigError

GIB = 1 << 30


class PIMDevice(BaseModel):
    """One PIM device (a stack or a chip); every field's source is in its catalog file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    capacity_gib: float = Field(gt=0, le=1e6)
    channels: int = Field(ge=1, le=4096)
    banks_per_channel: int = Field(ge=1, le=4096)
    banks_per_unit: int = Field(1, ge=1, le=64)
    unit_clock_mhz: float = Field(gt=0, le=1e5)
    unit_access_bytes: int = Field(ge=1, le=1 << 16)
    macs_per_unit_cycle: int = Field(ge=1, le=1 << 16)
    bus_width_bits: int = Field(ge=1, le=1 << 16)
    data_rate_gbps: float = Field(gt=0, le=1e4)
    row_bytes: int = Field(ge=1, le=1 << 20)
    t_rcd_ns: float = Field(ge=0, le=1e6)
    t_rp_ns: float = Field(ge=0, le=1e6)
    cl_ns: float = Field(ge=0, le=1e6)
    # energy: per bit read inside the device by its units (row activation + cell read at the bank), per bit
    # crossing its interface (the whole off-chip path), per MAC; plus any static power an entry can cite
    bank_read_pj_per_bit: float = Field(0.0, ge=0, le=1e3)
    interface_pj_per_bit: float = Field(0.0, ge=0, le=1e3)
    mac_pj: float = Field(0.0, ge=0, le=1e3)
    active_w: float = Field(0.0, ge=0, le=1e5)
    idle_w: float = Field(0.0, ge=0, le=1e5)

    @property
    def units_per_channel(self) -> int:
        return max(1, self.banks_per_channel // self.banks_per_unit)

    @property
    def t_ck_ns(self) -> float:
        return 1e3 / self.unit_clock_mhz

    @property
    def external_bw_gbps(self) -> float:
        """Host-facing bandwidth of one device: bus width x data rate (GB/s)."""
        return self.bus_width_bits * self.data_rate_gbps / 8

    @property
    def internal_bw_gbps(self) -> float:
        """Bandwidth the units read inside one device: channels x units x access bytes / t_ck (GB/s)."""
        return self.channels * self.units_per_channel * self.unit_access_bytes / self.t_ck_ns


def load_pim_device(path: Path) -> PIMDevice:
    from frontend.config.loader import load_yaml_entry

    return load_yaml_entry(path, PIMDevice, "PIM device entry")


@dataclass(frozen=True)
class AttentionShape:
    """What the PIM model needs of the model: per-NPU KV heads, query heads per KV head, head width, KV bytes."""

    kv_heads: int
    group: int  # query heads per KV head (GQA)
    head_dim: int
    kv_bytes: float


@dataclass
class PIMSchedule:
    """Decode attention of one layer on the PIM channels."""

    duration_ns: int  # the most loaded channel's time
    channel_ns: list[int]  # time assigned to each channel
    assignment: list[tuple[int, int, int]]  # (sequence index, kv head, channel)
    item_ns: list[int]  # each assignment's time
    kv_bytes: int  # K and V bytes the units read

    @property
    def busy_ns(self) -> int:
        return sum(self.channel_ns)


class PIMTimingModel(Protocol):
    name: str

    def schedule(self, contexts: list[int], seqs: list[int] | None = None) -> PIMSchedule: ...


class BankParallelPIM:
    """The bank-level model of the module docstring, for `devices` identical devices (channels add up)."""

    name = "bank_parallel"

    def __init__(self, device: PIMDevice, shape: AttentionShape, devices: int = 1) -> None:
        self.dev = device
        self.shape = shape
        self.devices = devices
        self.channels = device.channels * devices
        self._memo: dict[int, int] = {}

    def gemv_ns(self, tokens: int) -> float:
        """One unit's time for a GEMV over `tokens` cached tokens of one KV head (K or V)."""
        d = self.dev
        s = self.shape
        per_unit = math.ceil(tokens / d.units_per_channel)
        nbytes = per_unit * s.head_dim * s.kv_bytes
        rows = math.ceil(nbytes / d.row_bytes)
        read_cycles = nbytes / d.unit_access_bytes
        mac_cycles = s.group * per_unit * s.head_dim / d.macs_per_unit_cycle
        return d.cl_ns + rows * (d.t_rcd_ns + d.t_rp_ns) + max(read_cycles, mac_cycles) * d.t_ck_ns

    def item_ns(self, tokens: int) -> int:
        """One (sequence, KV head) item: score GEMV over K plus context GEMV over V, rounded up once."""
        hit = self._memo.get(tokens)
        if hit is None:
            hit = self._memo[tokens] = math.ceil(2 * self.gemv_ns(tokens)) if tokens > 0 else 0
        return hit

    def schedule(self, contexts: list[int], seqs: list[int] | None = None) -> PIMSchedule:
        """Place the KV heads of the decode sequences with these attended lengths (ctx + 1 each) on the channels:
        longest first, each head onto the least-loaded channel."""
        seqs = list(range(len(contexts))) if seqs is None else seqs
        order = sorted(range(len(contexts)), key=lambda i: (-contexts[i], i))
        loads = [0] * self.channels
        assignment: list[tuple[int, int, int]] = []
        times: list[int] = []
        nbytes = 0
        per_item_bytes = 2 * self.shape.head_dim * self.shape.kv_bytes
        for i in order:
            t = self.item_ns(contexts[i])
            for h in range(self.shape.kv_heads):
                c = loads.index(min(loads))
                loads[c] += t
                assignment.append((seqs[i], h, c))
                times.append(t)
            nbytes += int(contexts[i] * per_item_bytes * self.shape.kv_heads)
        return PIMSchedule(max(loads) if loads else 0, loads, assignment, times, nbytes)


PIM_MODELS = {BankParallelPIM.name: BankParallelPIM}


def make_pim_model(name: str, device: PIMDevice, shape: AttentionShape, devices: int = 1) -> BankParallelPIM:
    if name not in PIM_MODELS:
        raise ConfigError(f"placement.pim.model: {name!r} is not a PIM timing model (have {sorted(PIM_MODELS)})")
    return PIM_MODELS[name](device, shape, devices)
