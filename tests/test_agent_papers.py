"""The agent policies as their papers describe them (issue 19): each corrected behaviour pinned down.

Continuum: the TTL from the utility model (benefit x P(tool done) - memory cost), the cold-start
exponential, pins that hold once the next turn has arrived, pinned turns first in program-level FCFS.
InferCept: preserve wastes C_i x T_INT (no re-admission wait), held until the next turn, program order.
KVFlow / ScaleSim: steps-to-execution on the DAG, shared fixed prompts, farthest-first eviction, background
prefetch that lands later and never displaces nearer KV. Autellix: PLAS preempts (by swapping).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from frontend.agents.orchestrator import Orchestrator
from frontend.agents.program import Edge, ProgramSpec, TurnSpec
from frontend.agents.tools import ToolSimulator
from frontend.config.loader import parse_config, resolve
from frontend.config.schema import PolicyConfig, ToolDist
from frontend.instance.kv import BlockPool
from frontend.metrics.report import summarize
from frontend.policies import PREFETCH_STEPS, RetentionPolicy, priority_key
from frontend.session import simulate
from frontend.workload.request import Request


def _run(cfg: dict):
    res, extra = simulate(resolve(parse_config(cfg)))
    return res, summarize(res, extra)


def _cfg(workload: dict, policy: dict | None = None, blocks: int | None = None, kv=None, hardware="H100-SXM",
         engine: dict | None = None) -> dict:
    c = {"name": "p", "seed": 3, "model": "Llama-3.1-8B",
         "instances": [{"name": "i", "hardware": hardware, "replicas": 1}],
         "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "block_size": 16, **(engine or {})},
         "router": {"policy": "session_affinity"}, "workload": workload}
    if blocks:
        c["engine"]["num_gpu_blocks_override"] = blocks
    if policy:
        c["policy"] = policy
    if kv:
        c["kv"] = kv
    return c


def _chain(pid: str, n: int, tool: str = "t", new: int = 200, out: int = 20, arrival: int = 0) -> ProgramSpec:
    turns = []
    for k in range(n):
        parents = [Edge(turns[-1].turn_id, tool)] if turns else []
        turns.append(TurnSpec(f"{pid}.{k}", pid, k, new, out, parents=parents,
                              context_parent=turns[-1].turn_id if turns else None))
    return ProgramSpec(pid, arrival, turns)


class _Timers:
    def __init__(self) -> None:
        self.events: list[tuple[int, object]] = []

    def __call__(self, t: int, fn) -> None:
        self.events.append((t, fn))

    def fire_until(self, t: int) -> None:
        for when, fn in sorted(self.events, key=lambda e: e[0]):
            if when <= t:
                fn()
        self.events = [e for e in self.events if e[0] > t]


def _inst(num_blocks: int = 1000, waiting: int = 0, queue_delay_ns: float = 0.0, prefill_ns: int = 50_000_000):
    """The parts of an instance the retention hooks read."""
    pool = BlockPool(num_blocks, 16)
    sched = SimpleNamespace(waiting=[object()] * waiting, incoming=[], running=[], releasing=[], priority=None)
    return SimpleNamespace(name="i", pool=pool, scheduler=sched, queue_delay_ns=queue_delay_ns, tier_manager=None,
                           pins={}, estimate_prefill_ns=lambda tokens: prefill_ns)


def _finished_request(orch: Orchestrator, tid: str, now: int) -> Request:
    req = orch.turns[tid].request
    req.scheduled_ns = 0
    req.finish_ns = now
    return req


# ---------------- Continuum ----------------

def test_continuum_utility_ttl_covers_the_observed_tool_times_when_memory_is_free():
    """No request waits: a pin costs nobody, so the TTL covers every observed duration of the tool (the
    largest sample), and it is not a fixed constant."""
    orch = Orchestrator([_chain("p", 2)], ToolSimulator({"t": ToolDist(dist="constant", mean_ms=100)}, 1), 16)
    orch.tool_history["t"] = [(10, d) for d in (50_000_000, 80_000_000, 120_000_000)]
    pol = RetentionPolicy(PolicyConfig(retention="ttl_pin", ttl_policy="utility"), orch, _Timers())
    inst = _inst(waiting=0)
    req = orch.initial()[0]
    assert pol._utility_ttl(inst, req, list(range(20)), now=1000) == 120_000_000


def test_continuum_utility_ttl_is_zero_when_the_pin_costs_more_than_it_saves():
    """Many waiting requests and a cheap restore: holding the KV for the tool costs more than it saves."""
    orch = Orchestrator([_chain("p", 2)], ToolSimulator({"t": ToolDist(dist="constant", mean_ms=100)}, 1), 16)
    orch.tool_history["t"] = [(10, 5_000_000_000)] * 8  # 5 s calls
    pol = RetentionPolicy(PolicyConfig(retention="ttl_pin", ttl_policy="utility"), orch, _Timers())
    inst = _inst(num_blocks=1000, waiting=50, prefill_ns=10_000_000)
    req = orch.initial()[0]
    # benefit 10 ms of prefill; cost 500/1000 of the pool x 50 waiting x 5 s
    assert pol._utility_ttl(inst, req, list(range(500)), now=1000) == 0


def test_continuum_cold_start_assumes_an_exponential_with_the_configured_mean():
    orch = Orchestrator([_chain("p", 2)], ToolSimulator({"t": ToolDist(dist="exponential", mean_ms=200)}, 1), 16)
    pol = RetentionPolicy(PolicyConfig(retention="ttl_pin", ttl_policy="utility"), orch, _Timers())
    s = pol._tool_samples("t", now=0)
    assert len(s) == 32 and s == sorted(s)
    assert sum(s) / len(s) == pytest.approx(200e6, rel=0.1)  # equal-mass quantiles of Exp(mean 200 ms)


def test_continuum_pin_holds_once_the_next_turn_has_arrived():
    """The TTL bounds the tool call, not the queue: a pin whose turn has come back is not expired by its
    deadline (it is released when the turn is admitted, or broken under memory pressure)."""
    orch = Orchestrator([_chain("p", 3)], ToolSimulator({"t": ToolDist(dist="constant", mean_ms=100)}, 1), 16)
    timers = _Timers()
    pol = RetentionPolicy(PolicyConfig(retention="ttl_pin", ttl_ms=1000), orch, timers)
    inst = _inst()
    req = orch.initial()[0]
    blocks = [inst.pool._pop_free() for _ in range(4)]
    for j, b in enumerate(blocks):
        inst.pool.ref[b] = 1
        inst.pool.block_hash[b] = 1000 + j
    assert pol.on_turn_finish(inst, req, blocks, now=0)
    nxt = orch.on_finish(req, 0)[0]
    pol.on_turn_arrival(inst, nxt)
    timers.fire_until(10**10)
    assert pol.stats.pins_expired == 0 and "p" in pol.pins
    pol.on_admit(nxt)
    assert "p" not in pol.pins and pol.stats.pins_used == 1


def test_continuum_program_fcfs_puts_pinned_turns_first():
    orch = Orchestrator([_chain("old", 2), _chain("young", 2, arrival=5)],
                        ToolSimulator({"t": ToolDist(dist="constant", mean_ms=1)}, 1), 16)
    pol = RetentionPolicy(PolicyConfig(scheduling="program_fcfs", retention="ttl_pin"), orch, _Timers())
    key = priority_key(pol.cfg, orch)
    a, b = orch.initial()
    assert key(a) < key(b)  # older program first
    pol.pins["young"] = SimpleNamespace()
    assert key(b) < key(a)  # a turn whose KV is held goes first


def test_continuum_beats_vllm_when_kv_is_contended():
    """Program-level FCFS + TTL pins against vLLM where the KV pool is full and turns re-queue after every
    tool call (the paper's regime): lower mean job completion time."""
    wl = {"kind": "agents", "generator": "coding", "num_programs": 60, "rate_per_s": 6, "turns_min": 4,
          "turns_max": 10, "system_prompt_tokens": 1500,
          "tool_output_tokens": {"dist": "lognormal", "mean": 300, "sigma": 0.5, "max": 2000},
          "output_tokens": {"dist": "lognormal", "mean": 40, "sigma": 0.5, "max": 200},
          "tools": {"fast": {"dist": "lognormal", "mean_ms": 80, "sigma": 0.5},
                    "run": {"dist": "lognormal", "mean_ms": 2000, "sigma": 0.8}}}
    _, base = _run(_cfg(wl, {"scheduling": "fcfs", "retention": "lru"}, blocks=1200))
    _, cont = _run(_cfg(wl, {"scheduling": "program_fcfs", "retention": "ttl_pin", "ttl_policy": "utility"},
                        blocks=1200))
    assert cont["agents"]["completed"] == base["agents"]["completed"] == 60
    assert cont["agents"]["completion_ms"]["mean"] < 0.95 * base["agents"]["completion_ms"]["mean"]
    assert cont["agents"]["cross_turn_hit_rate"] > base["agents"]["cross_turn_hit_rate"]
    assert cont["agents"]["policy"]["pins_created"] > 0


# ---------------- InferCept ----------------

def test_infercept_preserve_waste_is_the_interception_time_only():
    """Preserve wastes C_i x T_INT: a long admission queue (which a preserved request skips) must not turn a
    short interception into a discard. The preserved KV has no deadline."""
    orch = Orchestrator([_chain("p", 2)], ToolSimulator({"t": ToolDist(dist="constant", mean_ms=10)}, 1), 16)
    pol = RetentionPolicy(PolicyConfig(retention="min_waste"), orch, _Timers())
    inst = _inst(queue_delay_ns=1e12, prefill_ns=50_000_000)
    req = orch.initial()[0]
    blocks = [inst.pool._pop_free() for _ in range(10)]
    for j, b in enumerate(blocks):
        inst.pool.ref[b] = 1
        inst.pool.block_hash[b] = 50 + j
    assert pol.on_turn_finish(inst, req, blocks, now=0)
    assert pol.stats.decisions == {"preserve": 1}
    assert pol.pins["p"].deadline_ns is None


# ---------------- KVFlow / ScaleSim ----------------

def _workflow(n_agents=3, steps=6, fixed=64):
    progs = []
    for w in range(2):
        pid = f"wf{w}"
        turns = []
        for k in range(steps):
            a = k % n_agents
            parents = [Edge(turns[-1].turn_id, "message")] if turns else []
            turns.append(TurnSpec(f"{pid}.a{a}.k{k}", pid, k, fixed + 16, 8, parents=parents,
                                  fixed_prefix=(-1000 - a, fixed)))
        progs.append(ProgramSpec(pid, 0, turns))
    return progs


def test_steps_to_execution_counts_unfinished_parents_on_the_dag():
    orch = Orchestrator(_workflow(), ToolSimulator({"message": ToolDist(dist="constant", mean_ms=0)}, 1), 16)
    first = orch.initial()  # both workflows' step 0 requests exist (running)
    memo: dict[str, int] = {}
    assert orch.steps_to_execution("wf0.a1.k1", memo) == 1  # its parent runs now
    assert orch.steps_to_execution("wf0.a2.k2", memo) == 2
    assert orch.steps_to_execution("wf0.a0.k3", memo) == 3
    req = _finished_request(orch, first[0].request_id, 100)
    orch.on_finish(req, 100)
    assert orch.steps_to_execution("wf0.a1.k1", {}) == 0  # only the message (tool) is in the way


def test_fixed_prompts_are_shared_prefixes_across_workflows():
    orch = Orchestrator(_workflow(), ToolSimulator({"message": ToolDist(dist="constant", mean_ms=0)}, 1), 16)
    a, b = orch.initial()
    assert a.hashes[:4] == b.hashes[:4] == orch.reuse_hashes("wf1.a0.k3")  # agent 0's 64-token prompt
    assert orch.reuse_hashes("wf1.a1.k1") != a.hashes[:4]  # another agent, another prompt


def test_workflow_generator_reuses_role_prompts_across_workflows():
    wl = {"kind": "agents", "generator": "workflow", "num_programs": 4, "rate_per_s": 100, "num_agents": 3,
          "steps": 6, "system_prompt_tokens": 1024, "tool_output_tokens": {"dist": "constant", "value": 64},
          "output_tokens": {"dist": "constant", "value": 8}}
    res, s = _run(_cfg(wl))
    assert s["agents"]["completed"] == 4
    later = [r for r in res.requests if r.turn_index >= 3]
    assert later and all(r.cached_tokens >= 1024 for r in later)  # every agent's prompt is reused


def _kvflow_fixture(num_blocks=64):
    """Workflow wf0 at step 0 on an instance whose pool holds agents' prompts as cached free blocks."""
    orch = Orchestrator(_workflow(n_agents=3, steps=6, fixed=64),
                        ToolSimulator({"message": ToolDist(dist="constant", mean_ms=0)}, 1), 16)
    timers = _Timers()
    pol = RetentionPolicy(PolicyConfig(retention="invocation_distance", prefetch="invocation_distance",
                                       prefetch_lookahead=4), orch, timers)
    inst = _inst(num_blocks=num_blocks)
    reqs = orch.initial()
    for r in reqs:
        r.status = "running"
    return orch, pol, inst, timers, reqs


def _cache(pool: BlockPool, hashes: list[int]) -> list[int]:
    blocks = []
    for h in hashes:
        b = pool._pop_free()
        pool.block_hash[b] = h
        pool.cached[h] = b
        pool.ref[b] = 1
        blocks.append(b)
    pool.release(blocks)
    return blocks


def test_invocation_distance_evicts_farthest_first():
    """Agent 1 runs next (1 step), agent 2 after (2 steps): LRU order would evict agent 1's prompt first
    (cached longest ago); KVFlow evicts unclaimed blocks, then agent 2's, and agent 1's last."""
    orch, pol, inst, _, reqs = _kvflow_fixture()
    pool = inst.pool
    a1 = _cache(pool, orch.reuse_hashes("wf0.a1.k1"))  # oldest
    a2 = _cache(pool, orch.reuse_hashes("wf0.a2.k2"))
    junk = _cache(pool, [999_001, 999_002])  # newest, nobody's
    pol.last_turn["wf0"] = ("i", 0, "message")
    pol.last_turn["wf1"] = ("i", 0, "message")
    pol._dirty.add("i")  # as after a turn finished on the instance
    pol.prefetch(inst, now=0)
    order = [b for b in pool.free_queue if pool.block_hash[b] is not None]
    assert order.index(junk[0]) < order.index(a2[0]) < order.index(a1[0])
    assert order[-1] == a1[0]  # the nearest agent's first block is evicted last


def test_prefetch_lands_in_the_background_and_only_for_the_next_step():
    """A tier copy of agent 1's prompt (due next step) is loaded into free HBM over the link in the
    background: the blocks are registered and held (not evictable) until the transfer ends, then join the
    cache; agent 2 (2 steps away) is not prefetched."""
    orch, pol, inst, timers, _ = _kvflow_fixture()
    pool = inst.pool
    tier = SimpleNamespace(contains=lambda k: True, touch=lambda k: None,
                           cfg=SimpleNamespace(latency_ns=2000, bw_gbps=10.0),
                           stats=SimpleNamespace(loaded_blocks=0, loaded_bytes=0))
    inst.tier_manager = SimpleNamespace(active=True, tiers=[tier], key=lambda h: h, block_bytes=1_000_000)
    pol.last_turn["wf0"] = ("i", 0, "message")
    pol.last_turn["wf1"] = ("i", 0, "message")
    pol._dirty.add("i")  # as after a turn finished on the instance
    h1 = orch.reuse_hashes("wf0.a1.k1")
    h2 = orch.reuse_hashes("wf0.a2.k2")
    free_before = pool.num_free
    pol.prefetch(inst, now=0)
    assert pool.num_free == free_before - len(h1)  # held while on the link
    assert all(pool.ref[pool.cached[h]] == 1 for h in h1) and not any(h in pool.cached for h in h2)
    (done, _), = timers.events
    assert done == 2000 + len(h1) * 1_000_000 // 10  # latency + bytes / (GB/s = bytes per ns)
    timers.fire_until(done)
    assert all(h in pool.cached and pool.ref[pool.cached[h]] == 0 for h in h1)
    assert pool.num_free == free_before and PREFETCH_STEPS == 1


def test_a_turn_admitted_before_its_prefetch_lands_waits_for_the_rest():
    """KVFlow holds a request whose load-back is in progress: admitted halfway through the copy, the turn's
    step loads the half still on the link (charged as a tier load in that step), not the whole prefix."""
    orch, pol, inst, timers, reqs = _kvflow_fixture()
    moves: dict = {}
    tier = SimpleNamespace(name="dram", contains=lambda k: True, touch=lambda k: None,
                           cfg=SimpleNamespace(latency_ns=0, bw_gbps=1.0),
                           stats=SimpleNamespace(loaded_blocks=0, loaded_bytes=0))
    tm = SimpleNamespace(active=True, tiers=[tier], key=lambda h: h, block_bytes=1000, _moves=moves)
    inst.tier_manager = tm
    pol.last_turn["wf0"] = ("i", 0, "message")
    pol._dirty.add("i")
    pol.prefetch(inst, now=0)
    h1 = orch.reuse_hashes("wf0.a1.k1")
    (done, _), = timers.events
    assert done == len(h1) * 1000  # 1 GB/s = 1 byte per ns
    turn = SimpleNamespace(program_id="wf0", instance="i", hashes=h1 + [12345])
    pol._now["i"] = done // 2
    pol.on_admit(turn)
    assert moves == {("dram", "load", "prefetch"): len(h1) // 2}


def test_prefetch_never_displaces_nearer_kv():
    """A full pool whose free blocks all hold the next agent's prompt: prefetching a farther agent must not
    take them."""
    orch, pol, inst, timers, _ = _kvflow_fixture(num_blocks=4)
    pool = inst.pool
    _cache(pool, orch.reuse_hashes("wf0.a1.k1"))  # 4 blocks: the whole pool, due next step
    tier = SimpleNamespace(contains=lambda k: True, touch=lambda k: None,
                           cfg=SimpleNamespace(latency_ns=0, bw_gbps=10.0),
                           stats=SimpleNamespace(loaded_blocks=0, loaded_bytes=0))
    inst.tier_manager = SimpleNamespace(active=True, tiers=[tier], key=lambda h: h, block_bytes=1000)
    pol.last_turn["wf0"] = ("i", 0, "message")
    pol.last_turn["wf1"] = ("i", 0, "message")
    pol._dirty.add("i")  # as after a turn finished on the instance
    pol.prefetch(inst, now=0)
    assert not timers.events and pol.stats.prefetches == 0
    assert all(h in pool.cached for h in orch.reuse_hashes("wf0.a1.k1"))


def test_kvflow_single_workflow_beats_lru_when_prompts_exceed_hbm():
    """KVFlow's setting: one workflow cycling over agents whose prompts do not all fit in HBM. LRU evicts
    the prompt needed soonest; steps-to-execution eviction keeps it (more HBM hits, a shorter workflow)."""
    wl = {"kind": "agents", "generator": "workflow", "num_programs": 1, "rate_per_s": 1, "num_agents": 6,
          "steps": 18, "system_prompt_tokens": 2048, "tool_output_tokens": {"dist": "constant", "value": 128},
          "output_tokens": {"dist": "constant", "value": 16}}
    res_l, lru = _run(_cfg(wl, {"retention": "lru"}, blocks=600))
    res_k, kvf = _run(_cfg(wl, {"retention": "invocation_distance"}, blocks=600))
    assert kvf["agents"]["cross_turn_hit_rate"] > lru["agents"]["cross_turn_hit_rate"]
    assert kvf["agents"]["completion_ms"]["mean"] < lru["agents"]["completion_ms"]["mean"]


# ---------------- Autellix ----------------

def test_plas_preempts_only_by_swapping():
    """PLAS preempts running calls of programs with more attained service for a waiting call of a program
    with less, when it cannot be admitted - by swapping to host memory (Autellix); with vLLM's recompute
    preemption it does not preempt for priority."""
    wl = {"kind": "agents", "generator": "coding", "num_programs": 30, "rate_per_s": 6, "turns_min": 2,
          "turns_max": 12, "system_prompt_tokens": 800,
          "tool_output_tokens": {"dist": "lognormal", "mean": 400, "sigma": 0.5, "max": 2000},
          "output_tokens": {"dist": "lognormal", "mean": 120, "sigma": 0.5, "max": 400},
          "tools": {"call": {"dist": "constant", "mean_ms": 50}}}
    tier = [{"name": "dram", "kind": "dram", "capacity_gib": 64, "bw_gbps": 25, "latency_ns": 2000,
             "scope": "instance"}]
    _, rec = _run(_cfg(wl, {"scheduling": "plas"}, blocks=900))
    _, swp = _run(_cfg(wl, {"scheduling": "plas"}, blocks=900, kv={"preemption": "swap", "tiers": tier}))
    assert rec["agents"]["policy"]["decisions"].get("preempt", 0) == 0
    assert swp["agents"]["policy"]["decisions"].get("preempt", 0) > 0
    assert swp["agents"]["completed"] == 30


def test_priority_victim_at_the_head_does_not_stall_the_instance():
    """A priority order can make the first running request its own preemption victim; the instance must
    step again for the others instead of waiting for an event that never comes."""
    wl = {"kind": "agents", "generator": "coding", "num_programs": 24, "rate_per_s": 1.5, "turns_min": 4,
          "turns_max": 8, "system_prompt_tokens": 500, "tools": {"edit": {"dist": "constant", "mean_ms": 150}},
          "tool_output_tokens": {"dist": "lognormal", "mean": 600, "sigma": 0.5, "max": 3000}}
    res, s = _run(_cfg(wl, {"retention": "ttl_pin", "ttl_ms": 1000, "scheduling": "program_fcfs"}, blocks=1800,
                       hardware="RTX4090"))
    assert s["agents"]["completed"] == 24
