"""Machinery the agent policies share: pins and their timers, the statistics, tool-gap estimates, the
invocation-distance priorities, and the do-nothing base of each policy protocol (see registry.py).

Policies see the past and present only: the program structure (which turn follows which, through which
tool), tool durations that have already been observed, attained service, and cluster state. They never see a
pending tool call's duration or a turn's output length (tests hand them workloads where peeking would change
the outcome).
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
    ttl_ns: list[int] = field(default_factory=list)  # chosen TTLs (utility / saga), for tests and reports


@dataclass
class Pin:
    inst: InstanceRuntime
    req: Request
    blocks: list[int]
    deadline_ns: int | None
    arrived: bool = False  # the next turn has arrived: the pin holds until it is admitted


class PolicyContext:
    """State shared by the three policies of a run, and the helpers they call."""

    def __init__(self, cfg: PolicyConfig, orch: Orchestrator, timer: Callable[[int, Callable[[], None]], None]
                 ) -> None:
        self.cfg = cfg
        self.orch = orch
        self.timer = timer
        self.stats = PolicyStats()
        self.pins: dict[str, Pin] = {}  # program id -> pin
        # invocation distance: program -> (instance of its last turn, finish ns of that turn, tool after it)
        self.last_turn: dict[str, tuple[str, int, str]] = {}
        self.dirty: set[str] = set()  # instances whose ranking must be redone before their next step
        self.link_free_ns: dict[str, int] = {}  # background prefetch: when each instance's tier link is free
        self.prio: dict[str, dict[int, tuple]] = {}  # instance -> block hash -> (steps, expected ns, position)
        self.order: dict[str, list[tuple[tuple, str]]] = {}  # instance -> upcoming turns, nearest first
        self.prefetched: set[str] = set()  # turns whose reuse prefix a prefetch has loaded (once each)
        # instance -> block hash on the tier link right now -> (transfer start ns, end ns)
        self.inflight: dict[str, dict[int, tuple[int, int]]] = {}
        self.now: dict[str, int] = {}  # instance -> time of its step being planned (set before each step)
        # the instances that take new programs (set by the engine): a program not yet served anywhere is known to
        # go to an instance only when that instance is the only one
        self.entry_instances: list[str] = []
        self.tm: dict[str, object] = {}  # instance -> its tier manager (for loads charged at admission)

    # ---- tool gaps ----
    def expected_gap(self, req: Request, now: int) -> float | None:
        """The longest running-mean duration of the tools after `req` (None: no tool, or none observed)."""
        tools = self.orch.next_tools(req.request_id)
        if not tools:
            return None
        gaps = [self.orch.expected_gap_ns(t, now) for t in tools]
        known = [g for g in gaps if g is not None]
        return max(known) if known else None

    def tool_samples(self, tool: str, now: int) -> list[float]:
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

    # ---- decisions and pins ----
    def decide(self, now: int, req: Request, what: str) -> None:
        self.stats.decisions[what] = self.stats.decisions.get(what, 0) + 1
        self.stats.log.append((now, req.request_id, what))

    def pin(self, inst: InstanceRuntime, req: Request, blocks: list[int], deadline: int | None) -> None:
        """Hold `blocks` for req's program until `deadline` (None: until the next turn is admitted)."""
        pool = inst.pool
        pool.touch(blocks)
        pin = Pin(inst, req, blocks, deadline)
        self.pins[req.program_id] = pin
        inst.pins[req.program_id] = pin
        self.stats.pins_created += 1
        if deadline is not None:
            self.timer(deadline, lambda p=pin: self.expire(p))

    def release(self, pin: Pin) -> None:
        pin.inst.pool.release(pin.blocks)
        self.pins.pop(pin.req.program_id, None)
        pin.inst.pins.pop(pin.req.program_id, None)

    def expire(self, pin: Pin) -> None:
        if self.pins.get(pin.req.program_id) is pin and not pin.arrived:
            self.stats.pins_expired += 1
            self.release(pin)

    def break_one_pin(self, inst: InstanceRuntime, for_program: str | None = None) -> bool:
        """Memory pressure: release one pin (latest deadline first, the requester's own program last)."""
        if not inst.pins:
            return False
        pin = max(inst.pins.values(), key=lambda p: (p.req.program_id != for_program, not p.arrived,
                                                      p.deadline_ns if p.deadline_ns is not None else 1 << 62))
        self.stats.pins_broken += 1
        self.release(pin)
        return True

    def restore_ns(self, inst: InstanceRuntime, req: Request, cached: list[int]) -> float:
        """Time to get a released context back: a reload when every block has a copy in the first tier
        (write-through), otherwise a recompute of the whole context."""
        tm = inst.tier_manager
        n = len(cached)
        if tm is not None and tm.active and all(tm.tiers[0].contains(tm.key(inst.pool.block_hash[b])) for b in cached):
            return tm.tiers[0].cfg.latency_ns + n * tm.block_bytes / tm.tiers[0].cfg.bw_gbps
        return float(inst.estimate_prefill_ns(req.input_tokens + req.output_tokens))

    # ---- invocation distance (KVFlow / ScaleSim) ----
    def upcoming(self, pid: str, memo: dict[str, int]) -> list[tuple[str, int]]:
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

    def priorities(self, inst: InstanceRuntime, now: int) -> tuple[dict[int, tuple], list[tuple[tuple, str]]]:
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
            for tid, d in self.upcoming(pid, memo):
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


# ---- the protocols' do-nothing defaults ----
class SchedulingPolicy:
    """Waiting order and preemption. `key()` None keeps the scheduler's arrival order (vLLM)."""

    name = ""

    def __init__(self, cfg: PolicyConfig, orch: Orchestrator) -> None:
        self.cfg = cfg
        self.orch = orch

    def key(self) -> Callable[[Request], tuple] | None:
        return None

    def before_step(self, ctx: PolicyContext, inst: InstanceRuntime) -> None:
        pass


class RetentionPolicyBase:
    """What happens to a finished turn's KV while its program is in a tool call (default: nothing kept)."""

    name = ""
    ranks = False  # wants the invocation-distance ranking redone before an instance's step

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.orch = ctx.orch

    def on_turn_finish(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> bool:
        return False

    def on_turn_arrival(self, inst: InstanceRuntime, req: Request) -> None:
        pass

    def after_ranking(self, inst: InstanceRuntime, prio: dict[int, tuple]) -> None:
        pass


class PrefetchPolicy:
    """Loading KV back from the tier ahead of need (default: none)."""

    name = ""
    ranks = False

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.orch = ctx.orch

    def after_ranking(self, inst: InstanceRuntime, now: int, prio: dict[int, tuple],
                      order: list[tuple[tuple, str]]) -> None:
        pass

    def on_admit(self, req: Request) -> None:
        pass
