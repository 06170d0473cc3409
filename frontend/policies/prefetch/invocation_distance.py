"""invocation_distance - KVFlow: with the invocation-distance ranking (retention/invocation_distance.py
marks the instances whose ranking changed), the blocks of the turns due within the next step are loaded from
the host tier in the background, off the GPU's critical path."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from frontend.policies.common import FAR, PREFETCH_STEPS, PrefetchPolicy
from frontend.policies.registry import register_prefetch

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


@register_prefetch("invocation_distance")
class InvocationDistancePrefetch(PrefetchPolicy):
    ranks = True

    def on_admit(self, req: Request) -> None:
        """A prefix still on the tier link (a prefetch that has not landed) is waited for: the part not yet
        transferred is loaded as part of this step, as KVFlow holds a request whose load-back is in progress."""
        ctx = self.ctx
        flying = ctx.inflight.get(req.instance or "")
        if flying and req.hashes:
            now = ctx.now.get(req.instance, 0)
            rest = 0.0
            for h in req.hashes:
                f = flying.get(h)
                if f is not None:
                    start, done = f
                    rest += min(1.0, max(0.0, (done - now) / max(1, done - start)))
            if rest > 0:
                tm = ctx.tm[req.instance]
                k = (tm.tiers[0].name, "load", "prefetch")
                tm._moves[k] = tm._moves.get(k, 0) + int(math.ceil(rest))

    def after_ranking(self, inst: InstanceRuntime, now: int, prio: dict[int, tuple],
                      order: list[tuple[tuple, str]]) -> None:
        tm = inst.tier_manager
        if tm is not None and tm.active:
            self._load_ahead(inst, now, prio, order)

    def _load_ahead(self, inst: InstanceRuntime, now: int, prio: dict[int, tuple],
                    order: list[tuple[tuple, str]]) -> None:
        """KVFlow's overlapped prefetch: for up to prefetch_lookahead upcoming turns within PREFETCH_STEPS,
        copy the blocks of their reuse prefix that are in the first tier but not in HBM into free HBM blocks
        whose own content is farther away (or none). The copy runs on the tier link in the background (the
        GPU does not wait): the blocks are registered now, held until the transfer ends (nobody evicts
        them), and a turn admitted before then waits for the rest of the copy (see on_admit)."""
        ctx = self.ctx
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
            if tid in ctx.prefetched:
                continue  # one load-back per upcoming turn: if it was evicted again, the turn will miss
            hashes = self.orch.reuse_hashes(tid)
            demand += len(hashes)
            if demand > pool.num_blocks:
                break
            missing = []
            flying = ctx.inflight.setdefault(inst.name, {})
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
            start = max(now, ctx.link_free_ns.get(inst.name, 0))
            done = start + tier.cfg.latency_ns + int(math.ceil(nbytes / tier.cfg.bw_gbps))
            ctx.link_free_ns[inst.name] = done
            landing = missing[: len(taken)]
            ctx.tm[inst.name] = tm
            for b, h in zip(taken, landing, strict=True):
                tier.touch(tm.key(h))
                pool.block_hash[b] = h
                pool.cached[h] = b
                flying[h] = (start, done)
            tier.stats.loaded_blocks += len(taken)
            tier.stats.loaded_bytes += nbytes
            ctx.prefetched.add(tid)
            ctx.stats.prefetches += 1
            ctx.stats.bytes_prefetched += nbytes
            ctx.timer(done, lambda p=pool, bs=taken, hs=landing, f=flying: self._land(p, bs, hs, f))

    @staticmethod
    def _land(pool, blocks: list[int], hashes: list[int], flying: dict[int, tuple[int, int]]) -> None:
        """A background prefetch finished: the blocks become ordinary cached KV (at the free tail)."""
        for h in hashes:
            flying.pop(h, None)
        pool.release(blocks)
