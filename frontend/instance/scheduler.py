"""Continuous batching with vLLM v1 semantics.

Per step: a token budget of max_num_batched_tokens. Running requests go first
in their order, each asking for all its outstanding tokens (1 in decode, the
rest of its prompt in chunked prefill) capped by the remaining budget; when KV
blocks run out the newest running request is preempted (its blocks freed, it
goes back to the front of the waiting queue and will recompute). If nothing
was preempted, waiting requests are admitted in FCFS order while budget,
max_num_seqs and blocks allow, reusing their longest cached prefix; with
scheduler_reserve_full_isl (vLLM's default since 0.11) a request is admitted
only when blocks for its whole remaining prompt are free, so chunked prefills
of admitted requests do not preempt each other.

With async scheduling (on by default in vLLM 0.19, as the reference runs' resolved config records)
the engine core schedules step N+2 when step N ends, while step N+1 already runs on the
GPU. The scheduler here plans each step when the previous one ends, which gives the same batches
for the running requests (vLLM advances them optimistically); what differs is when finished
requests give their seat and KV blocks back: only after the step that follows their last one has
been scheduled. `complete()` therefore holds finished requests in `releasing` and `schedule()`
frees them once it has planned the next step; new requests arriving during a step wait in
`incoming` until the step after the next has been planned (`receive`, `take_incoming`).

Decode run-ahead (`run_ahead`): while every running request is decoding and nobody can be admitted,
consecutive steps differ only in context lengths and in a few events known in advance: a request needs
a new KV block (every block_size steps), fills a block the prefix cache registers, or emits its last
token. A `DecodeRun` keeps those events in per-step buckets and plans and completes each step touching
only them: the requests' token counters are advanced lazily (all by the same number of steps) and the
pool sees the same allocations, registrations and releases in the same order as the general path. The
run ends, and the general path takes over, when the waiting queue could admit someone or a block
allocation would not fit. The plans, and so everything timed and logged from them, are the ones the
general path gives (tests/test_runahead.py compares whole runs).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from frontend.config.schema import EngineConfig
from frontend.instance.kv import BlockPool
from frontend.instance.plan import IterationPlan
from frontend.workload.request import Request


@dataclass(slots=True)
class DecodeRun:
    """The running requests' decode steps from the start of a run (see the module docstring). Every running
    request's num_computed_tokens / num_output_done hold their values at the start until `done` is added."""

    # id(request) -> its place in the running order at the start, when a bucket can mix requests out of that
    # order; None when every bucket holds its requests in running order (see _start_run)
    order: dict[int, int] | None
    alloc: dict[int, list[Request]]  # step -> requests that need a new KV block when the step is planned
    fill: dict[int, list[Request]]  # step -> requests whose completion fills a block the cache may register
    finish: dict[int, list[Request]]  # step -> requests that emit their last token in it
    last: int  # the last step the run may plan (max_model_len)
    done: int = 0  # steps completed (the lag of the running requests' counters)


class Scheduler:
    def __init__(self, name: str, engine: EngineConfig, pool: BlockPool, max_model_len: int,
                 priority: Callable[[Request], tuple] | None = None, run_ahead: bool = False) -> None:
        self.name = name
        self.engine = engine
        self.pool = pool
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.priority = priority  # None = FCFS by arrival; else waiting queue ordered by this key
        self.num_preemptions = 0
        self.tiers = None  # TierManager when the instance has lower KV tiers
        self.swap = False  # preempt by swapping to host DRAM instead of recomputing
        # retention hooks (agent policies): before a finished request's blocks are freed / after
        self.before_free: Callable[[Request, int], None] | None = None
        self.after_free: Callable[[], None] | None = None
        self.on_pressure: Callable[[int], bool] | None = None  # free pinned blocks; True if any were
        self.on_admit: Callable[[Request], None] | None = None  # a waiting request was just admitted
        self.async_scheduling = engine.async_scheduling
        self.releasing: list[Request] = []  # finished, seat and blocks not yet given back (async scheduling)
        self.incoming: list[Request] = []  # arrived during the running step, not yet queued (async scheduling)
        self.run_ahead = run_ahead
        self._run: DecodeRun | None = None
        # prefill/decode disaggregation (frontend/pd.py): prefilled requests leaving this (prefill) instance,
        # requests holding blocks here while their KV arrives, those whose KV has arrived, and the hook told
        # when a remote-KV request got its blocks (it starts the transfer)
        self.handed_off: list[Request] = []
        self.awaiting_kv: list[Request] = []
        self.kv_ready: list[Request] = []
        self.on_remote_admit: Callable[[Request, int], None] | None = None
        self.now_ns = 0  # the time of the step being planned (set by the instance runtime)
        # speculative decoding: a decode step verifies K draft tokens in a pass of width K + 1 and keeps the
        # accepted prefix plus one token (engine.speculative_*); width 1 is plain decoding
        self.spec_k = engine.speculative_tokens
        self.width = 1 + self.spec_k
        a = engine.speculative_acceptance
        self.spec_accept = list(a) if isinstance(a, list) else [a] * self.spec_k  # per draft position
        self.spec_accept_by_request: dict[str, float] = {}  # speculative_acceptance_trace
        self.spec_rng = random.Random(f"{name}:speculative")  # reseeded by the runtime with the run's seed
        self.spec_steps = 0  # decode-sequence verify passes
        self.max_loras = 0  # LoRA: at most this many distinct adapters in a batch (0: no limit; frontend/instance/lora.py)
        self.spec_tokens = 0  # tokens they emitted

    # ---- admission ----
    def rejection_reason(self, req: Request) -> str:
        if req.output_tokens < 1:
            return "a request must generate at least one token"
        total = req.input_tokens + req.output_tokens
        if total > self.max_model_len:
            return f"prompt+output {total} tokens exceed max_model_len {self.max_model_len}"
        blocks = -(-total // self.pool.block_size)
        if blocks > self.pool.num_blocks:
            return f"needs {blocks} KV blocks but the instance has {self.pool.num_blocks}"
        return ""

    def add(self, req: Request) -> None:
        req.instance = self.name
        req.status = "waiting"
        self.waiting.append(req)  # schedule() orders the queue by priority before admitting

    def receive(self, req: Request, now_ns: int, busy: bool) -> None:
        """A request reaches the engine core. An idle engine queues it at once. With async scheduling a busy
        engine core reads its input queue only when the running step ends, and by then it has already planned
        the step after (it plans one ahead): the request is queued at that step boundary and joins the batch
        one step later. Without async scheduling it joins the next step. Source: vLLM v1's EngineCore busy
        loop and its batch queue (`step_with_batch_queue`, two batches in flight under async scheduling)."""
        if busy and self.async_scheduling:
            self.incoming.append(req)
            return
        req.queued_ns = now_ns
        self.add(req)

    def take_incoming(self, now_ns: int) -> bool:
        """Queue the requests that arrived during the step that just ended (after the next step is planned)."""
        if not self.incoming:
            return False
        for req in self.incoming:
            req.queued_ns = now_ns
            self.add(req)
        self.incoming = []
        return True

    def _resort(self) -> None:
        if self.priority is not None and len(self.waiting) > 1:
            self.waiting = deque(sorted(self.waiting, key=self.priority))

    def _victim(self) -> Request:
        if self.priority is None:
            return self.running.pop()  # vLLM: the newest running request
        v = max(self.running, key=self.priority)
        self.running.remove(v)
        return v

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def load(self) -> float:
        """Queue and KV pressure, for routers."""
        return len(self.running) + len(self.waiting) + len(self.incoming) + self.pool.usage()

    # ---- one step ----
    def _preempt(self, victim: Request) -> None:
        swapped = self.swap and self.tiers is not None and self.tiers.swap_out(victim)
        self.pool.free(victim)
        if not swapped:
            victim.num_computed_tokens = 0
        victim.preemptions += 1
        victim.status = "waiting"
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    def kv_arrived(self, req: Request) -> None:
        """The prompt's KV of a remote-KV request is in this instance's blocks: it joins the running batch at the
        next schedule and computes its last prompt token there, which samples its first token (vLLM's decode
        side recomputes the last prompt token: the prefill side's logits are not transferred)."""
        self.awaiting_kv.remove(req)
        self.kv_ready.append(req)

    def _take_kv_ready(self) -> None:
        self.sync()  # a decode run ends: the running batch changes
        for req in self.kv_ready:
            req.remote_kv = False
            req.num_computed_tokens = req.input_tokens - 1
            req.status = "running"
            self.running.append(req)
        self.kv_ready = []

    def schedule(self) -> IterationPlan | None:
        if self.kv_ready:
            self._take_kv_ready()
        run = self._run
        if run is not None:
            plan = self._run_step(run)
            if plan is not None:
                return plan
        plan = self._schedule()
        if self.releasing:
            self._release(self.releasing)
            self.releasing = []
            if plan is None and self.waiting:
                plan = self._schedule()  # nothing was in flight: the engine core loops again at once
        while plan is None and self.running:
            # with a priority order the preemption victim can be the first running request itself: nothing was
            # planned, yet the others still run; vLLM's engine core simply steps again (never under FCFS, whose
            # victim is the newest: nobody would be left behind it)
            plan = self._schedule()
        return plan

    def sync(self) -> None:
        """Bring the running requests' token counters up to date and end the decode run, if any."""
        run = self._run
        if run is not None:
            self._run = None
            k = run.done
            if k:
                for r in self.running:
                    r.num_computed_tokens += k
                    r.num_output_done += k

    def _by_order(self, run: DecodeRun, reqs: list[Request]) -> list[Request]:
        """A bucket's requests still running, in running order (the order the general path visits them)."""
        live = [r for r in reqs if r.status == "running"]
        order = run.order
        if order is not None and len(live) > 1:
            live.sort(key=lambda r: order[id(r)])
        return live

    def _run_step(self, run: DecodeRun) -> IterationPlan | None:
        """The next step of a decode run, or None (and the run ends) when the general path must plan it.

        The general path would walk the running requests (each decodes one token, taking a block when its
        context reaches the end of its blocks), then, with nobody preempted, order the waiting queue and admit
        from it while budget, seats and blocks allow. Here the walk touches only the requests that need a
        block (when every allocation fits, so nobody is preempted; else the general path plans the step);
        the admission is the general path's own: when it could admit someone the run ends first (counters
        caught up) and the step completes through the general path."""
        j = run.done + 1
        running = self.running
        n = len(running)
        if j > run.last or not n:
            self.sync()
            return None
        pool = self.pool
        allocs = run.alloc.pop(j, None)
        if allocs:
            allocs = self._by_order(run, allocs)
            if len(allocs) > pool.num_free:
                self.sync()
                return None
        k = run.done
        if allocs:
            later = run.alloc.setdefault(j + pool.block_size, [])
            for r in allocs:
                if not pool.allocate(r, 1, None, r.num_computed_tokens + k):
                    raise AssertionError("a decode run's block allocation failed after the free-block check")
                later.append(r)
        plan = IterationPlan(self.name, list(running), [1] * n, [r.num_computed_tokens + k for r in running],
                             num_decode_tokens=n, num_sampled=n, first_admitted=n, steady_decode=True,
                             run_ahead=True)
        eng = self.engine
        budget = eng.max_num_batched_tokens - n
        self._resort()
        if self.waiting and budget > 0 and n < eng.max_num_seqs - len(self.releasing) and not self._head_blocked():
            self.sync()  # someone may be admitted: the run ends before the general admission
            plan.run_ahead = False
            self._admit(plan, budget)
            plan.steady_decode = len(plan.requests) == n
        if self.tiers is not None:
            plan.kv_moves = self.tiers.take_moves()
        if self.releasing:  # as schedule() does after planning
            self._release(self.releasing)
            self.releasing = []
        return plan

    def _run_complete(self, run: DecodeRun, end_ns: int) -> list[Request]:
        """Complete a decode run's step: register newly full blocks and finish requests in plan order."""
        j = run.done = run.done + 1
        fills = run.fill.pop(j, None)
        if fills:
            pool = self.pool
            bs = pool.block_size
            fills = self._by_order(run, fills)
            for r in fills:
                c = r.num_computed_tokens + j
                if r.hashes and c // bs > r.num_hashed_blocks:
                    pool.cache_full_blocks(r, c)
            run.fill.setdefault(j + bs, []).extend(fills)
        finished = run.finish.pop(j, None)
        if not finished:
            return []
        for r in finished:  # in running order: bucketed in that order at the start and never moved
            r.num_computed_tokens += j
            r.num_output_done += j
            r.status = "finished"
            r.finish_ns = end_ns
        self._retire(finished)
        return finished

    def _retire(self, finished: list[Request]) -> None:
        """Finished requests leave the running list; their seats and blocks free now, or after the next
        schedule under async scheduling (vLLM frees them when the step's output is processed)."""
        done = set(map(id, finished))
        self.running = [r for r in self.running if id(r) not in done]
        if self.async_scheduling:
            self.releasing.extend(finished)
        else:
            self._release(finished)

    def _start_run(self) -> None:
        """Start a decode run when every running request is decoding (admission is checked at each step)."""
        running = self.running
        if not running:
            return
        bs = self.pool.block_size
        max_len = self.max_model_len
        alloc: dict[int, list[Request]] = {}
        fill: dict[int, list[Request]] = {}
        finish: dict[int, list[Request]] = {}
        last = 1 << 62
        late = False
        for r in running:
            c = r.num_computed_tokens
            d = r.num_output_done
            if not d or c + 1 != r.input_tokens + d:
                return  # not decoding (a prefill chunk, or a recompute after preemption, is pending)
            # step j of the run decodes at context c + j - 1 (it must fit max_model_len; at the end of the held
            # blocks it takes a new one), leaves c + j tokens computed (a multiple of block_size fills a block)
            # and emits token d + j (the last one finishes the request)
            last = min(last, max_len - c)
            a = len(r.block_ids) * bs - c + 1
            late |= a > bs
            alloc.setdefault(a, []).append(r)
            if r.hashes and len(r.hashes) > r.num_hashed_blocks:  # else no registration can happen
                fill.setdefault(bs - c % bs, []).append(r)
            finish.setdefault(r.output_tokens - d, []).append(r)
        if last < 1:
            return
        # Buckets are filled here in running order, and a bucket processed at step j is appended, in that order,
        # to the bucket at j + block_size, which nothing else feeds once the first allocation and fill steps are
        # all within 1..block_size (fills always are): then every bucket stays in running order. A request
        # holding a spare empty block starts later, and its bucket may mix with re-queued ones: sort those.
        order = {id(r): i for i, r in enumerate(running)} if late else None
        self._run = DecodeRun(order, alloc, fill, finish, last)

    def _release(self, finished: list[Request]) -> None:
        for r in finished:
            if self.before_free is not None:
                self.before_free(r, r.finish_ns)
            self.pool.free(r)
        if self.after_free is not None:
            self.after_free()

    def _head_prefix(self, req: Request) -> tuple[list[int], int, int]:
        """(prefix-cache hit blocks, tokens already in HBM, tokens still to place) of a waiting request."""
        pool = self.pool
        hits: list[int] = []
        if not req.swapped_blocks and req.num_computed_tokens == 0:
            hits = pool.find_cached_prefix(req)
        saved = req.num_computed_tokens  # > 0 only for a swapped-out request
        in_hbm = len(hits) * pool.block_size if hits else saved
        # blocks are counted from what is already in HBM: hits, or the swapped KV to bring back;
        # lower-tier hits and this step's tokens need fresh blocks alike, so the full-prompt
        # gate does not depend on where the rest comes from
        return hits, in_hbm, req.num_tokens - in_hbm

    def _head_blocked(self) -> bool:
        """Whether the admission loop, started now with requests running, would stop at its first gate: the
        queue head's whole remaining prompt does not fit the free blocks (scheduler_reserve_full_isl). The
        check has no side effects (the head's block hashes are computed once, as the loop computes them)."""
        if not self.engine.scheduler_reserve_full_isl or not self.running:
            return False
        req = self.waiting[0]
        hits, in_hbm, rest = self._head_prefix(req)
        return not self.pool.can_allocate(req, rest, hits, in_hbm)

    def _admit(self, plan: IterationPlan, budget: int) -> None:
        """Admit waiting requests into `plan` while budget, seats and blocks allow (nobody was preempted)."""
        eng = self.engine
        pool = self.pool
        running = self.running
        self._resort()
        waiting = self.waiting
        seats = eng.max_num_seqs - len(self.releasing)
        lora_limit = self.max_loras
        skipped: list[Request] = []
        if lora_limit:
            adapters = {r.lora for r in plan.requests if r.lora is not None and r.lora >= 0}
        while waiting and budget > 0 and len(running) < seats:
            req = waiting[0]
            if lora_limit and req.lora is not None and req.lora >= 0 and req.lora not in adapters:
                if len(adapters) >= lora_limit:  # one adapter too many for this batch: skip it, the queue goes on
                    skipped.append(waiting.popleft())
                    continue
                adapters.add(req.lora)
            lower: list = []
            hits, in_hbm, rest = self._head_prefix(req)
            saved = req.num_computed_tokens  # > 0 only for a swapped-out request
            if eng.scheduler_reserve_full_isl and not pool.can_allocate(req, rest, hits, in_hbm):
                if not running and self.on_pressure is not None and self.on_pressure(
                        pool.blocks_needed(req, rest, len(hits), in_hbm)):
                    continue  # pinned KV of idle programs yielded to a request that could not otherwise run
                break  # the whole remaining prompt must fit before any chunk of it is admitted
            if not req.swapped_blocks and saved == 0 and self.tiers is not None and self.tiers.active:
                limit = (req.num_tokens - 1) // pool.block_size
                lower = self.tiers.lookup(req, len(hits), limit)
            num_lower = sum(n for _, n in lower) * pool.block_size
            num_computed = in_hbm + num_lower
            num_new = req.num_tokens - num_computed
            if not eng.enable_chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            if req.remote_kv:  # blocks for the whole prompt now; its KV arrives from the prefill instance
                if not pool.allocate(req, rest, hits, in_hbm):
                    break
                waiting.popleft()
                pool.count_lookup(req, len(hits))
                req.cached_tokens = in_hbm
                if hits:
                    req.cached_tokens_by_tier["hbm"] = in_hbm
                req.status = "awaiting_kv"
                self.awaiting_kv.append(req)
                if self.on_remote_admit is not None:
                    self.on_remote_admit(req, in_hbm)
                continue
            if req.swapped_blocks:  # swapped KV needs its blocks back too
                ok = pool.allocate(req, in_hbm + num_new, computed=0)
            else:
                ok = pool.allocate(req, num_lower + num_new, hits, in_hbm)
            if not ok:
                if not running and self.on_pressure is not None and self.on_pressure(
                        pool.blocks_needed(req, num_lower + num_new, len(hits), in_hbm)):
                    continue
                break
            waiting.popleft()
            pool.count_lookup(req, len(hits))
            if req.swapped_blocks and not self.tiers.swap_in(req):
                num_computed = 0  # the host copy was evicted meanwhile: recompute from scratch
                num_new = min(req.num_tokens, budget)
            if lower:
                self.tiers.reload(lower)
            if self.on_admit is not None:
                self.on_admit(req)
            if req.preemptions == 0:
                req.cached_tokens = num_computed
                if hits:
                    req.cached_tokens_by_tier["hbm"] = len(hits) * pool.block_size
                for tier, n in lower:
                    req.cached_tokens_by_tier[tier.name] = req.cached_tokens_by_tier.get(tier.name, 0) + \
                        n * pool.block_size
            req.num_computed_tokens = num_computed
            req.status = "running"
            running.append(req)
            plan.requests.append(req)
            plan.num_new_tokens.append(num_new)
            plan.contexts.append(num_computed)
            plan.num_prefill_tokens += num_new
            if num_computed + num_new >= req.num_tokens:
                plan.num_sampled += 1
            budget -= num_new
        if skipped:
            waiting.extendleft(reversed(skipped))

    def _schedule(self) -> IterationPlan | None:
        eng = self.engine
        budget = eng.max_num_batched_tokens
        plan = IterationPlan(self.name, [], [], [])
        pool = self.pool
        i = 0
        running = self.running
        bs = pool.block_size
        max_len = self.max_model_len
        add_req, add_new, add_ctx = plan.requests.append, plan.num_new_tokens.append, plan.contexts.append
        n_fast = 0
        width = self.width
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed_tokens
            done_out = req.num_output_done
            if done_out and computed + 1 == req.input_tokens + done_out and computed < max_len \
                    and computed + width <= len(req.block_ids) * bs and budget >= width:
                # decode step that fits in the blocks it holds: the common case, without the general path
                add_req(req)
                add_new(width)
                add_ctx(computed)
                n_fast += 1
                budget -= width
                i += 1
                continue
            # a decode step verifies width - 1 draft tokens beyond its one new token (speculative decoding)
            lookahead = width - 1 if (done_out and computed + 1 == req.input_tokens + done_out) else 0
            num_new = min(req.num_tokens - computed + lookahead, budget, self.max_model_len - computed)
            if num_new <= 0:
                i += 1
                continue
            scheduled = True
            while not pool.allocate(req, num_new):
                if self.on_pressure is not None and self.on_pressure(pool.blocks_needed(req, num_new)):
                    continue
                victim = self._victim()
                self._preempt(victim)
                plan.preempted.append(victim)
                if victim is req:
                    scheduled = False
                    break
            if not scheduled:
                break
            plan.requests.append(req)
            plan.num_new_tokens.append(num_new)
            plan.contexts.append(req.num_computed_tokens)
            if lookahead or (num_new == 1 and req.num_output_done > 0):
                plan.num_decode_tokens += num_new
            else:
                plan.num_prefill_tokens += num_new
            if req.num_computed_tokens + num_new >= req.num_tokens:
                plan.num_sampled += 1
            budget -= num_new
            i += 1
        plan.num_decode_tokens += n_fast * width
        plan.num_sampled += n_fast
        plan.first_admitted = len(plan.requests)
        steady = n_fast == len(plan.requests) == len(running) and not plan.preempted
        if not plan.preempted:
            self._admit(plan, budget)
        plan.steady_decode = steady and plan.first_admitted == len(plan.requests)  # and nobody admitted
        if self.tiers is not None:
            plan.kv_moves = self.tiers.take_moves()
        if not plan.requests:
            return None
        return plan

    def complete(self, plan: IterationPlan, end_ns: int) -> list[Request]:
        """Apply a finished step: advance computed tokens, emit tokens, free finished requests."""
        if plan.run_ahead:
            run = self._run
            if run is None:
                raise AssertionError("a decode run's step completed after its run ended")
            return self._run_complete(run, end_ns)
        self.sync()
        finished = []
        handed: list[Request] = []
        pool = self.pool
        bs = pool.block_size
        spec = self.spec_k
        for req, n in zip(plan.requests, plan.num_new_tokens, strict=True):
            if req.status != "running":
                continue  # preempted later in the same step cannot happen, kept for safety
            if spec and req.num_output_done and req.num_computed_tokens + 1 == req.input_tokens + req.num_output_done:
                if self._verified(req, n, end_ns):
                    finished.append(req)
                continue
            c = req.num_computed_tokens + n
            req.num_computed_tokens = c
            if req.hashes and c // bs > req.num_hashed_blocks:
                pool.cache_full_blocks(req, c)
            if c >= req.input_tokens + req.num_output_done:
                if req.handoff:  # prefilled for a decode instance: the token sampled here is not the client's
                    # the blocks stay allocated here until the KV has left (vLLM delays freeing them on the
                    # prefill side); the request's own block list is the decode side's from now on
                    req.kv_src_blocks, req.block_ids = req.block_ids, []
                    req.num_hashed_blocks = 0
                    req.status = "handed_off"
                    handed.append(req)
                    continue
                d = req.num_output_done + 1
                req.num_output_done = d
                if req.first_token_ns < 0:
                    req.first_token_ns = end_ns
                if d >= req.output_tokens:  # output_tokens >= 1: only a step that emits can finish
                    req.status = "finished"
                    req.finish_ns = end_ns
                    finished.append(req)
        if finished:
            self._retire(finished)
        if handed:
            gone = {id(r) for r in handed}
            self.running = [r for r in self.running if id(r) not in gone]
            self.handed_off.extend(handed)
        if self.run_ahead:
            self._start_run()
        return finished

    def _verified(self, req: Request, width: int, end_ns: int) -> bool:
        """A decode sequence's verify pass of `width` tokens: its one new token plus the accepted prefix of
        the width - 1 drafts, each draft accepted with probability a independently (stopping at the first
        rejection), all kept up to the request's output length. True when the request finished."""
        acc = 1
        rnd = self.spec_rng.random
        own = self.spec_accept_by_request.get(req.request_id)
        rates = self.spec_accept if own is None else [own] * self.spec_k
        while acc < width and rnd() < rates[acc - 1]:
            acc += 1
        d = min(req.output_tokens, req.num_output_done + acc)
        acc = d - req.num_output_done
        self.spec_steps += 1
        self.spec_tokens += acc
        c = req.num_computed_tokens + acc
        req.num_computed_tokens = c
        if req.hashes and c // self.pool.block_size > req.num_hashed_blocks:
            self.pool.cache_full_blocks(req, c)
        req.num_output_done = d
        if d >= req.output_tokens:
            req.status = "finished"
            req.finish_ns = end_ns
            return True
        return False

    def release_kv_source(self, req: Request) -> None:
        """The handed-off request's KV has reached its decode instance: free its blocks here."""
        self.pool.release(req.kv_src_blocks)
        req.kv_src_blocks = []
        if self.after_free is not None:
            self.after_free()
