"""Fit ASTRA-sim network-dimension parameters to a measured collectives table.

The measured table is `collectives.csv` from `astraserve profile --collectives`
(frontend/profiler/collectives.py): per collective, rank count N and size S
(nccl-tests size convention) the median time t(S).

Model. The time of one collective on one network dimension is whatever
ASTRA-sim's congestion-unaware analytical model gives, computed by the embedded
engine (`astra_bridge.embedded.network.collective_time_ns`, which reproduces
the upstream binary; see its docstring and shared/reference/ASTRA_SIM_INPUTS.md).
For a single dimension with C chunks served one at a time it is, per chunk
phase, `steps * (hops * latency + trunc(msg / bw)) + n_ep * endpoint_delay +
n_lmem * trunc(msg / local_mem_bw)`, times C. That is affine in the two link
parameters:

    T(S) = a(S) * latency_ns + B(S) / bw + c(S)              (1)

with bw in bytes/ns = bw_gbps * 2**30 / 1e9 (ASTRA-sim's network GB is 2**30),
a(S) the number of link latencies on the critical path (e.g. ring all-reduce:
2(N-1) * hops * C), B(S) the bytes serialised on it (ring all-reduce:
2(N-1)/N * S) and c(S) the endpoint and local-memory terms, which do not depend
on the link. a, B and c are not re-derived here: they are read off the model by
calling it with probe links (latency 0 / 1 ms, bandwidth "infinite" / 1e-6 GB/s),
so the fit follows the model exactly, chunking knobs included.

This is the alpha-beta (Hockney) model t = alpha + S / beta behind nccl-tests'
bandwidth figures (nccl-tests doc/PERFORMANCE.md): algbw = S / t and
busbw = algbw * 2(N-1)/N for all-reduce, algbw * (N-1)/N for all-gather,
reduce-scatter and all-to-all. ASTRA-sim's ring all-reduce serialises exactly
2(N-1)/N * S over a link of bandwidth bw, ring all-gather / reduce-scatter
(N-1)/N * S, so the fitted `bw_gbps` is the bus bandwidth busbw (in GiB/s;
times 2**30/1e9 for nccl-tests' GB/s). `latency_ns` is the per-step cost
alpha / a: link latency plus the per-step kernel launch / synchronisation share
of a small collective (NCCL's fixed cost). (For all-to-all with N > 2 ASTRA-sim's
ring all-to-all sends N(N-1)/2 steps of S/N, so its fitted bw is not busbw.)

Fit: weighted least squares on relative error over the rows in a size window
(default 4 KiB .. 32 MiB, what TP all-reduces of decode and prefill batches
carry), minimising sum(((a L + B x + c - t) / t)^2) over L = latency_ns >= 0 and
x = 1/bw > 0 (two-variable non-negative least squares, closed form). The fitted
dimension is then run through `collective_time_ns` for every row and the
relative errors reported, so the stated error is the model's, truncations included.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from astra_bridge.embedded.network import GIB, Dimension, SystemKnobs, collective_time_ns
from chakra_gen.graph import CollectiveType
from frontend.profiler.collectives import CollectiveRow, parse_size, read_table, table_path

COLLECTIVE_TYPES = {
    "ALL_REDUCE": CollectiveType.ALL_REDUCE,
    "ALL_GATHER": CollectiveType.ALL_GATHER,
    "REDUCE_SCATTER": CollectiveType.REDUCE_SCATTER,
    "ALL_TO_ALL": CollectiveType.ALL_TO_ALL,
}
BUSBW_FACTOR = {  # nccl-tests doc/PERFORMANCE.md: busbw = algbw * factor(N)
    "ALL_REDUCE": lambda n: 2 * (n - 1) / n,
    "ALL_GATHER": lambda n: (n - 1) / n,
    "REDUCE_SCATTER": lambda n: (n - 1) / n,
    "ALL_TO_ALL": lambda n: (n - 1) / n,
}
# The knobs the presets in configs/networks/ were fitted with: one chunk per collective
# (NCCL runs a serving-size collective as one pipelined operation; the chunk count must not
# multiply the per-step latency), ASTRA-sim's default endpoint delay and local-memory bandwidth.
FIT_KNOBS = SystemKnobs(preferred_dataset_splits=1)
DEFAULT_WINDOW = (4 << 10, 32 << 20)
_PROBE_LAT = 1e6  # ns: large, so the integer truncations in the model are exact
_INF_BW = 1e15  # GB/s: serialisation rounds to 0 ns for any size below a petabyte
_SLOW_BW = 1e-6  # GB/s: ~0.93 ms per byte, truncation error below 1e-6 of a byte


def astra_comm_size(collective: str, nbytes: int, n: int) -> int:
    """nccl-tests size -> the comm_size an ASTRA-sim collective node carries.

    ASTRA-sim (and the embedded model) take ALL_GATHER's size as the per-rank input (each ring
    step forwards one input-sized block), REDUCE_SCATTER's as the full per-rank input, ALL_REDUCE's
    and ALL_TO_ALL's as the per-rank buffer; nccl-tests reports ALL_GATHER by its output (N x input).
    """
    if collective == "ALL_GATHER":
        return nbytes // n
    return nbytes


def _time(collective: str, size: int, dim: Dimension, knobs: SystemKnobs) -> int:
    return collective_time_ns(int(COLLECTIVE_TYPES[collective]), size, (dim,), (True,), knobs)


def model_terms(collective: str, nbytes: int, n: int, topology: str, algorithm: str,
                knobs: SystemKnobs) -> tuple[float, float, float]:
    """(a, B, c) of equation (1) for one table row, read off collective_time_ns with probe links."""
    size = astra_comm_size(collective, nbytes, n)
    c = _time(collective, size, Dimension(topology, n, _INF_BW, 0.0, algorithm), knobs)
    a = (_time(collective, size, Dimension(topology, n, _INF_BW, _PROBE_LAT, algorithm), knobs) - c) / _PROBE_LAT
    slow = Dimension(topology, n, _SLOW_BW, 0.0, algorithm)
    b = (_time(collective, size, slow, knobs) - c) * slow.bytes_per_ns
    return float(round(a, 6)), float(b), float(c)


@dataclass
class LinkFit:
    """Fitted link of one dimension for one collective on N ranks, and how well it reproduces the table."""

    collective: str
    num_ranks: int
    topology: str
    algorithm: str
    latency_ns: float
    bw_gbps: float  # GiB/s as ASTRA-sim reads it
    knobs: SystemKnobs
    window: tuple[int, int]
    points: list[dict] = field(default_factory=list)  # bytes, measured_us, model_us, rel_err

    @property
    def dimension(self) -> Dimension:
        return Dimension(self.topology, self.num_ranks, self.bw_gbps, self.latency_ns, self.algorithm)

    @property
    def busbw_gbs(self) -> float:
        """Bus bandwidth in nccl-tests units (GB/s, 1e9)."""
        return self.bw_gbps * GIB / 1e9

    @property
    def max_rel_err(self) -> float:
        return max((abs(p["rel_err"]) for p in self.points), default=0.0)

    @property
    def mean_abs_rel_err(self) -> float:
        return sum(abs(p["rel_err"]) for p in self.points) / max(1, len(self.points))

    def predict_us(self, nbytes: int) -> float:
        """Model time (µs) of this collective at nccl-tests size nbytes on the fitted dimension."""
        return _time(self.collective, astra_comm_size(self.collective, nbytes, self.num_ranks), self.dimension,
                     self.knobs) / 1e3

    def summary(self) -> dict:
        return {"collective": self.collective, "num_ranks": self.num_ranks, "topology": self.topology,
                "algorithm": self.algorithm, "latency_ns": round(self.latency_ns, 1),
                "bw_gbps": round(self.bw_gbps, 3), "busbw_GBps_1e9": round(self.busbw_gbs, 3),
                "window_bytes": list(self.window), "points": len(self.points),
                "max_rel_err": round(self.max_rel_err, 4), "mean_abs_rel_err": round(self.mean_abs_rel_err, 4)}


def _nnls2(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min ||m v - y|| over v >= 0 for two columns: unconstrained solution, else the best one-column fit."""
    v, *_ = np.linalg.lstsq(m, y, rcond=None)
    if (v >= 0).all():
        return v
    best, best_r = np.zeros(2), float(np.dot(y, y))
    for j in (0, 1):
        col = m[:, j]
        den = float(np.dot(col, col))
        if den <= 0:
            continue
        x = max(0.0, float(np.dot(col, y)) / den)
        r = float(np.sum((y - col * x) ** 2))
        if r < best_r:
            best, best_r = np.zeros(2), r
            best[j] = x
    return best


def fit_link(rows: Sequence[CollectiveRow], collective: str, num_ranks: int, topology: str = "FullyConnected",
             algorithm: str = "ring", knobs: SystemKnobs = FIT_KNOBS,
             window: tuple[int, int] = DEFAULT_WINDOW) -> LinkFit:
    """Fit latency_ns and bw_gbps of one dimension so the model reproduces the table's rows.

    Uses the rows of `collective` on `num_ranks` ranks whose size lies in `window` (bytes,
    inclusive); needs at least two distinct sizes. Raises ValueError when the rows do not
    determine a positive bandwidth (no size dependence inside the window).
    """
    collective = collective.upper()
    if collective not in COLLECTIVE_TYPES:
        raise ValueError(f"unknown collective {collective!r} (expected one of {', '.join(COLLECTIVE_TYPES)})")
    sel = sorted((r for r in rows if r.collective == collective and r.num_ranks == num_ranks
                  and window[0] <= r.bytes <= window[1]), key=lambda r: r.bytes)
    if len({r.bytes for r in sel}) < 2:
        have = sorted({(r.collective, r.num_ranks) for r in rows})
        raise ValueError(f"{collective} on {num_ranks} ranks: fewer than two sizes in {window[0]}..{window[1]} bytes "
                         f"(table has {have})")
    terms = np.array([model_terms(collective, r.bytes, num_ranks, topology, algorithm, knobs) for r in sel])
    t = np.array([r.time_us * 1e3 for r in sel])
    a, b, c = terms[:, 0], terms[:, 1], terms[:, 2]
    m = np.stack([a / t, b / t], axis=1)
    y = (t - c) / t
    lat, x = _nnls2(m, y)
    if x <= 0:
        raise ValueError(f"{collective} on {num_ranks} ranks: times in {window[0]}..{window[1]} bytes do not grow with "
                         "size; widen the window to larger messages so the bandwidth is determined")
    bw_gbps = 1e9 / (x * GIB)  # x in ns/byte: bytes_per_ns = 1/x = bw_gbps * 2**30 / 1e9
    fit = LinkFit(collective, num_ranks, topology, algorithm, float(lat), float(bw_gbps), knobs, window)
    for r in sel:
        model = fit.predict_us(r.bytes)
        fit.points.append({"bytes": r.bytes, "measured_us": r.time_us, "model_us": round(model, 3),
                           "rel_err": round((model - r.time_us) / r.time_us, 5)})
    return fit


def fit_table(rows: Sequence[CollectiveRow], knobs: SystemKnobs = FIT_KNOBS, topology: str = "FullyConnected",
              algorithm: str = "ring", window: tuple[int, int] = DEFAULT_WINDOW) -> list[LinkFit]:
    """One LinkFit per (collective, rank count) in the table that has at least two sizes in the window."""
    out = []
    for coll, n in sorted({(r.collective, r.num_ranks) for r in rows}):
        if coll not in COLLECTIVE_TYPES:
            continue
        try:
            out.append(fit_link(rows, coll, n, topology, algorithm, knobs, window))
        except ValueError:
            continue
    return out


def preset_from_fits(fits: Sequence[LinkFit], num_ranks: int, source: str, primary: str = "ALL_REDUCE") -> dict:
    """A network preset (configs/networks/ format) whose one dimension is the `primary` fit on num_ranks ranks.

    The other collectives' fits go under `fit:` for reference (the loader reads only `dims`).
    """
    main = next((f for f in fits if f.collective == primary and f.num_ranks == num_ranks), None)
    if main is None:
        raise ValueError(f"no {primary} fit on {num_ranks} ranks (have {[(f.collective, f.num_ranks) for f in fits]})")
    k = main.knobs
    return {
        "dims": [{"topology": main.topology, "npus": num_ranks, "bw_gbps": round(main.bw_gbps, 3),
                  "latency_ns": round(main.latency_ns, 1), "algorithm": main.algorithm}],
        "fit": {
            "source": source,
            "primary": primary,
            "knobs": {"preferred_dataset_splits": k.preferred_dataset_splits, "endpoint_delay_ns": k.endpoint_delay_ns,
                      "active_chunks_per_dimension": k.active_chunks_per_dimension,
                      "local_mem_bw_gbps": k.local_mem_bw_gbps},
            "collectives": [f.summary() for f in fits if f.num_ranks == num_ranks],
            "points": main.points,
        },
    }


PRESET_HEADER = """\
# Fitted by frontend/network_fit.py from {source}
# {primary} on {n} ranks, sizes {lo}..{hi} B: latency_ns = per-step link + launch latency,
# bw_gbps = bus bandwidth (GiB/s as ASTRA-sim reads it; {busbw:.2f} GB/s in nccl-tests units).
# The model (ASTRA-sim congestion-unaware, astra_bridge/embedded/network.py) reproduces the
# measured times within {err:.1%} (max relative error) with the knobs under fit.knobs;
# use the same backend.system knobs in a run, in particular preferred_dataset_splits.
"""


def write_preset(fits: Sequence[LinkFit], num_ranks: int, path: Path, source: str, primary: str = "ALL_REDUCE") -> Path:
    preset = preset_from_fits(fits, num_ranks, source, primary)
    main = next(f for f in fits if f.collective == primary and f.num_ranks == num_ranks)
    head = PRESET_HEADER.format(source=source, primary=primary, n=num_ranks, lo=main.window[0], hi=main.window[1],
                                busbw=main.busbw_gbs, err=main.max_rel_err)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(preset, sort_keys=False))
    return path


def dims_from_bundle(bundle: Path, npus: int, dtype: str | None = None, knobs: SystemKnobs = FIT_KNOBS,
                     topology: str = "FullyConnected", algorithm: str = "ring",
                     window: tuple[int, int] = DEFAULT_WINDOW, collective: str = "ALL_REDUCE") -> list[dict]:
    """Network `dims` (as in a preset / NetworkDim) fitted to a bundle's collectives table.

    `bundle`: a collectives.csv, or a bundle folder holding <dtype>/collectives.csv or
    collectives.csv. Pass the run's own SystemKnobs (what instance_system builds from
    backend.system) so the fitted link reproduces the table under the knobs the run uses.
    """
    fit = fit_link(read_table(table_path(bundle, dtype)), collective, npus, topology, algorithm, knobs, window)
    return [{"topology": topology, "npus": npus, "bw_gbps": fit.bw_gbps, "latency_ns": fit.latency_ns,
             "algorithm": algorithm}]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frontend.network_fit",
                                 description="Fit a network preset (one dimension) to a measured collectives.csv.")
    ap.add_argument("table", type=Path, help="collectives.csv or a bundle folder holding one")
    ap.add_argument("--npus", type=int, required=True, help="rank count of the dimension to fit")
    ap.add_argument("--out", type=Path, required=True, help="preset YAML to write")
    ap.add_argument("--dtype", default=None, help="bundle variant folder (bf16, ...) to look in")
    ap.add_argument("--collective", default="ALL_REDUCE", help="collective the dimension is fitted to")
    ap.add_argument("--topology", default="FullyConnected", choices=["FullyConnected", "Switch", "Ring"])
    ap.add_argument("--algorithm", default="ring", choices=["ring", "direct", "halvingDoubling"])
    ap.add_argument("--min-bytes", default="4K")
    ap.add_argument("--max-bytes", default="32M")
    ap.add_argument("--splits", type=int, default=FIT_KNOBS.preferred_dataset_splits,
                    help="backend.system.preferred_dataset_splits the run will use")
    ap.add_argument("--endpoint-delay-ns", type=int, default=FIT_KNOBS.endpoint_delay_ns)
    ap.add_argument("--local-mem-bw-gbps", type=float, default=FIT_KNOBS.local_mem_bw_gbps)
    args = ap.parse_args(argv)
    knobs = SystemKnobs(args.splits, args.endpoint_delay_ns, 1, args.local_mem_bw_gbps)
    window = (parse_size(args.min_bytes), parse_size(args.max_bytes))
    try:
        src = table_path(args.table, args.dtype)
        rows = read_table(src)
        fits = fit_table(rows, knobs, args.topology, args.algorithm, window)
        fit_link(rows, args.collective, args.npus, args.topology, args.algorithm, knobs, window)  # errors surface here
        path = write_preset(fits, args.npus, args.out, str(src), args.collective.upper())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in fits:
        if f.num_ranks == args.npus:
            s = f.summary()
            print(f"{s['collective']:>14} N={s['num_ranks']}: latency_ns={s['latency_ns']:.1f} bw_gbps={s['bw_gbps']:.3f} "
                  f"(busbw {s['busbw_GBps_1e9']:.2f} GB/s), max err {s['max_rel_err']:.1%} over {s['points']} sizes")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["COLLECTIVE_TYPES", "FIT_KNOBS", "LinkFit", "astra_comm_size", "dims_from_bundle", "fit_link", "fit_table",
           "model_terms", "preset_from_fits", "write_preset"]
