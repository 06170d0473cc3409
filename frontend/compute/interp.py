"""Piecewise-linear interpolation over profiled grids.

Linear blending on every axis, even though profilers sample geometrically:
the kernels are close to linear in tokens, sequences and KV length, and a
log-space blend is biased upward between doubling grid points. Below the
smallest sample the value is clamped (0 is always an exact sample); above the
largest it is extrapolated from the top two samples, and the caller is told so
(once per axis) through `on_extrapolate`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass


def bracket(keys: list[int], x: float) -> tuple[int, int, float]:
    """(lo, hi, t) so that value = v[lo] + t * (v[hi] - v[lo])."""
    n = len(keys)
    if n == 1 or x <= keys[0]:
        return 0, 0, 0.0
    i = bisect.bisect_right(keys, x)
    if i >= n:
        lo, hi = n - 2, n - 1
    else:
        lo, hi = i - 1, i
    if i < n and keys[i - 1] == x:
        return i - 1, i - 1, 0.0
    x0, x1 = keys[lo], keys[hi]
    return lo, hi, (x - x0) / (x1 - x0) if x1 != x0 else 0.0


@dataclass
class Table1D:
    keys: list[int]
    values: list[float]
    axis: str
    on_extrapolate: Callable[[str, float, int, int], None] | None = None

    def __call__(self, x: float) -> float:
        keys = self.keys
        if x > keys[-1] and self.on_extrapolate is not None:
            self.on_extrapolate(self.axis, x, keys[0], keys[-1])
        lo, hi, t = bracket(keys, x)
        v = self.values
        return v[lo] + t * (v[hi] - v[lo])


class Grid4D:
    """time(pc, kp, nd, kd) on a full or partial grid: slices per (pc, nd), bilinear inside."""

    def __init__(self, rows: list[tuple[int, int, int, int, float]], name: str,
                 on_extrapolate: Callable[[str, float, int, int], None] | None = None) -> None:
        self.name = name
        self.on_extrapolate = on_extrapolate
        slices: dict[tuple[int, int], dict[int, dict[int, float]]] = {}
        for pc, kp, nd, kd, t in rows:
            slices.setdefault((pc, nd), {}).setdefault(kp, {})[kd] = t
        self.slices = {}
        for key, by_kp in slices.items():
            kps = sorted(by_kp)
            self.slices[key] = (kps, [(sorted(by_kp[k]), [by_kp[k][d] for d in sorted(by_kp[k])]) for k in kps])
        self.pc_vals = sorted({k[0] for k in self.slices})
        self.nd_vals = sorted({k[1] for k in self.slices})
        self.kp_max = max(max(v[0]) for v in self.slices.values())
        self.kd_max = max(max(max(r[0]) for r in v[1]) for v in self.slices.values())

    def _warn(self, axis: str, x: float, lo: int, hi: int) -> None:
        if x > hi and self.on_extrapolate is not None:
            self.on_extrapolate(f"{self.name}.{axis}", x, lo, hi)

    def _slice(self, pc: int, nd: int, kp: float, kd: float) -> float | None:
        s = self.slices.get((pc, nd))
        if s is None:
            return None
        kps, rows = s

        def row(i: int) -> float:
            ks, vs = rows[i]
            lo, hi, t = bracket(ks, kd)
            return vs[lo] + t * (vs[hi] - vs[lo])

        lo, hi, t = bracket(kps, kp)
        a = row(lo)
        return a if lo == hi else a + t * (row(hi) - a)

    def __call__(self, pc: float, kp: float, nd: float, kd: float) -> float:
        self._warn("prefill_chunk", pc, self.pc_vals[0], self.pc_vals[-1])
        self._warn("n_decode", nd, self.nd_vals[0], self.nd_vals[-1])
        self._warn("kv_prefill", kp, 0, self.kp_max)
        self._warn("kv_decode", kd, 0, self.kd_max)
        plo, phi, pt = bracket(self.pc_vals, pc)
        nlo, nhi, nt = bracket(self.nd_vals, nd)
        acc = 0.0
        wsum = 0.0
        for pi, pw in ((plo, 1 - pt), (phi, pt)):
            for ni, nw in ((nlo, 1 - nt), (nhi, nt)):
                w = pw * nw
                if w == 0.0 and not (pi == plo and ni == nlo):
                    continue
                v = self._slice(self.pc_vals[pi], self.nd_vals[ni], kp, kd)
                if v is None:
                    continue
                acc += w * v
                wsum += w
        if wsum == 0.0:
            raise KeyError(f"{self.name}: no profiled slice near prefill_chunk={pc}, n_decode={nd}")
        return acc / wsum
