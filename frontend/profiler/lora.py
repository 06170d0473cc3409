"""Time the batched LoRA kernels of one layer into `lora.csv` (columns: frontend/compute/lora_table.py).

For each adapted projection (vLLM's packed modules qkv_proj, o_proj, gate_up_proj, down_proj, with the
TP-sharded in/out dimensions of frontend/instance/lora.py `module_dims`), each rank r, each number of distinct
adapters and each token count: the tokens are split into that many contiguous segments, one adapter each
(the segment layout of the batched kernels: Punica's SGMV, arXiv 2310.18547 sec. 4; S-LoRA, arXiv
2311.03285 sec. 5), and every segment runs shrink h = x @ A_i (in -> r) then expand y += h @ B_i (r -> out,
added into the base projection's output as vLLM's LoRA layers do). The segments run as a loop of torch
GEMMs, not vLLM's fused Punica Triton kernels: on a GPU the loop adds a launch per segment that the fused
kernel does not have, so the table is an upper bound there for many adapters. Weights are random; only
shapes matter for time.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from frontend.compute.lora_table import COLUMNS
from frontend.config.models import ModelSpec
from frontend.instance.lora import module_dims

MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def lora_points(ranks: list[int], adapters: list[int], tokens: list[int]) -> list[tuple[int, int, int]]:
    """(rank, adapters, tokens) of the table: every combination (a full grid; `segments` caps the adapters
    of a point at its tokens, since a segment holds at least one token)."""
    return [(r, a, t) for r in ranks for a in adapters for t in tokens]


def segments(tokens: int, adapters: int) -> list[tuple[int, int]]:
    """`tokens` split into min(adapters, tokens) contiguous segments of near-equal length."""
    n = max(1, min(adapters, tokens))
    base, extra = divmod(tokens, n)
    out, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def lora_op(torch, device: str, dtype, in_dim: int, out_dim: int, rank: int, adapters: int, tokens: int,
            gen) -> Callable[[], object]:
    """One module's shrink + expand over `tokens` tokens in segments of `adapters` adapters."""
    segs = segments(tokens, adapters)
    x = torch.randn(tokens, in_dim, generator=gen).to(device=device, dtype=dtype)
    a = (torch.randn(len(segs), in_dim, rank, generator=gen) * 0.02).to(device=device, dtype=dtype)
    b = (torch.randn(len(segs), rank, out_dim, generator=gen) * 0.02).to(device=device, dtype=dtype)
    y = torch.zeros(tokens, out_dim, device=device, dtype=dtype)

    def run() -> object:
        for i, (s, e) in enumerate(segs):
            h = x[s:e] @ a[i]  # shrink
            y[s:e].addmm_(h, b[i])  # expand, added into the projection's output
        return y

    return run


def write_lora_table(tdir: Path, model: ModelSpec, tp: int, device: str, dtype, measure: Callable,
                     ranks: list[int], adapters: list[int], tokens: list[int],
                     say: Callable[[str], None] = lambda s: None) -> dict:
    """Measure and write `tdir/lora.csv`; returns the meta.yaml `lora` section."""
    import torch

    dims = module_dims(model, tp)
    gen = torch.Generator(device="cpu").manual_seed(2)
    with (tdir / "lora.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for module in MODULES:
            i, o = dims[module]
            for r, a, t in lora_points(ranks, adapters, tokens):
                say(f"lora {module} rank={r} adapters={a} tokens={t}")
                w.writerow([module, r, a, t, round(measure(lora_op(torch, device, dtype, i, o, r, a, t, gen)), 3)])
    return {
        "columns": "module, rank, adapters, tokens, time_us: one layer's shrink + expand of that module",
        "modules": {m: list(dims[m]) for m in MODULES},
        "ranks": ranks, "adapters": adapters, "tokens": tokens,
        "segments": "tokens split into min(adapters, tokens) contiguous segments, one adapter each",
        "kernel": "per-segment loop of torch GEMMs (shrink x @ A, expand y += h @ B); not vLLM's Punica kernels",
    }
