"""vLLM v1 scheduler invariants and KV block accounting."""

from __future__ import annotations

import random

from frontend.config.schema import EngineConfig
from frontend.instance.kv import BlockPool
from frontend.instance.scheduler import Scheduler
from frontend.workload.request import Request, TokenContent


def _req(i: int, p: int, o: int, ids: list[int] | None = None) -> Request:
    return Request(f"r{i}", 0, p, o, content=TokenContent(ids=ids), seq=i)


def _drive(sched: Scheduler, reqs: list[Request], max_steps: int = 100000) -> list:
    plans = []
    for r in reqs:
        reason = sched.rejection_reason(r)
        if reason:
            r.status = "rejected"
        else:
            sched.add(r)
    t = 0
    while sched.has_work and len(plans) < max_steps:
        plan = sched.schedule()
        assert plan is not None, "work but nothing schedulable"
        plans.append(plan)
        t += 1000
        sched.complete(plan, t)
        # finished requests hold their blocks until the next schedule() under async scheduling
        live = [r for r in sched.running] + sched.releasing + [r for r in sched.waiting if r.block_ids]
        sched.pool.check_invariants(live)
    assert sched.schedule() is None  # async scheduling: the last finished requests give their blocks back
    return plans


def test_budget_and_max_seqs_never_exceeded_and_all_complete():
    rng = random.Random(3)
    eng = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, block_size=16)
    pool = BlockPool(120, 16)
    sched = Scheduler("i", eng, pool, max_model_len=4096)
    reqs = [_req(i, rng.randint(5, 700), rng.randint(1, 120)) for i in range(60)]
    reqs.append(_req(99, 3000, 10))  # needs 188 blocks > 120: rejected, not dropped
    plans = _drive(sched, reqs)
    for p in plans:
        assert p.num_tokens <= 256
        assert p.num_seqs <= 8
        assert sum(p.num_new_tokens) == p.num_tokens
    assert all(r.status == "finished" for r in reqs[:-1])
    assert reqs[-1].status == "rejected"
    assert pool.num_free == pool.num_blocks  # nothing leaked
    for r in reqs[:-1]:
        assert r.num_output_done == r.output_tokens and r.first_token_ns > 0


def test_preemption_requeues_newest_and_recomputes():
    eng = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16, enable_prefix_caching=False)
    pool = BlockPool(10, 16, enable_prefix_caching=False)
    sched = Scheduler("i", eng, pool, max_model_len=4096)
    a, b = _req(0, 60, 60), _req(1, 60, 60)  # each grows to 120 tokens = 8 blocks; 16 > 10
    plans = _drive(sched, [a, b])
    preempted = [r for p in plans for r in p.preempted]
    assert preempted and preempted[0] is b  # the newest running request is the victim
    assert b.preemptions >= 1 and a.preemptions == 0
    assert a.status == b.status == "finished"
    assert pool.num_free == 10


def test_chunked_prefill_splits_long_prompt():
    eng = EngineConfig(max_num_seqs=4, max_num_batched_tokens=100, block_size=16)
    sched = Scheduler("i", eng, BlockPool(100, 16), max_model_len=4096)
    r = _req(0, 250, 2)
    plans = _drive(sched, [r])
    assert [p.num_new_tokens[0] for p in plans] == [100, 100, 50, 1]
    assert r.first_token_ns == 3000  # the step that finishes the prompt emits the first token


def test_running_first_then_waiting():
    eng = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, block_size=16)
    sched = Scheduler("i", eng, BlockPool(100, 16), max_model_len=4096)
    a = _req(0, 10, 5)
    sched.add(a)
    p = sched.schedule()
    sched.complete(p, 1)
    b = _req(1, 200, 5)
    sched.add(b)
    p = sched.schedule()
    assert p.requests[0] is a and p.num_new_tokens == [1, 63]


def test_prefix_cache_hits_after_first_completes_and_partial_blocks_never_hit():
    eng = EngineConfig(max_num_seqs=4, max_num_batched_tokens=2048, block_size=16)
    pool = BlockPool(64, 16)
    sched = Scheduler("i", eng, pool, max_model_len=4096)
    ids = list(range(1000, 1000 + 40))  # 2 full blocks + 8 tokens
    a = _req(0, 40, 3, ids)
    _drive(sched, [a])
    b = _req(1, 40, 3, list(ids))
    _drive(sched, [b])
    assert a.cached_tokens == 0
    assert b.cached_tokens == 32  # two full blocks; the partial third never hits
    c = _req(2, 32, 3, ids[:32])  # an exact multiple: the last block is recomputed (one token must run)
    _drive(sched, [c])
    assert c.cached_tokens == 16
    d = _req(3, 40, 3, [7] + ids[1:])  # first token differs: chained hashes all differ
    _drive(sched, [d])
    assert d.cached_tokens == 0


def test_lru_eviction_order():
    pool = BlockPool(4, 16)
    reqs = []
    for i in range(2):
        r = _req(i, 32, 1, list(range(100 * i, 100 * i + 32)))
        pool.ensure_hashes(r)
        assert pool.allocate(r, 32)
        r.num_computed_tokens = 32
        pool.cache_full_blocks(r, 32)
        reqs.append(r)
    pool.free(reqs[0])  # freed first -> evicted first
    pool.free(reqs[1])
    evicted = []
    pool.on_evict = lambda h, b: evicted.append(b)
    x = _req(9, 20, 1)
    assert pool.allocate(x, 20)  # needs 2 blocks: evicts request 0's (tail first)
    assert set(evicted) == set(reqs[0].block_ids or evicted) and len(evicted) == 2
    assert pool.find_cached_prefix(_req(5, 40, 1, list(range(100, 132)) + [1] * 8)) != []
    assert pool.find_cached_prefix(_req(6, 40, 1, list(range(0, 32)) + [1] * 8)) == []


def test_free_queue_matches_a_linked_list_under_random_operations():
    """FreeQueue (lazy deletion, driven by reference counts) keeps exactly the order and contents an
    OrderedDict-based LRU list of unreferenced blocks would."""
    from collections import OrderedDict

    from frontend.instance.kv import FreeQueue

    n = 300
    rng = random.Random(5)
    fq = FreeQueue(n)
    refs = [0] * n
    ref_refs = [0] * n
    ref: OrderedDict[int, None] = OrderedDict((i, None) for i in range(n))
    for step in range(20000):
        op = rng.random()
        if op < 0.25 and ref:
            b = fq.popleft()
            assert b == ref.popitem(last=False)[0]
            refs[b] = ref_refs[b] = 1
        elif op < 0.5:
            held = [b for b in range(n) if ref_refs[b]]
            blocks = rng.sample(held, min(len(held), rng.randint(1, 40)))
            fq.release(refs, blocks)
            for b in reversed(blocks):
                ref_refs[b] -= 1
                if not ref_refs[b]:
                    ref[b] = None
        elif op < 0.85:
            blocks = rng.sample(range(n), rng.randint(1, 40))  # free and held blocks alike
            fq.acquire(refs, blocks)
            for b in blocks:
                if not ref_refs[b]:
                    del ref[b]
                ref_refs[b] += 1
        elif ref:
            b = rng.choice(list(ref))
            fq.move_to_front(b)
            ref.move_to_end(b, last=False)
        if step % 997 == 0:
            assert list(fq) == list(ref) and len(fq) == len(ref) and refs == ref_refs
            assert all((b in fq) == (b in ref) for b in range(n))
    assert list(fq) == list(ref) and refs == ref_refs
