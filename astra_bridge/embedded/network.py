"""Congestion-unaware analytical network model, matching ASTRA-sim's semantics.

A collective of `size` bytes is split into C = preferred-dataset-splits chunks.
Each chunk passes through phases, one per involved dimension (reduce-scatter
up the dimensions, the collective proper on the last, all-gather back down);
each dimension is a resource that serves `active_chunks` chunks at once, so
chunks pipeline across dimensions. A phase costs

    steps * (hops * latency + trunc(msg / bw)) + n_ep * endpoint_delay
          + n_lmem * trunc(msg / local_mem_bw)

with bw in bytes/ns = GB/s * 2**30 / 1e9 (ASTRA-sim's network GB is 2**30) and
local_mem_bw in bytes/ns = GB/s (1e9). The step / endpoint / local-memory
counts per algorithm were derived from the closed forms and measurements in
shared/reference/ASTRA_SIM_INPUTS.md and astra_sim_allreduce_reference.csv
(tests/test_network_reference.py reproduces every row):

  ring  RS: N-1 steps, msg = chunk/N, N ep, 3(N-1) lmem
  ring  AG: N-1 steps, msg = chunk (per-rank input), N ep, 0 lmem
  ring  AR (single dim): RS + AG with one shared endpoint delay: 2N-1 ep
  direct AR: 2 steps, msg = chunk/N, 3 ep, 3 lmem
  halvingDoubling AR: 2 log2 N steps of chunk/2^k, 2 log2 N + 1 ep,
      3 * sum_{k>=2} lmem(chunk/2^k)  (within 1% of the binary)
  ring A2A: N(N-1)/2 steps, msg = chunk/N, N(N-1)/2 + 1 ep

Hops: Ring neighbours 1 (halving-doubling partner at distance 2^k: min(d, N-d));
FullyConnected 1; Switch 2 (up to the switch and down).
doubleBinaryTree has no public reference figure; it is modelled as a pipelined
reduce + broadcast over a tree of depth ceil(log2 N) (documented approximation).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from functools import lru_cache

from chakra_gen.graph import CollectiveType

GIB = 1 << 30


@dataclass(frozen=True)
class Dimension:
    topology: str  # Ring | FullyConnected | Switch
    npus: int
    bw_gbps: float
    latency_ns: float
    algorithm: str = "ring"  # ring | direct | halvingDoubling | doubleBinaryTree

    @property
    def bytes_per_ns(self) -> float:
        return self.bw_gbps * GIB / 1e9

    def hops(self, distance: int = 1) -> int:
        if self.topology == "Switch":
            return 2
        if self.topology == "FullyConnected":
            return 1
        d = distance % self.npus
        return min(d, self.npus - d)


@dataclass(frozen=True)
class SystemKnobs:
    preferred_dataset_splits: int = 4
    endpoint_delay_ns: int = 10
    active_chunks_per_dimension: int = 1
    local_mem_bw_gbps: float = 1600.0


@dataclass(frozen=True)
class Phase:
    dim: int
    duration_ns: int


def _ser(msg: int, dim: Dimension) -> int:
    return int(msg / dim.bytes_per_ns)


def _lmem(msg: int, knobs: SystemKnobs) -> int:
    return int(msg / knobs.local_mem_bw_gbps) if knobs.local_mem_bw_gbps > 0 else 0


def _phase_cost(kind: str, chunk: int, dim: Dimension, knobs: SystemKnobs, ep_extra: int = 0) -> int:
    """Cost of one chunk's phase on one dimension. kind: RS, AG, AR, A2A."""
    n = dim.npus
    ep = knobs.endpoint_delay_ns
    algo = dim.algorithm
    lat = dim.latency_ns
    if algo == "direct":
        msg = chunk // n
        hop_lat = dim.hops(n // 2 if dim.topology == "Ring" else 1) * lat
        if kind == "AR":
            return int(2 * (hop_lat + _ser(msg, dim)) + 3 * ep + 3 * _lmem(msg, knobs))
        if kind == "RS":
            return int(hop_lat + _ser(msg, dim) + 2 * ep + 3 * _lmem(msg, knobs))
        if kind == "AG":
            return int(hop_lat + _ser(chunk, dim) + 2 * ep)
        if kind == "A2A":
            return int(hop_lat + _ser(msg, dim) * (n - 1) + 2 * ep)
    if algo == "halvingDoubling" and kind in ("AR", "RS", "AG") and n & (n - 1) == 0:
        steps = int(math.log2(n))
        rs = 0
        lm = 0
        for k in range(1, steps + 1):
            msg = chunk >> k
            rs += dim.hops(1 << (k - 1)) * lat + _ser(msg, dim)
            if k >= 2:
                lm += _lmem(msg, knobs)
        if kind == "AR":
            return int(2 * rs + (2 * steps + 1) * ep + 3 * lm)
        if kind == "RS":
            return int(rs + (steps + 1) * ep + 3 * lm)
        return int(rs + (steps + 1) * ep)
    if algo == "doubleBinaryTree" and kind in ("AR", "RS", "AG"):
        depth = max(1, math.ceil(math.log2(n)))
        msg = chunk // 2  # two trees, each carries half the data
        one = dim.hops(1) * lat + _ser(msg, dim)
        if kind == "AR":
            return int(2 * depth * one + (2 * depth + 1) * ep + depth * _lmem(msg, knobs))
        return int(depth * one + (depth + 1) * ep + (depth * _lmem(msg, knobs) if kind == "RS" else 0))
    # ring (also the fallback for halvingDoubling on non-powers of two)
    hop_lat = dim.hops(1) * lat
    if kind == "RS":
        msg = chunk // n
        return int((n - 1) * (hop_lat + _ser(msg, dim)) + n * ep + 3 * (n - 1) * _lmem(msg, knobs))
    if kind == "AG":
        return int((n - 1) * (hop_lat + _ser(chunk, dim)) + n * ep)
    if kind == "AR":
        msg = chunk // n
        return int(2 * (n - 1) * (hop_lat + _ser(msg, dim)) + (2 * (n - 1) + 1) * ep
                   + 3 * (n - 1) * _lmem(msg, knobs))
    if kind == "A2A":
        msg = chunk // n
        steps = n * (n - 1) // 2
        return int(steps * (hop_lat + _ser(msg, dim)) + (steps + 1) * ep)
    raise ValueError(f"unsupported collective phase {kind} with algorithm {algo}")


def collective_phases(
    comm_type: int, size: int, dims: tuple[Dimension, ...], involved: tuple[bool, ...], knobs: SystemKnobs
) -> list[Phase]:
    """The ordered phases one chunk goes through."""
    active = [i for i, d in enumerate(dims) if (i >= len(involved) or involved[i]) and d.npus > 1]
    c = max(1, knobs.preferred_dataset_splits)
    chunk = size // c
    phases: list[Phase] = []
    if not active:
        return phases
    ct = int(comm_type)
    if ct == CollectiveType.ALL_REDUCE:
        # reduce-scatter up the dims, all-reduce on the last, all-gather back down
        sizes = []
        cur = chunk
        for i in active[:-1]:
            sizes.append(cur)
            phases.append(Phase(i, _phase_cost("RS", cur, dims[i], knobs)))
            cur //= dims[i].npus
        phases.append(Phase(active[-1], _phase_cost("AR", cur, dims[active[-1]], knobs)))
        for i, s in zip(reversed(active[:-1]), reversed(sizes), strict=True):
            phases.append(Phase(i, _phase_cost("AG", s // dims[i].npus, dims[i], knobs)))
        return phases
    if ct in (CollectiveType.REDUCE_SCATTER, CollectiveType.REDUCE_SCATTER_BLOCK):
        cur = chunk
        for i in active:
            phases.append(Phase(i, _phase_cost("RS", cur, dims[i], knobs)))
            cur //= dims[i].npus
        return phases
    if ct == CollectiveType.ALL_GATHER:
        cur = chunk
        for i in active:
            phases.append(Phase(i, _phase_cost("AG", cur, dims[i], knobs)))
            cur *= dims[i].npus
        return phases
    if ct == CollectiveType.ALL_TO_ALL:
        for i in active:
            phases.append(Phase(i, _phase_cost("A2A", chunk, dims[i], knobs)))
        return phases
    raise ValueError(f"collective type {ct} is not simulated (ASTRA-sim aborts on it too)")


def _pipeline(phases: list[Phase], chunks: int, ndims: int, slots: int) -> int:
    """Finish time of `chunks` identical chunks flowing through per-dim FIFO servers."""
    if not phases:
        return 0
    free = [[0] * slots for _ in range(ndims)]
    for f in free:
        heapq.heapify(f)
    ready = [0] * chunks
    for ph in phases:
        srv = free[ph.dim]
        for c in range(chunks):
            t0 = heapq.heappop(srv)
            start = max(t0, ready[c])
            ready[c] = start + ph.duration_ns
            heapq.heappush(srv, ready[c])
    return max(ready)


@lru_cache(maxsize=65536)
def collective_time_ns(
    comm_type: int, size: int, dims: tuple[Dimension, ...], involved: tuple[bool, ...], knobs: SystemKnobs
) -> int:
    """Time of one collective issued at the same instant by every member."""
    if size <= 0:
        return 0
    phases = collective_phases(comm_type, size, dims, involved, knobs)
    return _pipeline(phases, max(1, knobs.preferred_dataset_splits), len(dims),
                     max(1, knobs.active_chunks_per_dimension))


def rank_coords(rank: int, dims: tuple[Dimension, ...]) -> list[int]:
    coords = []
    for d in dims:
        coords.append(rank % d.npus)
        rank //= d.npus
    return coords


def p2p_time_ns(src: int, dst: int, size: int, dims: tuple[Dimension, ...]) -> int:
    """Point-to-point: trunc(hops*latency + size/bw) on each dimension the ranks differ in."""
    a, b = rank_coords(src, dims), rank_coords(dst, dims)
    total = 0
    for d, x, y in zip(dims, a, b, strict=True):
        if x != y:
            total += int(d.hops(y - x) * d.latency_ns + size / d.bytes_per_ns)
    return total
