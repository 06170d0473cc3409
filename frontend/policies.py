"""Serving policies for agent programs: a small contract, and the well-known ones.

Policies see the past and present only: the program structure (which tool
follows a turn), tool durations that have already been observed, attained
service, and cluster state. They never see a pending tool call's duration or a
turn's output length (tests hand them workloads where peeking would change the
outcome).

Scheduling (the waiting order and the preemption victim):
  fcfs         - vLLM: arrival order; victim = newest.
  program_fcfs - Continuum: order by program arrival, so a program's later turns
                 go before younger programs' turns.
  plas         - Autellix PLAS: least attained service (tokens processed by the
                 program's finished turns) first; victim = most attained.
Retention (when a turn ends and its program goes into a tool call):
  lru          - vLLM: blocks return to the free queue as prefix cache.
  ttl_pin      - Continuum: if the tool's expected duration is within the TTL,
                 pin the program's KV in HBM until its next turn arrives or the
                 TTL expires; pins break under memory pressure.
  min_waste    - InferCept: choose the cheapest of discard (recompute or reload
                 later), preserve (hold HBM through the call and the re-admission
                 wait) and swap (offload to the host tier and reload) by the
                 memory-time each wastes.
  invocation_distance - KVFlow/ScaleSim: order programs by expected next
                 invocation; far ones are offloaded and their HBM blocks evicted
                 first, near ones stay; with prefetch the nearest are brought
                 back into HBM over the tier link before they are invoked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from frontend.config.schema import PolicyConfig

if TYPE_CHECKING:
    from frontend.agents.orchestrator import Orchestrator
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


PREFETCH_INTERVAL_NS = 50_000_000  # look for prefetch candidates at most every 50 ms per instance


@dataclass
class PolicyStats:
    pins_created: int = 0
    pins_expired: int = 0
    pins_broken: int = 0
    pins_used: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    bytes_prefetched: int = 0
    prefetches: int = 0
    log: list[tuple] = field(default_factory=list)  # (now, turn, decision), for tests


def priority_key(cfg: PolicyConfig, orch: Orchestrator | None) -> Callable[[Request], tuple] | None:
    if cfg.scheduling == "fcfs" or orch is None:
        return None
    if cfg.scheduling == "program_fcfs":
        return lambda r: (orch.programs[r.program_id].arrival_ns if r.program_id else r.arrival_ns, r.turn_index, r.seq)
    return lambda r: (orch.programs[r.program_id].service_tokens if r.program_id else 0, r.seq)


@dataclass
class Pin:
    inst: InstanceRuntime
    req: Request
    blocks: list[int]
    deadline_ns: int | None


class RetentionPolicy:
    """Retention and prefetch decisions; the engine calls the hooks."""

    def __init__(self, cfg: PolicyConfig, orch: Orchestrator, schedule_timer: Callable[[int, Callable[[], None]], None]
                 ) -> None:
        self.cfg = cfg
        self.orch = orch
        self.timer = schedule_timer
        self.stats = PolicyStats()
        self.pins: dict[str, Pin] = {}  # program id -> pin
        # program -> (expected next invocation ns, instance, block hashes of its context)
        self.next_invocation: dict[str, tuple[int, InstanceRuntime, list[int]]] = {}
        self._last_prefetch: dict[str, int] = {}

    # ---- helpers ----
    def _expected_gap(self, req: Request, now: int) -> float | None:
        tools = self.orch.next_tools(req.request_id)
        if not tools:
            return None
        gaps = [self.orch.expected_gap_ns(t, now) for t in tools]
        known = [g for g in gaps if g is not None]
        return max(known) if known else None

    def _decide(self, now: int, req: Request, what: str) -> None:
        self.stats.decisions[what] = self.stats.decisions.get(what, 0) + 1
        self.stats.log.append((now, req.request_id, what))

    def _pin(self, inst: InstanceRuntime, req: Request, blocks: list[int], deadline: int | None) -> None:
        pool = inst.pool
        pool.touch(blocks)
        pin = Pin(inst, req, blocks, deadline)
        self.pins[req.program_id] = pin
        inst.pins[req.program_id] = pin
        self.stats.pins_created += 1
        if deadline is not None:
            self.timer(deadline, lambda p=pin: self._expire(p))

    def _release(self, pin: Pin) -> None:
        pin.inst.pool.release(pin.blocks)
        self.pins.pop(pin.req.program_id, None)
        pin.inst.pins.pop(pin.req.program_id, None)

    def _expire(self, pin: Pin) -> None:
        if self.pins.get(pin.req.program_id) is pin:
            self.stats.pins_expired += 1
            self._release(pin)

    def break_one_pin(self, inst: InstanceRuntime, for_program: str | None = None) -> bool:
        """Memory pressure: release one pin (latest deadline first, the requester's own program last)."""
        if not inst.pins:
            return False
        pin = max(inst.pins.values(), key=lambda p: (p.req.program_id != for_program,
                                                      p.deadline_ns if p.deadline_ns is not None else 1 << 62))
        self.stats.pins_broken += 1
        self._release(pin)
        return True

    # ---- hooks ----
    def on_turn_finish(self, inst: InstanceRuntime, req: Request, blocks: list[int], now: int) -> bool:
        """Called before req's blocks are freed; True when the policy kept them (pinned)."""
        if not req.program_id or not self.orch.children.get(req.request_id):
            return False
        pol = self.cfg.retention
        gap = self._expected_gap(req, now)
        cached = [b for b in blocks if inst.pool.block_hash[b] is not None]
        if pol == "ttl_pin":
            ttl = int(self.cfg.ttl_ms * 1e6)
            if gap is not None and gap <= ttl and cached:
                self._decide(now, req, "pin")
                self._pin(inst, req, cached, now + ttl)
                return True
            self._decide(now, req, "release")
            return False
        if pol == "min_waste":
            return self._min_waste(inst, req, cached, gap, now)
        if pol == "invocation_distance":
            est = now + int(gap if gap is not None else 1e9)
            n_full = (req.input_tokens + req.output_tokens) // inst.pool.block_size
            self.next_invocation[req.program_id] = (est, inst, list((req.hashes or [])[:n_full]))
            self._order_by_distance(inst, req, cached, est, now)
        return False

    def on_turn_arrival(self, inst: InstanceRuntime, req: Request) -> None:
        self.next_invocation.pop(req.program_id or "", None)
        pin = self.pins.get(req.program_id or "")
        if pin is not None and pin.inst is not inst:
            self._release(pin)  # routed elsewhere: the pin cannot help

    def on_admit(self, req: Request) -> None:
        """The next turn was scheduled and has taken its prefix blocks: the pin has done its job."""
        pin = self.pins.get(req.program_id or "")
        if pin is not None:
            self.stats.pins_used += 1
            self._release(pin)

    def _min_waste(self, inst: InstanceRuntime, req: Request, cached: list[int], gap: float | None, now: int) -> bool:
        """InferCept's comparison of memory-time wasted by each choice (block-seconds).

        preserve: the program's blocks sit idle for the whole call: blocks x gap.
        discard : recomputing the context later stalls every running request's
                  memory for the recompute time: used_blocks x t_recompute.
        swap    : the copy out and back costs the transfer time on the tier link,
                  overlapped layer by layer with compute but not hidden for
                  the blocks themselves: blocks x 2 x t_transfer.
        """
        n = len(cached)
        if n == 0:
            self._decide(now, req, "discard")
            return False
        # the KV is idle for the call and for the wait before the next turn is admitted again
        # (the instance's recent admission delay: observed, not predicted from the future)
        g = (gap if gap is not None else 1e9) + inst.queue_delay_ns
        ctx_tokens = req.input_tokens + req.output_tokens
        tm = inst.tier_manager
        # restoring a discarded context: a reload when every block already has a copy below (write-through),
        # otherwise a recompute of the whole context
        copied = tm is not None and tm.active and all(tm.tiers[0].contains(tm.key(inst.pool.block_hash[b]))
                                                       for b in cached)
        if copied:
            t_restore = tm.tiers[0].cfg.latency_ns + n * tm.block_bytes / tm.tiers[0].cfg.bw_gbps
        else:
            t_restore = inst.estimate_prefill_ns(ctx_tokens)
        w_preserve = n * g
        w_discard = max(1, inst.pool.num_used) * t_restore
        swap_tier = tm.swap_tier() if tm is not None else None
        w_swap = float("inf")
        if swap_tier is not None and not copied:
            nbytes = n * tm.block_bytes
            w_swap = n * 2 * (swap_tier.cfg.latency_ns + nbytes / swap_tier.cfg.bw_gbps)
        choice = min((w_preserve, "preserve"), (w_discard, "discard"), (w_swap, "swap"))[1]
        self._decide(now, req, choice)
        if choice == "preserve":
            # held for the call it was chosen for (and the re-admission after it), not forever
            self._pin(inst, req, cached, now + int(max(2 * g, self.cfg.ttl_ms * 1e6)))
            return True
        if choice == "swap":
            for b in cached:
                tm._copy_down(inst.pool.block_hash[b], b)
        return False

    def _order_by_distance(self, inst: InstanceRuntime, req: Request, cached: list[int], est: int, now: int) -> None:
        """Rank the programs waiting on tools by expected next invocation; far ones go to the tier and to the
        front of HBM's eviction order, near ones keep their place."""
        waiting = sorted(v[0] for v in self.next_invocation.values())
        rank = waiting.index(est) if est in waiting else len(waiting)
        near = rank < max(1, self.cfg.prefetch_lookahead)
        tm = inst.tier_manager
        if near:
            self._decide(now, req, "keep")
            return
        self._decide(now, req, "offload")
        if tm is not None and tm.active:
            for b in cached:
                tm._copy_down(inst.pool.block_hash[b], b)
        inst.evict_first.extend(cached)

    def prefetch(self, inst: InstanceRuntime, now: int) -> None:
        """Bring the KV of the programs expected next (on this instance) from the tier into HBM."""
        if self.cfg.prefetch != "invocation_distance" or inst.tier_manager is None or not inst.tier_manager.active:
            return
        last = self._last_prefetch.get(inst.name, -(1 << 62))
        if now - last < PREFETCH_INTERVAL_NS:
            return
        self._last_prefetch[inst.name] = now
        cands = sorted((est, pid, r) for pid, (est, i, r) in self.next_invocation.items() if i is inst)
        tm = inst.tier_manager
        pool = inst.pool
        for _, pid, hashes in cands[: max(1, self.cfg.prefetch_lookahead)]:
            missing = [h for h in hashes if h not in pool.cached and tm.tiers[0].contains(tm.key(h))]
            if not missing or len(missing) > pool.num_free // 2:
                continue
            # only into blocks that hold no cached KV: a prefetch must not evict anyone's prefix
            head = list(islice(pool.free_queue, len(missing)))
            if any(pool.block_hash[b] is not None for b in head):
                continue
            # the chain prefix must be complete in HBM+tier for the next turn to use it
            for h in missing:
                b = pool._pop_free()
                pool.block_hash[b] = h
                pool.cached[h] = b
                pool.free_queue.append(b)  # cached, unreferenced, at the tail: evicted last
            tm._moves[(tm.tiers[0].name, "load", "prefetch")] += len(missing)
            tm.tiers[0].stats.loaded_blocks += len(missing)
            tm.tiers[0].stats.loaded_bytes += len(missing) * tm.block_bytes
            self.stats.prefetches += 1
            self.stats.bytes_prefetched += len(missing) * tm.block_bytes
            self.next_invocation.pop(pid, None)
