"""Roofline parameters of a GPU measured from a profile bundle (the method for new hardware).

Each parameter of a hardware entry's roofline is read off the one measurement that exercises it alone,
from the bundle's TP=1 tables of a dense model (one decoder layer per operator, see the bundle format):

- gemm_flops: the four projection GEMMs (qkv_proj, o_proj, gate_up_proj, down_proj) at the largest
  profiled token count are compute-bound; achieved FLOP/s = 2*M*K*N / t, the median over the four
  divided by the data-sheet peak of the dtype.
- mem_bw: at 1 token the same GEMMs only stream their weights (K*N*dtype bytes); the two largest weight
  matrices (larger than any on-chip cache, so they read DRAM) give achieved bandwidth / data-sheet bandwidth.
- kernel_launch_ns: the smallest kernel time in the tables (an element-wise op at 1 token): the
  per-kernel floor every operator pays.
- attention_floor_ns: one decode of 16 tokens (attention.csv (0, 0, 1, 16)) minus the kernel floor;
  attention_per_seq_ns: (32 decodes - 1 decode of 16 tokens) / 31.
- attention_flops: prefill attention of the largest profiled chunk with no history: the efficiency at
  which the roofline's attention term (FLOPs, occupancy, floors) reproduces that time.

Run `python -m frontend.compute.calibrate BUNDLE MODEL_CONFIG HARDWARE_YAML` and paste the printed block
into the hardware entry with the bundle as its source. Entries without a bundle keep data-sheet
estimates and say so.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from frontend.compute.roofline import ATTN_OCCUPANCY_TOKENS
from frontend.config.hardware import HardwareSpec, load_hardware
from frontend.config.models import DTYPE_BYTES, ModelSpec, load_model_spec

GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ELEMENTWISE = ("layernorm", "rotary_emb", "act_fn", "qk_norm")


@dataclass(frozen=True)
class Calibration:
    gemm_flops: float
    mem_bw: float
    attention_flops: float
    kernel_launch_ns: int
    attention_floor_ns: int
    attention_per_seq_ns: int

    def yaml(self) -> str:
        return (f"efficiency: {{gemm_flops: {self.gemm_flops:.3f}, mem_bw: {self.mem_bw:.3f}, "
                f"attention_flops: {self.attention_flops:.3f}}}\nkernel_launch_ns: {self.kernel_launch_ns}\n"
                f"attention_floor_ns: {self.attention_floor_ns}\nattention_per_seq_ns: {self.attention_per_seq_ns}")


def _gemm_shape(m: ModelSpec, name: str) -> tuple[int, int]:
    d, q, kv, i = m.hidden_size, m.q_dim, m.kv_dim, m.intermediate_size
    return {"qkv_proj": (d, q + 2 * kv), "o_proj": (q, d), "gate_up_proj": (d, 2 * i), "down_proj": (i, d)}[name]


def calibrate(bundle_tp1: Path, model: ModelSpec, hw: HardwareSpec, dtype: str = "bf16") -> Calibration:
    """Roofline parameters from a dense model's TP=1 tables (`<bundle>/<dtype>/tp1`)."""
    if model.is_moe:
        raise ValueError("calibrate from a dense model's bundle: MoE layers have no dense MLP GEMMs")
    dense: dict[str, dict[int, float]] = {}
    with (bundle_tp1 / "dense.csv").open() as fh:
        for r in csv.DictReader(fh):
            dense.setdefault(r["layer"], {})[int(r["tokens"])] = float(r["time_us"]) * 1e3
    att: dict[tuple[int, int, int, int], float] = {}
    with (bundle_tp1 / "attention.csv").open() as fh:
        for r in csv.DictReader(fh):
            att[(int(r["prefill_chunk"]), int(r["kv_prefill"]), int(r["n_decode"]), int(r["kv_decode"]))] = \
                float(r["time_us"]) * 1e3
    b = DTYPE_BYTES[dtype]
    peak = hw.peak_flops(dtype)  # FLOP/s
    big = max(dense["qkv_proj"])
    flops_eff = statistics.median(2 * big * k * n / (dense[g][big] * 1e-9) / peak
                                  for g in GEMMS for k, n in [_gemm_shape(model, g)])
    by_weight = sorted(GEMMS, key=lambda g: -_gemm_shape(model, g)[0] * _gemm_shape(model, g)[1])[:2]
    bw_eff = statistics.median(_gemm_shape(model, g)[0] * _gemm_shape(model, g)[1] * b / dense[g][1]
                               / hw.hbm_bw_gbps for g in by_weight)  # bytes/ns = GB/s
    launch = int(round(min(dense[e][1] for e in ELEMENTWISE if e in dense) / 100.0)) * 100
    one, many = att[(0, 0, 1, 16)], att[(0, 0, 32, 16)]
    floor = int(round(one)) - launch
    per_seq = int(round((many - one) / 31))
    q = max(k[0] for k in att if k[1] == k[2] == k[3] == 0)
    flops = 4 * q * (q + 1) / 2 * model.head_dim * model.num_heads
    busy_ns = att[(q, 0, 0, 0)] - launch - floor - per_seq
    occupancy = q / (q + ATTN_OCCUPANCY_TOKENS)
    attn_eff = flops / (busy_ns * 1e-9) / (peak * occupancy)
    return Calibration(round(flops_eff, 3), round(bw_eff, 3), round(attn_eff, 3), launch, floor, per_seq)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m frontend.compute.calibrate BUNDLE_TP1_DIR MODEL_CONFIG HARDWARE_YAML")
    print(calibrate(Path(argv[0]), load_model_spec(Path(argv[1])), load_hardware(Path(argv[2]))).yaml())


if __name__ == "__main__":
    main(sys.argv[1:])
