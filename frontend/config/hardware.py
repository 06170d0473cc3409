"""Accelerator catalog entries (configs/hardware/*.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Efficiency(BaseModel):
    """Achieved fractions of peak; see each catalog file for where the numbers come from."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    gemm_flops: float = Field(0.7, ge=1e-3, le=1)
    mem_bw: float = Field(0.85, ge=1e-3, le=1)
    attention_flops: float = Field(0.5, ge=1e-3, le=1)
    gemm_overlap_loss: float = Field(0.29, ge=0, le=1, description="share of a memory-bound GEMM's tensor-core "
                                     "time not hidden under its weight stream: time = max(compute, memory + loss * "
                                     "compute); measured from a bundle's GEMMs at 17-64 tokens "
                                     "(frontend/compute/calibrate.py); the default is the mean of the two measured GPUs")


class PowerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dram_pj_per_bit: float = Field(7.0, ge=0)  # HBM access energy (~3.9-7 pJ/bit, O'Connor et al. MICRO'17)
    link_pj_per_bit: float = Field(5.0, ge=0)  # NVLink/PCIe SerDes class
    host_dram_pj_per_bit: float = Field(20.0, ge=0)  # DDR5 through the host (~15-25 pJ/bit)


class HardwareSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    peak_tflops: dict[str, float]
    hbm_capacity_gib: float = Field(gt=0, le=1e6)
    hbm_bw_gbps: float = Field(ge=1e-3, le=1e9)
    tdp_w: float = Field(gt=0)
    active_w: float | None = Field(None, gt=0, description="board power while computing, HBM access energy excluded "
                                   "(default 0.8 x TDP)")
    idle_w: float = Field(0, ge=0)
    standby_w: float = Field(0, ge=0)
    # power-state transitions between iterations (all optional: unset keeps the gap at idle_w throughout)
    deep_idle_w: float | None = Field(None, ge=0, description="per-GPU power in the deep idle state a GPU drops to "
                                      "after idle_to_deep_idle_ms without an iteration (clocks down, e.g. a low "
                                      "P-state); distinct from standby_w, which is clocks up inside an iteration")
    idle_to_deep_idle_ms: float | None = Field(None, ge=0, le=1e9, description="time at idle_w after an "
                                               "instance's last iteration before its GPUs drop to deep_idle_w; "
                                               "unset = never")
    wake_latency_us: float = Field(0, ge=0, le=1e9, description="delay of leaving the deep idle state; counted "
                                   "and reported (summary energy.wake_latency_total_ms), NOT added to timing")
    wake_energy_j: float = Field(0, ge=0, le=1e9, description="energy per GPU of one wake-up from deep idle")
    wake_latency_applied: bool = Field(False, description="add wake_latency_us to the first iteration after a "
                                       "deep idle gap (the GPUs wake, then run; the wake time is billed at "
                                       "standby_w besides wake_energy_j); false: the latency is reported only. "
                                       "Instances stepping alone (not DP lockstep groups)")
    efficiency: Efficiency = Field(default_factory=Efficiency)
    kernel_launch_ns: int = Field(0, ge=0, le=10**12)
    attention_floor_ns: int = Field(0, ge=0, le=10**12, description="fixed cost of one paged-attention call (cache write, "
                                    "attention and split-KV reduction kernels) beyond kernel_launch_ns")
    attention_per_seq_ns: int = Field(0, ge=0, le=10**12, description="per-sequence cost of a paged-attention call "
                                      "(block-table walk, per-sequence metadata and reduction)")
    attention_tile_rows: int = Field(64, ge=1, le=4096, description="query rows per tile of the variable-length "
                                     "attention kernel a mixed batch runs: a decode (1 real row) costs a whole tile; "
                                     "FlashAttention-2 uses 64-row query blocks for causal head_dim 128 on sm8x "
                                     "(flash_fwd_launch_template.h); frontend/compute/calibrate.py reads it off a bundle")
    num_sms: int | None = Field(None, ge=1, le=100_000, description="streaming multiprocessors (data sheet): one "
                                "attention tile runs on one SM, so a batch with few tiles cannot use the whole GPU; "
                                "without it the roofline assumes attention tiles always fill the GPU")
    power: PowerSpec = Field(default_factory=PowerSpec)
    profiles: dict[str, str] = Field(default_factory=dict)  # "<model>/<dtype>/tp<N>" -> bundle dir
    cost_per_hour_usd: float | None = Field(
        None, gt=0, le=1e6, description="rental price of one GPU for an hour (the entry's comment names the source "
                                        "and date); summary.json's `cost` needs it on every instance's hardware")

    @model_validator(mode="after")
    def _deep_idle_pair(self) -> HardwareSpec:
        if self.idle_to_deep_idle_ms is not None and self.deep_idle_w is None:
            raise ValueError("idle_to_deep_idle_ms needs deep_idle_w (the power of the deep idle state)")
        return self

    @field_validator("peak_tflops")
    @classmethod
    def _positive_peaks(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not (1e-3 <= x < 1e9)}
        if bad or not v:
            raise ValueError(f"every peak must be a TFLOP/s figure in [0.001, 1e9), got {bad or v}")
        return v

    @property
    def compute_w(self) -> float:
        return self.active_w if self.active_w is not None else 0.8 * self.tdp_w

    def peak_flops(self, dtype: str) -> float:
        if dtype not in self.peak_tflops:
            raise ValueError(f"hardware {self.name} has no peak for dtype {dtype} (has {sorted(self.peak_tflops)})")
        return self.peak_tflops[dtype] * 1e12


def load_hardware(path: Path) -> HardwareSpec:
    from frontend.config.loader import load_yaml_entry

    return load_yaml_entry(path, HardwareSpec, "hardware entry")
