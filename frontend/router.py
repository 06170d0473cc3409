"""Choose the instance a request goes to."""

from __future__ import annotations

from frontend.config.schema import RouterConfig
from frontend.instance.runtime import InstanceRuntime
from frontend.workload.request import Request


class Router:
    def __init__(self, cfg: RouterConfig, instances: list[InstanceRuntime]) -> None:
        self.cfg = cfg
        self.instances = instances
        self._rr = 0
        self.affinity: dict[str, str] = {}
        self.affinity_hits = 0
        self.affinity_breaks = 0

    def choose(self, req: Request) -> InstanceRuntime:
        insts = self.instances
        if len(insts) == 1:
            return insts[0]
        pol = self.cfg.policy
        if pol == "round_robin":
            inst = insts[self._rr % len(insts)]
            self._rr += 1
            return inst
        if pol == "least_loaded":
            return min(insts, key=lambda i: (i.scheduler.load(), i.name))
        if pol == "session_affinity":
            key = req.program_id or req.request_id
            prev = self.affinity.get(key)
            if prev is not None:
                inst = next(i for i in insts if i.name == prev)
                if inst.pool.usage() < self.cfg.pressure_threshold or inst.scheduler.load() <= min(
                        i.scheduler.load() for i in insts) + 8:
                    self.affinity_hits += 1
                    return inst
                self.affinity_breaks += 1
            inst = min(insts, key=lambda i: (i.scheduler.load(), i.name))
            self.affinity[key] = inst.name
            return inst
        # kv_overlap: most cached prefix blocks, weighed against load
        best = None
        best_score = None
        for inst in insts:
            hits = len(inst.pool.find_cached_prefix(req))
            blocks = max(1, req.input_tokens // inst.pool.block_size)
            score = hits / blocks - self.cfg.load_weight * inst.scheduler.load() / max(
                1, inst.inst.engine.max_num_seqs)
            if best_score is None or score > best_score:
                best, best_score = inst, score
        assert best is not None
        return best
