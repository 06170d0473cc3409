"""The discrete-event loop over the whole cluster, in integer nanoseconds.

Events: request arrivals and iteration completions per instance. All events
at one instant are applied before idle instances start their next iteration,
so requests arriving together are batched together. Nothing waits on a wall
clock: the clock jumps from event to event.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from astra_bridge.backend import Backend
from frontend.cluster import Cluster
from frontend.config.loader import ResolvedRun
from frontend.errors import InternalError
from frontend.instance.runtime import InstanceRuntime, StepOutcome
from frontend.metrics.collector import IterationLog, RequestLog
from frontend.router import Router
from frontend.workload.request import Request

ITER_DONE = 0
ARRIVAL = 1
TIMER = 2
# Event order at one instant is (kind, seq). Requests of the workload get seq = their index; everything pushed
# while running (iteration ends, timers, agent turns released later) gets seq above them, so workload requests
# can be fed lazily, one ahead of the clock, in the same order an up-front heap would give.
LATER_SEQ = 1 << 62
MAX_TIME_NS = 10**18  # simulated time stays far from int64 wrap-around (2^63 ns)


@dataclass
class RunResult:
    requests: list[Request]  # every request, in the order they left the system (empty when not kept)
    iterations: IterationLog
    request_log: RequestLog
    sim_end_ns: int
    wall_s: float
    instances: list[InstanceRuntime]
    backend_stats: dict[str, int] = field(default_factory=dict)
    router: Router | None = None
    notes: list[str] = field(default_factory=list)
    orchestrator: object | None = None
    retention: object | None = None
    info: dict = field(default_factory=dict)  # what ran: resolved config, backend, compute model, bundles
    pd: object | None = None  # the prefill/decode coordinator (frontend/pd.py), when instances have roles


class Engine:
    def __init__(self, run: ResolvedRun, instances: list[InstanceRuntime], backend: Backend,
                 progress: Callable[[int, int, int], None] | None = None,
                 on_step: Callable[[InstanceRuntime, StepOutcome, int], None] | None = None,
                 orchestrator=None, keep_records: bool = True, run_ahead: bool = True) -> None:
        self.run_cfg = run
        self.instances = instances
        self.backend = backend
        self.cluster = Cluster(instances, backend, run.config.backend.system, run.config, self.schedule_timer)
        self.units = self.cluster.units
        self.router = Router(run.config.router, self.cluster.entry)
        self.orch = orchestrator
        self.retention = None
        self._events: list[tuple[int, int, int, object]] = []
        self._seq = LATER_SEQ
        if orchestrator is not None:
            from frontend.policies import RetentionPolicy, priority_key

            pol = run.config.policy
            self.retention = RetentionPolicy(pol, orchestrator, self.schedule_timer)
            self.retention.ctx.entry_instances = [i.name for i in self.cluster.entry]
            key = priority_key(pol, orchestrator)
            for inst in instances:
                inst.scheduler.priority = key
                inst.scheduler.on_admit = self.retention.on_admit
                if pol.retention != "lru":
                    # the policy may take extra references before the scheduler frees a finished turn's blocks
                    inst.scheduler.before_free = (
                        lambda r, now, i=inst: self.retention.on_turn_finish(i, r, r.block_ids, now))
                    # one pin per call: the scheduler retries until the allocation fits or no pin is left
                    inst.scheduler.on_pressure = lambda need, i=inst: self.retention.break_one_pin(i)
        # decode run-ahead (Scheduler): steps of an unchanged decode batch are planned and completed without
        # the general path; only for backends whose timing of a graph depends on nothing but the graph and
        # the start time, which they declare with `runahead_safe`
        self.run_ahead = run_ahead and bool(getattr(backend, "runahead_safe", False))
        for inst in instances:
            # a speculative step emits a random number of tokens: decode runs (one token a step) do not apply
            ahead = self.run_ahead and not inst.scheduler.spec_k
            inst.scheduler.run_ahead = ahead
            inst.run_ahead = ahead
        self.progress = progress
        self.on_step = on_step
        tiers = sorted({t.name for i in instances for t in i.lower_tiers})
        self.log = IterationLog(tier_names=tiers, keep=keep_records,
                                power_columns=any(i.power.has_states or i.pim is not None for i in instances))
        self.request_log = RequestLog(tier_names=tiers, keep=keep_records)

    def _bad_duration(self, inst: InstanceRuntime, now: int, d: object) -> None:
        msg = (f"{inst.name}: the iteration starting at {now} ns lasts {d!r} ns, which is not a positive number of "
               f"nanoseconds ending within the simulable {MAX_TIME_NS:.0e} ns")
        if self.run_cfg.config.backend.kind == "astra-sim":
            from astra_bridge.astrasim import AstraSimError

            raise AstraSimError(f"implausible answer: {msg}")
        if isinstance(d, int) and d > 0:  # finite but astronomically long: the catalog numbers are extreme
            from frontend.errors import ConfigError

            hw = inst.inst.hardware.name
            raise ConfigError(f"{msg}; check hardware {hw}'s peak_tflops, efficiency and bandwidths and the network's "
                              "bw_gbps / latency_ns")
        raise InternalError(msg)

    def schedule_timer(self, t: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, TIMER, self._seq, fn))
        self._seq += 1

    def run(self, requests: Iterable[Request], total: int | None = None) -> RunResult:
        """Simulate `requests` (any iterable in arrival order: a generator is consumed lazily, one request
        ahead of the clock). `total` is the number of workload requests, for progress reports."""
        t0 = time.perf_counter()
        events = self._events
        log = self.request_log
        src = iter(requests)
        fed = 0
        last_arrival = 0
        if self.orch is not None:  # agent programs: every initial turn goes in up front, in list order
            initial = [*src, *self.orch.initial()]
            src = iter(())
            for i, r in enumerate(initial):
                events.append((r.arrival_ns, ARRIVAL, i, r))
            fed = len(initial)
            heapq.heapify(events)
            if total is None:
                total = sum(1 for r in initial if not r.program_id) + self.orch.num_turns

        def feed() -> None:
            nonlocal fed, last_arrival
            r = next(src, None)
            if r is None:
                return
            if r.arrival_ns < last_arrival:
                raise InternalError(f"workload requests out of arrival order at {r.request_id}")
            last_arrival = r.arrival_ns
            heapq.heappush(events, (r.arrival_ns, ARRIVAL, fed, r))
            fed += 1

        feed()
        inflight: dict[str, list[tuple[InstanceRuntime, StepOutcome]]] = {}
        by_name = {u.name: u for u in self.units}
        done = 0
        now = 0
        last_report = 0.0
        step_starts = self.cluster.watches_step_starts
        net = self.cluster.network  # messages between instances: handled in bulk between the engine's events
        while True:
            if net is not None:
                net.catch_up(events[0][0] if events else None)
            if not events:
                break
            now = events[0][0]
            touched: list = []  # units (frontend/cluster.py) whose next step may start now
            while events and events[0][0] == now:
                _, kind, seq, payload = heapq.heappop(events)
                if kind == TIMER:
                    woken = payload()  # type: ignore[operator]
                    if woken is not None:  # an instance the timer gave work (a KV transfer ended)
                        touched.append(woken.unit)
                    continue
                if kind == ARRIVAL:
                    req = payload  # type: ignore[assignment]
                    if seq < LATER_SEQ:
                        feed()
                    self.cluster.before_route(req)
                    chosen = self.router.choose(req, now)
                    if chosen is None:  # a model nobody serves
                        req.status = "rejected"
                        req.reject_reason = self.router.unserved_reason(req)
                        log.add(req)
                        done += 1
                        continue
                    inst = self.cluster.route_new(req, chosen)
                    reason = self.cluster.rejection_reason(req, inst)
                    if reason:
                        req.status = "rejected"
                        req.reject_reason = reason
                        req.instance = inst.name
                        log.add(req)
                        done += 1
                        continue
                    if self.retention is not None and req.program_id:
                        self.retention.on_turn_arrival(inst, req)
                    inst.receive(req, now)
                    touched.append(inst.unit)
                else:
                    unit = by_name[payload]  # type: ignore[index]
                    for inst, out in inflight.pop(unit.name):
                        finished = inst.scheduler.complete(out.plan, now)
                        done += len(finished)
                        for r in finished:
                            log.add(r)
                        if self.orch is not None:
                            for r in finished:
                                if r.program_id:
                                    for child in self.orch.on_finish(r, now):
                                        fed += 1
                                        heapq.heappush(events, (child.arrival_ns, ARRIVAL, self._seq, child))
                                        self._seq += 1
                        inst.busy = False
                        for w in self.cluster.after_complete(inst, now):
                            touched.append(w.unit)
                    unit.busy = False
                    touched.append(unit)
            for unit in touched:
                if unit.busy:
                    continue
                if self.retention is not None:
                    for inst in unit.members:
                        self.retention.prefetch(inst, now)
                outs = unit.step(now)
                if outs is None:
                    continue
                end = 0
                for inst, out in outs:
                    if type(out.duration_ns) is not int or not 0 < out.duration_ns <= MAX_TIME_NS - now:
                        self._bad_duration(inst, now, out.duration_ns)
                    inst.busy = True
                    plan = out.plan
                    if plan.first_admitted < len(plan.requests):
                        for r in plan.requests[plan.first_admitted:]:
                            if r.scheduled_ns < 0:
                                r.scheduled_ns = now
                                inst.queue_delay_ns = 0.9 * inst.queue_delay_ns + 0.1 * (now - r.arrival_ns)
                    end = now + out.duration_ns
                    self.log.add(inst, now, end, out)
                    if step_starts:
                        self.cluster.on_step_start(inst, out, now)
                    if self.on_step is not None:
                        self.on_step(inst, out, now)
                unit.busy = True
                inflight[unit.name] = outs
                heapq.heappush(events, (end, ITER_DONE, self._seq, unit.name))
                self._seq += 1
            if self.progress is not None:
                w = time.perf_counter()
                if w - last_report > 0.1:
                    last_report = w
                    self.progress(now, done, total if total is not None else fed)
        if self.progress is not None:
            self.progress(now, done, total if total is not None else fed)
        for inst in self.instances:
            inst.power.finish(now)
        if log.total != fed or inflight:
            stuck = [r.request_id for i in self.instances for r in (*i.scheduler.running, *i.scheduler.waiting)]
            raise InternalError(f"{fed - log.total} of {fed} requests neither finished nor rejected when the event "
                                f"queue ran dry (first: {stuck[0] if stuck else '?'})")
        return RunResult(requests=log.requests, iterations=self.log, request_log=log, sim_end_ns=now,
                         wall_s=time.perf_counter() - t0, instances=self.instances,
                         backend_stats={**self.backend.stats(),
                                        "closed_form": sum(i.closed_form_steps for i in self.instances)},
                         router=self.router, pd=self.cluster.pd)
