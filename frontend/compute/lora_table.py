"""A profile bundle's measured LoRA kernels (`<dtype>/tp<N>/lora.csv`) as a lookup.

Columns (written by `astraserve profile --lora`, frontend/profiler/lora.py):
- `module`: the adapted projection, vLLM's packed name (qkv_proj, o_proj, gate_up_proj, down_proj), with the
  TP-sharded in/out dimensions of frontend/instance/lora.py `module_dims`;
- `rank`: the adapters' LoRA rank r;
- `adapters`: distinct adapters among the tokens (the tokens split into that many contiguous segments, one
  adapter each: the batched kernels' segment layout, Punica arXiv 2310.18547 sec. 4 / S-LoRA arXiv
  2311.03285 sec. 5);
- `tokens`: tokens of the batch (every token adapted);
- `time_us`: one layer's shrink (x @ A, in -> r) plus expand (h @ B, r -> out, added into the projection's
  output) for that module over all segments, median of the profiler's runs.

The lookup is linear on every axis like the other tables (frontend/compute/interp.py): tokens within a
(module, rank, adapters) column, then between the bracketing adapters and ranks; above the largest sample it
extrapolates from the top two (the caller is told once per axis). Before interpolating, times are made
non-decreasing along tokens, adapters and rank (running maximum): a kernel over more tokens, more adapters'
weights or a wider rank does at least the same work, so a measured dip is timer noise, and the cost is then
monotone in each argument.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from frontend.compute.errors import ProfileError
from frontend.compute.interp import bracket

COLUMNS = ("module", "rank", "adapters", "tokens", "time_us")


class LoRATable:
    """time_ns(module, rank, adapters, tokens) from lora.csv."""

    def __init__(self, rows: list[tuple[str, int, int, int, float]], source: str = "lora.csv",
                 on_extrapolate: Callable[[str, float, int, int], None] | None = None) -> None:
        self.source = source
        self.on_extrapolate = on_extrapolate
        grid: dict[str, dict[int, dict[int, dict[int, float]]]] = {}
        for module, r, a, t, ns in rows:
            grid.setdefault(module, {}).setdefault(r, {}).setdefault(a, {})[t] = ns
        self.modules: dict[str, tuple[list[int], list[int], list[int], list[list[list[float]]]]] = {}
        for module, by_r in grid.items():
            ranks = sorted(by_r)
            adapters = sorted({a for v in by_r.values() for a in v})
            tokens = sorted({t for v in by_r.values() for w in v.values() for t in w})
            vals: list[list[list[float]]] = []
            for r in ranks:
                plane = []
                for a in adapters:
                    col = by_r[r].get(a, {})
                    if set(col) != set(tokens):
                        raise ProfileError(f"{source}: module {module} rank {r} adapters {a}: token counts "
                                           f"{sorted(col)} differ from the table's {tokens} (a full grid is needed)")
                    plane.append([col[t] for t in tokens])
                vals.append(plane)
            _envelope(vals)
            self.modules[module] = (ranks, adapters, tokens, vals)

    @classmethod
    def read(cls, path: Path, on_extrapolate: Callable[[str, float, int, int], None] | None = None) -> LoRATable:
        rows = []
        with Path(path).open() as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ProfileError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
            for i, r in enumerate(reader, start=2):
                try:
                    rows.append((r["module"], int(r["rank"]), int(r["adapters"]), int(r["tokens"]),
                                 float(r["time_us"]) * 1000.0))
                except (TypeError, ValueError):
                    raise ProfileError(f"{path}:{i}: not a row of integers and a time: {r}") from None
        if not rows:
            raise ProfileError(f"{path}: no rows")
        return cls(rows, str(path), on_extrapolate)

    def check_modules(self, modules: list[str]) -> None:
        missing = [m for m in modules if m not in self.modules]
        if missing:
            raise ProfileError(f"{self.source}: lora.target_modules {missing} are not profiled (table has "
                               f"{sorted(self.modules)})")

    def _warn(self, axis: str, x: float, keys: list[int]) -> None:
        if x > keys[-1] and self.on_extrapolate is not None:
            self.on_extrapolate(f"lora.{axis}", x, keys[0], keys[-1])

    def time_ns(self, module: str, rank: int, adapters: int, tokens: int) -> float:
        ranks, ads, toks, vals = self.modules[module]
        self._warn("rank", rank, ranks)
        self._warn("adapters", adapters, ads)
        self._warn("tokens", tokens, toks)
        tl, th, tt = bracket(toks, tokens)
        al, ah, at = bracket(ads, adapters)
        rl, rh, rt = bracket(ranks, rank)

        def at_tokens(i: int, j: int) -> float:
            v = vals[i][j]
            return v[tl] + tt * (v[th] - v[tl])

        def at_rank(i: int) -> float:
            lo = at_tokens(i, al)
            return lo + at * (at_tokens(i, ah) - lo)

        lo = at_rank(rl)
        return lo + rt * (at_rank(rh) - lo)


def _envelope(vals: list[list[list[float]]]) -> None:
    """Running maximum along tokens, then adapters, then rank (in place): non-decreasing on every axis."""
    for plane in vals:
        for col in plane:
            for k in range(1, len(col)):
                col[k] = max(col[k], col[k - 1])
        for j in range(1, len(plane)):
            plane[j] = [max(x, y) for x, y in zip(plane[j], plane[j - 1], strict=True)]
    for i in range(1, len(vals)):
        vals[i] = [[max(x, y) for x, y in zip(c, p, strict=True)] for c, p in zip(vals[i], vals[i - 1], strict=True)]
