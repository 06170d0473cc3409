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
  halvingDoubling AG: log2 N steps, msg = chunk * 2^k to the partner at N/2^(k+1), log2 N + 1 ep
  ring A2A: N(N-1)/2 steps, msg = chunk/N, N(N-1)/2 + 1 ep
  direct A2A: one step (all pieces in parallel), msg = chunk/N, 2 ep

Hops: Ring neighbours 1 (halving-doubling partner at distance 2^k: min(d, N-d));
FullyConnected 1; Switch 2 (up to the switch and down).
doubleBinaryTree has no public reference figure; it is modelled as a pipelined
reduce + broadcast over a tree of depth ceil(log2 N) (documented approximation).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
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


SPLIT_MODES = ("fixed", "auto")
P2P_ROUTES = ("lowest_dim", "all_dims")
SCHEDULING_POLICIES = ("LIFO", "FIFO")
COLLECTIVE_OPTIMIZATIONS = ("localBWAware", "baseline")
# NCCL_BUFFSIZE's default (4 MiB, NCCL environment-variable documentation): NCCL moves a message
# through one buffer per step, so a message below one buffer is not pipelined in further pieces.
NCCL_BUFFSIZE = 4 << 20


@dataclass(frozen=True)
class SystemKnobs:
    """ASTRA-sim system.json knobs that change timing (plus two named options of this project).

    split_mode "fixed": every collective is split into preferred_dataset_splits chunks (ASTRA-sim).
    split_mode "auto": chunks = clamp(ceil(bytes / min_chunk_bytes), 1, preferred_dataset_splits) for
    the largest collective of the iteration (one value per iteration, because ASTRA-sim reads one
    preferred-dataset-splits per run and every run is one iteration); min_chunk_bytes defaults to
    NCCL_BUFFSIZE. p2p_route "lowest_dim": a send between NPUs that differ in several dimensions is
    charged on the lowest differing dimension only (ASTRA-sim's MultiDimTopology::send);
    "all_dims": charged on every differing dimension (store-and-forward through each, the physical
    route; the binary cannot express it).
    """

    preferred_dataset_splits: int = 4
    endpoint_delay_ns: int = 10
    active_chunks_per_dimension: int = 1
    local_mem_bw_gbps: float = 1600.0
    scheduling_policy: str = "LIFO"
    collective_optimization: str = "localBWAware"
    split_mode: str = "fixed"
    min_chunk_bytes: int = NCCL_BUFFSIZE
    p2p_route: str = "lowest_dim"

    def __post_init__(self) -> None:
        for name, allowed in (("split_mode", SPLIT_MODES), ("p2p_route", P2P_ROUTES),
                              ("scheduling_policy", SCHEDULING_POLICIES),
                              ("collective_optimization", COLLECTIVE_OPTIMIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"system knob {name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.preferred_dataset_splits < 1 or self.min_chunk_bytes < 1:
            raise ValueError("preferred_dataset_splits and min_chunk_bytes must be >= 1")

    @classmethod
    def from_config(cls, cfg) -> SystemKnobs:
        """From a frontend SystemConfig (preferred_dataset_splits may be the string "auto")."""
        splits = getattr(cfg, "preferred_dataset_splits", 4)
        auto = splits == "auto"
        return cls(int(getattr(cfg, "max_dataset_splits", 4)) if auto else int(splits),
                   int(getattr(cfg, "endpoint_delay_ns", 10)), int(getattr(cfg, "active_chunks_per_dimension", 1)),
                   float(getattr(cfg, "local_mem_bw_gbps", 1600.0)), str(getattr(cfg, "scheduling_policy", "LIFO")),
                   str(getattr(cfg, "collective_optimization", "localBWAware")), "auto" if auto else "fixed",
                   int(getattr(cfg, "min_chunk_bytes", NCCL_BUFFSIZE)), str(getattr(cfg, "p2p_route", "lowest_dim")))

    def splits_for(self, max_collective_bytes: int) -> int:
        """The preferred-dataset-splits value in force for an iteration whose largest collective has
        max_collective_bytes (split_mode "auto"), or the fixed value."""
        if self.split_mode == "fixed":
            return self.preferred_dataset_splits
        return min(self.preferred_dataset_splits, max(1, -(-max_collective_bytes // self.min_chunk_bytes)))

    def resolved(self, max_collective_bytes: int) -> SystemKnobs:
        """These knobs with split_mode "fixed" at the iteration's chunk count."""
        if self.split_mode == "fixed":
            return self
        return replace(self, preferred_dataset_splits=self.splits_for(max_collective_bytes), split_mode="fixed")


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
            t = 2 * (hop_lat + _ser(msg, dim)) + 3 * ep + 3 * _lmem(msg, knobs)
            if dim.topology == "Ring" and lat > 0:
                # on a Ring the peers' messages arrive one hop latency apart, and the local
                # reductions of the nearer ones hide up to N//4 of those hops (fitted to the binary:
                # exact on N = 4..16, 100..1000 ns, 64 KiB..64 MiB; tests/test_astra_reference.py)
                t -= lat * min(n // 4, int(3 * _lmem(msg, knobs) // lat))
            return int(t)
        if kind == "RS":
            return int(hop_lat + _ser(msg, dim) + 2 * ep + 3 * _lmem(msg, knobs))
        if kind == "AG":
            return int(hop_lat + _ser(chunk, dim) + 2 * ep)
        if kind == "A2A":
            # every NPU sends its N-1 pieces at once: one message time (measured on the binary)
            return int(hop_lat + _ser(msg, dim) + 2 * ep)
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
        # all-gather: partner distance halves (N/2, N/4, ..., 1) while the message doubles from
        # the per-rank input (HalvingDoubling's All_Gather: rank_offset N/2, multiplier 0.5)
        ag = 0
        for k in range(steps):
            ag += dim.hops(n >> (k + 1)) * lat + _ser(chunk << k, dim)
        return int(ag + (steps + 1) * ep)
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


def chunk_plan(comm_type: int, size: int, dims: tuple[Dimension, ...], knobs: SystemKnobs) -> tuple[int, int]:
    """(chunk bytes, number of chunks) as ASTRA-sim's Sys::generate_collective splits a collective.

    chunk = size // splits; every collective but ALL_GATHER is raised to at least one byte per NPU
    of the whole system (chunk = total NPUs, size = splits * chunk). The collective then runs
    ceil(size / chunk) chunks, each of the full chunk size: when splits does not divide the size,
    ASTRA-sim runs splits + 1 full chunks (the remainder is charged as a whole chunk, a quirk this
    model follows so that both backends agree).
    """
    c = max(1, knobs.preferred_dataset_splits)
    chunk = size // c
    total = math.prod(d.npus for d in dims) if dims else 1
    if int(comm_type) != CollectiveType.ALL_GATHER and total > chunk:
        chunk = total
        size = c * chunk
    if chunk <= 0:
        raise ValueError(f"ALL_GATHER of {size} B split into {c} chunks leaves empty chunks (ASTRA-sim divides "
                         f"by zero there); use fewer preferred_dataset_splits")
    return chunk, -(-size // chunk)


def collective_phases(
    comm_type: int, chunk: int, dims: tuple[Dimension, ...], involved: tuple[bool, ...], knobs: SystemKnobs
) -> list[Phase]:
    """The ordered phases one chunk of `chunk` bytes goes through (Sys::generate_collective)."""
    if len(involved) < len(dims):
        involved = tuple(involved) + (True,) * (len(dims) - len(involved))
    active = [i for i, d in enumerate(dims) if involved[i] and d.npus > 1]
    phases: list[Phase] = []
    if not active:
        return phases
    ct = int(comm_type)
    if ct == CollectiveType.ALL_REDUCE and knobs.collective_optimization == "baseline":
        # baseline: a full all-reduce of the chunk on every involved dimension in turn
        return [Phase(i, _phase_cost("AR", chunk, dims[i], knobs)) for i in active]
    if ct == CollectiveType.ALL_REDUCE:
        # localBWAware: reduce-scatter up the dims, all-reduce on the last, all-gather back down
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
        # ASTRA-sim walks the dimensions of an all-gather from the last to the first
        cur = chunk
        for i in reversed(active):
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
    if knobs.split_mode != "fixed":
        knobs = knobs.resolved(size)
    chunk, n_chunks = chunk_plan(comm_type, size, dims, knobs)
    phases = collective_phases(comm_type, chunk, dims, involved, knobs)
    return _pipeline(phases, n_chunks, len(dims), max(1, knobs.active_chunks_per_dimension))


def rank_coords(rank: int, dims: tuple[Dimension, ...]) -> list[int]:
    coords = []
    for d in dims:
        coords.append(rank % d.npus)
        rank //= d.npus
    return coords


def p2p_time_ns(src: int, dst: int, size: int, dims: tuple[Dimension, ...], route: str = "lowest_dim") -> int:
    """Point-to-point: trunc(hops*latency + size/bw) on the lowest dimension the ranks differ in
    (ASTRA-sim's congestion-unaware MultiDimTopology::send charges only that dimension), or with
    route "all_dims" summed over every differing dimension (the physical store-and-forward route)."""
    a, b = rank_coords(src, dims), rank_coords(dst, dims)
    total = 0
    for d, x, y in zip(dims, a, b, strict=True):
        if x != y:
            total += int(d.hops(y - x) * d.latency_ns + size / d.bytes_per_ns)
            if route == "lowest_dim":
                break
    return total


def _ring_counts(ct: int, n: int, chunk: int) -> tuple[int, int, int, int]:
    """(steps, message bytes, endpoint delays, local-memory terms) of one ring phase over n NPUs."""
    if ct == CollectiveType.ALL_REDUCE:
        return 2 * (n - 1), chunk // n, 2 * (n - 1) + 1, 3 * (n - 1)
    if ct in (CollectiveType.REDUCE_SCATTER, CollectiveType.REDUCE_SCATTER_BLOCK):
        return n - 1, chunk // n, n, 3 * (n - 1)
    if ct == CollectiveType.ALL_GATHER:
        return n - 1, chunk, n, 0
    if ct == CollectiveType.ALL_TO_ALL:
        return n * (n - 1) // 2, chunk // n, n * (n - 1) // 2 + 1, 0
    raise ValueError(f"collective type {ct} is not simulated (ASTRA-sim aborts on it too)")


def ring_finish_ns(comm_type: int, size: int, starts: list[int], members: tuple[int, ...],
                   dims: tuple[Dimension, ...], knobs: SystemKnobs) -> list[int]:
    """Per-member finish times of a ring collective whose members issue it at different times.

    ASTRA-sim runs a collective as data flow, not as a barrier: a ring member sends its k-th
    message once it has issued the collective and received the (k-1)-th from its predecessor, so
    with t(i,0) = s_i and t(i,k) = max(s_i, t(i-1,k-1) + link_i), member i finishes a chunk at
    max(s_i, max_{j=1..S} (s_{i-j} + link_{i-j+1} + ... + link_i)) + its endpoint-delay and local-memory terms,
    and starts its next chunk then (one active chunk per dimension). Checked on the binary for
    ALL_REDUCE / REDUCE_SCATTER / ALL_GATHER / ALL_TO_ALL, 4 and 8 NPUs, 1 and 3-4 chunks.
    members: in ring order (coordinate along the dimension, or the comm group's listed order);
    each link is charged on the lowest dimension its two NPUs differ in.
    """
    n = len(members)
    if knobs.split_mode != "fixed":
        knobs = knobs.resolved(size)
    chunk, n_chunks = chunk_plan(comm_type, size, dims, knobs)
    steps, msg, n_ep, n_lmem = _ring_counts(int(comm_type), n, chunk)
    links = [sum(_link_ns(members[i - 1], members[i], msg, dims)) for i in range(n)]
    tail = n_ep * knobs.endpoint_delay_ns + n_lmem * _lmem(msg, knobs)
    st = list(starts)
    for _ in range(n_chunks):
        nxt = []
        for i in range(n):
            best, acc = st[i], 0  # a member finishes no earlier than it issued the chunk
            for j in range(1, steps + 1):
                acc += links[(i - j + 1) % n]
                best = max(best, st[(i - j) % n] + acc)
            nxt.append(best + tail)
        st = nxt
    return st


def _link_ns(src: int, dst: int, size: int, dims: tuple[Dimension, ...]) -> tuple[int, int]:
    """(latency part, serialization part) of one message as ASTRA-sim's unaware send charges it:
    on the lowest dimension the two NPUs differ in, hops * latency + trunc(size / bw)."""
    a, b = rank_coords(src, dims), rank_coords(dst, dims)
    for d, x, y in zip(dims, a, b, strict=True):
        if x != y:
            return int(d.hops(y - x) * d.latency_ns), _ser(size, d)
    raise ValueError(f"NPUs {src} and {dst} have the same address")


@lru_cache(maxsize=65536)
def group_ring_time_ns(comm_type: int, size: int, members: tuple[int, ...], dims: tuple[Dimension, ...],
                       knobs: SystemKnobs) -> int:
    """A collective on a comm group smaller than the system: ASTRA-sim's CommunicatorGroup plan is one
    ring over the group's NPUs in the order listed (ring algorithm whatever the dimensions say);
    each message is charged on the lowest dimension its two NPUs differ in. A ring step waits for the
    predecessor's message, so a rank's k steps cost the k links before it; the collective ends when
    the slowest rank does (the maximum over ranks of k consecutive link costs around the ring).
    Endpoint-delay and local-memory terms are those of the one-dimensional ring."""
    if size <= 0:
        return 0
    n = len(members)
    if n < 2:
        return 0
    if knobs.split_mode != "fixed":
        knobs = knobs.resolved(size)
    chunk, n_chunks = chunk_plan(comm_type, size, dims, knobs)
    ep = knobs.endpoint_delay_ns
    steps, msg, n_ep, n_lmem = _ring_counts(int(comm_type), n, chunk)
    links = []
    for i in range(n):
        lat, ser = _link_ns(members[i - 1], members[i], msg, dims)  # the message rank i waits for
        links.append(lat + ser)
    worst = 0
    for i in range(n):  # rank i's k-th step waits for the link k-1 positions before it
        worst = max(worst, sum(links[(i - j) % n] for j in range(steps)))
    phase = worst + n_ep * ep + n_lmem * _lmem(msg, knobs)
    return _pipeline([Phase(0, phase)], n_chunks, 1, max(1, knobs.active_chunks_per_dimension))


def _hd_steps(ct: int, n: int, chunk: int) -> list[tuple[int, int]]:
    """(partner offset, message bytes) per halvingDoubling step (HalvingDoubling: reduce-scatter
    offsets 1, 2, .., N/2 with halving messages; all-gather N/2, .., 1 with doubling ones; all-reduce
    both, the all-gather half mirroring the reduce-scatter half)."""
    s = n.bit_length() - 1
    rs = [(1 << k, chunk >> (k + 1)) for k in range(s)]
    if ct == CollectiveType.ALL_REDUCE:
        return rs + [(n >> (k + 1), chunk >> (s - k)) for k in range(s)]
    if ct in (CollectiveType.REDUCE_SCATTER, CollectiveType.REDUCE_SCATTER_BLOCK):
        return rs
    if ct == CollectiveType.ALL_GATHER:
        return [(n >> (k + 1), chunk << k) for k in range(s)]
    raise ValueError(f"halvingDoubling has no collective type {ct}")


def skewed_finish_ns(comm_type: int, size: int, starts: list[int], dim: Dimension, knobs: SystemKnobs) -> list[int] | None:
    """Per-member finish times of a collective on one dimension whose members (in coordinate order
    along it) issue it at different times, as ASTRA-sim's data flow gives them; None where no such
    model is checked (the caller then uses a barrier at the last issue, which is exact for direct
    all-reduce). Each chunk: ring (ring_finish_ns); halvingDoubling: at step k member i waits for its
    partner i +- offset_k (clockwise when (i // offset_k) is even) to reach step k, plus that step's
    message time; direct reduce-scatter / all-gather: member i waits for every peer's message;
    direct on 2 NPUs is a 2-NPU ring. The endpoint-delay and local-memory terms of a chunk follow
    its last message, and a member starts its next chunk then. All checked on the binary
    (bench/differential.py "skewed issue" cases)."""
    n = len(starts)
    ct = int(comm_type)
    algo = dim.algorithm
    if knobs.split_mode != "fixed":
        knobs = knobs.resolved(size)
    if algo == "ring" or (algo == "direct" and n == 2) or (algo == "halvingDoubling" and n & (n - 1)):
        return None  # ring: ring_finish_ns handles it with the members' addresses
    chunk, n_chunks = chunk_plan(ct, size, (dim,), knobs)
    kind = {CollectiveType.ALL_REDUCE: "AR", CollectiveType.ALL_GATHER: "AG", CollectiveType.REDUCE_SCATTER: "RS",
            CollectiveType.REDUCE_SCATTER_BLOCK: "RS"}.get(ct)
    if kind is None:
        return None
    phase = _phase_cost(kind, chunk, dim, knobs)
    lat = dim.latency_ns
    st = list(starts)
    if algo == "halvingDoubling":
        steps = [(off, int(dim.hops(off) * lat + _ser(msg, dim))) for off, msg in _hd_steps(ct, n, chunk)]
        tail = phase - sum(d for _, d in steps)
        for _ in range(n_chunks):
            t = st
            for off, d in steps:
                t = [max(t[i], t[(i + off) % n if (i // off) % 2 == 0 else (i - off) % n] + d) for i in range(n)]
            st = [x + tail for x in t]
        return st
    if algo == "direct" and kind in ("RS", "AG") and dim.topology != "Ring":
        d = int(dim.hops(1) * lat + _ser(chunk // n if kind == "RS" else chunk, dim))
        tail = phase - d
        for _ in range(n_chunks):
            st = [max(st[i], max(st[j] + d for j in range(n) if j != i)) + tail for i in range(n)]
        return st
    return None
