"""Roofline parameters of a GPU measured from a profile bundle (the method for new hardware).

Each parameter of a hardware entry's roofline is read off the one measurement that exercises it alone,
from the bundle's TP=1 tables of a dense model (one decoder layer per operator, see the bundle format):

- gemm_flops: the four projection GEMMs (qkv_proj, o_proj, gate_up_proj, down_proj) at the largest
  profiled token count are compute-bound; achieved FLOP/s = 2*M*K*N / (t - launch), the median over
  the four divided by the data-sheet peak of the dtype.
- mem_bw: at 1 token the same GEMMs only stream their weights (K*N*dtype bytes); the two largest weight
  matrices (larger than any on-chip cache, so they read DRAM) give achieved bandwidth / data-sheet bandwidth.
- gemm_overlap_loss: at 17-64 tokens the GEMMs are still memory-bound but run 64-row tensor-core tiles;
  (t - launch - memory time) / tensor-core time, the median over the four GEMMs and those token counts.
- kernel_launch_ns: the smallest kernel time in the tables (an element-wise op at 1 token): the
  per-kernel floor every operator pays.
- attention_floor_ns: one decode of 16 tokens (attention.csv (0, 0, 1, 16)) minus the kernel floor;
  attention_per_seq_ns: (32 decodes - 1 decode of 16 tokens) / 31.
- attention_flops: prefill attention of the largest profiled chunk with no history: the efficiency at
  which the roofline's varlen attention term (query tiles, SM bound, floors) reproduces that time.
- attention_tile_rows: the mixed points (a prefill chunk plus decodes) whose decodes carry at least
  1 ms of tile work (compute-dominated): per point the tile height at which the roofline's
  attention reproduces the measured time, the median over points. attention_flops and
  attention_tile_rows depend on each other (the prefill's diagonal tiles): iterated to the fixed point.

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

from frontend.compute.batch import BatchShape
from frontend.compute.roofline import GEMM_TILE_M, SMALL_M_TILE, Roofline, attention_tile_units, gemm_rows
from frontend.config.hardware import HardwareSpec, load_hardware
from frontend.config.models import DTYPE_BYTES, ModelSpec, load_model_spec

GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ELEMENTWISE = ("layernorm", "rotary_emb", "act_fn", "qk_norm")
FA2_QUERY_BLOCK = 64  # FlashAttention-2 causal head_dim-128 query block on sm8x (flash_fwd_launch_template.h)



@dataclass(frozen=True)
class Calibration:
    gemm_flops: float
    mem_bw: float
    attention_flops: float
    gemm_overlap_loss: float
    kernel_launch_ns: int
    attention_floor_ns: int
    attention_per_seq_ns: int
    attention_tile_rows: int

    def yaml(self) -> str:
        return (f"efficiency: {{gemm_flops: {self.gemm_flops:.3f}, mem_bw: {self.mem_bw:.3f}, "
                f"attention_flops: {self.attention_flops:.3f}, gemm_overlap_loss: {self.gemm_overlap_loss:.3f}}}\n"
                f"kernel_launch_ns: {self.kernel_launch_ns}\n"
                f"attention_floor_ns: {self.attention_floor_ns}\nattention_per_seq_ns: {self.attention_per_seq_ns}\n"
                f"attention_tile_rows: {self.attention_tile_rows}")


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
    launch = int(round(min(dense[e][1] for e in ELEMENTWISE if e in dense) / 100.0)) * 100
    big = max(dense["qkv_proj"])
    by_weight = sorted(GEMMS, key=lambda g: -_gemm_shape(model, g)[0] * _gemm_shape(model, g)[1])[:2]
    mid = [m for m in dense["qkv_proj"] if SMALL_M_TILE < m <= GEMM_TILE_M]

    def tc(m: int, g: str, eff: float) -> float:  # tensor-core time, ns
        k, n = _gemm_shape(model, g)
        return 2 * gemm_rows(m) * k * n / (peak * eff) * 1e9

    def tm(m: int, g: str, eff: float) -> float:  # memory time, ns
        k, n = _gemm_shape(model, g)
        return (k * n + m * k + m * n) * b / (hw.hbm_bw_gbps * eff)

    # compute-bound at the largest M; memory-bound at 1 and 17-64 tokens, where gemm_overlap_loss of the
    # tensor-core time shows on top of the memory time: the three are solved together (a few rounds settle)
    loss, flops_eff, bw_eff = 0.0, 1.0, 1.0
    for _ in range(6):
        flops_eff = statistics.median(tc(big, g, 1.0) / (dense[g][big] - launch) for g in GEMMS)
        bw_eff = statistics.median(tm(1, g, 1.0) / (dense[g][1] - launch - loss * tc(1, g, flops_eff))
                                   for g in by_weight)
        if mid:
            loss = max(0.0, statistics.median((dense[g][m] - launch - tm(m, g, bw_eff)) / tc(m, g, flops_eff)
                                              for g in GEMMS for m in mid if m in dense[g]))
    one, many = att[(0, 0, 1, 16)], att[(0, 0, 32, 16)]
    floor = int(round(one)) - launch
    per_seq = int(round((many - one) / 31))
    q = max(k[0] for k in att if k[1] == k[2] == k[3] == 0)
    busy_ns = att[(q, 0, 0, 0)] - launch - floor - per_seq
    rows, seen = FA2_QUERY_BLOCK, set()
    while rows not in seen:  # to the fixed point, from the kernel's block height (never from the entry)
        seen.add(rows)
        units = attention_tile_units(q, 0, rows) * model.num_heads  # as the roofline charges a mixed batch
        if hw.num_sms:
            units = max(units, rows * q * hw.num_sms)
        attn_eff = 4 * units * model.head_dim / (busy_ns * 1e-9) / peak
        probe = hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update={
            "gemm_flops": flops_eff, "mem_bw": bw_eff, "attention_flops": attn_eff, "gemm_overlap_loss": loss}),
            "kernel_launch_ns": launch, "attention_floor_ns": floor, "attention_per_seq_ns": per_seq})
        rows = _tile_rows(att, model, probe, dtype, peak * attn_eff)
    return Calibration(round(flops_eff, 3), round(bw_eff, 3), round(attn_eff, 3), round(loss, 3), launch, floor,
                       per_seq, rows)


def _tile_rows(att: dict[tuple[int, int, int, int], float], model: ModelSpec, hw: HardwareSpec, dtype: str,
               attn_flops_per_s: float) -> int:
    """Median over compute-dominated mixed points of the tile height that reproduces each point's time."""
    per_row = 4 * model.head_dim * model.num_heads / attn_flops_per_s * 1e9  # ns per query row per key
    found = []
    roofs: dict[int, Roofline] = {}
    for (pc, kp, nd, kd), t in att.items():
        if pc == 0 or nd == 0 or nd * FA2_QUERY_BLOCK * (kd + 1) * per_row < 1e6:
            continue
        shape = BatchShape([pc] + [1] * nd, [kp] + [kd] * nd, nd + 1)

        def err(rows: int, shape: BatchShape = shape, t: float = t) -> float:
            if rows not in roofs:
                roofs[rows] = Roofline(model, hw.model_copy(update={"attention_tile_rows": rows}), dtype)
            return roofs[rows].attention(shape).duration_ns - t

        lo, hi = 1, 512
        if err(lo) >= 0 or err(hi) <= 0:
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if err(mid) < 0 else (lo, mid)
        found.append(hi)
    if not found:
        raise ValueError("no compute-dominated mixed (prefill + decode) points in attention.csv")
    return int(statistics.median(found))


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m frontend.compute.calibrate BUNDLE_TP1_DIR MODEL_CONFIG HARDWARE_YAML")
    print(calibrate(Path(argv[0]), load_model_spec(Path(argv[1])), load_hardware(Path(argv[2]))).yaml())


if __name__ == "__main__":
    main(sys.argv[1:])
