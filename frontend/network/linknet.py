"""Messages over links that congest: ASTRA-sim's congestion-aware analytical network, in-process.

Why this model: KV transfers between instances share NICs and switch ports; two prefill instances pushing
into one decode GPU queue on its downlink. ASTRA-sim's congestion-aware analytical backend
(astra-network-analytical, `congestion_aware/`) models exactly that, and this class follows its rules so
the two agree on the same messages (bench/differential_network.py checks it against the binary):

- A message travels as one chunk along a route of devices; each hop is a directed link with a bandwidth
  and a latency (`Link::communication_delay` = latency + bytes / bw, `serialization_delay` = bytes / bw,
  each truncated to whole ns; bw in B/ns = GB/s x 2^30 / 1e9, ASTRA-sim's GB being 2^30 B).
- A link serves one chunk at a time, first come first served (`Link::send`: busy -> pending queue). It is
  busy for the serialization delay; the chunk reaches the next device after the communication delay and is
  sent on at once over the next link (store and forward per chunk).
- An NPU has one send in flight (ASTRA-sim's `HardwareResource`: one communication node at a time; a SEND
  node ends when its chunk reaches the destination), so an NPU's messages start one after another.

Busy-until bookkeeping replaces the binary's link-free events: a chunk reaching a link at t starts at
max(t, the link's free time), which is what the pending queue yields when chunks are handled in arrival
order (they are: arrivals are events in time order). Times are integer ns; the network's own event heap
is advanced by its owner (the cluster layer arms an engine timer at `next_time()`), so messages issued
later in simulated time see the links as earlier ones left them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

GIB = 1 << 30


def astra_bytes_per_ns(bw_gbps: float) -> float:
    """B/ns the binary uses for a link of `bw_gbps` GB/s (1e9 B/s): the network file carries GiB/s
    (bw x 1e9 / 2^30, written exactly), which ASTRA-sim turns into B/ns as x 2^30 / 1e9."""
    gib_s = float(bw_gbps) * 1e9 / GIB
    return gib_s * GIB / 1e9


@dataclass(slots=True)
class Link:
    bytes_per_ns: float
    latency_ns: float
    free_ns: int = 0  # when the chunk now on the link has been serialized onto it
    busy_ns: int = 0  # total serialization time (utilization)
    bytes: int = 0


@dataclass(slots=True)
class Message:
    src: int
    dst: int
    size: int
    route: list[int]
    on_arrival: Callable[[int], None] | None
    ready_ns: int = 0  # when its sender may issue it
    start_ns: int = -1  # when it left the sender
    end_ns: int = -1  # when it reached the destination
    hop: int = 0


@dataclass
class LinkNetwork:
    """Directed links between device ids, messages routed over them (module docstring)."""

    links: dict[tuple[int, int], Link] = field(default_factory=dict)
    now_ns: int = 0
    _events: list = field(default_factory=list)
    _seq: int = 0
    _sending: dict[int, Message] = field(default_factory=dict)  # NPU -> its message in flight
    _queued: dict[int, deque] = field(default_factory=dict)  # NPU -> messages waiting to be issued
    messages: int = 0
    halt: bool = False  # set by an arrival callback to stop `advance` right after that arrival

    def connect(self, a: int, b: int, bw_gbps: float, latency_ns: float) -> None:
        """A bidirectional link: one directed link each way (ASTRA-sim's `connect(..., bidirectional=true)`)."""
        bpn = astra_bytes_per_ns(bw_gbps)
        self.links[(a, b)] = Link(bpn, float(latency_ns))
        self.links[(b, a)] = Link(bpn, float(latency_ns))

    # ---- events ----
    def _push(self, t: int, kind: int, msg: Message) -> None:
        heapq.heappush(self._events, (t, self._seq, kind, msg))
        self._seq += 1

    def next_time(self) -> int | None:
        return self._events[0][0] if self._events else None

    def send_at(self, t_ns: int, src: int, dst: int, size: int, route: list[int],
                on_arrival: Callable[[int], None] | None = None) -> Message:
        """Issue a message from NPU `src` at `t_ns` (>= now): it leaves when the NPU's earlier messages have
        arrived. `on_arrival(t)` runs when it reaches `dst`."""
        if t_ns < self.now_ns:
            raise ValueError(f"message issued at {t_ns} ns, before the network's time {self.now_ns} ns")
        if size <= 0:
            raise ValueError("a message carries at least one byte")
        if len(route) < 2 or route[0] != src or route[-1] != dst:
            raise ValueError(f"route {route} does not lead from {src} to {dst}")
        m = Message(src, dst, int(size), route, on_arrival, ready_ns=t_ns)
        self.messages += 1
        self._push(t_ns, 0, m)
        return m

    def advance(self, t_ns: int) -> None:
        """Handle every event up to and including `t_ns`, or until an arrival callback sets `halt` (the caller
        clears it): then `now_ns` is that arrival's time."""
        ev = self._events
        while ev and ev[0][0] <= t_ns and not self.halt:
            t, _, kind, m = heapq.heappop(ev)
            self.now_ns = t
            if kind == 0:  # issued: leaves now unless the NPU has a message in flight
                if m.src in self._sending:
                    self._queued.setdefault(m.src, deque()).append(m)
                else:
                    self._start(m, t)
            else:  # reached device route[hop]
                if m.hop == len(m.route) - 1:
                    self._arrived(m, t)
                else:
                    self._hop(m, t)
        if t_ns > self.now_ns and not self.halt:
            self.now_ns = t_ns

    def _start(self, m: Message, t: int) -> None:
        self._sending[m.src] = m
        m.start_ns = t
        self._hop(m, t)

    def _hop(self, m: Message, t: int) -> None:
        link = self.links.get((m.route[m.hop], m.route[m.hop + 1]))
        if link is None:
            raise ValueError(f"no link from device {m.route[m.hop]} to {m.route[m.hop + 1]}")
        start = t if t >= link.free_ns else link.free_ns
        size = float(m.size)
        ser = int(size / link.bytes_per_ns)
        comm = int(link.latency_ns + size / link.bytes_per_ns)
        link.free_ns = start + ser
        link.busy_ns += ser
        link.bytes += m.size
        m.hop += 1
        self._push(start + comm, 1, m)

    def _arrived(self, m: Message, t: int) -> None:
        m.end_ns = t
        del self._sending[m.src]
        q = self._queued.get(m.src)
        if q:
            self._start(q.popleft(), t)
        if m.on_arrival is not None:
            m.on_arrival(t)

    def run(self) -> int:
        """Handle every event (a closed set of messages, e.g. a differential case); returns the last time."""
        while self._events:
            self.advance(self._events[0][0])
        return self.now_ns
