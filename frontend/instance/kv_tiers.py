"""One instance's view of its lower KV tiers: offload, reload, swap bookkeeping.

Offload policies (where an HBM block's copy goes to a lower tier):
  none          - no copies; an evicted HBM block is gone.
  write_through - a block is copied down when it becomes a full, cached block in
                  HBM (MEM_STORE in that iteration); evicting it later is free.
  write_back    - a block is copied down only when HBM evicts it (MEM_STORE in
                  the iteration whose allocation evicted it).
Copies go to the first tier; a tier that evicts a block by its own LRU demotes
it to the next tier (a host-side copy, no NPU traffic). A prefix hit in a lower
tier is reloaded into fresh HBM blocks with layer-wise MEM_LOAD nodes.
"""

from __future__ import annotations

from collections import defaultdict

from frontend.instance.kv import BlockPool
from frontend.instance.plan import KVMove
from frontend.instance.tiers import LowerTier
from frontend.workload.request import Request


class TierManager:
    def __init__(self, tiers: list[LowerTier], offload: str, model_key: str, block_bytes_total: int,
                 pool: BlockPool) -> None:
        self.tiers = [t for t in tiers if t.capacity_bytes > 0]
        self.offload = offload
        self.model_key = model_key
        self.block_bytes = block_bytes_total
        self.pool = pool
        self._moves: dict[tuple[str, str, str], int] = defaultdict(int)
        if self.tiers and offload == "write_through":
            pool.on_cache = self._copy_down
        if self.tiers and offload == "write_back":
            pool.on_evict = self._copy_down

    @property
    def active(self) -> bool:
        return bool(self.tiers)

    def key(self, h: int) -> tuple[str, int]:
        return (self.model_key, h)

    def _put(self, i: int, key) -> bool:
        tier = self.tiers[i]
        before = set(tier.entries) if i + 1 < len(self.tiers) and tier.used_bytes + self.block_bytes > tier.capacity_bytes \
            else None
        ok = tier.put(key, self.block_bytes)
        if before is not None:  # demote what the tier's LRU pushed out
            for k in before - set(tier.entries):
                self._put(i + 1, k)
        return ok

    def _copy_down(self, h: int, _block: int) -> None:
        k = self.key(h)
        top = self.tiers[0]
        if top.contains(k):
            top.touch(k)
            return
        if self._put(0, k):
            top.stats.stored_blocks += 1
            top.stats.stored_bytes += self.block_bytes
            self._moves[(top.name, "store", "offload")] += 1

    def lookup(self, req: Request, start_block: int, limit_blocks: int) -> list[tuple[LowerTier, int]]:
        """Contiguous lower-tier hits after the HBM hit: [(tier, blocks), ...] in prefix order."""
        if not self.tiers or not req.hashes:
            return []
        runs: list[tuple[LowerTier, int]] = []
        for j in range(start_block, min(limit_blocks, len(req.hashes))):
            k = self.key(req.hashes[j])
            tier = next((t for t in self.tiers if t.contains(k)), None)
            if tier is None:
                break
            tier.touch(k)
            if runs and runs[-1][0] is tier:
                runs[-1] = (tier, runs[-1][1] + 1)
            else:
                runs.append((tier, 1))
        return runs

    def reload(self, runs: list[tuple[LowerTier, int]], reason: str = "prefix") -> None:
        for tier, n in runs:
            tier.stats.hit_blocks += n
            tier.stats.loaded_blocks += n
            tier.stats.loaded_bytes += n * self.block_bytes
            self._moves[(tier.name, "load", reason)] += n

    # ---- swap preemption ----
    def swap_tier(self) -> LowerTier | None:
        return next((t for t in self.tiers if t.cfg.kind == "dram"), None)

    def swap_out(self, req: Request) -> bool:
        tier = self.swap_tier()
        n = len(req.block_ids)
        if tier is None or n == 0 or n * self.block_bytes > tier.capacity_bytes:
            return False
        for j in range(n):
            tier.put(("swap", req.request_id, j), self.block_bytes)
        tier.stats.stored_blocks += n
        tier.stats.stored_bytes += n * self.block_bytes
        self._moves[(tier.name, "store", "swap")] += n
        req.swapped_blocks = n
        return True

    def swap_in(self, req: Request) -> bool:
        """Bring a swapped request's KV back; False if the swap copy was evicted meanwhile."""
        tier = self.swap_tier()
        n = req.swapped_blocks
        req.swapped_blocks = 0
        assert tier is not None
        present = all(tier.contains(("swap", req.request_id, j)) for j in range(n))
        for j in range(n):
            tier.remove(("swap", req.request_id, j))
        if not present:
            return False
        tier.stats.loaded_blocks += n
        tier.stats.loaded_bytes += n * self.block_bytes
        self._moves[(tier.name, "load", "swap")] += n
        return True

    def take_moves(self) -> list[KVMove]:
        moves = [KVMove(t, d, n, r) for (t, d, r), n in sorted(self._moves.items()) if n]
        self._moves.clear()
        return moves
