"""Heterogeneous-decode attention correction of a profile bundle (`skew_fit`), as the bundle defines it.

The uniform attention grid is measured with every decode at one KV length; the lookup uses the
batch's mean decode KV. Real batches mix long and short contexts, and varlen attention kernels pay
for it (tile padding, SM imbalance). The bundle's profiler measured, for bimodal batches,
t_mean (uniform at the mean KV), t_max (uniform at the max KV) and t_skew (the real mix), and
fitted per bucket

    alpha = (t_skew - t_mean) / (t_max - t_mean),   t = t_mean + alpha * (t_max - t_mean).

Buckets are keyed on five axes whose bins the profiler wrote into `meta.yaml`
(`skew_fit.bucket_axes`, or per TP degree under `skew_fit.per_tp[tp].bucket_axes`):
  - pc: the prefill chunk, one bucket per *profiled* grid value (not binned);
  - n: number of decodes, bins `n_bins` / `n_labels`, right-inclusive (`n<=8` includes 8);
  - skew rate sr = (kv_mean - kv_min) / (kv_max - kv_min), clipped to [0, 1]
    (= nb / n for the profiler's bimodal batches), bins `skew_rate_bins`;
  - kv_big: the longest decode's KV, bins `kv_big_bins`;
  - kp: the prefill sequences' cached KV, bins `kp_bins`.
A bucket with no fitted alpha uses the fit's pooled `alpha_default` for that TP degree.

Source: the bundle format's documentation (LLMServingSim, docs/profiler/skew-alpha-fit.md and
output-bundle.md) and each bundle's own meta.yaml. A run's prefill chunk is rarely a profiled grid
value, so the alpha is the one at the two bracketing profiled pc values, blended linearly in pc
(the same rule the attention grid itself is interpolated with); keying on the raw chunk would miss
nearly every mixed batch.
"""

from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frontend.compute.errors import ProfileError


class SkewFitError(ProfileError):
    pass


AXES = ("n", "skew_rate", "kv_big", "kp")


@dataclass(frozen=True)
class Bins:
    """Right-inclusive bins (edges[i], edges[i+1]] with one label each; above the last edge: last label."""

    edges: tuple[float, ...]
    labels: tuple[str, ...]

    def label(self, v: float) -> str:
        i = bisect.bisect_left(self.edges, v, lo=1)  # first upper edge >= v
        return self.labels[min(i - 1, len(self.labels) - 1)]


def _bins(axes: dict[str, Any], name: str, where: str) -> Bins:
    try:
        edges = tuple(float(x) for x in axes[f"{name}_bins"])
        labels = tuple(str(x) for x in axes[f"{name}_labels"])
    except (KeyError, TypeError, ValueError):
        raise SkewFitError(f"{where}: skew_fit.bucket_axes needs numeric {name}_bins and {name}_labels") from None
    if len(edges) != len(labels) + 1 or list(edges) != sorted(edges):
        raise SkewFitError(f"{where}: skew_fit.bucket_axes.{name}_bins must be ascending with one more edge than "
                           f"{name}_labels ({len(edges)} edges, {len(labels)} labels)")
    return Bins(edges, labels)


class SkewFit:
    """alpha(pc, n, skew_rate, kv_big, kp) for one TP degree of a bundle."""

    def __init__(self, table: dict[tuple[int, str, str, str, str], float], axes: dict[str, Bins],
                 alpha_default: float) -> None:
        self.table = table
        self.axes = axes
        self.alpha_default = alpha_default
        self.pc_grid = sorted({k[0] for k in table})
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_bundle(cls, meta: dict[str, Any], tdir: Path, tp: int, where: str) -> SkewFit | None:
        """The fit the bundle declares for `tp`, or None when it has none (then no correction: alpha 0)."""
        fit = meta.get("skew_fit") or {}
        if not isinstance(fit, dict) or not fit.get("enabled"):
            return None
        per_tp = fit.get("per_tp") or {}
        entry = per_tp.get(tp) or per_tp.get(str(tp)) or {}
        axes_raw = (entry.get("bucket_axes") if isinstance(entry, dict) else None) or fit.get("bucket_axes")
        if not isinstance(axes_raw, dict):
            raise SkewFitError(f"{where}: skew_fit is enabled but meta.yaml has no skew_fit.bucket_axes")
        axes = {a: _bins(axes_raw, a, where) for a in AXES}
        default = entry.get("alpha_default", fit.get("alpha_default")) if isinstance(entry, dict) else None
        if default is None:
            raise SkewFitError(f"{where}: skew_fit.per_tp[{tp}] has no alpha_default")
        rel = (entry.get("bucket_table") if isinstance(entry, dict) else None) or "skew_fit.csv"
        path = tdir.parent / rel if "/" in str(rel) else tdir / rel
        if not path.is_file():
            raise SkewFitError(f"{where}: skew_fit.per_tp[{tp}].bucket_table {rel} is missing")
        table: dict[tuple[int, str, str, str, str], float] = {}
        with path.open() as fh:
            for i, r in enumerate(csv.DictReader(fh), start=2):
                try:
                    key = (int(r["pc"]), r["n_label"], r["skew_rate_label"], r["kv_big_label"], r["kp_label"])
                    table[key] = float(r["alpha"])
                except (KeyError, TypeError, ValueError):
                    raise SkewFitError(f"{path}:{i}: expected pc, n_label, skew_rate_label, kv_big_label, "
                                       "kp_label, alpha") from None
        return cls(table, axes, float(default))

    def _at(self, pc: int, labels: tuple[str, str, str, str]) -> float:
        a = self.table.get((pc, *labels))
        if a is None:
            self.misses += 1
            return self.alpha_default
        self.hits += 1
        return a

    def alpha(self, pc: int, n: int, kv_mean: float, kv_min: int, kv_max: int, kp: int) -> float:
        gap = kv_max - kv_min
        sr = min(1.0, max(0.0, (kv_mean - kv_min) / gap)) if gap > 0 else 0.5
        ax = self.axes
        labels = (ax["n"].label(n), ax["skew_rate"].label(sr), ax["kv_big"].label(kv_max), ax["kp"].label(kp))
        grid = self.pc_grid
        if not grid:
            return self.alpha_default
        i = bisect.bisect_left(grid, pc)
        if i < len(grid) and grid[i] == pc:
            return self._at(pc, labels)
        if i == 0 or i == len(grid):  # outside the profiled chunks: the nearest one
            return self._at(grid[0] if i == 0 else grid[-1], labels)
        lo, hi = grid[i - 1], grid[i]
        w = (pc - lo) / (hi - lo)
        return (1 - w) * self._at(lo, labels) + w * self._at(hi, labels)
