"""Serving policies for agent programs: a small contract, and the well-known ones.

Policies see the past and present only: the program structure (which turn
follows which, through which tool), tool durations that have already been
observed, attained service, and cluster state. They never see a pending tool
call's duration or a turn's output length (tests hand them workloads where
peeking would change the outcome).

Scheduling (the waiting order and the preemption victim):
  fcfs         - vLLM: arrival order; victim = newest.
  program_fcfs - Continuum (and InferCept's "original arrival time" order): order
                 by program arrival, so a program's later turns go before younger
                 programs' turns; a turn whose KV a retention policy holds goes
                 first (its memory is already allocated).
  plas         - Autellix PLAS: least attained service first (tokens of the
                 program's completed calls); victim = most attained.
Retention (when a turn ends and its program goes into a tool call):
  lru          - vLLM: blocks return to the free queue as prefix cache.
  ttl_pin      - Continuum: pin the program's KV in HBM for a time-to-live; the
                 TTL is fixed (the released preview: pin for ttl_ms when the
                 tool's running mean is within it) or chosen per call by the
                 paper's utility, P(tool done by TTL) x benefit - memory cost.
                 Pins expire, break under memory pressure, and hold once the
                 next turn has arrived until it is admitted.
  min_waste    - InferCept: choose the cheapest of discard (recompute), preserve
                 (hold HBM through the call) and swap (copy to the host tier,
                 pipelined) by the memory-time each wastes.
  invocation_distance - KVFlow/ScaleSim: every program's upcoming turns get a
                 steps-to-execution on the program DAG (0: only a tool call is in
                 the way, 1: a parent runs now, ...), tie-broken by the expected
                 release time; cached HBM blocks are evicted farthest-first
                 instead of least-recently-used, and with prefetch the blocks of
                 the turns due within the next step are loaded from the host tier
                 in the background, off the GPU's critical path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from frontend.config.schema import PolicyConfig

if TYPE_CHECKING:
    from frontend.agents.orchestrator import Orchestrator
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


# KVFlow's released engine keeps eviction priorities for agents up to this many steps ahead and treats
# farther ones alike (server_args.evict_pri_level = 4 in github.com/PanZaifeng/KVFlow).
EVICT_PRIORITY_STEPS = 4
# KVFlow prefetches "for agents scheduled in the next step" (arXiv 2507.07400, abstract): steps-to-execution
# <= 1 in our count (0 = only a tool call in the way, 1 = a parent is running now).
PREFETCH_STEPS = 1
# Cold start of Continuum's tool-duration model: no finished call of this tool yet, so the TTL model
# assumes an exponential with the tool's configured mean, represented by this many equal-mass quantiles.
COLD_START_QUANTILES = 32
# "Not expected": the expected release time of a turn whose tool duration is unknown, and the distance of
# blocks no upcoming turn claims.
FAR = 1 << 62


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
    ttl_ns: list[int] = field(default_factory=list)  # chosen TTLs (utility mode), for tests and reports


def priority_key(cfg: PolicyConfig, orch: Orchestrator | None) -> Callable[[Request], tuple] | None:
    if cfg.scheduling == "fcfs" or orch is None:
        return None
    if cfg.scheduling == "program_fcfs":
        def key(r: Request) -> tuple:
            ret = getattr(orch, "retention", None)
            held = ret is not None and r.program_id is not None and r.program_id in ret.pins
            arrival = orch.programs[r.program_id].arrival_ns if r.program_id else r.arrival_ns
            return (not held, arrival, r.turn_index, r.seq)
        return key
    return lambda r: (orch.programs[r.program_id].service_tokens if r.program_id else 0, r.seq)


@dataclass
class Pin:
    inst: InstanceRuntime
    req: Request
    blocks: list[int]
    deadline_ns: int | None
    arrived: bool = False  # the next turn has arrived: the pin holds until it is admitted


class RetentionPolicy:
    """Retention and prefetch decisions; the engine calls the hooks."""

    def __init__(self, cfg: PolicyConfig, orch: Orchestrator, schedule_timer: Callable[[int, Callable[[], None]], None]
                 ) -> None:
        self.cfg = cfg
        self.orch = orch
        orch.retention = self  # type: ignore[attr-defined]  # the scheduling key asks which programs hold pins
        self.timer = schedule_timer
        self.stats = PolicyStats()
        self.pins: dict[str, Pin] = {}  # program id -> pin
        # invocation distance: program -> (instance of its last turn, finish ns of that turn, tool after it)
        self.last_turn: dict[str, tuple[str, int, str]] = {}
        self._dirty: set[str] = set()
        self._link_free_ns: dict[str, int] = {}  # background prefetch: when each instance's tier link is free
        self.prio: dict[str, dict[int, tuple]] = {}  # instance -> block hash -> (steps, expected ns, position)
        self._order: dict[str, list[tuple[tuple, str]]] = {}  # instance -> upcoming turns, nearest first
        self._prefetched: set[str] = set()  # turns whose reuse prefix a prefetch has loaded (once each)
        # instance -> block hash on the tier link right now -> (transfer start ns, end ns)
        self._inflight: dict[str, dict[int, tuple[int, int]]] = {}
        self._now: dict[str, int] = {}  # instance -> time of its step being planned (set before each step)
        self._tm: dict[str, object] = {}  # instance -> its tier manager (for loads charged at admission)

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
        if self.pins.get(pin.req.program_id) is pin and not pin.arrived:
            self.stats.pins_expired += 1
            self._release(pin)

    def break_one_pin(self, inst: InstanceRuntime, for_program: str | None = None) -> bool:
        """Memory pressure: release one pin (latest deadline first, the requester's own program last)."""
        if not inst.pins:
            return False
        pin = max(inst.pins.values(), key=lambda p: (p.req.program_id != for_program, not p.arrived,
                                                      p.deadline_ns if p.deadline_ns is not None else 1 << 62))
        self.stats.pins_broken += 1
        self._release(pin)
        return True

    def _restore_ns(self, inst: InstanceRuntime, req: Request, cached: list[int]) -> float:
        """Time to get a released context back: a reload when every block has a copy in the first tier
        (write-through), otherwise a recompute of the whole context."""
        tm = inst.tier_manager
        n = len(cached)
        if tm is not None and tm.active and all(tm.tiers[0].contains(tm.key(inst.pool.block_hash[b])) for b in cached):
            return tm.tiers[0].cfg.latency_ns + n * tm.block_bytes / tm.tiers[0].cfg.bw_gbps
        return float(inst.estimate_prefill_ns(req.input_tokens + req.output_tokens))

    # ---- hooks ----
    def on_turn_finish(self, inst: InstanceRuntime, req: Request, blocks: list[int], now: int) -> bool:
        """Called before req's blocks are freed; True when the policy kept them (pinned)."""
        if not req.program_id or not self.orch.children.get(req.request_id):
            return False
        pol = self.cfg.retention
        cached = [b for b in blocks if inst.pool.block_hash[b] is not None]
        if pol == "ttl_pin":
            if self.cfg.ttl_policy == "utility":
                ttl = self._utility_ttl(inst, req, cached, now)
            else:
                gap = self._expected_gap(req, now)
                ttl = int(self.cfg.ttl_ms * 1e6) if gap is not None and gap <= self.cfg.ttl_ms * 1e6 else 0
            if ttl > 0 and cached:
                self._decide(now, req, "pin")
                self._pin(inst, req, cached, now + ttl)
                return True
            self._decide(now, req, "release")
            return False
        if pol == "min_waste":
            return self._min_waste(inst, req, cached, self._expected_gap(req, now), now)
        if pol == "invocation_distance":
            tools = self.orch.next_tools(req.request_id)
            self.last_turn[req.program_id] = (inst.name, now, tools[0] if tools else "")
            self._dirty.add(inst.name)
            self._classify(inst, req, now)
        return False

    def on_turn_arrival(self, inst: InstanceRuntime, req: Request) -> None:
        pin = self.pins.get(req.program_id or "")
        if pin is not None:
            if pin.inst is not inst:
                self._release(pin)  # routed elsewhere: the pin cannot help
            else:
                pin.arrived = True
        if self.cfg.retention == "invocation_distance":
            self._dirty.add(inst.name)

    def on_admit(self, req: Request) -> None:
        """The next turn was scheduled and has taken its prefix blocks: the pin has done its job. A prefix
        still on the tier link (a prefetch that has not landed) is waited for: the part not yet transferred
        is loaded as part of this step, as KVFlow holds a request whose load-back is in progress."""
        pin = self.pins.get(req.program_id or "")
        if pin is not None:
            self.stats.pins_used += 1
            self._release(pin)
        flying = self._inflight.get(req.instance or "")
        if flying and req.hashes:
            now = self._now.get(req.instance, 0)
            rest = 0.0
            for h in req.hashes:
                f = flying.get(h)
                if f is not None:
                    start, done = f
                    rest += min(1.0, max(0.0, (done - now) / max(1, done - start)))
            if rest > 0:
                tm = self._tm[req.instance]
                k = (tm.tiers[0].name, "load", "prefetch")
                tm._moves[k] = tm._moves.get(k, 0) + int(math.ceil(rest))

    # ---- Continuum ----
    def _tool_samples(self, tool: str, now: int) -> list[float]:
        """Durations (ns) of this tool's calls that finished by `now`: its empirical distribution. Cold start:
        quantiles of an exponential with the configured mean (Continuum's fallback)."""
        h = self.orch.tool_history.get(tool)
        if h:
            done = [float(g) for end, g in h[-256:] if end <= now][-64:]
            if done:
                return sorted(done)
        mean = self.orch.tools.mean_ns(tool)
        if mean is None:
            return []
        k = COLD_START_QUANTILES
        return [-mean * math.log(1 - (i + 0.5) / k) for i in range(k)]

    def _utility_ttl(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> int:
        """Continuum's TTL: the tau maximising U(tau) = P(T <= tau) * B - C * E[min(T, tau)], 0 if none is > 0.

        T: the tool call's duration, from the empirical CDF of finished calls of that tool.
        B: what a pin saves the program if the call returns in time: restoring the context (reload or
           prefill) plus the admission wait a released turn meets again (the instance's observed delay).
        C: what the pin costs the others per ns held: its share of the KV pool times the requests
           waiting on the instance (each is held back by that share of memory while it is pinned).
        """
        tools = self.orch.next_tools(req.request_id)
        samples = sorted(s for t in tools for s in self._tool_samples(t, now))
        if not samples or not cached:
            return 0
        benefit = self._restore_ns(inst, req, cached) + inst.queue_delay_ns
        sched = inst.scheduler
        waiting = len(sched.waiting) + len(sched.incoming)
        cost_rate = len(cached) / inst.pool.num_blocks * waiting
        n = len(samples)
        best_u, best_tau = 0.0, 0
        below = 0.0  # sum of samples <= tau
        for i, tau in enumerate(samples):
            below += tau
            p = (i + 1) / n
            expected_hold = (below + (n - i - 1) * tau) / n
            u = p * benefit - cost_rate * expected_hold
            if u > best_u:
                best_u, best_tau = u, int(math.ceil(tau))
        if best_tau:
            self.stats.ttl_ns.append(best_tau)
        return best_tau

    # ---- InferCept ----
    def _min_waste(self, inst: InstanceRuntime, req: Request, cached: list[int], gap: float | None, now: int) -> bool:
        """InferCept's comparison of GPU memory-time wasted by each choice (block-ns).

        preserve: the context's blocks sit idle for the whole interception: C_i x T_INT, with T_INT the
                  running mean of this tool's finished calls (a preserved request resumes at once).
        discard : recomputing the context later holds the memory of everything running for the
                  recompute time: (C_i + C_other) x T_fwd(C_i).
        swap    : pipelined with compute, so the batch does not stall; the context's own blocks stay
                  occupied while they are copied out and back in: C_i x 2 x T_swap(C_i).
        """
        n = len(cached)
        if n == 0:
            self._decide(now, req, "discard")
            return False
        t_int = gap if gap is not None else float(FAR)
        tm = inst.tier_manager
        copied = tm is not None and tm.active and all(tm.tiers[0].contains(tm.key(inst.pool.block_hash[b]))
                                                       for b in cached)
        t_restore = self._restore_ns(inst, req, cached)
        w_preserve = n * t_int
        w_discard = max(1, inst.pool.num_used) * t_restore
        swap_tier = tm.swap_tier() if tm is not None else None
        w_swap = float("inf")
        if swap_tier is not None and not copied:
            nbytes = n * tm.block_bytes
            w_swap = n * 2 * (swap_tier.cfg.latency_ns + nbytes / swap_tier.cfg.bw_gbps)
        choice = min((w_preserve, "preserve"), (w_discard, "discard"), (w_swap, "swap"))[1]
        self._decide(now, req, choice)
        if choice == "preserve":
            # held until the next turn comes back and is admitted (memory pressure may still break it)
            self._pin(inst, req, cached, None)
            return True
        if choice == "swap":
            for b in cached:
                tm._copy_down(inst.pool.block_hash[b], b)
        return False

    # ---- KVFlow / ScaleSim ----
    def _upcoming(self, pid: str, memo: dict[str, int]) -> list[tuple[str, int]]:
        """(turn, steps-to-execution) of the program's turns that have not arrived yet, nearest first, up to
        EVICT_PRIORITY_STEPS steps ahead."""
        orch = self.orch
        prog = orch.programs[pid]
        turns = prog.spec.turns
        out = []
        # the turn released by the last finish (request made, not arrived) comes before next_index
        i = max(0, prog.next_index - 1)
        while i < len(turns):
            tid = turns[i].turn_id
            st = orch.turns[tid]
            i += 1
            if st.finished or (st.request is not None and st.request.status != "pending"):
                continue
            d = orch.steps_to_execution(tid, memo)
            if d > EVICT_PRIORITY_STEPS:
                break
            out.append((tid, d))
        return out

    def _priorities(self, inst: InstanceRuntime, now: int) -> tuple[dict[int, tuple], list[tuple[tuple, str]]]:
        """Block hash -> (steps, expected release ns, chain position) for the programs last served on `inst`,
        and the programs' upcoming turns in priority order."""
        memo: dict[str, int] = {}
        prio: dict[int, tuple] = {}
        order: list[tuple[tuple, str]] = []
        done = []
        for pid, (name, fin, tool) in self.last_turn.items():
            if name != inst.name:
                continue
            if self.orch.programs[pid].turns_left == 0:
                done.append(pid)
                continue
            for tid, d in self._upcoming(pid, memo):
                if d == 0:
                    g = self.orch.expected_gap_ns(tool, now) if tool else None
                    est = fin + int(g) if g is not None else FAR
                else:
                    est = FAR
                key = (d, est)
                order.append((key, tid))
                for j, h in enumerate(self.orch.reuse_hashes(tid)):
                    k = (d, est, j)
                    old = prio.get(h)
                    if old is None or k < old:
                        prio[h] = k
        for pid in done:
            del self.last_turn[pid]
        order.sort()
        return prio, order

    def _classify(self, inst: InstanceRuntime, req: Request, now: int) -> None:
        """Log whether the finished turn's program ranks among the prefetch_lookahead nearest on its instance
        (kept) or behind them (first to be evicted), against the ranking last computed there."""
        g = self._expected_gap(req, now)
        key = (0, now + int(g) if g is not None else FAR)
        rank = sum(1 for k, _ in self._order.get(inst.name, ()) if k < key)
        self._decide(now, req, "keep" if rank < max(1, self.cfg.prefetch_lookahead) else "offload")

    def _reorder(self, inst: InstanceRuntime, prio: dict[int, tuple]) -> None:
        """Evict farthest-first: the cached free blocks of upcoming turns go to the tail of the free queue in
        priority order (nearest last), so unclaimed blocks (finished programs, far agents) go first."""
        pool = inst.pool
        cached = pool.cached
        ref = pool.ref
        mine = []
        for h, k in prio.items():
            b = cached.get(h)
            if b is not None and not ref[b]:
                mine.append((k, b))
        if not mine:
            return
        mine.sort()
        blocks = [b for _, b in mine[: pool.num_blocks]]
        pool.touch(blocks)
        pool.release(blocks)  # release puts blocks[0] (the nearest program's first block) at the very tail

    # ---- Autellix ----
    def _plas_preempt(self, inst: InstanceRuntime) -> None:
        """PLAS preempts: "scheduling algorithms ... that preempt and prioritize LLM calls based on their
        programs' previously completed calls" (Autellix abstract). When the waiting call with the least
        attained service cannot be admitted (no KV room or no seat), running calls of programs with more
        attained service are preempted, most first, until it can. Only where the instance preempts by
        swapping (kv.preemption: swap with a host tier): Autellix swaps preempted calls' KV to host memory
        ("memory-swap optimizations"); a vLLM recompute preemption would redo their whole prefill."""
        sched = inst.scheduler
        key = sched.priority
        if key is None or not sched.swap or not sched.waiting or not sched.running:
            return  # Autellix preempts by swapping to host memory; a recompute preemption is not its policy
        head = min(sched.waiting, key=key)
        if head.swapped_blocks or head.num_computed_tokens:
            return
        pool = inst.pool
        hk = key(head)
        preempted = 0
        while sched.running:
            hits = pool.find_cached_prefix(head)
            in_hbm = len(hits) * pool.block_size
            seats = len(sched.running) < sched.engine.max_num_seqs - len(sched.releasing)
            if seats and pool.can_allocate(head, head.num_tokens - in_hbm, hits, in_hbm):
                break
            victim = max(sched.running, key=key)
            if key(victim) <= hk:
                break
            sync = getattr(sched, "sync", None)
            if sync is not None and not preempted:
                sync()  # a decode run-ahead must write its counters back before a request leaves the batch
            sched.running.remove(victim)
            sched._preempt(victim)
            preempted += 1
        if preempted:
            self._decide(0, head, "preempt")
            self.stats.decisions["preempted"] = self.stats.decisions.get("preempted", 0) + preempted - 1

    def prefetch(self, inst: InstanceRuntime, now: int) -> None:
        """Before an instance's step: PLAS preemption (plas scheduling), re-rank eviction
        (invocation_distance retention) and bring the KV of the turns due within the next step from the tier
        into HBM (invocation_distance prefetch)."""
        self._now[inst.name] = now
        if self.cfg.scheduling == "plas":
            self._plas_preempt(inst)
        if self.cfg.retention != "invocation_distance" and self.cfg.prefetch != "invocation_distance":
            return
        # distances change only when a turn finishes or arrives (expected release times are absolute), so the
        # ranking is redone on those events only
        if inst.name not in self._dirty:
            return
        self._dirty.discard(inst.name)
        prio, order = self._priorities(inst, now)
        self.prio[inst.name] = prio
        self._order[inst.name] = order
        if self.cfg.retention == "invocation_distance":
            self._reorder(inst, prio)
        tm = inst.tier_manager
        if self.cfg.prefetch == "invocation_distance" and tm is not None and tm.active:
            self._load_ahead(inst, now, prio, order)

    def _load_ahead(self, inst: InstanceRuntime, now: int, prio: dict[int, tuple],
                    order: list[tuple[tuple, str]]) -> None:
        """KVFlow's overlapped prefetch: for up to prefetch_lookahead upcoming turns within PREFETCH_STEPS,
        copy the blocks of their reuse prefix that are in the first tier but not in HBM into free HBM blocks
        whose own content is farther away (or none). The copy runs on the tier link in the background (the
        GPU does not wait): the blocks are registered now, held until the transfer ends (nobody evicts
        them), and a turn admitted before then waits for the rest of the copy (see on_admit)."""
        tm = inst.tier_manager
        pool = inst.pool
        tier = tm.tiers[0]
        budget = max(1, self.cfg.prefetch_lookahead)
        # what the nearer turns and the running requests will hold: a prefetch that cannot fit beside them
        # would only evict a nearer turn's KV (KVFlow loads back only into reserved room)
        demand = pool.num_used
        for key, tid in order:
            if key[0] > PREFETCH_STEPS or budget <= 0:
                break
            budget -= 1
            if tid in self._prefetched:
                continue  # one load-back per upcoming turn: if it was evicted again, the turn will miss
            hashes = self.orch.reuse_hashes(tid)
            demand += len(hashes)
            if demand > pool.num_blocks:
                break
            missing = []
            flying = self._inflight.setdefault(inst.name, {})
            for h in hashes:  # the chain prefix must be complete in HBM + tier for the turn to use it
                if h in pool.cached or h in flying:
                    continue
                if not tier.contains(tm.key(h)):
                    break
                missing.append(h)
            if not missing:
                continue
            taken: list[int] = []
            for _ in missing:
                if not pool.num_free:
                    break
                head = next(iter(pool.free_queue))
                hh = pool.block_hash[head]
                if hh is not None and prio.get(hh, (FAR,)) <= key + (0,):
                    break  # only blocks holding nothing, or something needed later than this turn
                b = pool._pop_free()
                pool.ref[b] = 1
                taken.append(b)
            if not taken:
                break
            nbytes = len(taken) * tm.block_bytes
            start = max(now, self._link_free_ns.get(inst.name, 0))
            done = start + tier.cfg.latency_ns + int(math.ceil(nbytes / tier.cfg.bw_gbps))
            self._link_free_ns[inst.name] = done
            landing = missing[: len(taken)]
            self._tm[inst.name] = tm
            for b, h in zip(taken, landing, strict=True):
                tier.touch(tm.key(h))
                pool.block_hash[b] = h
                pool.cached[h] = b
                flying[h] = (start, done)
            tier.stats.loaded_blocks += len(taken)
            tier.stats.loaded_bytes += nbytes
            self._prefetched.add(tid)
            self.stats.prefetches += 1
            self.stats.bytes_prefetched += nbytes
            self.timer(done, lambda p=pool, bs=taken, hs=landing, f=flying: self._land(p, bs, hs, f))

    @staticmethod
    def _land(pool, blocks: list[int], hashes: list[int], flying: dict[int, tuple[int, int]]) -> None:
        """A background prefetch finished: the blocks become ordinary cached KV (at the free tail)."""
        for h in hashes:
            flying.pop(h, None)
        pool.release(blocks)
